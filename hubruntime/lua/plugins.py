"""Plugin lifecycle in the hub: one supervised worker process per plugin, fed from its mailbox.

Per plugin, a ``PluginRunner`` owns:
- a mailbox (bounded, drops the oldest) that the event bus and the plugin's timers fill;
- one worker life at a time: spawn, ``init`` (scripts compiled, ``startup`` run), then batches;
- a watchdog that reads the worker's run marker and kills a run older than the wall budget;
- the answers to the worker's calls (``cameras``, ``storage``, ``timer``), served by handlers.

A worker that dies (killed by the watchdog, out of memory, crashed) is restarted with backoff; the
item that was running counts as failed, the rest of its batch goes back to the mailbox, and no
other plugin notices. ``storage`` lives in the hub and survives; globals and timers do not.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from hubruntime.config import LuaConfig
from hubruntime.events.bus import EventBus, Mailbox, Published
from hubruntime.lua import wire
from hubruntime.lua.manifest import Plugin, _script_name
from hubruntime.lua.modules.args import ApiError, CallContext, Handler
from hubruntime.lua.modules.timer import TimerModule, TimerSet
from hubruntime.lua.worker import MARKER_SIZE, read_marker
from hubruntime.redact import redact

log = logging.getLogger("hubruntime.plugins")
plugin_log = logging.getLogger("hubruntime.plugin")

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "notice": NOTICE,
          "warning": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL}

PIPELINE = 2
"""Batches in flight to one worker."""

ADDRESS_SPACE_HEADROOM = 512 << 20
"""RLIMIT_AS of a worker = Lua's max_memory + this: Python, lupa and their arenas fit in it."""


@dataclass
class RunnerStats:
    delivered: int = 0
    failed: int = 0
    restarts: int = 0
    killed: int = 0
    startup_errors: list[str] = field(default_factory=list)


