"""The cloud tunnel's decisions, without I/O: why a connection failed, whether a key file may be
used, where remote users reach a stream, and which per-stream events to publish.

``hubruntime/tunnels.py`` holds the SSH connection (paramiko, threads, trio); everything here is
pure so that it can be tested without a relay and read in one place. paramiko is not imported:
its exceptions are recognised by class name (their whole MRO) and by the few message texts it
uses, which keeps this module free of our dependencies like the rest of ``proto``
(DESIGN §2) and lets unit tests feed it real paramiko exceptions or look-alikes.

Events (cameras-api.md): ``cloud_tunnel_established`` (with ``remoteRtspUrl``, ours) and
``cloud_tunnel_rejected`` (with ``errorMessage``, ours), one per *live* stream, because remote
viewing is per stream for plugins even though one tunnel serves them all.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "REASONS",
    "Announcer",
    "Emit",
    "Failure",
    "classify",
    "classify_key_error",
    "key_file_failure",
    "lost",
    "remote_rtsp_url",
    "timed_out",
]

#: Every reason a :class:`Failure` can carry. ``other`` is anything not recognised; its message
#: still says what happened (exception type and text).
REASONS = (
    "refused",                  # nothing listens on the relay's port (or a firewall rejects)
    "timeout",                  # no answer in time: TCP connect, handshake, auth or forward
    "unreachable",              # no route to the relay (network or host unreachable)
    "dns",                      # the relay's name does not resolve
    "not_ssh",                  # accepts TCP but never speaks SSH (no banner, or a non-SSH one)
    "closed_during_handshake",  # the relay closed the connection before the tunnel was up
    "unknown_host_key",         # the relay's key is not in known_hosts (never accepted blindly)
    "changed_host_key",         # known_hosts has another key for the relay: possible MITM
    "known_hosts_missing",      # no known_hosts file configured, or it cannot be read
    "auth_failed",              # the relay refused our key
    "forwarding_denied",        # AllowTcpForwarding off, or the remote port is taken
    "key_file_missing",         # no key file configured, or it does not exist
    "key_file_permissions",     # readable by group/others (OpenSSH refuses such keys too)
    "key_file_invalid",         # not a regular file, not a private key, or encrypted
    "lost",                     # an established tunnel died
    "other",
)

Reason = Literal[
    "refused", "timeout", "unreachable", "dns", "not_ssh", "closed_during_handshake",
    "unknown_host_key", "changed_host_key", "known_hosts_missing", "auth_failed",
    "forwarding_denied", "key_file_missing", "key_file_permissions", "key_file_invalid", "lost",
    "other",
]

#: Where an attempt was when it failed; set by the connecting thread as it goes.
Stage = Literal["key", "tcp", "ssh", "forward"]

MESSAGE_MAX = 400  # room for two key fingerprints and a path


@dataclass(frozen=True)
class Failure:
    """Why the tunnel is not up: a reason from :data:`REASONS` and a sentence for people.

    Messages name the relay (``host:port``), files by path and keys by fingerprint; they never
    hold key material or passwords, since they reach logs and plugins (``errorMessage``).
    """

    reason: Reason
    message: str


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_MAX else text[: MESSAGE_MAX - 3] + "..."


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or during (paramiko re-raises socket errors
    as ``SSHException`` inside ``except`` blocks, so the cause is only in ``__context__``)."""
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 8:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _fingerprint(key: Any) -> str:
    """``ssh-ed25519 SHA256:…`` of a paramiko PKey, or ``?`` when it cannot be read."""
    try:
        return f"{key.get_name()} {key.fingerprint}"
    except Exception:  # a look-alike or an old paramiko: the message goes on without it
        return "?"


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError)  # socket.timeout is an alias since 3.10


def _is_closed(exc: BaseException) -> bool:
    return isinstance(exc, EOFError | ConnectionResetError | BrokenPipeError |
                      ConnectionAbortedError)


