"""Live RTSP streams: which camera streams the hub re-publishes on its own RTSP server.

``create_live_rtsp_stream`` answers at once and reports the outcome as an event, as
``cameras-api.md`` says outcomes that take time do: ``live_rtsp_stream_started`` with the URL
once the stream's packets are there, or ``live_rtsp_stream_stopped`` with ``errorMessage``
(unknown stream, camera unreachable, port in use). Live streams are not persisted: a hub restart
starts with none. A live stream follows its ``StreamHub``'s publication (it waits on the hub's
start, never polls); its viewers hang off one ``Fanout`` sink.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from hubruntime.events.bus import EventBus
from hubruntime.lua.modules.args import ApiError, CallContext, Handler, check_args
from hubruntime.rtsp.fanout import Fanout
from hubruntime.rtsp.viewer import ViewerServer
from hubruntime.streams.hub import StreamHub
from hubruntime.streams.manager import StreamManager, validate_stream_id

log = logging.getLogger("hubruntime.rtsp")

PUBLICATION_WAIT_SECS = 10.0


class LiveStreams:
    def __init__(self, manager: StreamManager, bus: EventBus,
                 hub_of: Callable[[str], StreamHub], *, host: str, port: int,
                 bind: str = "0.0.0.0", server: ViewerServer | None = None) -> None:
        self.manager = manager
        self.bus = bus
        self.hub_of = hub_of
        self.host = host
        self.port = port
        self.bind = bind
        self.server = server or ViewerServer(self.lookup)
        self.fanouts: dict[str, Fanout] = {}
        self.listen_error: str | None = None
        self._nursery: trio.Nursery | None = None
        self._pending: dict[str, trio.CancelScope] = {}

    # the server --------------------------------------------------------------------------
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.manager.on_removed.append(self._stream_removed)
            try:
                await self._listen()
                task_status.started()
                await trio.sleep_forever()
            finally:
                self.manager.on_removed.remove(self._stream_removed)
                for sid in list(self.fanouts):
                    self._end(sid)

    async def _listen(self) -> bool:
        if self.server.port is not None:
            return True
        assert self._nursery is not None
        try:
            self.port = await self._nursery.start(self.server.serve, self.bind, self.port)
            self.listen_error = None
            return True
        except OSError as exc:
            self.listen_error = f"RTSP port {self.port} unavailable: {exc.strerror or exc}"
            log.error("%s; live streams cannot start until it is free", self.listen_error)
            return False

    def url(self, stream_id: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"rtsp://{host}:{self.port}/{stream_id}"

    def lookup(self, stream_id: str) -> Fanout | None:
        return self.fanouts.get(stream_id)

    # operations --------------------------------------------------------------------------
    async def create(self, stream_id: str) -> None:
        if stream_id in self.fanouts:
            self.bus.publish("live_rtsp_stream_started", streamId=stream_id,
                             localRtspUrl=self.url(stream_id))
            return
        if await self.manager.get(stream_id) is None:
            self._stopped(stream_id, f"unknown stream '{stream_id}'")
            raise ApiError(f"cameras.create_live_rtsp_stream: no stream '{stream_id}'")
        if not await self._listen():
            self._stopped(stream_id, self.listen_error or "RTSP server unavailable")
            return
        if stream_id in self._pending:
            return
        assert self._nursery is not None
        scope = trio.CancelScope()
        self._pending[stream_id] = scope
        self._nursery.start_soon(self._start_when_publishing, stream_id, scope)

    async def _start_when_publishing(self, stream_id: str, scope: trio.CancelScope) -> None:
        try:
            with scope:
                hub = self.hub_of(stream_id)
                with trio.move_on_after(PUBLICATION_WAIT_SECS):
                    await hub.wait_published()
                    self.fanouts[stream_id] = Fanout(hub)
                    url = self.url(stream_id)
                    self.manager.state(stream_id).live_url = url
                    self.bus.publish("live_rtsp_stream_started", streamId=stream_id,
                                     localRtspUrl=url)
                    log.info("stream %s live at %s", stream_id, url)
                    return
                state = self.manager.state(stream_id).state
                self._stopped(stream_id, f"camera unreachable (stream {state}, no packets in "
                                         f"{PUBLICATION_WAIT_SECS:.0f} s)")
        finally:
            self._pending.pop(stream_id, None)

    async def delete(self, stream_id: str) -> None:
        pending = self._pending.pop(stream_id, None)
        if pending is not None:
            pending.cancel()
        self._end(stream_id)
        self._stopped(stream_id, None)

    def _end(self, stream_id: str) -> None:
        fanout = self.fanouts.pop(stream_id, None)
        if fanout is not None:
            fanout.close()
            self.server.kick_stream(stream_id)
        self.manager.state(stream_id).live_url = None

    def _stopped(self, stream_id: str, error: str | None) -> None:
        self.bus.publish("live_rtsp_stream_stopped", streamId=stream_id, errorMessage=error)
        if error:
            log.warning("live stream %s: %s", stream_id, error)

    def _stream_removed(self, stream_id: str) -> None:
        if stream_id in self.fanouts or stream_id in self._pending:
            pending = self._pending.pop(stream_id, None)
            if pending is not None:
                pending.cancel()
            self._end(stream_id)
            self._stopped(stream_id, None)

    def address_changed(self, host: str) -> None:
        """The hub's LAN address changed: every live stream gets its new URL."""
        if host == self.host:
            return
        self.host = host
        for sid in self.fanouts:
            url = self.url(sid)
            self.manager.state(sid).live_url = url
            self.bus.publish("live_rtsp_stream_updated", streamId=sid, localRtspUrl=url)

    # the Lua side ------------------------------------------------------------------------
    def handlers(self) -> dict[str, Handler]:
        return {"cameras.create_live_rtsp_stream": self._lua_create,
                "cameras.delete_live_rtsp_stream": self._lua_delete}

    async def _lua_create(self, ctx: CallContext, args: list[Any]) -> None:
        (sid,) = check_args("cameras.create_live_rtsp_stream", args,
                            (("streamId", "string", True),))
        try:
            validate_stream_id(sid)
        except ValueError as exc:
            raise ApiError(f"cameras.create_live_rtsp_stream: {exc}") from None
        await self.create(sid)

    async def _lua_delete(self, ctx: CallContext, args: list[Any]) -> None:
        fn = "cameras.delete_live_rtsp_stream"
        (sid,) = check_args(fn, args, (("streamId", "string", True),))
        if await self.manager.get(sid) is None:
            raise ApiError(f"{fn}: no stream '{sid}'")
        await self.delete(sid)