class WorkerDied(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Targeted:
    """A sticky event (``EventBus.set_sticky``) for one new subscriber of this plugin only: it
    subscribed after the event was published, and the plugin's other subscribers had it already.
    ``life`` is the worker life the subscription belongs to: subscriber ids restart with each
    life (and the new life's startup subscribes again), so an older life's item is dropped."""

    life: int
    subscriber: str
    item: Published


class PluginRunner:
    """One plugin: its mailbox, its worker process, its restarts."""

    def __init__(self, plugin: Plugin, host: PluginHost) -> None:
        self.plugin = plugin
        self.host = host
        self.config = host.config
        self.mailbox = Mailbox(f"plugin {plugin.id}", self.config.queue_size)
        self.subscribers = 0
        self.stats = RunnerStats()
        self.timers: TimerSet = None  # type: ignore[assignment]  # set per worker life
        self.ready = trio.Event()
        self.life_ready = trio.Event()
        self.idle = trio.Event()
        self._send_lock = trio.Lock()
        self._stream: trio.SocketStream | None = None
        self._proc: trio.Process | None = None
        self.marker: mmap.mmap | None = None  # the current worker's run marker
        self._inflight: dict[int, list[Any]] = {}  # batch id → items sent, not yet done
        self._done_changed = trio.Event()
        self._stopped = trio.Event()
        self._stopping = False
        self._cancel: trio.CancelScope | None = None
        self._life = 0

    # what the bus asks -------------------------------------------------------------------
    def wants(self, item: Published) -> bool:
        """Queue events for a plugin with subscribers, and for one whose worker is starting:
        its startup script subscribes, and an event published meanwhile (a camera found
        unreachable as the hub boots, or during a restart) would otherwise never reach it."""
        return self.subscribers > 0 or not self.life_ready.is_set()

    def script_address(self, name: str) -> str | None:
        rel = _script_name(self.plugin.id, name)
        if rel is None or rel not in self.plugin.scripts:
            return None
        return self.plugin.address(rel)

    # lifecycle ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Keep a worker alive until cancelled; back off between restarts."""
        backoff = self.config.restart_backoff_secs
        with trio.CancelScope() as self._cancel:
            while not self._stopping:
                started = time.monotonic()
                try:
                    await self._one_life()
                except* WorkerDied as group:
                    log.warning("plugin %s: worker ended: %s", self.plugin.id,
                                group.exceptions[0])
                except* Exception as group:  # a hub-side bug: log it, restart, harm no other
                    log.error("plugin %s: runner failed; restarting", self.plugin.id,
                              exc_info=group)
                if self._stopping:
                    break
                self.stats.restarts += 1
                if time.monotonic() - started > 60:
                    backoff = self.config.restart_backoff_secs
                log.info("plugin %s: restarting worker in %.1f s", self.plugin.id, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def stop(self) -> None:
        """Run ``teardown`` (within the wall budget), then end the worker."""
        self._stopping = True
        if self._stream is not None and self._proc is not None and self._proc.returncode is None:
            with trio.move_on_after(self.config.wall_budget_secs + 1.0):
                try:
                    await self._send({"t": "stop", "teardown": self.plugin.teardown})
                    await self._stopped.wait()
                except WorkerDied:
                    pass
        if self._cancel is not None:
            self._cancel.cancel()

    async def _send(self, message: Any) -> None:
        await self._send_raw(wire.encode(message))

    async def _send_raw(self, data: bytes) -> None:
        stream = self._stream
        if stream is None:
            raise WorkerDied("no worker")
        try:
            async with self._send_lock:
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise WorkerDied(f"worker connection lost: {exc!r}") from None

    async def _one_life(self) -> None:
        fd, marker_path = tempfile.mkstemp(prefix="hubruntime-marker-",
                                           dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        try:
            os.ftruncate(fd, MARKER_SIZE)
            marker = mmap.mmap(fd, MARKER_SIZE)
        finally:
            os.close(fd)
        parent, child = socket.socketpair()
        # the worker exits when this pipe's write end closes: when this life ends, or when the
        # hub dies however it dies (PR_SET_PDEATHSIG would follow trio's spawning thread)
        life_r, life_w = os.pipe()
        address_space = self.config.max_memory_mb * (1 << 20) + ADDRESS_SPACE_HEADROOM
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "hubruntime.lua.worker", str(child.fileno()), marker_path,
                 str(address_space), str(life_r)],
                pass_fds=(child.fileno(), life_r),
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
                start_new_session=True,  # a terminal's Ctrl-C is for the hub, which stops us
            )
        except BaseException:
            parent.close()
            os.close(life_w)
            os.unlink(marker_path)
            raise
        finally:
            child.close()
            os.close(life_r)
        self._proc = proc
        self.marker = marker
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(parent))
        self.life_ready = trio.Event()
        self._stopped = trio.Event()
        inflight = self._inflight
        inflight.clear()
        self._life += 1
        try:
            async with trio.open_nursery() as nursery:
                self.timers = TimerSet(nursery, self.mailbox.put)
                nursery.start_soon(self._reader, nursery)
                nursery.start_soon(self._watchdog, marker, proc)
                nursery.start_soon(self._reap, proc, nursery)
                await self._send({
                    "t": "init", "plugin": self.plugin.id,
                    "permissions": list(self.plugin.permissions),
                    "scripts": self.plugin.scripts, "startup": self.plugin.startup,
                    "api": sorted(self.host.handlers),
                    "limits": {"max_memory": self.config.max_memory_mb << 20,
                               "instruction_budget": self.config.instruction_budget},
                })
                await self.life_ready.wait()
                os.unlink(marker_path)  # both sides have it mapped; nothing left behind
                marker_path = ""
                self.ready.set()
                await self._feed()
        finally:
            with trio.CancelScope(shield=True):
                state, index, _, running_batch = read_marker(marker)
                rest: list[Any] = []
                for batch in sorted(inflight):
                    items = inflight[batch]
                    if batch < running_batch:
                        continue  # done, only its answer was lost
                    if batch == running_batch:
                        if state == 1:  # the item that was running is the one that failed
                            self.stats.failed += 1
                        rest.extend(items[index + 1:])
                    else:
                        rest.extend(items)
                inflight.clear()
                self.mailbox.put_front(rest)
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
                os.close(life_w)
                await self._stream.aclose()
                self._stream = None
                self.marker = None
                marker.close()
                if marker_path:
                    os.unlink(marker_path)
        if not self._stopping:
            raise WorkerDied(f"exit status {proc.returncode}")

    async def _reap(self, proc: trio.Process, nursery: trio.Nursery) -> None:
        await proc.wait()
        nursery.cancel_scope.cancel()

    async def _watchdog(self, marker: mmap.mmap, proc: trio.Process) -> None:
        budget_ns = int(self.config.wall_budget_secs * 1e9)
        tick = min(0.05, self.config.wall_budget_secs / 10)
        while True:
            await trio.sleep(tick)
            state, index, start_ns, _ = read_marker(marker)
            if state == 1 and time.monotonic_ns() - start_ns > budget_ns:
                self.stats.killed += 1
                log.error("plugin %s: a run took over the %.1f s wall-clock budget; killing its "
                          "worker (item %d of its batch counts as failed)",
                          self.plugin.id, self.config.wall_budget_secs, index)
                proc.kill()
                return

    async def _feed(self) -> None:
        """Keep up to ``PIPELINE`` batches in flight, so the worker never waits for the next one
        (it reads frames ahead while it runs scripts)."""
        batch_id = 0
        while True:
            while len(self._inflight) >= PIPELINE:
                await self._done_changed.wait()
            items = await self.mailbox.get_batch(self.config.batch_size)
            items = [i for i in items if not (isinstance(i, Targeted) and i.life != self._life)]
            if not items:  # only an older life's targeted items: nothing to send
                if not self._inflight and not len(self.mailbox):
                    self.idle.set()
                    self.idle = trio.Event()
                continue
            batch_id += 1
            self._inflight[batch_id] = items
            await self._send_raw(wire.encode_batch(batch_id, [_item(i) for i in items]))

    async def _reader(self, nursery: trio.Nursery) -> None:
        decoder = wire.FrameDecoder()
        stream = self._stream
        assert stream is not None
        while True:
            try:
                data = await stream.receive_some(1 << 20)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                nursery.cancel_scope.cancel()
                return
            try:
                messages = decoder.feed(data)
            except wire.FrameError as exc:
                log.error("plugin %s: worker sent garbage (%s); killing it", self.plugin.id, exc)
                nursery.cancel_scope.cancel()
                return
            for msg in messages:
                await self._on_message(msg)

    async def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("t")
        if kind == "call":
            ctx = CallContext(self, str(msg.get("where", "?")))
            handler = self.host.handlers.get(msg.get("name", ""))
            try:
                if handler is None:
                    raise ApiError(f"{msg.get('name')}: not available in this hub")
                value = await handler(ctx, list(msg.get("args") or []))
                reply = {"t": "ret", "id": msg["id"], "ok": True, "v": value}
            except ApiError as exc:
                reply = {"t": "ret", "id": msg["id"], "ok": False, "v": str(exc)}
            except Exception as exc:  # a hub bug must not kill the plugin
                log.exception("plugin %s: %s failed in the hub", self.plugin.id, msg.get("name"))
                reply = {"t": "ret", "id": msg["id"], "ok": False,
                         "v": f"{msg.get('name')}: internal error: {exc}"}
            await self._send(reply)
        elif kind == "log":
            level = LEVELS.get(str(msg.get("level")), logging.INFO)
            text = redact(str(msg.get("msg", "")))
            plugin_log.log(level, "[%s] %s: %s", self.plugin.id, msg.get("where", "?"), text)
            self.host.on_plugin_log(self.plugin.id, str(msg.get("level")), str(msg.get("where")),
                                    text)
        elif kind == "fail":
            self.stats.failed += 1
            for err in msg.get("errors", ()):
                plugin_log.error("[%s] %s failed: %s", self.plugin.id, msg.get("what"),
                                 redact(str(err)))
        elif kind == "subs":
            self.subscribers = int(msg.get("n", 0))
            if msg.get("new"):
                self._send_sticky(str(msg["new"]), msg.get("at"))
        elif kind == "done":
            items = self._inflight.pop(int(msg.get("b", 0)), None)
            if items is not None:
                self.stats.delivered += int(msg.get("n", len(items)))
                self._done_changed.set()
                self._done_changed = trio.Event()
                if not self._inflight and not len(self.mailbox):
                    self.idle.set()
                    self.idle = trio.Event()
        elif kind == "ready":
            self.subscribers = int(msg.get("subs", 0))
            errors = [redact(str(e)) for e in msg.get("errors", ())]
            self.stats.startup_errors = errors
            for err in errors:
                plugin_log.error("[%s] %s", self.plugin.id, err)
            self.life_ready.set()
        elif kind == "stopped":
            for err in msg.get("errors", ()):
                plugin_log.error("[%s] %s", self.plugin.id, redact(str(err)))
            self._stopped.set()

    def _send_sticky(self, subscriber: str, at: Any) -> None:
        """Queue each sticky event for a new subscriber, unless the broadcast copy reaches it.

        The worker dispatches an event to the subscribers it has *when it runs that event*. So
        the copy already queued (in the mailbox, or in flight after the run that subscribed,
        ``at`` = [batch, index]) will reach the new subscriber; one already run (or running:
        dispatch fixes its list of subscribers when it starts) will not, nor will an event that
        was not queued because the plugin had no subscriber then.
        """
        try:
            at_batch, at_index = int(at[0]), int(at[1])
        except (TypeError, ValueError, IndexError):
            at_batch = at_index = 0
        for item in self.host.bus.sticky_events():
            if item in self.mailbox or any(
                    sent is item and (batch, index) > (at_batch, at_index)
                    for batch, items in self._inflight.items()
                    for index, sent in enumerate(items)):
                continue
            self.mailbox.put(Targeted(self._life, subscriber, item))

    async def drained(self, timeout: float) -> bool:
        """Wait until the mailbox is empty and no batch is in flight (``plugin run``, tests)."""
        with trio.move_on_after(timeout):
            while len(self.mailbox) or self._inflight:
                await self.idle.wait()
            return True
        return False


