"""The plugin host with real worker processes: isolation, budgets, restarts, storage.

Every wait has a deadline (``trio.fail_after``); nothing sleeps to pass.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from plugin_dirs import SUBSCRIBE, make_plugin

from hubruntime.config import LuaConfig
from hubruntime.events.bus import EventBus
from hubruntime.lua.manifest import load_plugin
from hubruntime.lua.modules.storage import StorageModule
from hubruntime.lua.plugins import PluginHost
from hubruntime.store import Store

RECORD = """
local params = ...
require("logging").info(params.event .. ":" .. tostring(params.streamId))
"""


class Harness:
    def __init__(self, tmp: Path, config: LuaConfig) -> None:
        self.store = Store(tmp / "db.sqlite3")
        self.bus = EventBus()
        self.host = PluginHost(config, self.bus, StorageModule(self.store).handlers())
        self.logs: list[tuple[str, str, str, str]] = []
        self.changed = trio.Event()
        self.host.log_listeners.append(self._on_log)

    def _on_log(self, pid: str, level: str, where: str, text: str) -> None:
        self.logs.append((pid, level, where, text))
        self.changed.set()
        self.changed = trio.Event()

    def texts(self, pid: str) -> list[str]:
        return [t for p, _, _, t in self.logs if p == pid]

    async def wait_log(self, pid: str, text: str, timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while text not in self.texts(pid):
                await self.changed.wait()


@pytest.fixture
async def harness(tmp_path: Path, nursery: trio.Nursery):
    cfg = LuaConfig(wall_budget_secs=1.0, instruction_budget=2_000_000, max_memory_mb=16,
                    restart_backoff_secs=0.05)
    h = Harness(tmp_path, cfg)
    h.root = tmp_path / "plugins"  # type: ignore[attr-defined]
    yield h
    h.store.close()


async def start(h: Harness, nursery: trio.Nursery, *folders: Path) -> None:
    await nursery.start(h.host.run, [load_plugin(f) for f in folders])


def ok_plugin(h: Harness) -> Path:
    return make_plugin(h.root, "test.good", {"startup": SUBSCRIBE, "handler": RECORD})


async def test_infinite_loop_is_aborted_and_other_plugin_keeps_receiving(harness, nursery):
    h = harness
    bad = make_plugin(h.root, "test.loop", {"startup": SUBSCRIBE, "handler": """
        local params = ...
        if params.event == "camera_stream_closed" then while true do end end
        require("logging").info("after:" .. params.event)
    """})
    await start(h, nursery, bad, ok_plugin(h))
    h.bus.publish("camera_stream_closed", streamId="s1", attempt=1)
    h.bus.publish("camera_unreachable", streamId="s1", reason="refused")
    await h.wait_log("test.good", "camera_stream_closed:s1")
    await h.wait_log("test.good", "camera_unreachable:s1")
    await h.wait_log("test.loop", "after:camera_unreachable")
    runner = h.host.runners["test.loop"]
    assert runner.stats.failed == 1
    assert runner.stats.restarts == 0  # the count hook stopped it; no kill was needed
    assert h.host.runners["test.good"].stats.failed == 0


async def test_loop_in_coroutine_is_aborted(harness, nursery):
    h = harness
    bad = make_plugin(h.root, "test.coloop", {"startup": SUBSCRIBE, "handler": """
        local params = ...
        if params.event == "camera_stream_closed" then
          local co = coroutine.create(function() while true do end end)
          local ok, err = coroutine.resume(co)
          require("logging").info("resume:" .. tostring(ok))
          while true do end
        end
        require("logging").info("after:" .. params.event)
    """})
    await start(h, nursery, bad)
    h.bus.publish("camera_stream_closed", streamId="s1", attempt=1)
    h.bus.publish("camera_unreachable", streamId="s1", reason="refused")
    await h.wait_log("test.coloop", "after:camera_unreachable")
    assert "resume:false" in h.texts("test.coloop")
    assert h.host.runners["test.coloop"].stats.failed == 1


async def test_c_function_stall_is_killed_by_wall_budget_storage_survives(harness, nursery):
    h = harness
    bad = make_plugin(h.root, "test.regex", {
        "startup": SUBSCRIBE + '\nrequire("logging").info("started:" .. '
                   'tostring(require("storage").get_number("n")))',
        "handler": """
        local params = ...
        local storage = require("storage")
        storage.set_number("n", (storage.get_number("n") or 0) + 1)
        if params.event == "camera_packet_delay" then
          string.find(string.rep("a", 5000), ".-.-.-b")
        end
        require("logging").info("handled:" .. params.event)
    """})
    await start(h, nursery, bad, ok_plugin(h))
    assert "started:nil" in h.texts("test.regex")
    t0 = trio.current_time()
    h.bus.publish("camera_packet_delay", streamId="s1", gapSecs=1.5, track="video")
    h.bus.publish("camera_unreachable", streamId="s1", reason="timeout")
    # the good plugin is served at once, during the stall
    await h.wait_log("test.good", "camera_unreachable:s1", timeout=0.9)
    # the stalled worker is killed after ~1 s, restarted (startup again), storage intact
    await h.wait_log("test.regex", "started:1", timeout=10)
    await h.wait_log("test.regex", "handled:camera_unreachable")
    elapsed = trio.current_time() - t0
    assert 1.0 <= elapsed < 5.0
    runner = h.host.runners["test.regex"]
    assert runner.stats.killed == 1 and runner.stats.restarts == 1
    assert runner.stats.failed == 1
    assert "handled:camera_packet_delay" not in h.texts("test.regex")
    assert json.loads(h.store.storage_get("test.regex", "n"))["v"] == 2
    h.bus.publish("camera_stream_closed", streamId="s2", attempt=1)
    await h.wait_log("test.regex", "handled:camera_stream_closed")
    await h.wait_log("test.good", "camera_stream_closed:s2")


async def test_allocation_bomb_stops_at_cap(harness, nursery):
    h = harness
    bad = make_plugin(h.root, "test.bomb", {"startup": SUBSCRIBE, "handler": """
        local params = ...
        if params.event == "camera_stream_closed" then
          local t = {}
          for i = 1, 1e9 do t[i] = string.rep("x", 4096) .. i end
        end
        require("logging").info("after:" .. params.event)
    """})
    await start(h, nursery, bad, ok_plugin(h))
    h.bus.publish("camera_stream_closed", streamId="s1", attempt=1)
    h.bus.publish("camera_unreachable", streamId="s1", reason="refused")
    await h.wait_log("test.bomb", "after:camera_unreachable")
    await h.wait_log("test.good", "camera_unreachable:s1")
    assert h.host.runners["test.bomb"].stats.failed == 1
    rss = _rss_mb(h.host.runners["test.bomb"])
    assert rss < 16 + 60, rss


async def test_global_bomb_restarts_worker(harness, nursery):
    """Memory kept in globals cannot be collected: the worker restarts instead of failing
    every later event."""
    h = harness
    bad = make_plugin(h.root, "test.hoard", {"startup": SUBSCRIBE, "handler": """
        local params = ...
        if params.event == "camera_stream_closed" then
          hoard = {}
          for i = 1, 1e9 do hoard[i] = string.rep("x", 4096) .. i end
        end
        require("logging").info("after:" .. params.event .. ":" .. tostring(hoard == nil))
    """})
    await start(h, nursery, bad)
    h.bus.publish("camera_stream_closed", streamId="s1", attempt=1)
    h.bus.publish("camera_unreachable", streamId="s1", reason="refused")
    await h.wait_log("test.hoard", "after:camera_unreachable:true")
    assert h.host.runners["test.hoard"].stats.restarts == 1


async def test_raising_script_harms_no_other_plugin(harness, nursery):
    h = harness
    bad = make_plugin(h.root, "test.raise", {"startup": SUBSCRIBE, "handler": """
        local params = ...
        error("always broken: " .. params.event)
    """})
    await start(h, nursery, bad, ok_plugin(h))
    for i in range(20):
        h.bus.publish("camera_stream_closed", streamId=f"s{i}", attempt=1)
    await h.wait_log("test.good", "camera_stream_closed:s19")
    with trio.fail_after(5):
        while h.host.runners["test.raise"].stats.failed < 20:
            await trio.sleep(0.01)
    assert h.host.runners["test.raise"].stats.restarts == 0
    assert len(h.texts("test.good")) == 20


async def test_seed_handler_pattern_runs_unchanged(harness, nursery):
    h = harness
    calls: list[list[Any]] = []

    async def delete_audio_stream(ctx, args):
        calls.append(args)

    h.host.register({"cameras.delete_audio_stream": delete_audio_stream})
    seed = make_plugin(h.root, "test.seed", {"startup": SUBSCRIBE, "handler": """
