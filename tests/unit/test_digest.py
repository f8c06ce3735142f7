import base64
import hashlib

import pytest

from hubruntime.proto.digest import DigestAuth, parse_auth_params

REALM = "hubruntime"
URI = "rtsp://192.168.1.10:5554/cam1"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def auth(**kw) -> DigestAuth:
    return DigestAuth(REALM, {"admin": "s3cret", "viewer": "pa:ss\"w"}, b"k" * 32, **kw)


def challenge_params(a: DigestAuth, now: float) -> dict[str, str]:
    value = a.challenge(now)[0]
    assert value.startswith("Digest ")
    params = parse_auth_params(value[len("Digest "):])
    assert params is not None
    return params


def ffmpeg_authorization(user: str, password: str, method: str, uri: str, nonce: str, *,
                         realm: str = REALM, qop: str | None = None, nc: int = 1,
                         cnonce: str = "0a4f113b5d6e7f80") -> str:
    """As libavformat/httpauth.c builds it."""
    ha1 = md5(f"{user}:{realm}:{password}")
    ha2 = md5(f"{method}:{uri}")
    if qop is None:
        response = md5(f"{ha1}:{nonce}:{ha2}")
    else:
        response = md5(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}")
    value = (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
             f'response="{response}"')
    if qop is not None:
        value += f', qop="{qop}", cnonce="{cnonce}", nc={nc:08x}'
    return value


def test_challenge_is_digest_with_a_fresh_nonce_and_no_basic_by_default():
    a = auth()
    values = a.challenge(100.0)
    assert len(values) == 1
    params = challenge_params(a, 100.0)
    assert params["realm"] == REALM
    assert "qop" not in params and "stale" not in params
    assert params["nonce"] != challenge_params(a, 100.0)["nonce"]
    assert all(c in "0123456789abcdef" for c in params["nonce"])


def test_digest_without_qop_as_ffmpeg_sends_it():
    a = auth()
    nonce = challenge_params(a, 100.0)["nonce"]
    header = ffmpeg_authorization("admin", "s3cret", "DESCRIBE", URI, nonce)
    assert a.check("DESCRIBE", URI, header, 101.0) == "admin"
    assert a.last_stale is False


def test_digest_with_qop_auth_and_nc_cnonce():
    a = auth(offer_qop=True)
    params = challenge_params(a, 5.0)
    assert params["qop"] == "auth"
    header = ffmpeg_authorization("admin", "s3cret", "SETUP", URI + "/trackID=0",
                                  params["nonce"], qop="auth", nc=3)
    assert a.check("SETUP", URI + "/trackID=0", header, 6.0) == "admin"
    # qop=auth is accepted even when not offered (a client may prefer it)
    b = auth()
    nonce = challenge_params(b, 5.0)["nonce"]
    header = ffmpeg_authorization("admin", "s3cret", "PLAY", URI, nonce, qop="auth")
    assert b.check("PLAY", URI, header, 6.0) == "admin"


def test_user_name_and_password_with_quotes_and_colons():
    a = auth()
    nonce = challenge_params(a, 0.0)["nonce"]
    ha1 = md5(f'viewer:{REALM}:pa:ss"w')
    response = md5(f"{ha1}:{nonce}:{md5('DESCRIBE:' + URI)}")
    header = (f'Digest username="viewer", realm="{REALM}", nonce="{nonce}", uri="{URI}", '
              f'response="{response.upper()}", algorithm=MD5')
    assert a.check("DESCRIBE", URI, header, 1.0) == "viewer"


@pytest.mark.parametrize("user, password, method, uri, request_uri", [
    ("admin", "wrong", "DESCRIBE", URI, URI),  # wrong password
    ("nobody", "s3cret", "DESCRIBE", URI, URI),  # unknown user
    ("admin", "s3cret", "DESCRIBE", URI + "2", URI),  # credentials for another URI
    ("admin", "s3cret", "DESCRIBE", "rtsp://192.168.1.10:5554/", URI),  # a parent, not SETUP
    ("admin", "s3cret", "PLAY", URI, URI),  # computed for another method
])
def test_wrong_credentials_are_refused(user, password, method, uri, request_uri):
    a = auth()
    nonce = challenge_params(a, 0.0)["nonce"]
    header = ffmpeg_authorization(user, password, method, uri, nonce)
    assert a.check("DESCRIBE", request_uri, header, 1.0) is None
    assert a.last_stale is False


