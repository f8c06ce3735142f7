"""Argument checks shared by the hub-side Lua module functions.

One place writes the message, so every function says the same thing in the same words:
``cameras.add_camera_stream: argument #3 'rtspUrl' must be a string, got number``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hubruntime.lua.plugins import PluginRunner


class ApiError(Exception):
    """Becomes a Lua error in the calling script, with this message."""


@dataclass(frozen=True)
class CallContext:
    """Who is calling: the plugin's runner (for its timers and scripts) and the Lua position."""

    runner: PluginRunner
    where: str

    @property
    def plugin_id(self) -> str:
        return self.runner.plugin.id


Handler = Callable[[CallContext, list[Any]], Awaitable[Any]]

_LUA_TYPES = {str: "string", bool: "boolean", int: "number", float: "number", dict: "table",
              list: "table", type(None): "nil"}


def lua_type_name(value: Any) -> str:
    return _LUA_TYPES.get(type(value), type(value).__name__)


_CHECKS = {
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
    "boolean": lambda v: isinstance(v, bool),
    "table": lambda v: isinstance(v, dict | list),
    "any": lambda v: True,
}


def check_args(fn: str, args: list[Any], spec: tuple[tuple[str, str, bool], ...]) -> list[Any]:
    """Check ``args`` against ``(name, type, required)``; missing optionals become None."""
    if len(args) > len(spec):
        raise ApiError(f"{fn}: takes at most {len(spec)} argument(s), got {len(args)}")
    out = list(args) + [None] * (len(spec) - len(args))
    for i, ((name, kind, required), value) in enumerate(zip(spec, out, strict=True), 1):
        if value is None:
            if required:
                raise ApiError(f"{fn}: argument #{i} '{name}' is missing ({kind} expected)")
            continue
        if not _CHECKS[kind](value):
            raise ApiError(
                f"{fn}: argument #{i} '{name}' must be a {kind}, got {lua_type_name(value)}"
            )
    return out