def classify(exc: BaseException, *, relay: str, stage: Stage, banner_seen: bool,
             timeout_secs: float, key_file: str = "", user: str = "",
             known_hosts: str = "", remote_port: int = 0,
             transport_alive: bool = True) -> Failure:
    """Turn what an attempt raised into a :class:`Failure`.

    ``relay`` is ``host:port`` for messages; ``stage`` where the attempt was (``tcp``: opening the
    socket, ``ssh``: inside ``SSHClient.connect``, ``forward``: asking for the port forward);
    ``banner_seen`` whether the relay sent its ``SSH-`` line; ``transport_alive`` whether the SSH
    connection was still up when a forward request failed (paramiko answers "denied" for both a
    refusal and a connection that died meanwhile).

    paramiko facts this relies on (5.1, measured against OpenSSH 9.2): a peer that never sends a
    banner makes ``connect`` raise ``SSHException("No existing session")`` (the negotiation timed
    out without an error) or "Error reading SSH protocol banner" with a ``TimeoutError`` context;
    one that closes raises the same banner error with an ``EOFError`` context, or a bare
    ``ConnectionResetError``/``EOFError``; a non-SSH greeting raises "Indecipherable protocol
    version"; an unknown key under ``RejectPolicy`` is a plain ``SSHException`` ("not found in
    known_hosts"), a changed one ``BadHostKeyException``; a denied forward is
    ``SSHException("TCP forwarding request denied")``.
    """
    names = _names(exc)
    text = str(exc)
    chain = _chain(exc)

    if stage == "tcp":
        if isinstance(exc, socket.gaierror):
            return Failure("dns", f"cannot resolve relay {relay}: {exc.strerror or exc}")
        if isinstance(exc, ConnectionRefusedError) or "NoValidConnectionsError" in names:
            return Failure("refused", f"relay {relay} refused the connection (is its SSH server "
                                      "running on that port?)")
        if _is_timeout(exc):
            return Failure("timeout", f"relay {relay} did not accept a connection within "
                                      f"{timeout_secs:g} s")
        if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH,
                                                      errno.ENETDOWN):
            return Failure("unreachable", f"relay {relay} is unreachable: "
                                          f"{exc.strerror or exc}")

    if "BadHostKeyException" in names:
        offered = _fingerprint(getattr(exc, "key", None))
        expected = _fingerprint(getattr(exc, "expected_key", None))
        return Failure("changed_host_key", _shorten(
            f"relay {relay} has another host key than known_hosts says (possible "
            f"man-in-the-middle; not connecting): it offered {offered}, "
            f"{known_hosts or 'known_hosts'} has {expected}"))
    if "not found in known_hosts" in text:
        offered = _fingerprint(getattr(exc, "key", None))
        return Failure("unknown_host_key", _shorten(
            f"relay {relay} is not in {known_hosts or 'known_hosts'} (it offered {offered}); "
            "add its key after checking the fingerprint"))
    if "AuthenticationException" in names:
        allowed = getattr(exc, "allowed_types", None)
        extra = f" (it allows only: {', '.join(allowed)})" if allowed else ""
        who = f"user '{user}'" if user else "the local user name"
        return Failure("auth_failed", _shorten(
            f"relay {relay} refused key {key_file or '?'} for {who}{extra}"))

    if stage == "forward":
        if "TCP forwarding request denied" in text and transport_alive:
            port = f"port {remote_port}" if remote_port else "a port"
            return Failure("forwarding_denied", _shorten(
                f"relay {relay} denied the reverse forward of {port} (TCP forwarding disabled "
                "for us, or the port is in use)"))
        if not transport_alive or any(_is_closed(e) for e in chain):
            return Failure("closed_during_handshake", f"relay {relay} closed the connection "
                                                      "while the port forward was requested")

    if "Indecipherable protocol version" in text or "Invalid SSH banner" in text:
        return Failure("not_ssh", _shorten(
            f"relay {relay} accepted the connection but does not speak SSH "
            f"(it sent {text.partition('version')[2].strip() or 'a bad banner'})"))
    if "IncompatiblePeer" in names:
        return Failure("other", _shorten(f"relay {relay} speaks an incompatible SSH: {text}"))
    if stage == "ssh":
        timed_out_ = ("No existing session" in text
                      or any(_is_timeout(e) for e in chain))
        closed = any(_is_closed(e) for e in chain) or "Negotiation failed" in text
        if not banner_seen and timed_out_ and not closed:
            return Failure("not_ssh", f"relay {relay} accepted the connection but sent no SSH "
                                      f"banner within {timeout_secs:g} s (not an SSH server?)")
        if closed or "Error reading SSH protocol banner" in text:
            return Failure("closed_during_handshake",
                           f"relay {relay} closed the connection during the SSH handshake")
        if timed_out_:
            return Failure("timeout", f"relay {relay} did not finish the SSH handshake within "
                                      f"{timeout_secs:g} s")

    if _is_timeout(exc):
        return timed_out(relay, stage, timeout_secs)
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return Failure("other", _shorten(f"tunnel to relay {relay} failed ({stage}): {detail}"))


