"""The OSC server side of the hub (protocols.md §1): its own state, fingerprint and long-polls.

The hub presents itself as an OSC "camera" whose state is its streams: for each registered
stream its name, its reading state (the stream manager's, kept by the supervisor), the last
health event seen on the bus (``camera_packet_delay``, ``camera_accumulated_delay``,
``camera_unreachable``, ``camera_stream_closed``) and whether it is re-published live
(``live_rtsp_stream_*``); plus the live streams and the hub's network link
(``hub_*_local_network``). All keys are vendor keys (``_`` prefix, §1.1).

Why :class:`HubState` follows the bus rather than polling everything: a state change must reach
held ``checkForUpdates`` requests at once (DESIGN §7, "answer as soon as the state changes").
The manager's per-stream state also changes without an event (recovery to ``streaming``), so it
is also re-read every :data:`POLL_SECS`; the fingerprint only moves when the document does.

Lenient where the field is (§1.8): ``X-XSRF-Protected`` is not required (the token is), and
``/osc/state`` takes an absent body as well as ``{}``. Errors use §1.7's body and codes, with
400 for the spec's codes (an unknown ``/osc/…`` path is ``unknownCommand``); auth failures are
401/403 with the codes ``unauthorized``/``forbidden``, which §1 does not define.

Why one ``trio.Event`` per state version: every held request waits on the same event, so a
change wakes all of them in one scheduler pass (1,000 waiters cost one ``set()``), and a waiter
never misses a change that happened between its check and its wait.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import trio

from hubruntime import __version__
from hubruntime.api.app import ClientGone, HttpError, Request, Response, Route
from hubruntime.events.bus import EventBus, Mailbox, Published
from hubruntime.proto import osc
from hubruntime.proto.api import format_time
from hubruntime.store import StreamRecord
from hubruntime.streams.manager import StreamManager

log = logging.getLogger("hubruntime.api")

#: Longest hold of a checkForUpdates, in seconds. The spec sets none (protocols.md §1.4 "[?]");
#: a larger ``waitTimeout`` is clamped rather than refused, since a server may answer before the
#: timeout. Two minutes stays under common proxy and NAT idle timeouts.
MAX_WAIT_SECS = 120
#: Held requests beyond this many are answered at once with :data:`BUSY_THROTTLE_SECS`, as §1.4
#: asks of a camera that does not hold requests: a flood of long-polls cannot exhaust the hub.
MAX_WAITERS = 10_000
BUSY_THROTTLE_SECS = 5
#: How often the stream manager's states are re-read for changes made without an event.
POLL_SECS = 0.5

HEALTH_EVENTS = frozenset({
    "camera_packet_delay", "camera_accumulated_delay", "camera_unreachable",
    "camera_stream_closed",
})
LIVE_EVENTS = frozenset({
    "live_rtsp_stream_started", "live_rtsp_stream_updated", "live_rtsp_stream_stopped",
})
NETWORK_EVENTS = frozenset({"hub_connected_to_local_network",
                            "hub_disconnected_from_local_network"})
STATE_EVENTS = HEALTH_EVENTS | LIVE_EVENTS | NETWORK_EVENTS


class HubState:
    """The hub's OSC state document, its fingerprint, and the long-poll waiters.

    Lives in the trio thread. ``version`` counts fingerprint changes; :meth:`view` gives the
    document and fingerprint a token scoped to one camera sees (only that stream), cached per
    version so a thousand woken waiters do not each re-hash the document.
    """

    def __init__(self, manager: StreamManager) -> None:
        self.manager = manager
        self.version = 0
        self.waiting = 0
        self._names: dict[str, str] = {}
        self._health: dict[str, dict[str, Any]] = {}
        self._live: dict[str, str] = {}
        self._network: bool | None = None
        self._doc: dict[str, Any] = {}
        self._fp = ""
        self._views: dict[str, tuple[str, dict[str, Any]]] = {}
        self._changed = trio.Event()
        self.refresh()

    # -- inputs ----------------------------------------------------------------------------

    def load(self, records: list[StreamRecord]) -> None:
        for rec in records:
            self._names[rec.stream_id] = rec.name
            url = self.manager.state(rec.stream_id).live_url
            if url:
                self._live[rec.stream_id] = url
        self.refresh()

    def set_network(self, connected: bool | None) -> None:
        """The network watcher's state at start: it publishes an event only on a change (or
        when starting disconnected), so without this a connected hub would say ``null``."""
        self._network = connected
        self.refresh()

    def stream_added(self, rec: StreamRecord) -> None:
        self._names[rec.stream_id] = rec.name
        self.refresh()

    def stream_removed(self, stream_id: str) -> None:
        self._names.pop(stream_id, None)
        self._health.pop(stream_id, None)
        self._live.pop(stream_id, None)
        self.refresh()

    def on_event(self, item: Published) -> None:
        """Take one bus event into the state (call :meth:`refresh` after a batch)."""
        name = item.name
        sid = item.event.get("streamId")
        if name in HEALTH_EVENTS and isinstance(sid, str):
            self._health[sid] = {"event": name, "id": item.seq, "time": format_time(item.time)}
        elif name in LIVE_EVENTS and isinstance(sid, str):
            url = item.event.get("localRtspUrl")
            if name == "live_rtsp_stream_stopped" or not isinstance(url, str):
                self._live.pop(sid, None)
            else:
                self._live[sid] = url
        elif name == "hub_connected_to_local_network":
            self._network = True
        elif name == "hub_disconnected_from_local_network":
            self._network = False

    # -- the document ----------------------------------------------------------------------

    def _build(self) -> dict[str, Any]:
        streams: dict[str, Any] = {}
        for sid in sorted(self._names):
            entry: dict[str, Any] = {
                "streamName": self._names[sid],
                "state": self.manager.state(sid).state,
                "live": sid in self._live,
            }
            if sid in self._live:
                entry["localRtspUrl"] = self._live[sid]
            if sid in self._health:
                entry["lastHealthEvent"] = self._health[sid]
            streams[sid] = entry
        return {
            "_streams": streams,
            "_liveStreams": [{"streamId": sid, "localRtspUrl": url}
                             for sid, url in sorted(self._live.items()) if sid in self._names],
            "_network": {"connected": self._network},
        }

    def refresh(self) -> bool:
        """Rebuild the document; if its fingerprint moved, wake every waiter. True if it moved."""
        doc = self._build()
        fp = osc.fingerprint(doc)
        if fp == self._fp:
            return False
        self._doc, self._fp = doc, fp
        self._views = {}
        self.version += 1
        changed, self._changed = self._changed, trio.Event()
        changed.set()
        return True

    def view(self, camera: str = "") -> tuple[str, dict[str, Any]]:
        """``(fingerprint, state)`` as seen by a token limited to ``camera`` ("" = all)."""
        if not camera:
            return self._fp, self._doc
        cached = self._views.get(camera)
        if cached is None:
            doc = self._doc
            streams = doc["_streams"]
            scoped = {
                "_streams": {camera: streams[camera]} if camera in streams else {},
                "_liveStreams": [x for x in doc["_liveStreams"] if x["streamId"] == camera],
                "_network": doc["_network"],
            }
            cached = (osc.fingerprint(scoped), scoped)
            self._views[camera] = cached
        return cached

    async def wait_change(self, seen: str, camera: str = "") -> str:
        """The current fingerprint, once it differs from ``seen``; the caller bounds the wait
        with a cancel scope (its deadline is the request's ``waitTimeout``).

        Returns at once when it already differs (§1.4 "must answer immediately"). A change that
        leaves this view's fingerprint as it was (another camera's stream, for a scoped token)
        does not end the wait.
        """
        while True:
            current = self.view(camera)[0]
            if current != seen:
                return current
            await self._changed.wait()

    # -- tasks -----------------------------------------------------------------------------

    async def follow(self, box: Mailbox) -> None:
        """Apply bus events as they come, one refresh per batch."""
        while True:
            items = await box.get_batch(1000)
            for item in items:
                self.on_event(item)
            self.refresh()

    async def poll(self) -> None:
        """Catch stream state changes made without an event (see the module doc)."""
        while True:
            await trio.sleep(POLL_SECS)
            self.refresh()


def subscribe(bus: EventBus) -> Mailbox:
    """The bus mailbox of the state: only the events that change it enter."""
    return bus.subscribe("api osc state", maxlen=10_000,
                         accept=lambda item: item.name in STATE_EVENTS)


class OscEndpoints:
    """Handlers of ``/osc/info``, ``/osc/state`` and ``/osc/checkForUpdates``."""

    def __init__(self, state: HubState, port: Callable[[], int | None]) -> None:
        self.state = state
        #: where held requests' disconnect watchers run; set by the service while it serves
        self.nursery: trio.Nursery | None = None
        self._port = port  # the HTTP port is known only once the service has bound it
        self._started = time.monotonic()
        self.serial = socket.gethostname() or "hubruntime"

    def routes(self) -> list[Route]:
        return [
            Route("/osc/info", {"GET": self.info}, "osc", osc.NAME_INFO),
            Route("/osc/state", {"POST": self.state_}, "osc", osc.NAME_STATE),
            Route("/osc/checkForUpdates", {"POST": self.check_for_updates}, "osc",
                  osc.NAME_CHECK_FOR_UPDATES),
        ]

    async def info(self, request: Request) -> Response:
        port = self._port()
        return Response({
            "manufacturer": "hubruntime",
            "model": "hubruntime camera hub",
            "serialNumber": self.serial,
            "firmwareVersion": __version__,
            "supportUrl": "",
            "gps": False,
            "gyro": False,
            "uptime": int(time.monotonic() - self._started),
            "api": ["/osc/info", "/osc/state", "/osc/checkForUpdates"],
            "endpoints": {"httpPort": port, "httpUpdatesPort": port},
            "apiLevel": [2],
        })

    async def state_(self, request: Request) -> Response:
        body = await request.json(required=False)
        # §1.3: no input. Clients send nothing, or {} (§1.8); anything else is named.
        if body is not None:
            if not isinstance(body, dict):
                raise HttpError(400, "the body must be a JSON object",
                                code=osc.INVALID_PARAMETER_VALUE)
            for key in body:
                raise HttpError(400, f"unknown parameter {str(key)[:40]!r}",
                                code=osc.INVALID_PARAMETER_NAME)
        fp, doc = self.state.view(request.camera_scope)
        return Response(osc.state_reply(fp, doc))

    async def check_for_updates(self, request: Request) -> Response:
        body = await request.json(required=False)
        try:
            seen, wait = osc.parse_check_for_updates_request(body)
        except osc.OscRequestError as exc:
            raise HttpError(exc.status, exc.message, code=exc.code) from None
        camera = request.camera_scope
        timeout = min(wait or 0, MAX_WAIT_SECS)
        state = self.state
        if timeout <= 0 or state.view(camera)[0] != seen:
            return Response(osc.check_for_updates_reply(state.view(camera)[0], 0))
        if state.waiting >= MAX_WAITERS:
            return Response(osc.check_for_updates_reply(state.view(camera)[0],
                                                        BUSY_THROTTLE_SECS))
        state.waiting += 1
        hold = trio.CancelScope(deadline=trio.current_time() + timeout)
        watch = _Watch(request, hold)
        try:
            # The watcher runs in the service's nursery, not in one opened per request: a
            # nursery per held request (enter, cancel, join) costs more than the rest of the
            # wake-up path, and a thousand of them wake together. It ends by itself: hypercorn
            # delivers http.disconnect once the response is sent, or when the client leaves.
            if self.nursery is not None:
                self.nursery.start_soon(watch.run)
                with hold:
                    await state.wait_change(seen, camera)
            else:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch.run)
                    with hold:
                        await state.wait_change(seen, camera)
                    nursery.cancel_scope.cancel()
        finally:
            state.waiting -= 1
        if watch.gone:
            raise ClientGone()
        return Response(osc.check_for_updates_reply(state.view(camera)[0], 0))


class _Watch:
    """Ends a held request's wait when its client disconnects."""

    __slots__ = ("request", "hold", "gone")

    def __init__(self, request: Request, hold: trio.CancelScope) -> None:
        self.request = request
        self.hold = hold
        self.gone = False

    async def run(self) -> None:
        await self.request.wait_disconnect()
        # After the answer this is a no-op (the handler has looked at ``gone`` already).
        self.gone = True
        self.hold.cancel()
