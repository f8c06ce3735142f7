"""A plugin worker process: one ``LuaSandbox`` driven by frames from the hub over a socket.

Why a process (DESIGN §5): Lua's count hook cannot interrupt a C function, so one pathological
pattern match would freeze whoever runs it. The hub watches the *run marker*, a 16-byte shared
file this process writes before and after each run, and kills the worker when a run is older than
the wall-clock budget. No message per run is needed for that, so the fast path stays fast.

The worker is blocking and single-threaded on purpose: a plugin's scripts run one at a time.
It imports as little as it can (no trio, no sqlite) to stay near 20 MB RSS.

Run as ``python -m hubruntime.lua.worker FD MARKER_PATH ADDRESS_SPACE_BYTES``.
"""

from __future__ import annotations

import json
import mmap
import os
import resource
import socket
import struct
import sys
import threading
import time
from collections import deque
from typing import Any

from hubruntime.lua import wire
from hubruntime.lua.runtime import Limits, LuaSandbox, ScriptError, json_encode, lua_to_python

MARKER = struct.Struct("<IiqI")
"""state (0 idle, 1 running), item index in its batch, run start (monotonic ns), batch id
(0: startup/teardown)."""
MARKER_SIZE = 24


class Marker:
    """The run marker, as the worker writes it."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, MARKER_SIZE)
        finally:
            os.close(fd)
        self.batch = 0  # where the current (or last) run is, for the ``subs`` message
        self.index = 0

    def begin(self, index: int, batch: int = 0) -> None:
        self.batch, self.index = batch, index
        struct.pack_into("<iqI", self._map, 4, index, time.monotonic_ns(), batch)
        struct.pack_into("<I", self._map, 0, 1)

    def end(self) -> None:
        struct.pack_into("<I", self._map, 0, 0)


def read_marker(buf: Any) -> tuple[int, int, int, int]:
    """(state, index, start_ns, batch) from the marker bytes, for the hub's watchdog."""
    return MARKER.unpack_from(buf, 0)


class HubGone(Exception):
    """The hub closed the socket: the worker ends quietly."""


