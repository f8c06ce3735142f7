"""The HTTP API service: binds ``[api] listen``, serves the ASGI app with hypercorn's trio worker.

Routes (all need ``Authorization: Acc <token>``; see ``app.py``):

* ``GET /api/1/status``, ``GET /api/2/status``: hub status with ``backchannel_port``
  (the TomTom status endpoint's field, protocols.md §3.1);
* the VXG v2 event-processing API (``events.py``, protocols.md §2);
* ``/osc/info``, ``/osc/state``, ``/osc/checkForUpdates`` (``oscserver.py``, protocols.md §1).

Why the socket is bound here and handed to hypercorn as ``fd://``: a bind failure (port in use)
must be a clear log line and a hub that goes on without its API, not an exception group out of
hypercorn's nurseries; and with port 0 we know the port before anyone needs it.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from hubruntime import __version__
from hubruntime.api.app import ApiApp, Request, Response, Route
from hubruntime.api.events import EventsApi, TriggerFn
from hubruntime.api.oscserver import HubState, OscEndpoints, subscribe
from hubruntime.config import ApiConfig
from hubruntime.events.bus import EventBus
from hubruntime.store import Store
from hubruntime.streams.manager import StreamManager

log = logging.getLogger("hubruntime.api")

#: Listen backlog: enough for a burst of a thousand long-poll clients connecting at once.
BACKLOG = 2048


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as ``(host, port)``; ValueError if malformed."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"listen address must be host:port, got {listen!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port_text)


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(addr)
        sock.listen(BACKLOG)  # here: with SO_REUSEADDR a port in use fails at listen(), not bind()
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ApiService:
    """The hub's HTTP API. ``run`` serves until cancelled; ``port`` is set once bound (None if
    the bind failed). ``backchannel_port`` reports the backchannel server's port (None while it
    has none); ``triggers`` maps event names to :data:`hubruntime.api.events.TriggerFn`."""

    def __init__(self, config: ApiConfig, store: Store, bus: EventBus, manager: StreamManager,
                 *, backchannel_port: Callable[[], int | None] = lambda: None,
                 triggers: Mapping[str, TriggerFn] | None = None) -> None:
        self.config = config
        self.store = store
        self.bus = bus
        self.manager = manager
        self.backchannel_port = backchannel_port
        self.port: int | None = None
        self.host: str | None = None
        self.state = HubState(manager)
        self.events = EventsApi(store, bus, manager, triggers)
        self.osc = OscEndpoints(self.state, lambda: self.port)
        self._started = time.monotonic()
        self.app = ApiApp(config.tokens, [
            Route("/api/1/status", {"GET": self.status}),
            Route("/api/2/status", {"GET": self.status}),
            *self.events.routes(),
            *self.osc.routes(),
        ])

    @property
    def url(self) -> str | None:
        if self.port is None or self.host is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def status(self, request: Request) -> Response:
        return Response({
            "backchannel_port": self.backchannel_port(),
            "hub": "hubruntime",
            "version": __version__,
            "uptime_secs": int(time.monotonic() - self._started),
            "last_event_id": self.bus.last_seq,
            "osc_fingerprint": self.state.view(request.camera_scope)[0],
            "osc_long_polls": self.state.waiting,
        })

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve until cancelled. A listen address that cannot be bound is logged as an error
        and the service reports itself started with ``port`` None, then returns: the hub goes
        on without its API rather than failing as a whole."""
        if not self.config.tokens:
            log.warning("HTTP API: no [api] tokens configured; every request will get 401")
        try:
            host, port = parse_listen(self.config.listen)
            sock = _bind(host, port)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            log.error("HTTP API cannot listen on %s: %s; the hub runs without its API",
                      self.config.listen, reason)
            self.port = None
            task_status.started()
            return
        self.host, self.port = host, sock.getsockname()[1]
        hc = HypercornConfig()
        hc.bind = [f"fd://{sock.detach()}"]  # hypercorn's socket object owns the fd from here
        hc.backlog = BACKLOG
        hc.accesslog = None
        http_log = logging.getLogger("hubruntime.api.http")
        if http_log.level == logging.NOTSET:
            # hypercorn's own INFO line ("Running on … CTRL + C to quit") would mislead; its
            # warnings and errors (protocol errors, app failures) still get through.
            http_log.setLevel(logging.WARNING)
        hc.errorlog = http_log
        hc.graceful_timeout = 0.5
        hc.include_server_header = False

        box = subscribe(self.bus)
        manager = self.manager
        manager.on_added.append(self.state.stream_added)
        manager.on_removed.append(self.state.stream_removed)
        try:
            self.state.load(await manager.list())
            async with trio.open_nursery() as nursery:
                self.osc.nursery = nursery
                nursery.start_soon(self.state.follow, box)
                nursery.start_soon(self.state.poll)
                await nursery.start(partial(serve, self.app, hc, mode="asgi"))
                log.info("HTTP API listening on %s", self.url)
                task_status.started()
        finally:
            self.osc.nursery = None
            self.bus.unsubscribe(box)
            _discard(manager.on_added, self.state.stream_added)
            _discard(manager.on_removed, self.state.stream_removed)


def _discard(callbacks: list[Any], cb: Any) -> None:
    try:
        callbacks.remove(cb)
    except ValueError:
        pass
