"""Sticky events through the plugin host, with real worker processes.

``hub_disconnected_from_local_network`` is "sent at once to a new subscriber while disconnected"
(cameras-api.md): each new ``cameras.subscribe`` gets it exactly once, whether the plugin had
other subscribers or none, whether the subscription happens at startup, from a timer, or inside
the very run of that event; the plugin's other subscribers never get a second copy.

Every wait has a deadline; nothing sleeps to pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from plugin_dirs import make_plugin as write_plugin

from hubruntime.config import LuaConfig
from hubruntime.events.bus import EventBus
from hubruntime.lua.manifest import load_plugin
from hubruntime.lua.modules.storage import StorageModule
from hubruntime.lua.plugins import PluginHost
from hubruntime.store import Store

DISC = "hub_disconnected_from_local_network"
CONN = "hub_connected_to_local_network"


def make_plugin(root: Path, pid: str, scripts: dict[str, str]) -> Path:
    return write_plugin(root, pid, scripts, ["cameras", "logging", "storage", "timer"])


def recorder(tag: str) -> str:
    """A handler logging ``<tag>:<event name>`` for every event it gets."""
    return f'local p = ...\nrequire("logging").info("{tag}:" .. p.event)\n'


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "plugins"
        self.store = Store(tmp / "db.sqlite3")
        self.bus = EventBus()
        cfg = LuaConfig(wall_budget_secs=1.0, instruction_budget=2_000_000, max_memory_mb=16,
                        restart_backoff_secs=0.05)
        self.host = PluginHost(cfg, self.bus, StorageModule(self.store).handlers())
        self.logs: list[tuple[str, str]] = []
        self.changed = trio.Event()
        self.host.log_listeners.append(self._on_log)

    def _on_log(self, pid: str, level: str, where: str, text: str) -> None:
        self.logs.append((pid, text))
        self.changed.set()
        self.changed = trio.Event()

    def texts(self, pid: str) -> list[str]:
        return [t for p, t in self.logs if p == pid]

    async def wait_log(self, pid: str, text: str, timeout: float = 15.0) -> None:
        with trio.fail_after(timeout):
            while text not in self.texts(pid):
                await self.changed.wait()

    async def settle(self, timeout: float = 15.0) -> None:
        """Every plugin idle: whatever was queued has run (a duplicate would be logged now)."""
        for runner in self.host.runners.values():
            assert await runner.drained(timeout)

    def disconnect(self) -> None:
        self.bus.set_sticky("network", self.bus.publish(DISC))

    def connect(self) -> None:
        self.bus.set_sticky("network", None)
        self.bus.publish(CONN)

    async def start(self, nursery: trio.Nursery, *folders: Path) -> None:
        await nursery.start(self.host.run, [load_plugin(f) for f in folders])


@pytest.fixture
async def h(tmp_path: Path):
    harness = Harness(tmp_path)
    yield harness
    harness.store.close()


async def test_subscribing_at_startup_while_disconnected_gets_it_once(h, nursery):
    h.disconnect()  # no plugin yet: nobody received the broadcast
    folder = make_plugin(h.root, "test.start", {
        "startup": 'require("cameras").subscribe("scripts/a")', "a": recorder("a")})
    await h.start(nursery, folder)
    await h.wait_log("test.start", f"a:{DISC}")
    await h.settle()
    assert h.texts("test.start") == [f"a:{DISC}"]
    h.connect()
    await h.wait_log("test.start", f"a:{CONN}")
    assert h.texts("test.start") == [f"a:{DISC}", f"a:{CONN}"]


async def test_nothing_sticky_while_connected(h, nursery):
    h.disconnect()
    h.connect()
    folder = make_plugin(h.root, "test.conn", {
        "startup": 'require("cameras").subscribe("scripts/a")', "a": recorder("a")})
    await h.start(nursery, folder)
    h.bus.publish("camera_stream_closed", streamId="s1", attempt=1)
    await h.wait_log("test.conn", "a:camera_stream_closed")
    await h.settle()
    assert h.texts("test.conn") == ["a:camera_stream_closed"]


async def test_new_subscriber_from_a_timer_gets_it_alone(h, nursery):
    """The plugin already has subscriber a, which got the broadcast; b subscribes later from a
    timer: b is told at once, a is not told twice. A second plugin subscribing from a timer with
    no subscriber before gets it too."""
    late = """
        require("cameras").subscribe("scripts/b")
        require("logging").info("subscribed b")
    """
    both = make_plugin(h.root, "test.both", {
        "startup": 'require("cameras").subscribe("scripts/a")', "a": """
            local p = ...
            require("logging").info("a:" .. p.event)
            if p.event == "hub_disconnected_from_local_network" then
              require("timer").set_timeout(50, "scripts/late")
            end
        """, "late": late, "b": recorder("b")})
    other = make_plugin(h.root, "test.other", {
        "startup": 'require("timer").set_timeout(1, "scripts/wait")', "wait": """
            if require("storage").get_bool("go") then
              require("cameras").subscribe("scripts/c")
              require("logging").info("subscribed c")
            else
              require("timer").set_timeout(50, "scripts/wait")
            end
        """, "c": recorder("c")})
    await h.start(nursery, both, other)
    h.disconnect()
    await h.wait_log("test.both", f"b:{DISC}")
    # test.other subscribes once it sees "go" (after the broadcast, which it did not get)
    h.store.storage_set("test.other", "go", json.dumps({"t": "bool", "v": True}))
    await h.wait_log("test.other", f"c:{DISC}")
    await h.settle()
    assert h.texts("test.both") == [f"a:{DISC}", "subscribed b", f"b:{DISC}"]
    assert h.texts("test.other") == ["subscribed c", f"c:{DISC}"]
    h.connect()
    await h.wait_log("test.both", f"b:{CONN}")
    await h.wait_log("test.other", f"c:{CONN}")
    await h.settle()
    assert h.texts("test.both")[3:] == [f"a:{CONN}", f"b:{CONN}"]
    assert h.texts("test.other")[2:] == [f"c:{CONN}"]


async def test_subscribing_inside_the_run_of_the_sticky_event(h, nursery):
    """Dispatch fixes its subscriber list when the event's run starts: b, subscribed by a while
    a handles the event, did not get the broadcast and must get its own copy, once."""
    folder = make_plugin(h.root, "test.inside", {
        "startup": 'require("cameras").subscribe("scripts/a")', "a": """
            local p = ...
            require("logging").info("a:" .. p.event)
            if p.event == "hub_disconnected_from_local_network" and not sub_b then
              sub_b = require("cameras").subscribe("scripts/b")
            end
        """, "b": recorder("b")})
    await h.start(nursery, folder)
    h.disconnect()
    await h.wait_log("test.inside", f"b:{DISC}")
    await h.settle()
    assert h.texts("test.inside") == [f"a:{DISC}", f"b:{DISC}"]


async def test_subscribing_before_the_queued_copy_runs_gets_only_that_copy(h, nursery):
    """a subscribes b while handling an event queued just before the sticky one: the broadcast
    copy behind it reaches b, so no targeted copy is added."""
    folder = make_plugin(h.root, "test.queued", {
        "startup": 'require("cameras").subscribe("scripts/a")', "a": """
            local p = ...
            require("logging").info("a:" .. p.event)
            if p.event == "camera_stream_closed" then
              require("cameras").subscribe("scripts/b")
            end
        """, "b": recorder("b")})
    await h.start(nursery, folder)
    runner = h.host.runners["test.queued"]
    # both published before the worker can run either: one batch, in order
    h.bus.publish("camera_stream_closed", streamId="s1", attempt=1)
    h.disconnect()
    assert len(runner.mailbox) == 2
    await h.wait_log("test.queued", f"b:{DISC}")
    await h.settle()
    assert h.texts("test.queued") == ["a:camera_stream_closed", f"a:{DISC}", f"b:{DISC}"]


async def test_unsubscribed_before_delivery_gets_nothing_and_nothing_fails(h, nursery):
    folder = make_plugin(h.root, "test.unsub", {
        "startup": """
            local id = require("cameras").subscribe("scripts/a")
            require("cameras").unsubscribe(id)
            require("cameras").subscribe("scripts/b")
        """, "a": recorder("a"), "b": recorder("b")})
    h.disconnect()
    await h.start(nursery, folder)
    await h.wait_log("test.unsub", f"b:{DISC}")
    await h.settle()
    assert h.texts("test.unsub") == [f"b:{DISC}"]
    assert h.host.runners["test.unsub"].stats.failed == 0


async def test_a_restarted_worker_gets_it_once_per_life_not_the_old_lifes_copy(h, nursery):
    """Life 1: the copy for subscriber #1 gets the worker killed (wall budget) while #2's copy
    waits behind it; that copy goes back to the mailbox but belongs to a dead life (ids restart
    with each life). Life 2's startup subscribes again: each subscriber gets exactly one copy."""
    folder = make_plugin(h.root, "test.restart", {
        "startup": """
            require("cameras").subscribe("scripts/one")
            require("cameras").subscribe("scripts/two")
        """, "one": """
            local p = ...
            local storage = require("storage")
            if not storage.get_bool("killed") then
              storage.set_bool("killed", true)
              string.find(string.rep("a", 5000), ".-.-.-b")  -- frozen in C: the hub kills us
            end
            require("logging").info("one:" .. p.event)
        """, "two": recorder("two")})
    h.disconnect()
    await h.start(nursery, folder)
    runner = h.host.runners["test.restart"]
    await h.wait_log("test.restart", f"two:{DISC}", timeout=30)
    await h.settle(30)
    assert runner.stats.killed == 1 and runner.stats.restarts == 1
    assert h.texts("test.restart") == [f"one:{DISC}", f"two:{DISC}"]
