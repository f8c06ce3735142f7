"""Server side of RTSP authentication: Digest (RFC 2617, MD5) and, optionally, Basic.

Why Digest: the re-published streams (DESIGN §4) are served on the LAN in clear text, and Digest
is what every RTSP client (FFmpeg, VLC, GStreamer, NVRs) speaks; it keeps the password off the
wire. Basic is available for clients that know nothing else, off by default since it sends the
password as is.

Nonces are stateless: ``<creation time><salt><HMAC of both>`` in hex. The server keeps no nonce
table that a flood of unauthenticated requests could grow, any instance holding the secret can
check them, and the embedded time gives them a lifetime: an expired but genuine nonce with an
otherwise correct response is answered with ``stale=true`` so the client retries with the fresh
nonce without asking its user again. Without state there is no nonce-count tracking, so a
captured request can be replayed within the nonce's lifetime (for the same method and URI
only); RFC 2617 leaves that trade-off to the server, and ``nonce_ttl`` bounds it.

Secrets are compared in constant time. Sans-I/O: the current time is passed in (any monotonic
clock, as long as ``challenge`` and ``check`` get the same one).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct

__all__ = ["DigestAuth", "parse_auth_params"]

_TIME = struct.Struct("!d")
_SALT_BYTES = 8
_MAC_BYTES = 16
_NONCE_HEX = 2 * (_TIME.size + _SALT_BYTES + _MAC_BYTES)
_MAX_HEADER = 4096  # an Authorization value longer than this is not worth parsing


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_auth_params(text: str) -> dict[str, str] | None:
    """``key=value, key="quoted value", …`` as a dict with lower-case keys; ``None`` if malformed.

    Quoted strings may hold commas and backslash escapes (RFC 2616 §2.2). A repeated key makes
    the whole header malformed: there is no right way to pick one.
    """
    params: dict[str, str] = {}
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            return params
        eq = text.find("=", i)
        if eq < 0:
            return None
        key = text[i:eq].strip().lower()
        if not key or any(c in key for c in ' \t,"'):
            return None
        i = eq + 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            i += 1
            chars: list[str] = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(text[i])
                i += 1
            if i >= n:
                return None  # unterminated quoted string
            i += 1
            value = "".join(chars)
        else:
            end = text.find(",", i)
            end = n if end < 0 else end
            value = text[i:end].strip()
            i = end
        if key in params:
            return None
        params[key] = value
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] != ",":
            return None


class DigestAuth:
    """Checks ``Authorization`` headers against a fixed user table, and makes the challenges.

    ``users`` maps user names to clear-text passwords (Digest needs ``MD5(user:realm:password)``;
    we compute it once here). ``offer_qop`` adds ``qop="auth"`` to the challenge; it is off by
    default because some camera-grade clients mishandle it, while a client's ``qop=auth`` answer
    is accepted either way. ``allow_basic`` accepts and offers Basic as well.
    """

    def __init__(self, realm: str, users: dict[str, str], nonce_secret: bytes | None = None,
                 nonce_ttl: float = 300.0, *, allow_basic: bool = False,
                 offer_qop: bool = False) -> None:
        self.realm = realm
        self.nonce_ttl = nonce_ttl
        self.allow_basic = allow_basic
        self.offer_qop = offer_qop
        self._secret = nonce_secret if nonce_secret is not None else secrets.token_bytes(32)
        self._passwords = {u: p.encode("utf-8") for u, p in users.items()}
        self._ha1 = {u: _md5(f"{u}:{realm}:{p}") for u, p in users.items()}
        # compared against when the user is unknown, so timing does not tell names apart
        self._dummy_ha1 = _md5(f":{realm}:{secrets.token_hex(16)}")
        self._dummy_password = secrets.token_bytes(16)
        self.last_stale = False

    # -- nonces ----------------------------------------------------------------------------

    def _mac(self, stamp: bytes) -> bytes:
        return hmac.new(self._secret, b"rtsp-nonce:" + stamp, hashlib.sha256).digest()[:_MAC_BYTES]

    def make_nonce(self, now: float) -> str:
        stamp = _TIME.pack(now) + secrets.token_bytes(_SALT_BYTES)
        return (stamp + self._mac(stamp)).hex()

    def _nonce_time(self, nonce: str) -> float | None:
        """The creation time of a nonce we made, ``None`` if it is not one (tampered, foreign)."""
        if len(nonce) != _NONCE_HEX:
            return None
        try:
            raw = bytes.fromhex(nonce)
        except ValueError:
            return None
        stamp, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(stamp)):
            return None
        (created,) = _TIME.unpack_from(stamp)
        return created

    # -- challenge ---------------------------------------------------------------------------

    def challenge(self, now: float, *, stale: bool | None = None) -> list[str]:
        """The ``WWW-Authenticate`` values for a 401, Digest first (clients take the first one
        they support, and the strongest should win).

        ``stale`` defaults to :attr:`last_stale`, i.e. to what the :meth:`check` just before
        found; that is safe in a trio server because nothing runs between the two calls.
        """
        if stale is None:
            stale = self.last_stale
        digest = f"Digest realm={_quote(self.realm)}, nonce={_quote(self.make_nonce(now))}"
        if self.offer_qop:
            digest += ', qop="auth"'
        if stale:
            digest += ", stale=true"
        values = [digest]
        if self.allow_basic:
            values.append(f"Basic realm={_quote(self.realm)}")
        return values

    # -- check -------------------------------------------------------------------------------

    def check(self, method: str, uri: str, authorization: str | None, now: float) -> str | None:
        """The authenticated user name, or ``None``; sets :attr:`last_stale`.

        ``last_stale`` is true only when the credentials were right but the nonce had expired,
        so that the challenge can tell the client to retry silently (RFC 2617 §3.2.1).
        """
        self.last_stale = False
        if not authorization or len(authorization) > _MAX_HEADER:
            return None
        scheme, _, rest = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            return self._check_basic(rest.strip()) if self.allow_basic else None
        if scheme != "digest":
            return None
        return self._check_digest(method, uri, rest, now)

    def _check_basic(self, token: str) -> str | None:
        try:
            decoded = base64.b64decode(token, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        user, sep, password = decoded.partition(":")
        if not sep:
            return None
        expected = self._passwords.get(user)
        ok = hmac.compare_digest(password.encode("utf-8"),
                                 expected if expected is not None else self._dummy_password)
        return user if ok and expected is not None else None

    def _check_digest(self, method: str, uri: str, text: str, now: float) -> str | None:
        params = parse_auth_params(text)
        if params is None:
            return None
        user = params.get("username")
        nonce = params.get("nonce")
        digest_uri = params.get("uri")
        response = params.get("response")
        if user is None or nonce is None or digest_uri is None or response is None:
            return None
        if params.get("realm") != self.realm:
            return None
        if params.get("algorithm", "MD5").upper() != "MD5":
            return None  # MD5-sess and SHA-256 are not offered, so not accepted
        if not _same_resource(method, digest_uri, uri):
            return None
        created = self._nonce_time(nonce)
        if created is None:
            return None
        qop = params.get("qop")
        ha1 = self._ha1.get(user)
        ha2 = _md5(f"{method}:{digest_uri}")
        secret_ha1 = ha1 if ha1 is not None else self._dummy_ha1
        if qop is None:
            expected = _md5(f"{secret_ha1}:{nonce}:{ha2}")
        elif qop.lower() == "auth":
            nc = params.get("nc")
            cnonce = params.get("cnonce")
            if nc is None or cnonce is None:
                return None
            expected = _md5(f"{secret_ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
        else:
            return None  # auth-int is not offered
        ok = hmac.compare_digest(expected.encode("ascii"),
                                 response.strip().lower().encode("utf-8"))
        if not ok or ha1 is None:
            return None
        age = now - created
        if not 0.0 <= age <= self.nonce_ttl:
            # genuine nonce, right password, but too old (or from a clock we no longer share)
            self.last_stale = True
            return None
        return user


def _same_resource(method: str, digest_uri: str, request_uri: str) -> bool:
    """Whether the ``uri`` of the credentials names the request's resource.

    Exactly, modulo a trailing slash; for SETUP also the aggregate URL of the requested track
    URL, since some clients (VLC) authenticate SETUP with the URL they sent DESCRIBE to. The
    response covers the method and ``digest_uri``, so that widens nothing beyond one stream.
    """
    a = digest_uri.rstrip("/")
    b = request_uri.rstrip("/")
    if a == b:
        return True
    return method == "SETUP" and "/" in a.partition("://")[2] and b.startswith(a + "/")
