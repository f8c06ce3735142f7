"""The hub's own TCP backchannel (DESIGN.md §7): every hub event, one JSON object per line.

A client connects and, from then on, receives each event published on the bus as
``{"<event name>": {<the event's fields except "event">}}`` followed by ``\\n``: the wire form of
the TomTom Bandit backchannel (protocols.md §3.2), so a Bandit client, a line reader (iOS style)
or a brace-depth scanner (ours, Android style) can all read the hub as if it were a camera.

The event's sequence number and time are *not* added to the payload: the payload is the event
table exactly as plugins see it, and an extra ``seq``/``time`` key could collide with a field of an
open camera notification, while an extra top-level key would read as a notification of its own.
Clients that need them use the HTTP event listing.

Why a mailbox and a writer per client: the bus must never wait for a socket. Each client has its
own bounded mailbox (the bus drops its oldest events, counts and logs the loss) and its own
writer task; a client whose socket stays blocked longer than ``send_timeout`` is disconnected.
Nothing a client does slows the hub or another client. Bytes a client sends are read and
ignored (Bandit clients never write); its EOF counts as leaving, since a backchannel client has
nothing to say and a half-closed peer is indistinguishable from a gone one until we write.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import trio

from hubruntime.events import catalogue
from hubruntime.events.bus import EventBus, Mailbox, Published

__all__ = ["BackchannelServer", "encode_line", "parse_listen"]

log = logging.getLogger("hubruntime.api")


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as ``(host, port)``; port 0 picks a free one."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"listen address must be host:port, got {listen!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"listen port must be 0-65535, got {port}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def encode_line(item: Published) -> bytes:
    """One event as a backchannel line: ``{"<name>": {payload}}\\n`` in UTF-8.

    Raises ValueError for an event that is not JSON (NaN) or not UTF-8 (a lone surrogate).
    """
    event = item.event
    payload = {k: v for k, v in event.items() if k != "event"}
    return catalogue.to_json({item.name: payload}).encode("utf-8") + b"\n"


class _Client:
    def __init__(self, peer: str, mailbox: Mailbox) -> None:
        self.peer = peer
        self.mailbox = mailbox
        self.reason = "server stopped"
        self.sent = 0


class BackchannelServer:
    """Serves hub events to TCP clients; see the module docstring.

    ``port`` is the bound port once ``run`` has started (the one to report as
    ``backchannel_port``). Counters: ``clients`` (connected now), ``accepted``, ``refused``
    (over ``max_clients``), ``slow_disconnects`` and ``lines_sent``.
    """

    def __init__(
        self,
        bus: EventBus,
        listen: str,
        *,
        queue_size: int = 1000,
        send_timeout: float = 10.0,
        max_clients: int = 64,
        batch: int = 256,
    ) -> None:
        self.bus = bus
        self.listen = listen
        self.host, self._port = parse_listen(listen)
        self.queue_size = queue_size
        self.send_timeout = send_timeout
        self.max_clients = max_clients
        self.batch = batch
        self.port: int | None = None
        self.clients = 0
        self.accepted = 0
        self.refused = 0
        self.slow_disconnects = 0
        self.lines_sent = 0
        self._lines: OrderedDict[int, bytes | None] = OrderedDict()  # seq → line, shared

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report the port through ``task_status.started(port)``, serve until cancelled."""
        listeners = await trio.open_tcp_listeners(self._port, host=self.host or None)
        if self._port == 0 and len(listeners) > 1:
            # Port 0 on a name with several addresses gives each its own random port; one
            # reported port must reach the server, so keep the first listener only.
            for extra in listeners[1:]:
                await extra.aclose()
            listeners = listeners[:1]
        self.port = listeners[0].socket.getsockname()[1]
        shown = f"[{self.host}]" if ":" in self.host else (self.host or "*")
        log.info("backchannel server listening on %s:%d", shown, self.port)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve, listeners)
            task_status.started(self.port)

    # -- one client ---------------------------------------------------------------------------
    async def _serve(self, stream: trio.SocketStream) -> None:
        try:
            host, port = stream.socket.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = "?"
        if self.clients >= self.max_clients:
            self.refused += 1
            log.warning("backchannel client %s refused: %d clients already", peer, self.clients)
            await trio.aclose_forcefully(stream)
            return
        # Subscribe first: the client gets every event published from now on.
        client = _Client(peer, self.bus.subscribe(f"backchannel client {peer}",
                                                  maxlen=self.queue_size))
        self.clients += 1
        self.accepted += 1
        log.info("backchannel client %s connected", peer)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._ignore_input, stream, client, nursery.cancel_scope)
                await self._write(stream, client)
                nursery.cancel_scope.cancel()
        except Exception:  # a bug of ours must not take the server down
            client.reason = "internal error"
            log.exception("backchannel client %s: writer failed", peer)
        finally:
            self.bus.unsubscribe(client.mailbox)
            self.clients -= 1
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
            log.info(
                "backchannel client %s disconnected (%s) after %d event(s), %d dropped",
                peer, client.reason, client.sent, client.mailbox.dropped,
            )

    async def _ignore_input(
        self, stream: trio.SocketStream, client: _Client, scope: trio.CancelScope
    ) -> None:
        try:
            while await stream.receive_some(4096):
                pass
            client.reason = "client closed the connection"
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            client.reason = "connection lost"
        scope.cancel()

    async def _write(self, stream: trio.SocketStream, client: _Client) -> None:
        while True:
            items = await client.mailbox.get_batch(self.batch)
            lines = [line for line in map(self._line, items) if line is not None]
            if not lines:
                continue
            with trio.move_on_after(self.send_timeout) as scope:
                try:
                    await stream.send_all(b"".join(lines))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    client.reason = "connection lost"
                    return
            if scope.cancelled_caught:
                self.slow_disconnects += 1
                client.reason = f"not reading for {self.send_timeout:g} s"
                log.warning(
                    "backchannel client %s stopped reading for %g s: disconnecting",
                    client.peer, self.send_timeout,
                )
                return
            client.sent += len(lines)
            self.lines_sent += len(lines)

    def _line(self, item: Published) -> bytes | None:
        """The encoded line of ``item``, made once for all clients (a small LRU by seq)."""
        cache = self._lines
        if item.seq in cache:
            return cache[item.seq]
        try:
            line: bytes | None = encode_line(item)
        except ValueError as exc:
            log.error("backchannel server: event %d (%s) cannot be sent: %s",
                      item.seq, item.name, exc)
            line = None
        cache[item.seq] = line
        if len(cache) > 4 * self.batch:
            cache.popitem(last=False)
        return line
