"""The tunnel's sans-I/O decisions: failure reasons, key-file checks, remote URLs, and which
cloud_tunnel_* events each live stream gets (once per failure episode, not once per retry)."""

from __future__ import annotations

import errno
import os
import socket
import stat

import paramiko
import pytest

from hubruntime.events import catalogue
from hubruntime.proto.tunnel import (
    REASONS,
    Announcer,
    Emit,
    Failure,
    classify,
    classify_key_error,
    key_file_failure,
    lost,
    remote_rtsp_url,
    timed_out,
)

RELAY = "relay.example:2222"


def fail(exc: BaseException, stage: str = "ssh", banner: bool = False, alive: bool = True,
         **kw) -> Failure:
    f = classify(exc, relay=RELAY, stage=stage, banner_seen=banner, timeout_secs=2.0,
                 key_file="/keys/hub", user="hub", known_hosts="/etc/hub/known_hosts",
                 transport_alive=alive, **kw)
    assert f.reason in REASONS
    assert RELAY in f.message
    return f


def raised_during(outer: BaseException, inner: BaseException) -> BaseException:
    """``outer`` raised inside ``except inner``, as paramiko's banner check does."""
    try:
        try:
            raise inner
        except BaseException:
            raise outer  # noqa: B904 - the implicit context is the point
    except BaseException as exc:
        return exc


@pytest.fixture(scope="module")
def keys() -> tuple[paramiko.PKey, paramiko.PKey]:
    return paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()


# classification ------------------------------------------------------------------------------

@pytest.mark.parametrize("exc, reason", [
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "refused"),
    (paramiko.ssh_exception.NoValidConnectionsError(
        {("127.0.0.1", 1): ConnectionRefusedError(errno.ECONNREFUSED, "refused")}), "refused"),
    (TimeoutError("timed out"), "timeout"),
    (TimeoutError(), "timeout"),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "dns"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), "unreachable"),
    (OSError(errno.ENETUNREACH, "Network is unreachable"), "unreachable"),
])
def test_tcp_stage(exc, reason):
    f = fail(exc, stage="tcp")
    assert f.reason == reason, f


def test_a_silent_peer_is_not_ssh_and_a_slow_ssh_server_is_a_timeout():
    # paramiko 5.1: start_client's timeout ends without an error, then connect() finds no session
    no_session = paramiko.SSHException("No existing session")
    assert fail(no_session, banner=False).reason == "not_ssh"
    assert fail(no_session, banner=True).reason == "timeout"
    # or the banner read itself times out first
    banner_timeout = raised_during(paramiko.SSHException("Error reading SSH protocol banner"),
                                   TimeoutError())
    f = fail(banner_timeout, banner=False)
    assert f.reason == "not_ssh" and "no SSH banner within 2 s" in f.message


def test_a_peer_that_closes_is_closed_during_handshake():
    eof_banner = raised_during(paramiko.SSHException("Error reading SSH protocol banner"),
                               EOFError())
    for exc, banner in [(eof_banner, False), (ConnectionResetError(104, "reset"), True),
                        (EOFError(), True), (paramiko.SSHException("Negotiation failed."), True),
                        (BrokenPipeError(32, "Broken pipe"), True)]:
        f = fail(exc, banner=banner)
        assert f.reason == "closed_during_handshake", (exc, f)
        assert "closed the connection during the SSH handshake" in f.message


def test_a_non_ssh_greeting_is_not_ssh_and_quoted():
    f = fail(paramiko.SSHException('Indecipherable protocol version "HTTP/1.1 400 Bad"'))
    assert f.reason == "not_ssh"
    assert "does not speak SSH" in f.message and "HTTP/1.1 400 Bad" in f.message


def test_host_keys(keys):
    offered, expected = keys
    f = fail(paramiko.BadHostKeyException("relay.example", offered, expected), banner=True)
    assert f.reason == "changed_host_key"
    assert offered.fingerprint in f.message and expected.fingerprint in f.message
    assert "/etc/hub/known_hosts" in f.message
    # what paramiko's RejectPolicy raises for a host it does not know
    unknown = paramiko.SSHException("Server '[relay.example]:2222' not found in known_hosts")
    f = fail(unknown, banner=True)
    assert f.reason == "unknown_host_key" and "/etc/hub/known_hosts" in f.message