def timed_out(relay: str, stage: Stage, secs: float) -> Failure:
    """An attempt that overran its whole budget (the service gave up waiting on it)."""
    what = {"key": "reading the key file", "tcp": "connecting", "ssh": "the SSH handshake",
            "forward": "the port forward request"}[stage]
    return Failure("timeout", f"relay {relay} did not answer in time ({what}, "
                              f"gave up after {secs:g} s)")


def lost(relay: str, detail: str = "") -> Failure:
    """An established tunnel died (the relay went away, or stopped answering keep-alives)."""
    return Failure("lost", _shorten(f"connection to relay {relay} lost"
                                    + (f": {detail}" if detail else "")))


def key_file_failure(path: str, st: os.stat_result | OSError | None) -> Failure | None:
    """Whether the private key at ``path`` may be used, from its ``os.stat`` result (or the error
    stat raised; None: no path configured). Pure: the caller does the stat.

    Like OpenSSH ("UNPROTECTED PRIVATE KEY FILE"), a key readable or writable by group or
    others is refused: a key others can read is no longer a secret, and silently using it would
    hide that. The file must be a regular file (not a directory, a FIFO that would block, …).
    """
    if not path:
        return Failure("key_file_missing", "no SSH key file configured ([cloud] key_file)")
    if isinstance(st, FileNotFoundError) or st is None:
        return Failure("key_file_missing", f"key file {path} does not exist")
    if isinstance(st, PermissionError):
        return Failure("key_file_permissions", f"key file {path} cannot be read by the hub "
                                               f"({st.strerror or st})")
    if isinstance(st, OSError):
        return Failure("key_file_missing", f"key file {path} cannot be used: "
                                           f"{st.strerror or st}")
    if not stat.S_ISREG(st.st_mode):
        return Failure("key_file_invalid", f"key file {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return Failure("key_file_permissions", f"key file {path} is accessible by group or others "
                                               f"(mode {mode:04o}); make it 0600 (chmod 600)")
    return None


def classify_key_error(path: str, exc: BaseException) -> Failure:
    """The key file passed :func:`key_file_failure` but paramiko could not load it. The
    exception text is not repeated: for a malformed key it may quote the file's content."""
    text = str(exc).lower()
    if "PasswordRequiredException" in _names(exc) or "password" in text or "encrypted" in text:
        return Failure("key_file_invalid", f"key file {path} is encrypted; the hub needs a key "
                                           "without a passphrase")
    if isinstance(exc, PermissionError):
        return Failure("key_file_permissions", f"key file {path} cannot be read by the hub")
    if isinstance(exc, FileNotFoundError):
        return Failure("key_file_missing", f"key file {path} does not exist")
    return Failure("key_file_invalid", f"key file {path} is not a private key paramiko can read "
                                       f"({type(exc).__name__})")


