"""The SSH reverse tunnel to the cloud relay (DESIGN §1): remote users reach the hub's RTSP server
through a port the relay opens for us.

One connection, one forward: while at least one stream is live and ``[cloud] host`` is set, the
service holds one paramiko ``SSHClient`` connection to the relay with one reverse port forward
(``tcpip-forward``) of ``remote_bind:remote_port`` on the relay to the hub's RTSP server. Every
connection a remote viewer opens there arrives as a paramiko channel and is bridged, by a thread
of its own, to a new TCP connection to the local RTSP server; the RTSP server cannot tell it from
a local viewer (its answers take their URLs from the request, so they name the relay's address).

Why one tunnel for every stream: the RTSP server already multiplexes streams by path, so one
forward serves them all, and the relay sees one session per hub instead of one per camera.

Security: the relay's host key is checked against ``known_hosts`` and never accepted blindly
(``RejectPolicy``; a missing file is a failure, not a reason to trust); the only key used is
``key_file`` (no agent, no ``~/.ssh`` search), refused like OpenSSH does when group or others
can read it. Messages and logs name files and key fingerprints, never key material.

Everything paramiko does that blocks (connecting, the handshake, the forward request, keep-alive
probes, closing) runs in worker threads (``trio.to_thread.run_sync(abandon_on_cancel=True)``
under a limiter of our own), never on the trio thread; an abandoned attempt closes what it
opened when it notices. The decisions (failure reasons, which events to publish) are in the
sans-I/O ``hubruntime.proto.tunnel``.

Events: ``cloud_tunnel_established`` (with ``remoteRtspUrl``) per live stream when the tunnel is
up, ``cloud_tunnel_rejected`` (with ``errorMessage``) per live stream once per failure episode,
not once per retry: see :class:`hubruntime.proto.tunnel.Announcer`.
"""

from __future__ import annotations

import getpass
import ipaddress
import logging
import math
import os
import selectors
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import paramiko
import trio

from hubruntime.config import CloudConfig
from hubruntime.events.bus import EventBus, Mailbox
from hubruntime.proto import tunnel as proto
from hubruntime.proto.backoff import Backoff
from hubruntime.redact import redact

log = logging.getLogger("hubruntime.tunnels")

# paramiko's transport logs every failed attempt at ERROR with a traceback; our own log line
# already says what failed and why, so its log goes to a channel of ours that is quiet unless
# someone lowers its level to debug a handshake.
SSH_LOG_CHANNEL = "hubruntime.tunnels.ssh"
logging.getLogger(SSH_LOG_CHANNEL).setLevel(logging.CRITICAL)

WATCH_SECS = 0.5  # how often the trio side looks at transport.is_active()
CHUNK = 32 * 1024  # bytes read at once per direction of a bridge: its buffer bound
STALL_SECS = 20.0  # a bridge whose peer accepts nothing for this long is closed
LINGER_SECS = 10.0  # after one side of a bridge ends, how long the other may go on
LOCAL_CONNECT_SECS = 5.0
CANCEL_FORWARD_SECS = 1.0  # closing on purpose: how long to wait for the relay to free its port
MAX_FORWARDS = 64  # concurrent remote viewers; more are refused at once
THREADS = 8  # worker threads the service may hold (attempts, probes, closes)

_FOLLOWED = ("live_rtsp_stream_started", "live_rtsp_stream_stopped")