def _item(item: Any) -> bytes:
    if isinstance(item, Published):
        return b'["e",%b]' % item.json_bytes
    if isinstance(item, Targeted):
        return b'["t",%b,%b]' % (json.dumps(item.subscriber).encode(), item.item.json_bytes)
    kind, ref, args = item
    return json.dumps([kind, ref, args], separators=(",", ":"), ensure_ascii=False).encode()


class PluginHost:
    """All plugins of the hub, and the table of hub functions their workers may call."""

    def __init__(self, config: LuaConfig, bus: EventBus, handlers: dict[str, Handler]) -> None:
        self.config = config
        self.bus = bus
        self.handlers: dict[str, Handler] = {**TimerModule().handlers(), **handlers}
        self.runners: dict[str, PluginRunner] = {}
        self.log_listeners: list[Callable[[str, str, str, str], None]] = []

    def register(self, handlers: dict[str, Handler]) -> None:
        """Later parts (live RTSP, snapshots, audio) add their ``cameras`` functions here."""
        self.handlers.update(handlers)

    def on_plugin_log(self, plugin_id: str, level: str, where: str, text: str) -> None:
        for listener in self.log_listeners:
            listener(plugin_id, level, where, text)

    async def run(self, plugins: list[Plugin], *, task_status: Any = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Start every plugin; ``task_status.started()`` once each ran its startup (or failed).

        The runners live in a shielded scope so that, when the hub is cancelled, they still read
        their workers' answers while ``teardown`` runs; then that scope is cancelled.
        """
        shield = trio.CancelScope(shield=True)

        async def runners(task_status: Any) -> None:
            with shield:
                async with trio.open_nursery() as nursery:
                    for plugin in plugins:
                        if plugin.id in self.runners:
                            log.error("plugin %s from %s: id already loaded; skipped",
                                      plugin.id, plugin.path)
                            continue
                        runner = PluginRunner(plugin, self)
                        self.runners[plugin.id] = runner
                        self.bus.attach(runner.mailbox, runner.wants)
                        nursery.start_soon(runner.run)
                    task_status.started()

        async with trio.open_nursery() as outer:
            await outer.start(runners)
            try:
                with trio.move_on_after(max(5.0, self.config.wall_budget_secs * 3)):
                    for runner in self.runners.values():
                        await runner.ready.wait()
                task_status.started()
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    async with trio.open_nursery() as stopper:
                        for runner in self.runners.values():
                            stopper.start_soon(runner.stop)
                    for runner in self.runners.values():
                        self.bus.unsubscribe(runner.mailbox)
                    shield.cancel()