def remote_rtsp_url(host: str, port: int, stream_id: str) -> str:
    """``rtsp://<host>:<port>/<streamId>``: where remote users reach a stream through the relay.
    An IPv6 literal is bracketed (RFC 3986), once."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"rtsp://{host}:{port}/{stream_id}"


# ---------------------------------------------------------------------------------------------
# Which events to publish


@dataclass(frozen=True)
class Emit:
    """One event to publish: its name, the stream and its extra fields."""

    name: Literal["cloud_tunnel_established", "cloud_tunnel_rejected"]
    stream_id: str
    fields: dict[str, str] = field(default_factory=dict)


class Announcer:
    """Decides, from the live streams and the tunnel's ups and downs, which
    ``cloud_tunnel_established`` / ``cloud_tunnel_rejected`` events each stream gets.

    Rules, and why:

    * The tunnel is wanted only while at least one stream is live (:attr:`wanted`): nothing is
      reachable through it otherwise, so holding a connection would only cost the relay.
    * Tunnel up: every live stream gets ``cloud_tunnel_established`` with its remote URL, and so
      does a stream that becomes live while it is up. A stream already told the same URL is not
      told again (a reconnect after ``restart`` that gets the same remote port changes nothing
      for plugins); a new URL (the relay picked another port) is announced.
    * Tunnel failed or lost: every live stream gets ``cloud_tunnel_rejected`` with the reason,
      **once per failure episode**, not once per retry. An episode starts at the first failure
      after the tunnel was up (or idle) and ends when it is up again or no stream is live any
      more. A relay that is down for ten minutes is retried with backoff all that time, and
      plugins hear about it once per stream, not once per attempt; a later failure with another
      reason in the same episode is only logged. A stream that becomes live during an episode
      gets the episode's rejection once, at once (it should not wait for the next retry to
      learn that remote viewing does not work).
    * A flapping relay (up, lost, up, …) gives one established/rejected pair per flap; the
      service's backoff, which resets only after a healthy period, bounds how often that is.
    """

    def __init__(self) -> None:
        self.live: set[str] = set()
        self._endpoint: tuple[str, int] | None = None  # (public host, remote port) while up
        self._episode = 0  # 0: not failing; else the number of the current failure episode
        self._episodes = 0
        self._failure: Failure | None = None
        self._told: dict[str, tuple[str, Any]] = {}  # stream -> ("up", url) | ("down", episode)

    @property
    def wanted(self) -> bool:
        return bool(self.live)

    @property
    def failing(self) -> bool:
        return self._episode != 0

    @property
    def failure(self) -> Failure | None:
        """The current episode's first failure (None when not failing)."""
        return self._failure if self._episode else None

    def url(self, stream_id: str) -> str | None:
        if self._endpoint is None:
            return None
        return remote_rtsp_url(self._endpoint[0], self._endpoint[1], stream_id)

    def stream_started(self, stream_id: str) -> list[Emit]:
        self.live.add(stream_id)
        return self._tell([stream_id])

    def stream_stopped(self, stream_id: str) -> list[Emit]:
        """A stream is no longer live. No event: ``live_rtsp_stream_stopped`` already says it.
        The last one ending closes the episode (no connection is wanted any more)."""
        self.live.discard(stream_id)
        self._told.pop(stream_id, None)
        if not self.live:
            self._episode = 0
            self._failure = None
            self._endpoint = None
        return []

    def up(self, public_host: str, remote_port: int) -> list[Emit]:
        self._endpoint = (public_host, remote_port)
        self._episode = 0
        self._failure = None
        return self._tell(sorted(self.live))

    def failed(self, failure: Failure) -> list[Emit]:
        """A connection attempt failed, or an established tunnel was lost."""
        self._endpoint = None
        if not self._episode:
            self._episodes += 1
            self._episode = self._episodes
            self._failure = failure
        return self._tell(sorted(self.live))

    def down(self) -> None:
        """The tunnel was closed on purpose (``restart``, or no stream live): no event, and
        the failure episode, if any, goes on."""
        self._endpoint = None

    def _tell(self, streams: Iterable[str]) -> list[Emit]:
        out: list[Emit] = []
        for sid in streams:
            if self._endpoint is not None:
                url = remote_rtsp_url(self._endpoint[0], self._endpoint[1], sid)
                if self._told.get(sid) != ("up", url):
                    self._told[sid] = ("up", url)
                    out.append(Emit("cloud_tunnel_established", sid, {"remoteRtspUrl": url}))
            elif self._episode and self._failure is not None:
                if self._told.get(sid) != ("down", self._episode):
                    self._told[sid] = ("down", self._episode)
                    out.append(Emit("cloud_tunnel_rejected", sid,
                                    {"errorMessage": self._failure.message}))
        return out