def test_messages_never_hold_key_material(keys):
    offered, expected = keys
    import io

    private = io.StringIO()
    offered.write_private_key(private)
    body = [ln for ln in private.getvalue().splitlines() if "PRIVATE" not in ln]
    f = fail(paramiko.BadHostKeyException("relay.example", offered, expected))
    assert "PRIVATE" not in f.message
    assert not any(line in f.message for line in body if len(line) > 16)


def test_auth():
    f = fail(paramiko.AuthenticationException("Authentication failed."), banner=True)
    assert f.reason == "auth_failed"
    assert "refused key /keys/hub for user 'hub'" in f.message
    f = fail(paramiko.BadAuthenticationType("Bad authentication type", ["password"]),
             banner=True)
    assert f.reason == "auth_failed" and "allows only: password" in f.message


def test_forward_stage():
    denied = paramiko.SSHException("TCP forwarding request denied")
    f = fail(denied, stage="forward", banner=True, remote_port=40000)
    assert f.reason == "forwarding_denied"
    assert "port 40000" in f.message and "in use" in f.message
    # paramiko also answers "denied" when the connection died while waiting
    assert fail(denied, stage="forward", banner=True,
                alive=False).reason == "closed_during_handshake"


def test_unknown_exceptions_are_other_with_their_type():
    f = fail(RuntimeError("boom"), stage="ssh", banner=True)
    assert f.reason == "other" and "RuntimeError: boom" in f.message
    assert fail(RuntimeError("x" * 1000)).message.endswith("...")
    assert len(fail(RuntimeError("x" * 1000)).message) <= 400


def test_timed_out_and_lost_name_the_stage():
    assert timed_out(RELAY, "forward", 2.0) == Failure(
        "timeout", f"relay {RELAY} did not answer in time (the port forward request, gave up "
                   "after 2 s)")
    assert lost(RELAY, "the relay closed the connection").message == (
        f"connection to relay {RELAY} lost: the relay closed the connection")


# key files -----------------------------------------------------------------------------------

def st(mode: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, 0, 0, 400, 0, 0, 0))


@pytest.mark.parametrize("mode, reason", [
    (stat.S_IFREG | 0o600, None),
    (stat.S_IFREG | 0o400, None),
    (stat.S_IFREG | 0o644, "key_file_permissions"),
    (stat.S_IFREG | 0o640, "key_file_permissions"),
    (stat.S_IFREG | 0o604, "key_file_permissions"),
    (stat.S_IFREG | 0o620, "key_file_permissions"),
    (stat.S_IFDIR | 0o700, "key_file_invalid"),
    (stat.S_IFIFO | 0o600, "key_file_invalid"),
])
def test_key_file_mode(mode, reason):
    f = key_file_failure("/keys/hub", st(mode))
    assert (f.reason if f else None) == reason
    if reason == "key_file_permissions":
        assert f is not None and f"{stat.S_IMODE(mode):04o}" in f.message
        assert "chmod 600" in f.message


def test_key_file_missing_or_unreadable():
    assert key_file_failure("", None).reason == "key_file_missing"  # type: ignore[union-attr]
    f = key_file_failure("/keys/hub", FileNotFoundError(2, "No such file"))
    assert f == Failure("key_file_missing", "key file /keys/hub does not exist")
    f = key_file_failure("/keys/hub", PermissionError(13, "Permission denied"))
    assert f is not None and f.reason == "key_file_permissions"


def test_key_load_errors_do_not_quote_the_file():
    f = classify_key_error("/keys/hub", TypeError("Key is password-protected, but password "
                                                  "was not provided."))
    assert f.reason == "key_file_invalid" and "encrypted" in f.message
    f = classify_key_error("/keys/hub", paramiko.PasswordRequiredException("private key file "
                                                                           "is encrypted"))
    assert "encrypted" in f.message
    f = classify_key_error("/keys/hub", ValueError("Unable to load PEM: secret-looking-content"))
    assert f.reason == "key_file_invalid" and "secret-looking-content" not in f.message


# remote URLs ---------------------------------------------------------------------------------

def test_remote_url():
    assert remote_rtsp_url("relay.example", 40000, "cam1") == "rtsp://relay.example:40000/cam1"
    assert remote_rtsp_url("2001:db8::1", 554, "c") == "rtsp://[2001:db8::1]:554/c"
    assert remote_rtsp_url("[2001:db8::1]", 554, "c") == "rtsp://[2001:db8::1]:554/c"