class Worker:
    def __init__(self, sock: socket.socket, marker: Marker) -> None:
        self.sock = sock
        self.marker = marker
        self.decoder = wire.FrameDecoder()
        self.pending: deque[Any] = deque()
        self.sandbox: LuaSandbox | None = None
        self.call_id = 0
        self.plugin_id = "?"
        self.sub_scripts: dict[str, str] = {}  # subscriber id → script, for targeted items

    # socket --------------------------------------------------------------------------------
    def send(self, message: Any) -> None:
        self.sock.sendall(wire.encode(message))

    def _read_more(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise HubGone
        self.pending.extend(self.decoder.feed(data))

    def next_message(self) -> Any:
        while not self.pending:
            self._read_more()
        return self.pending.popleft()

    def rpc(self, name: str, where: str, args: list[Any]) -> tuple[bool, Any]:
        """Ask the hub, and wait for its answer; anything else that arrives waits its turn."""
        self.call_id += 1
        cid = self.call_id
        self.send({"t": "call", "id": cid, "name": name, "where": where, "args": args})
        held: list[Any] = []
        try:
            while True:
                while not self.pending:
                    self._read_more()
                msg = self.pending.popleft()
                if msg.get("t") == "ret" and msg.get("id") == cid:
                    return bool(msg.get("ok")), msg.get("v")
                held.append(msg)
        finally:
            self.pending.extendleft(reversed(held))

    # host functions seen by Lua ------------------------------------------------------------
    def host_log(self, level: str, where: str, msg: str) -> None:
        self.send({"t": "log", "level": level, "where": where, "msg": msg})

    def host_call(self, name: str, where: str, *args: Any) -> tuple[bool, Any]:
        try:
            return self._host_call(name, where, args)
        except HubGone:
            raise
        except Exception as exc:  # a host function must never raise into Lua
            return False, f"{name}: {exc}"

    def _host_call(self, name: str, where: str, args: tuple[Any, ...]) -> tuple[bool, Any]:
        """Serve what can be served here (json, logging text, subscriptions); ask the hub for
        the rest."""
        sb = self.sandbox
        assert sb is not None
        first = args[0] if args else None
        if name == "logging.format":
            if isinstance(first, str):
                return True, first
            if first is None:
                return False, "logging: argument #1 must be a string or a table, got nil"
            if isinstance(first, int | float | bool):
                return True, str(first)
            return True, json_encode(first)
        if name == "json.encode":
            try:
                return True, json_encode(first)
            except ValueError as exc:
                return False, f"json.encode: {exc}"
        if name == "json.decode":
            if not isinstance(first, str):
                return False, _bad_arg(name, "text", "string", first)
            try:
                return True, sb.to_lua(json.loads(first))
            except json.JSONDecodeError as exc:
                return False, (f"json.decode: {exc.msg} at line {exc.lineno} column {exc.colno}"
                               f" (char {exc.pos})")
        if name == "cameras.subscribe":
            if not isinstance(first, str):
                return False, _bad_arg(name, "script", "string", first)
            sid, err = sb.subscribe(first)
            if sid is None:
                return False, err
            self.sub_scripts[sid] = first
            # "new" and "at" (the run that subscribed) let the hub send sticky events to this
            # subscriber alone, and only if the broadcast copy would not reach it anyway
            self.send({"t": "subs", "n": sb.subscriber_count, "new": sid,
                       "at": [self.marker.batch, self.marker.index]})
            return True, sid
        if name == "cameras.unsubscribe":
            if not isinstance(first, str):
                return False, _bad_arg(name, "subscriberId", "string", first)
            if not sb.unsubscribe(first):
                return False, f"cameras.unsubscribe: no subscription '{first}'"
            self.sub_scripts.pop(first, None)
            self.send({"t": "subs", "n": sb.subscriber_count})
            return True, None
        converted: list[Any] = []
        fn = None
        for i, arg in enumerate(args, 1):
            if name.startswith("timer.set_") and i == 2 and _lua_type(arg) == "function":
                fn = arg
                converted.append({"function": True})
                continue
            try:
                converted.append(lua_to_python(arg))
            except ValueError as exc:
                return False, f"{name}: argument #{i}: {exc}"
        ok, value = self.rpc(name, where, converted)
        if not ok:
            return False, value
        if fn is not None:
            sb.keep_timer_function(str(value), fn)
        if name == "timer.cancel" and args:
            sb.drop_timer_function(str(args[0]))
        return True, sb.to_lua(value)

    # messages ----------------------------------------------------------------------------
    def on_init(self, msg: dict[str, Any]) -> None:
        self.plugin_id = msg["plugin"]
        limits = msg.get("limits", {})
        self.sandbox = LuaSandbox(
            self.plugin_id,
            tuple(msg.get("permissions", ())),
            self.host_call,
            self.host_log,
            Limits(
                max_memory=int(limits.get("max_memory", Limits.max_memory)),
                instruction_budget=int(limits.get("instruction_budget", Limits.instruction_budget)),
            ),
            api_functions=tuple(msg.get("api", ())),
        )
        errors = []
        for name, source in msg.get("scripts", {}).items():
            try:
                self.sandbox.compile(name, source)
            except ScriptError as exc:
                errors.append(str(exc))
        startup = msg.get("startup")
        if startup:
            self.marker.begin(0)
            err = self.sandbox.run_script(startup)
            self.marker.end()
            if err:
                errors.append(f"startup {startup} failed: {err}")
        self.send({"t": "ready", "errors": errors, "subs": self.sandbox.subscriber_count})

    def on_batch(self, msg: dict[str, Any]) -> None:
        """Run each item; a failure is reported at once, so it is not lost if a later item
        gets this worker killed."""
        sb = self.sandbox
        assert sb is not None
        marker = self.marker
        batch = int(msg["b"])
        for index, item in enumerate(msg["items"]):
            kind = item[0]
            marker.begin(index, batch)
            try:
                if kind == "e":
                    problems = sb.dispatch(item[1])
                elif kind == "s":
                    err = sb.run_script(item[1], item[2])
                    problems = [err] if err else []
                elif kind == "t":  # an event for one subscriber only (a sticky event)
                    script = self.sub_scripts.get(item[1])  # None: it unsubscribed since
                    err = sb.run_script(script, item[2]) if script is not None else None
                    problems = [err] if err else []
                else:  # "f": a timer's Lua function
                    err = sb.run_timer_function(item[1], item[2])
                    problems = [err] if err else []
            except Exception as exc:  # data Lua cannot take (e.g. a lone surrogate in a string)
                problems = [f"could not hand the item to Lua: {exc}"]
            marker.end()
            if problems:
                self.send({"t": "fail", "what": _describe(item), "errors": problems[:5]})
                if any("not enough memory" in p for p in problems):
                    used = sb.collect()
                    if used > sb.limits.max_memory * 0.75:
                        self.send({"t": "fail", "what": "worker", "errors": [
                            f"Lua memory still {used} bytes after a full collection: "
                            "restarting the worker"]})
                        raise SystemExit(3)
        self.send({"t": "done", "b": msg["b"], "n": len(msg["items"])})

    def on_stop(self, msg: dict[str, Any]) -> None:
        teardown = msg.get("teardown")
        errors = []
        if teardown and self.sandbox is not None:
            self.marker.begin(0)
            err = self.sandbox.run_script(teardown)
            self.marker.end()
            if err:
                errors.append(f"teardown {teardown} failed: {err}")
        self.send({"t": "stopped", "errors": errors})

    def serve(self) -> None:
        while True:
            msg = self.next_message()
            kind = msg.get("t")
            if kind == "batch":
                self.on_batch(msg)
            elif kind == "init":
                self.on_init(msg)
            elif kind == "stop":
                self.on_stop(msg)
                return


def _bad_arg(fn: str, arg: str, expected: str, value: Any) -> str:
    return f"{fn}: argument #1 '{arg}' must be a {expected}, got {_lua_type(value)}"


def _describe(item: list[Any]) -> str:
    if item[0] == "e":
        event = item[1]
        sid = event.get("streamId")
        return f"event {event.get('event')}" + (f" ({sid})" if sid else "")
    if item[0] == "t":
        return f"event {item[2].get('event')} for {item[1]}"
    if item[0] == "s":
        return f"script {item[1]}"
    return f"timer {item[1]}"


def _lua_type(value: Any) -> str:
    from lupa.lua54 import lua_type

    kind = lua_type(value)
    if kind:
        return kind
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def _exit_with_hub(life_fd: int) -> None:
    """End this process when the hub's end of the life pipe closes, even if Lua is stuck in a
    C function: lupa releases the GIL while Lua runs, so this thread gets to run."""

    def wait() -> None:
        try:
            while os.read(life_fd, 64):
                pass
        except OSError:
            pass
        os._exit(0)

    threading.Thread(target=wait, name="hub-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    fd, marker_path, address_space = int(argv[0]), argv[1], int(argv[2])
    if len(argv) > 3:
        _exit_with_hub(int(argv[3]))
    try:
        os.nice(5)  # the hub that feeds this worker goes first when both want the CPU
    except OSError:
        pass
    if address_space > 0:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    sock = socket.socket(fileno=fd)
    worker = Worker(sock, Marker(marker_path))
    try:
        worker.serve()
    except (HubGone, BrokenPipeError, ConnectionResetError):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