def test_response_for_the_right_uri_sent_with_another_is_refused():
    a = auth()
    nonce = challenge_params(a, 0.0)["nonce"]
    header = ffmpeg_authorization("admin", "s3cret", "DESCRIBE", URI + "/other", nonce)
    header = header.replace(f'uri="{URI}/other"', f'uri="{URI}"')
    assert a.check("DESCRIBE", URI, header, 1.0) is None


def test_setup_may_authenticate_with_the_aggregate_url():
    a = auth()
    nonce = challenge_params(a, 0.0)["nonce"]
    header = ffmpeg_authorization("admin", "s3cret", "SETUP", URI, nonce)
    assert a.check("SETUP", URI + "/trackID=1", header, 1.0) == "admin"
    assert a.check("SETUP", URI + "/", header, 1.0) == "admin"  # trailing slash


def test_tampered_or_foreign_nonce_is_refused_and_not_stale():
    a = auth()
    nonce = challenge_params(a, 0.0)["nonce"]
    flipped = nonce[:5] + ("0" if nonce[5] != "0" else "1") + nonce[6:]
    for bad in (flipped, nonce[:-2], nonce + "00", "xyz", "",
                challenge_params(DigestAuth(REALM, {}, b"other key"), 0.0)["nonce"]):
        header = ffmpeg_authorization("admin", "s3cret", "DESCRIBE", URI, bad)
        assert a.check("DESCRIBE", URI, header, 1.0) is None
        assert a.last_stale is False


def test_tampered_creation_time_does_not_extend_the_nonce():
    a = auth(nonce_ttl=300.0)
    nonce = challenge_params(a, 0.0)["nonce"]
    later = DigestAuth(REALM, {}, b"k" * 32).make_nonce(1000.0)  # same key, other time
    forged = later[:16] + nonce[16:]  # creation time of one, salt and MAC of the other
    header = ffmpeg_authorization("admin", "s3cret", "DESCRIBE", URI, forged)
    assert a.check("DESCRIBE", URI, header, 1001.0) is None
    assert a.last_stale is False


def test_expired_nonce_is_stale_only_with_the_right_password():
    a = auth(nonce_ttl=300.0)
    nonce = challenge_params(a, 0.0)["nonce"]
    good = ffmpeg_authorization("admin", "s3cret", "DESCRIBE", URI, nonce)
    assert a.check("DESCRIBE", URI, good, 299.0) == "admin"
    assert a.check("DESCRIBE", URI, good, 301.0) is None
    assert a.last_stale is True
    params = challenge_params(a, 301.0)  # the 401 right after tells the client to retry
    assert params["stale"] == "true"
    assert params["nonce"] != nonce
    header = ffmpeg_authorization("admin", "s3cret", "DESCRIBE", URI, params["nonce"])
    assert a.check("DESCRIBE", URI, header, 302.0) == "admin"
    assert a.last_stale is False
    assert "stale" not in challenge_params(a, 302.0)
    wrong = ffmpeg_authorization("admin", "nope", "DESCRIBE", URI, nonce)
    assert a.check("DESCRIBE", URI, wrong, 301.0) is None
    assert a.last_stale is False
    # a nonce from the future (another clock, after a restart with the same key) is stale
    assert a.check("DESCRIBE", URI, good, -5.0) is None and a.last_stale is True


def test_shared_secret_lets_another_instance_check_the_nonce():
    nonce = challenge_params(auth(), 0.0)["nonce"]
    header = ffmpeg_authorization("admin", "s3cret", "DESCRIBE", URI, nonce)
    assert auth().check("DESCRIBE", URI, header, 1.0) == "admin"
    random_key = DigestAuth(REALM, {"admin": "s3cret"})
    assert random_key.check("DESCRIBE", URI, header, 1.0) is None


