"""Hub side of the Lua ``cameras`` module: the registry functions of ``cameras-api.md``.

``subscribe``/``unsubscribe`` are served inside the worker (the subscription is a Lua function
reference); the functions whose machinery belongs to later parts (live RTSP, snapshots,
recording, audio) are registered by those parts, through ``register``.
"""

from __future__ import annotations

from typing import Any

from hubruntime.lua.modules.args import ApiError, CallContext, Handler, check_args
from hubruntime.streams.manager import StreamError, StreamManager


class CamerasModule:
    def __init__(self, manager: StreamManager) -> None:
        self.manager = manager

    def handlers(self) -> dict[str, Handler]:
        return {
            "cameras.add_camera_stream": self.add_camera_stream,
            "cameras.remove_camera_stream": self.remove_camera_stream,
            "cameras.get_camera_streams": self.get_camera_streams,
            "cameras.get_camera_stream": self.get_camera_stream,
        }

    async def add_camera_stream(self, ctx: CallContext, args: list[Any]) -> None:
        fn = "cameras.add_camera_stream"
        sid, name, url, desc = check_args(fn, args, (
            ("streamId", "string", True), ("streamName", "string", True),
            ("rtspUrl", "string", True), ("description", "string", False),
        ))
        try:
            await self.manager.add(sid, name, url, desc)
        except StreamError as exc:
            raise ApiError(f"{fn}: {exc}") from None

    async def remove_camera_stream(self, ctx: CallContext, args: list[Any]) -> None:
        fn = "cameras.remove_camera_stream"
        (sid,) = check_args(fn, args, (("streamId", "string", True),))
        try:
            await self.manager.remove(sid)
        except StreamError as exc:
            raise ApiError(f"{fn}: {exc}") from None

    async def get_camera_streams(self, ctx: CallContext, args: list[Any]) -> list[dict[str, Any]]:
        check_args("cameras.get_camera_streams", args, ())
        return [self._public(self.manager.info(rec)) for rec in await self.manager.list()]

    async def get_camera_stream(self, ctx: CallContext, args: list[Any]) -> dict[str, Any] | None:
        (sid,) = check_args("cameras.get_camera_stream", args, (("streamId", "string", True),))
        rec = await self.manager.get(sid)
        return None if rec is None else self._public(self.manager.info(rec))

    @staticmethod
    def _public(info: dict[str, Any]) -> dict[str, Any]:
        """The plugin's view: cameras-api.md lists no camera URL, so none is given."""
        info = dict(info)
        info.pop("rtspUrl", None)
        return info
