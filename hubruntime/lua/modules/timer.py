"""Hub side of the Lua ``timer`` module: delays and intervals driven by trio.

A timer's firing is one more item in the plugin's queue, so it runs between events, never
concurrently with them, and falls under the same budgets. Timers belong to one worker life: a
restarted worker runs ``startup`` again, which sets its timers again.
"""

from __future__ import annotations

import itertools
from typing import Any

import trio

from hubruntime.lua.modules.args import ApiError, CallContext, Handler, check_args

MIN_INTERVAL_MS = 10


class TimerSet:
    """The live timers of one worker life."""

    def __init__(self, nursery: trio.Nursery, put: Any) -> None:
        self._nursery = nursery
        self._put = put
        self._scopes: dict[str, trio.CancelScope] = {}
        self._ids = itertools.count(1)

    def start(self, delay_ms: float, target: tuple[str, str], args: dict[str, Any],
              repeat: bool) -> str:
        timer_id = f"timer-{next(self._ids)}"
        scope = trio.CancelScope()
        self._scopes[timer_id] = scope
        self._nursery.start_soon(self._run, timer_id, scope, delay_ms / 1000.0, target,
                                 {**args, "timerId": timer_id}, repeat)
        return timer_id

    async def _run(self, timer_id: str, scope: trio.CancelScope, delay: float,
                   target: tuple[str, str], args: dict[str, Any], repeat: bool) -> None:
        kind, ref = target
        with scope:
            deadline = trio.current_time() + delay
            while True:
                await trio.sleep_until(deadline)
                self._put((kind, timer_id if kind == "f" else ref, args))
                if not repeat:
                    break
                deadline += delay
        self._scopes.pop(timer_id, None)

    def cancel(self, timer_id: str) -> bool:
        scope = self._scopes.pop(timer_id, None)
        if scope is None:
            return False
        scope.cancel()
        return True

    def cancel_all(self) -> None:
        for scope in self._scopes.values():
            scope.cancel()
        self._scopes.clear()

    def __len__(self) -> int:
        return len(self._scopes)


class TimerModule:
    def handlers(self) -> dict[str, Handler]:
        return {
            "timer.set_timeout": self._setter("timer.set_timeout", repeat=False),
            "timer.set_interval": self._setter("timer.set_interval", repeat=True),
            "timer.cancel": self.cancel,
        }

    def _setter(self, fn: str, repeat: bool) -> Handler:
        async def set_timer(ctx: CallContext, args: list[Any]) -> str:
            delay, target, extra = check_args(fn, args, (
                ("delayMs", "number", True), ("script", "any", True), ("args", "table", False),
            ))
            if delay < 0 or delay != delay:
                raise ApiError(f"{fn}: argument #1 'delayMs' must be >= 0, got {delay}")
            if repeat and delay < MIN_INTERVAL_MS:
                raise ApiError(f"{fn}: argument #1 'delayMs' must be >= {MIN_INTERVAL_MS} "
                               f"for an interval, got {delay}")
            if isinstance(extra, list):
                extra = {str(i): v for i, v in enumerate(extra, 1)} if extra else {}
            if isinstance(target, dict) and target.get("function") is True:
                kind_ref = ("f", "")
            elif isinstance(target, str):
                address = ctx.runner.script_address(target)
                if address is None:
                    raise ApiError(f"{fn}: argument #2 'script': no script '{target}' "
                                   f"in plugin {ctx.plugin_id}")
                kind_ref = ("s", address)
            else:
                raise ApiError(f"{fn}: argument #2 'script' must be a script address or a "
                               "function")
            return ctx.runner.timers.start(delay, kind_ref, extra or {}, repeat)

        return set_timer

    async def cancel(self, ctx: CallContext, args: list[Any]) -> None:
        (timer_id,) = check_args("timer.cancel", args, (("timerId", "string", True),))
        if not ctx.runner.timers.cancel(timer_id):
            raise ApiError(f"timer.cancel: no timer '{timer_id}'")