@pytest.mark.parametrize("header", [
    None,
    "",
    "Digest",
    "Digest ",
    'Digest username="admin"',
    'Digest username="admin", realm="hubruntime", nonce="x", uri="u"',  # no response
    'Digest username="admin", username="b"',
    'Digest username="unterminated',
    "Digest garbage without equals",
    "Bearer abc",
    "Basic YWRtaW46czNjcmV0",  # Basic not allowed by default
    "Digest " + "a=b, " * 2000,
])
def test_malformed_or_unsupported_authorization_is_refused(header):
    assert auth().check("DESCRIBE", URI, header, 0.0) is None


def test_other_realm_algorithm_or_qop_are_refused():
    a = auth()
    nonce = challenge_params(a, 0.0)["nonce"]
    other_realm = ffmpeg_authorization("admin", "s3cret", "DESCRIBE", URI, nonce, realm="x")
    assert a.check("DESCRIBE", URI, other_realm, 1.0) is None
    good = ffmpeg_authorization("admin", "s3cret", "DESCRIBE", URI, nonce)
    assert a.check("DESCRIBE", URI, good + ", algorithm=SHA-256", 1.0) is None
    auth_int = ffmpeg_authorization("admin", "s3cret", "DESCRIBE", URI, nonce, qop="auth-int")
    assert a.check("DESCRIBE", URI, auth_int, 1.0) is None
    no_cnonce = good + ', qop="auth"'
    assert a.check("DESCRIBE", URI, no_cnonce, 1.0) is None


def test_basic_when_allowed():
    a = auth(allow_basic=True)
    values = a.challenge(0.0)
    assert values[0].startswith("Digest ") and values[1] == f'Basic realm="{REALM}"'

    def basic(text: str) -> str:
        return "Basic " + base64.b64encode(text.encode()).decode()

    assert a.check("DESCRIBE", URI, basic("admin:s3cret"), 0.0) == "admin"
    assert a.check("DESCRIBE", URI, basic('viewer:pa:ss"w'), 0.0) == "viewer"
    assert a.check("DESCRIBE", URI, "basic " + basic("admin:s3cret")[6:], 0.0) == "admin"
    for bad in (basic("admin:wrong"), basic("nobody:s3cret"), basic("admin"), basic(""),
                "Basic !!!notbase64", "Basic " + base64.b64encode(b"\xff\xfe:x").decode()):
        assert a.check("DESCRIBE", URI, bad, 0.0) is None
    # Digest still works alongside
    nonce = challenge_params(a, 0.0)["nonce"]
    header = ffmpeg_authorization("admin", "s3cret", "DESCRIBE", URI, nonce)
    assert a.check("DESCRIBE", URI, header, 1.0) == "admin"


def test_realm_with_quotes_is_escaped_in_the_challenge():
    a = DigestAuth('my "hub"', {"u": "p"}, b"k")
    params = parse_auth_params(a.challenge(0.0)[0][len("Digest "):])
    assert params is not None and params["realm"] == 'my "hub"'
    nonce = params["nonce"]
    header = ffmpeg_authorization("u", "p", "OPTIONS", URI, nonce, realm='my "hub"')
    header = header.replace('realm="my "hub""', 'realm="my \\"hub\\""')
    assert a.check("OPTIONS", URI, header, 0.0) == "u"


@pytest.mark.parametrize("text, expected", [
    ('a=1, b="x, y", c="q\\"uote"', {"a": "1", "b": "x, y", "c": 'q"uote'}),
    ("  A = 1 ,, b=2  ", {"a": "1", "b": "2"}),
    ("", {}),
    ('a="unterminated', None),
    ("a=1, a=2", None),
    ('a="1" b=2', None),
    ("=1", None),
])
def test_parse_auth_params(text, expected):
    assert parse_auth_params(text) == expected