local params = ...
if params.event == "audio_stream_stopped" then
    local cameras = require("cameras")
    cameras.delete_audio_stream(params.streamId)
end
"""})
    await start(h, nursery, seed)
    h.bus.publish("audio_stream_stopped", streamId="cam9", user_data={"k": 1})
    with trio.fail_after(5):
        while not calls:
            await trio.sleep(0.01)
    assert calls == [["cam9"]]


async def test_timer_runs_script_with_args_and_can_be_cancelled(harness, nursery):
    h = harness
    p = make_plugin(h.root, "test.timer", {
        "startup": """
            local timer = require("timer")
            timer.set_timeout(50, "scripts/tick", {label = "once"})
            local id = timer.set_interval(20, function(args)
              count = (count or 0) + 1
              if count == 3 then
                require("timer").cancel(args.timerId)
                require("logging").info("interval stopped at " .. count)
              end
            end)
        """,
        "tick": 'local a = ... ; require("logging").info("tick:" .. a.label .. ":" '
                '.. a.timerId)',
    })
    await start(h, nursery, p)
    await h.wait_log("test.timer", "interval stopped at 3")
    await h.wait_log("test.timer", "tick:once:timer-1")
    with trio.move_on_after(0.2):
        await h.wait_log("test.timer", "interval stopped at 4")
    assert "interval stopped at 4" not in h.texts("test.timer")


async def test_bad_arguments_give_lua_errors_naming_function(harness, nursery):
    h = harness
    p = make_plugin(h.root, "test.args", {"startup": """
        local storage = require("storage")
        local timer = require("timer")
        local log = require("logging")
        local ok, err = pcall(storage.set_number, "k", "not a number")
        log.info("1:" .. err)
        ok, err = pcall(timer.set_timeout, "soon", "scripts/startup")
        log.info("2:" .. err)
        ok, err = pcall(timer.set_timeout, 10, "scripts/nope")
        log.info("3:" .. err)
        ok, err = pcall(require("cameras").subscribe, 42)
        log.info("4:" .. err)
        storage.set_string("s", "v")
        ok, err = pcall(storage.get_number, "s")
        log.info("5:" .. err)
    """})
    await start(h, nursery, p)
    texts = "\n".join(h.texts("test.args"))
    where = "HUB:test.args/scripts/startup"
    assert f"1:{where}:5: storage.set_number: argument #2 'value' must be a number, got string" \
        in texts
    assert f"2:{where}:7: timer.set_timeout: argument #1 'delayMs' must be a number, got " \
        "string" in texts
    assert f"3:{where}:9: timer.set_timeout: argument #2 'script': no script 'scripts/nope'" \
        in texts
    assert f"4:{where}:11: cameras.subscribe: argument #1 'script' must be a string, got " \
        "number" in texts
    assert f"5:{where}:14: storage.get_number: key 's' holds a string, not a number" in texts


async def test_teardown_runs_on_stop_and_workers_exit(tmp_path: Path):
    cfg = LuaConfig(wall_budget_secs=1.0)
    h = Harness(tmp_path, cfg)
    root = tmp_path / "plugins"
    p = make_plugin(root, "test.td", {"startup": SUBSCRIBE, "handler": RECORD,
                                      "teardown": 'require("storage").set_bool("clean", true)'},
                    teardown="scripts/teardown")
    async with trio.open_nursery() as nursery:
        await nursery.start(h.host.run, [load_plugin(p)])
        pid = h.host.runners["test.td"]._proc.pid
        nursery.cancel_scope.cancel()
    assert json.loads(h.store.storage_get("test.td", "clean"))["v"] is True
    assert not _alive(pid)
    h.store.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _rss_mb(runner: Any) -> float:
    with open(f"/proc/{runner._proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_events_published_while_the_worker_starts_reach_its_startup_subscription(
        harness, nursery):
    """The worker takes tens of ms to spawn and run its startup script; events published
    meanwhile wait in the plugin's mailbox instead of being dropped for want of a subscriber."""
    h = harness
    folder = make_plugin(h.root, "test.early", {"startup": SUBSCRIBE, "handler": """
        local params = ...
        require("logging").info("gap:" .. tostring(params.gapSecs))
    """})
    nursery.start_soon(h.host.run, [load_plugin(folder)])
    published = 0
    ready_at = None
    with trio.fail_after(20):
        while "test.early" not in h.host.runners:
            await trio.sleep(0)
        runner = h.host.runners["test.early"]
        while published < 2000 and (ready_at is None or published < ready_at + 5):
            h.bus.publish("camera_packet_delay", streamId="s", gapSecs=published)
            published += 1
            if ready_at is None and runner.life_ready.is_set():
                ready_at = published
            await trio.sleep(0.001)
        assert ready_at is not None, "the worker never became ready"
        await h.wait_log("test.early", f"gap:{published - 1}")
    got = [int(t.split(":")[1]) for t in h.texts("test.early") if t.startswith("gap:")]
    assert got == list(range(published)), got[:10]  # every one, in order, none lost
    assert ready_at > 1  # some were published before the startup subscription existed