class _Failed(Exception):
    """An attempt failed; carries the classified :class:`proto.Failure`."""

    def __init__(self, failure: proto.Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class _Abandoned(Exception):
    """The trio side gave up on an attempt; the thread closed what it had opened."""


class _RejectUnknown(paramiko.RejectPolicy):
    """paramiko's ``RejectPolicy`` (an unknown relay is refused, never added), raising with the
    offered key kept on the exception so the failure message can show its fingerprint: what
    the owner compares before adding the relay to known_hosts."""

    def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
        exc = paramiko.SSHException(f"Server {hostname!r} not found in known_hosts")
        exc.key = key  # type: ignore[attr-defined]
        raise exc


class _Interrupted:
    """Sentinel: a phase ended early by ``restart`` or because no stream is live any more."""


INTERRUPTED = _Interrupted()


class _Conn:
    """One established connection with its forward."""

    def __init__(self, client: paramiko.SSHClient, transport: paramiko.Transport,
                 remote_port: int, took: float) -> None:
        self.client = client
        self.transport = transport
        self.remote_port = remote_port
        self.took = took
        self.since = time.monotonic()

    def close(self) -> None:
        _close_quietly(self.client, None)


def _close_quietly(client: paramiko.SSHClient | None, sock: socket.socket | None) -> None:
    if client is not None:
        try:
            client.close()
        except Exception:  # closing is best effort: the connection may be half gone
            log.debug("closing the SSH client failed", exc_info=True)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


class _Attempt:
    """One connection attempt, shared by the trio task and the thread making it.

    Why: a thread cannot be cancelled. When the trio side gives up (restart, deadline, hub
    stopping) it marks the attempt abandoned and closes the socket and client, which makes a
    blocked paramiko call fail soon; the thread, on its way out, closes anything it opened after
    that, so an abandoned attempt never leaves a connection behind.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False
        self.stage: proto.Stage = "key"
        self.sock: socket.socket | None = None
        self.client: paramiko.SSHClient | None = None

    def own(self, client: paramiko.SSHClient | None, sock: socket.socket | None) -> None:
        """Register what the thread opened; raises ``_Abandoned`` (after closing it) if the
        trio side already gave up."""
        with self.lock:
            if not self.abandoned:
                self.client = client or self.client
                self.sock = sock or self.sock
                return
        _close_quietly(client, sock)
        raise _Abandoned

    def abandon(self) -> None:
        with self.lock:
            self.abandoned = True
            client, sock = self.client, self.sock
        _close_quietly(client, sock)


class TunnelService:
    """Holds the tunnel to the relay while streams are live; publishes the tunnel events.

    ``local_port()`` gives the hub's RTSP server port (None while it is not listening); it is
    called on the trio thread only. ``backoff`` spaces retries (default: 0.5 s doubling to
    30 s with jitter, reset after a healthy minute, as for camera readers). ``initial_streams``
    are streams already live when the service starts (normally none: live streams are not
    restored after a restart, and the hub starts this service before plugins run).

    Attributes for tests and status: ``state`` (``disabled``, ``idle``, ``connecting``, ``up``,
    ``backoff``, ``stopped``), ``remote_port`` (the relay's port while up), ``attempts``
    (connection attempts), ``connects`` (attempts that brought the tunnel up), ``failures``
    (failed attempts plus losses), ``last_error``/``last_reason`` (the latest failure),
    ``forwarded_connections`` (remote connections received, in all), ``active_forwards``
    (bridges open now), ``bytes_to_relay``/``bytes_from_relay``.
    """

    def __init__(self, config: CloudConfig, bus: EventBus, *,
                 local_port: Callable[[], int | None], local_host: str = "127.0.0.1",
                 backoff: Backoff | None = None, initial_streams: Iterable[str] = ()) -> None:
        self.config = config
        self.bus = bus
        self.local_port = local_port
        self.local_host = local_host
        self.backoff = backoff or Backoff(0.5, 30.0, 60.0)
        self.announcer = proto.Announcer()
        for sid in initial_streams:
            self.announcer.stream_started(sid)  # announced when the tunnel is up or fails
        self.state = "disabled" if not config.host else "idle"
        self.remote_port: int | None = None
        self.attempts = 0
        self.connects = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_reason: str | None = None
        self.forwarded_connections = 0
        self.active_forwards = 0
        # local ports of the bridges' connections to the RTSP server: such a viewer is remote,
        # so the server must not offer it RTP over UDP (see ``is_bridge``)
        self.bridge_ports: set[int] = set()
        self.bytes_to_relay = 0
        self.bytes_from_relay = 0
        self.last_connect_secs: float | None = None  # handshake + forward of the latest connect
        self._counters = threading.Lock()  # counters bridged threads update
        self._target: tuple[str, int] | None = None  # where bridges connect (trio thread sets)
        self._stopping = threading.Event()
        self._bridges: set[threading.Thread] = set()
        self._limiter = trio.CapacityLimiter(THREADS)
        self._scope: trio.CancelScope | None = None
        self._restart: str | None = None
        self._wake = trio.Event()
        self._conn: _Conn | None = None
        self._last_logged_reason: str | None = None

    # public --------------------------------------------------------------------------------
    @property
    def relay(self) -> str:
        """``host:port`` of the relay, as messages show it."""
        host = self.config.host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"{host}:{self.config.port}"

    @property
    def public_host(self) -> str:
        return self.config.public_host or self.config.host

    def is_bridge(self, host: str, port: int) -> bool:
        """Is the RTSP connection from ``host:port`` one of our bridges (a remote viewer)?"""
        return port in self.bridge_ports and ipaddress.ip_address(host).is_loopback

    def restart(self, reason: str) -> None:
        """Drop the connection and re-establish it at once (the hub's address changed, so the
        old connection is probably dead without knowing it yet). Safe to call from the trio
        thread at any time; a no-op while no stream is live or the service is disabled."""
        if self.state in ("disabled", "stopped"):
            return
        if not self.announcer.wanted:
            log.debug("tunnel restart (%s) ignored: no live stream", reason)
            return
        log.info("tunnel to relay %s: restarting (%s)", self.relay, reason)
        self._restart = reason
        if self._scope is not None:
            self._scope.cancel()
        self._wake.set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if not self.config.host:
            log.info("no [cloud] host configured: no tunnel for remote viewing")
            self.state = "disabled"
            task_status.started()
            return
        box = self.bus.subscribe("tunnels", accept=lambda p: p.name in _FOLLOWED)
        self._stopping.clear()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow, box)
                nursery.start_soon(self._loop)
                task_status.started()
        finally:
            self.bus.unsubscribe(box)
            self.state = "stopped"
            self._stopping.set()
            with trio.CancelScope(shield=True):
                conn, self._conn = self._conn, None
                if conn is not None:
                    await self._close(conn, graceful=True)
                await trio.to_thread.run_sync(self._join_bridges, 5.0, limiter=self._limiter)

    # following the live streams --------------------------------------------------------------
    async def _follow(self, box: Mailbox) -> None:
        while True:
            for item in await box.get_batch(64):
                sid = item.event.get("streamId")
                if not isinstance(sid, str):
                    continue
                was = self.announcer.wanted
                if item.name == "live_rtsp_stream_started":
                    self._publish(self.announcer.stream_started(sid))
                else:
                    self._publish(self.announcer.stream_stopped(sid))
                if self.announcer.wanted != was:
                    self._wake.set()
                    if not self.announcer.wanted and self._scope is not None:
                        self._scope.cancel()  # the last live stream ended: close the tunnel

    def _publish(self, emits: Iterable[proto.Emit]) -> None:
        for e in emits:
            self.bus.publish(e.name, streamId=e.stream_id, **e.fields)

    # the connection loop ---------------------------------------------------------------------
    async def _phase(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run one phase (connect, hold, back off); ``INTERRUPTED`` if a restart was asked for
        or no stream is live any more, before or during it."""
        with trio.CancelScope() as scope:
            if self._restart is not None or not self.announcer.wanted:
                return INTERRUPTED
            self._scope = scope
            try:
                return await fn(*args)
            finally:
                self._scope = None
        return INTERRUPTED

    async def _loop(self) -> None:
        healthy_hint = 0.0  # how long the last tunnel ran well (Backoff resets after a while)
        while True:
            if not self.announcer.wanted:
                self._restart = None  # nothing to restart
                if self.state not in ("idle", "disabled"):
                    log.info("tunnel to relay %s closed: no live stream", self.relay)
                self.state = "idle"
                while not self.announcer.wanted:
                    self._wake = trio.Event()
                    await self._wake.wait()
                continue
            if self._restart is not None:
                self._restart = None
                healthy_hint = math.inf  # a new network: earlier failures say nothing about it
            self.state = "connecting"
            self.attempts += 1
            result = await self._phase(self._connect)
            if result is INTERRUPTED:
                continue
            if isinstance(result, proto.Failure):
                await self._back_off(result, self.backoff.next_delay(healthy_hint))
                healthy_hint = 0.0
                continue
            conn: _Conn = result
            self._conn = conn
            self.connects += 1
            self.remote_port = conn.remote_port
            self.last_connect_secs = conn.took
            self.state = "up"
            self._last_logged_reason = None
            log.info("tunnel up: relay %s forwards its port %d to %s:%s (connected in %.0f ms); "
                     "remote URLs rtsp://%s:%d/<streamId>", self.relay, conn.remote_port,
                     self.local_host, self._target[1] if self._target else "?",
                     conn.took * 1000, self.public_host, conn.remote_port)
            self._publish(self.announcer.up(self.public_host, conn.remote_port))
            result = await self._phase(self._hold, conn)
            uptime = time.monotonic() - conn.since
            self._conn = None
            self.remote_port = None
            with trio.CancelScope(shield=True):
                await self._close(conn, graceful=result is INTERRUPTED)
            if result is INTERRUPTED:
                self.announcer.down()
                continue
            await self._back_off(result, self.backoff.next_delay(uptime))

    async def _back_off(self, failure: proto.Failure, delay: float) -> None:
        self.failures += 1
        self.last_error = failure.message
        self.last_reason = failure.reason
        level = logging.WARNING if failure.reason != self._last_logged_reason else logging.INFO
        self._last_logged_reason = failure.reason
        log.log(level, "tunnel to relay %s failed (%s): %s; retrying in %.1f s", self.relay,
                failure.reason, redact(failure.message), delay)
        self._publish(self.announcer.failed(failure))
        self.state = "backoff"
        await self._phase(trio.sleep, delay)

    async def _close(self, conn: _Conn, *, graceful: bool) -> None:
        """Close a connection. ``graceful`` (closing on purpose, the relay still answering):
        first cancel the forward and wait for the relay's answer (bounded), so that the relay
        has let go of the remote port when we reconnect at once after ``restart``; closing
        bluntly raced with it, and a fixed ``remote_port`` was then "in use" for the new
        connection (measured: the first attempt after a restart was denied)."""
        cfg = self.config
        if graceful and conn.transport.is_active():
            with trio.move_on_after(min(CANCEL_FORWARD_SECS, cfg.connect_timeout_secs)):
                await trio.to_thread.run_sync(conn.transport.cancel_port_forward,
                                              cfg.remote_bind, conn.remote_port,
                                              abandon_on_cancel=True, limiter=self._limiter)
        await trio.to_thread.run_sync(conn.close, limiter=self._limiter)

    # connecting ------------------------------------------------------------------------------
    def _refresh_target(self) -> None:
        port = self.local_port()
        self._target = (self.local_host, port) if port else None

    async def _connect(self) -> _Conn | proto.Failure:
        """One attempt: key, TCP, SSH handshake and auth, then the forward; each stage within
        ``connect_timeout_secs`` (the thread's own timeouts), and the whole under a deadline on
        the trio side too, since paramiko waits for a forward answer without any timeout."""
        self._refresh_target()
        timeout = self.config.connect_timeout_secs
        t0 = time.monotonic()
        attempt = _Attempt()
        try:
            with trio.move_on_after(3 * timeout + 1.0):
                client = await trio.to_thread.run_sync(self._open, attempt,
                                                       abandon_on_cancel=True,
                                                       limiter=self._limiter)
                attempt.stage = "forward"
                with trio.move_on_after(timeout):
                    port = await trio.to_thread.run_sync(self._forward, attempt, client,
                                                         abandon_on_cancel=True,
                                                         limiter=self._limiter)
                    return _Conn(client, client.get_transport(), port, time.monotonic() - t0)
                attempt.abandon()
                return proto.timed_out(self.relay, "forward", timeout)
            attempt.abandon()
            return proto.timed_out(self.relay, attempt.stage, 3 * timeout + 1.0)
        except _Failed as exc:
            attempt.abandon()
            return exc.failure
        except Exception as exc:  # unforeseen: one failed attempt, never a dead hub
            attempt.abandon()
            log.error("tunnel to relay %s: unexpected error (%s)", self.relay, attempt.stage,
                      exc_info=True)
            return self._classify(exc, attempt, None)
        except BaseException:  # cancelled: restart, no stream live, hub stopping
            attempt.abandon()
            raise

    def _open(self, attempt: _Attempt) -> paramiko.SSHClient:
        """In a worker thread: load the key, connect, handshake, check the host key, log in."""
        cfg = self.config
        timeout = cfg.connect_timeout_secs
        key_path = os.path.expanduser(cfg.key_file) if cfg.key_file else ""
        st: os.stat_result | OSError | None = None
        if key_path:
            try:
                st = os.stat(key_path)
            except OSError as exc:
                st = exc
        failure = proto.key_file_failure(key_path, st)
        if failure is not None:
            raise _Failed(failure)
        try:
            pkey = paramiko.PKey.from_path(key_path)
        except Exception as exc:
            raise _Failed(proto.classify_key_error(key_path, exc)) from None

        known = os.path.expanduser(cfg.known_hosts) if cfg.known_hosts else ""
        if not known:
            raise _Failed(proto.Failure(
                "known_hosts_missing", "no known_hosts file configured ([cloud] known_hosts): "
                f"the key of relay {self.relay} cannot be checked, so no tunnel"))
        client = paramiko.SSHClient()
        client.set_log_channel(SSH_LOG_CHANNEL)
        try:
            client.load_host_keys(known)
        except FileNotFoundError:
            raise _Failed(proto.Failure("known_hosts_missing", f"known_hosts file {known} does "
                                        f"not exist: the key of relay {self.relay} cannot be "
                                        "checked, so no tunnel")) from None
        except Exception as exc:
            raise _Failed(proto.Failure("known_hosts_missing", f"known_hosts file {known} "
                                        f"cannot be read ({type(exc).__name__})")) from None
        client.set_missing_host_key_policy(_RejectUnknown())

        attempt.stage = "tcp"
        try:
            sock = socket.create_connection((cfg.host, cfg.port), timeout=timeout)
        except Exception as exc:
            raise _Failed(self._classify(exc, attempt, None)) from None
        attempt.own(client, sock)
        attempt.stage = "ssh"
        try:
            client.connect(cfg.host, cfg.port, username=cfg.user or None, pkey=pkey, sock=sock,
                           timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                           channel_timeout=timeout, look_for_keys=False, allow_agent=False)
        except Exception as exc:
            failure = self._classify(exc, attempt, client.get_transport())
            _close_quietly(client, sock)
            raise _Failed(failure) from None
        return client

    def _forward(self, attempt: _Attempt, client: paramiko.SSHClient) -> int:
        """In a worker thread: ask the relay for the reverse forward; the port it opened."""
        cfg = self.config
        transport = client.get_transport()
        try:
            if transport is None:
                raise EOFError("no transport")
            port = transport.request_port_forward(cfg.remote_bind, cfg.remote_port,
                                                  handler=self._forwarded)
        except Exception as exc:
            failure = self._classify(exc, attempt, transport)
            _close_quietly(client, None)
            raise _Failed(failure) from None
        if cfg.keepalive_secs > 0:
            transport.set_keepalive(max(1, round(cfg.keepalive_secs)))
        attempt.own(client, None)  # raises (and closes) if the trio side gave up meanwhile
        return int(port)

    def _classify(self, exc: BaseException, attempt: _Attempt,
                  transport: paramiko.Transport | None) -> proto.Failure:
        cfg = self.config
        return proto.classify(
            exc, relay=self.relay, stage=attempt.stage,
            banner_seen=bool(transport is not None and transport.remote_version),
            timeout_secs=cfg.connect_timeout_secs, key_file=cfg.key_file,
            user=cfg.user or getpass.getuser(), known_hosts=cfg.known_hosts,
            remote_port=cfg.remote_port,
            transport_alive=bool(transport is not None and transport.is_active()))

    # holding ---------------------------------------------------------------------------------
    async def _hold(self, conn: _Conn) -> proto.Failure:
        """Watch an established tunnel until it dies; the loss.

        Three watchers, because a tunnel dies in three ways. A relay that goes away closes the
        TCP connection: paramiko's transport thread ends, and a worker thread joined on it tells
        us within milliseconds (``is_active`` is also read every ``WATCH_SECS``, which bounds
        the delay should the join be missed). A relay that vanished silently (a dead network
        path, a frozen relay) sends nothing at all: a keep-alive that wants an answer goes every
        ``keepalive_secs`` and a missing answer ends the tunnel, instead of waiting minutes for
        TCP to give up. paramiko's own ``set_keepalive`` is on too: it keeps NAT mappings warm,
        but its requests want no answer, so it cannot tell a dead relay from a quiet one.
        """
        reason: list[str] = []
        ended = trio.Event()

        async def join_transport() -> None:
            await trio.to_thread.run_sync(conn.transport.join, abandon_on_cancel=True,
                                          limiter=self._limiter)
            ended.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(join_transport)
            if self.config.keepalive_secs > 0:
                nursery.start_soon(self._probe, conn, reason, ended)
            while conn.transport.is_active() and not reason:
                self._refresh_target()
                with trio.move_on_after(WATCH_SECS):
                    await ended.wait()
            nursery.cancel_scope.cancel()
        if not reason:
            exc = conn.transport.get_exception()
            if isinstance(exc, EOFError) or exc is None:
                reason.append("the relay closed the connection")
            elif isinstance(exc, ConnectionResetError):
                reason.append("the relay reset the connection")
            else:
                reason.append(redact(str(exc) or type(exc).__name__))
        return proto.lost(self.relay, reason[0])

    async def _probe(self, conn: _Conn, reason: list[str], ended: trio.Event) -> None:
        every = self.config.keepalive_secs
        wait = max(self.config.connect_timeout_secs, every)
        while True:
            await trio.sleep(every)
            with trio.move_on_after(wait) as timer:
                await trio.to_thread.run_sync(conn.transport.global_request,
                                              "keepalive@openssh.com", None, True,
                                              abandon_on_cancel=True, limiter=self._limiter)
            if timer.cancelled_caught:
                reason.append(f"no answer to a keep-alive within {wait:g} s")
                ended.set()
                return

    # bridging forwarded connections ------------------------------------------------------------
    def _forwarded(self, channel: paramiko.Channel, origin: tuple[str, int],
                   server: tuple[str, int]) -> None:
        """paramiko's transport thread: a remote viewer connected to the relay's port. Must
        not block, so the bridge gets a thread of its own."""
        with self._counters:
            self.forwarded_connections += 1
            full = self.active_forwards >= MAX_FORWARDS
            if not full:
                self.active_forwards += 1
        if full or self._stopping.is_set():
            log.warning("tunnel: refused a remote connection from %s:%s (%s)", *origin[:2],
                        "stopping" if not full else f"{MAX_FORWARDS} already open")
            channel.close()
            return
        thread = threading.Thread(target=self._bridge, args=(channel, self._target, origin),
                                  name="tunnel-bridge", daemon=True)
        with self._counters:
            self._bridges.add(thread)
        thread.start()

    def _bridge(self, chan: paramiko.Channel, target: tuple[str, int] | None,
                origin: tuple[str, int]) -> None:
        sock: socket.socket | None = None
        up = down = local_port = 0
        try:
            if target is None:
                log.warning("tunnel: remote connection from %s:%s refused: the RTSP server is "
                            "not listening", *origin[:2])
                return
            try:
                sock = socket.create_connection(target, timeout=LOCAL_CONNECT_SECS)
                local_port = sock.getsockname()[1]
            except OSError as exc:
                log.warning("tunnel: remote connection from %s:%s: cannot reach the RTSP "
                            "server at %s:%d: %s", *origin[:2], *target, exc)
                return
            self.bridge_ports.add(local_port)  # before any byte of the viewer is forwarded
            log.debug("tunnel: remote viewer %s:%s bridged to %s:%d", *origin[:2], *target)
            up, down = _pump(chan, sock, self._stopping)
        except Exception as exc:  # one viewer's trouble never reaches the service
            log.debug("tunnel: bridge for %s:%s ended: %r", *origin[:2], exc)
        finally:
            if sock is not None:
                self.bridge_ports.discard(local_port)
            _close_quietly(None, sock)
            try:
                chan.close()
            except Exception:
                pass
            with self._counters:
                self.active_forwards -= 1
                self.bytes_to_relay += up
                self.bytes_from_relay += down
                self._bridges.discard(threading.current_thread())

    def _join_bridges(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._counters:
            threads = list(self._bridges)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))


def _pump(chan: paramiko.Channel, sock: socket.socket, stop: threading.Event) -> tuple[int, int]:
    """Copy both ways between a paramiko channel and a socket until both sides ended (or one
    ended ``LINGER_SECS`` ago, or ``stop``); (bytes to the channel, bytes from it).

    At most ``CHUNK`` bytes per direction are in hand at a time (read, then written before the
    next read), so memory stays bounded whatever the peers do; a peer that accepts nothing for
    ``STALL_SECS`` makes the send time out and ends the bridge. An end of one side is passed on
    as a half-close (EOF), as TCP would.
    """
    chan.settimeout(STALL_SECS)
    sock.settimeout(STALL_SECS)
    to_chan = from_chan = 0
    ended_at: float | None = None
    # a selector (epoll), not select(): the hub may hold more than 1024 descriptors
    with selectors.DefaultSelector() as sel:
        sel.register(chan, selectors.EVENT_READ)
        sel.register(sock, selectors.EVENT_READ)
        while sel.get_map() and not stop.is_set() and not chan.closed:
            if ended_at is not None and time.monotonic() - ended_at > LINGER_SECS:
                break
            ready = {key.fileobj for key, _ in sel.select(WATCH_SECS)}
            if chan in ready:
                data = chan.recv(CHUNK)
                if data:
                    sock.sendall(data)
                    from_chan += len(data)
                else:  # the remote viewer is done sending: pass the EOF on
                    sel.unregister(chan)
                    ended_at = ended_at or time.monotonic()
                    try:
                        sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        break
            if sock in ready:
                data = sock.recv(CHUNK)
                if data:
                    chan.sendall(data)
                    to_chan += len(data)
                else:  # the RTSP server closed: pass the EOF on
                    sel.unregister(sock)
                    ended_at = ended_at or time.monotonic()
                    chan.shutdown_write()
    return to_chan, from_chan