# events --------------------------------------------------------------------------------------

def names(emits: list[Emit]) -> list[tuple[str, str]]:
    for e in emits:  # every emit is a valid catalogue event
        catalogue.make_event(e.name, streamId=e.stream_id, **e.fields)
    return [(e.name.removeprefix("cloud_tunnel_"), e.stream_id) for e in emits]


REFUSED = Failure("refused", "relay r:22 refused the connection")
TIMEOUT = Failure("timeout", "relay r:22 did not answer")


def test_no_live_stream_wants_no_tunnel_and_says_nothing():
    a = Announcer()
    assert not a.wanted
    assert a.up("relay", 40000) == []
    assert a.failed(REFUSED) == []
    a.stream_started("cam1")
    assert a.wanted
    a.stream_stopped("cam1")
    assert not a.wanted


def test_up_announces_every_live_stream_once_with_its_url():
    a = Announcer()
    assert a.stream_started("cam1") == []  # connecting: nothing known yet
    emits = a.up("relay", 40000)
    assert names(emits) == [("established", "cam1")]
    assert emits[0].fields == {"remoteRtspUrl": "rtsp://relay:40000/cam1"}
    assert names(a.stream_started("cam2")) == [("established", "cam2")]
    assert a.stream_started("cam1") == []  # started again (create called twice): told already
    assert a.up("relay", 40000) == []  # reconnected after restart, same port: nothing new
    a.down()
    assert a.stream_started("cam3") == []  # reconnecting: wait for the outcome
    emits = a.up("relay", 40001)  # the relay picked another port: every URL changed
    assert names(emits) == [("established", "cam1"), ("established", "cam2"),
                            ("established", "cam3")]
    assert emits[2].fields["remoteRtspUrl"] == "rtsp://relay:40001/cam3"


def test_rejected_once_per_episode_not_per_retry():
    a = Announcer()
    a.stream_started("cam1")
    a.stream_started("cam2")
    emits = a.failed(REFUSED)
    assert names(emits) == [("rejected", "cam1"), ("rejected", "cam2")]
    assert emits[0].fields == {"errorMessage": REFUSED.message}
    retries = [a.failed(REFUSED if i % 2 else TIMEOUT) for i in range(1000)]  # a long outage
    assert all(r == [] for r in retries)
    assert a.failing and a.failure == REFUSED
    # a stream that becomes live meanwhile learns it at once, once
    late = a.stream_started("cam3")
    assert names(late) == [("rejected", "cam3")]
    assert late[0].fields == {"errorMessage": REFUSED.message}
    assert a.failed(TIMEOUT) == [] and a.stream_started("cam3") == []
    # a stream that ends and becomes live again is a new live stream
    a.stream_stopped("cam3")
    assert names(a.stream_started("cam3")) == [("rejected", "cam3")]
    # the relay comes back: the episode ends
    assert names(a.up("relay", 40000)) == [("established", "cam1"), ("established", "cam2"),
                                           ("established", "cam3")]
    assert not a.failing
    # lost later: a new episode, told again
    gone = lost("r:22", "the relay closed the connection")
    emits = a.failed(gone)
    assert names(emits) == [("rejected", "cam1"), ("rejected", "cam2"), ("rejected", "cam3")]
    assert emits[0].fields["errorMessage"] == gone.message
    assert names(a.up("relay", 40000)) == [("established", "cam1"), ("established", "cam2"),
                                           ("established", "cam3")]


def test_a_restart_during_an_episode_keeps_it():
    a = Announcer()
    a.stream_started("cam1")
    assert len(a.failed(REFUSED)) == 1
    a.down()  # restart(): the tunnel is re-tried at once, still failing
    assert a.failed(TIMEOUT) == []


def test_no_live_stream_ends_the_episode():
    a = Announcer()
    a.stream_started("cam1")
    assert len(a.failed(REFUSED)) == 1
    assert a.stream_stopped("cam1") == []
    assert not a.failing and not a.wanted
    assert a.stream_started("cam1") == []  # a fresh start: wait for the new attempt
    assert names(a.failed(TIMEOUT)) == [("rejected", "cam1")]
    assert a.failure == TIMEOUT


def test_url_of_a_stream():
    a = Announcer()
    assert a.url("cam1") is None
    a.stream_started("cam1")
    a.up("2001:db8::1", 554)
    assert a.url("cam1") == "rtsp://[2001:db8::1]:554/cam1"
