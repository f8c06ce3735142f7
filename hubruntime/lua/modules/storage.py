"""Hub side of the Lua ``storage`` module: one persistent key/value space per plugin.

It lives in the hub, not the worker, so a worker killed mid-run loses nothing that was set, and
SQLite has one writer. Values are stored as JSON ``{"t": type, "v": value}`` so that ``get_number``
on a string is an error that says so instead of a silent conversion.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from hubruntime.lua.modules.args import ApiError, CallContext, Handler, check_args
from hubruntime.store import Store

_TYPES = {"string": "string", "number": "number", "bool": "boolean", "table": "table"}
MAX_VALUE_BYTES = 1 << 20


class StorageModule:
    def __init__(self, store: Store) -> None:
        self.store = store

    def handlers(self) -> dict[str, Handler]:
        out: dict[str, Handler] = {}
        for suffix, lua_type in _TYPES.items():
            out[f"storage.set_{suffix}"] = self._setter(suffix, lua_type)
            out[f"storage.get_{suffix}"] = self._getter(suffix)
        out["storage.exists"] = self.exists
        out["storage.delete"] = self.delete
        return out

    def _setter(self, suffix: str, lua_type: str) -> Handler:
        fn = f"storage.set_{suffix}"

        async def set_value(ctx: CallContext, args: list[Any]) -> None:
            key, value = check_args(fn, args, (("key", "string", True), ("value", lua_type, True)))
            text = json.dumps({"t": suffix, "v": value}, ensure_ascii=False, allow_nan=False)
            if len(text) > MAX_VALUE_BYTES:
                raise ApiError(f"{fn}: value of {len(text)} bytes is over {MAX_VALUE_BYTES}")
            await trio.to_thread.run_sync(self.store.storage_set, ctx.plugin_id, key, text)

        return set_value

    def _getter(self, suffix: str) -> Handler:
        fn = f"storage.get_{suffix}"

        async def get_value(ctx: CallContext, args: list[Any]) -> Any:
            (key,) = check_args(fn, args, (("key", "string", True),))
            text = await trio.to_thread.run_sync(self.store.storage_get, ctx.plugin_id, key)
            if text is None:
                return None
            stored = json.loads(text)
            if stored.get("t") != suffix:
                raise ApiError(f"{fn}: key '{key}' holds a {stored.get('t')}, not a {suffix}")
            return stored.get("v")

        return get_value

    async def exists(self, ctx: CallContext, args: list[Any]) -> bool:
        (key,) = check_args("storage.exists", args, (("key", "string", True),))
        return await trio.to_thread.run_sync(self.store.storage_get, ctx.plugin_id, key) is not None

    async def delete(self, ctx: CallContext, args: list[Any]) -> bool:
        (key,) = check_args("storage.delete", args, (("key", "string", True),))
        return await trio.to_thread.run_sync(self.store.storage_delete, ctx.plugin_id, key)
