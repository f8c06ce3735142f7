"""OSC camera → OscClient → EventBus → a real Lua plugin (worker process), over real HTTP.

The fake cameras (tools/fake_osc_camera.py) run in this trio run on 127.0.0.1. Every wait has a
deadline (``trio.fail_after``); the only fixed-length wait is the measuring window of the
"not hammered" test, which is what it measures.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from plugin_dirs import subscriber_plugin

from hubruntime.config import LuaConfig, OscSource
from hubruntime.events.bus import EventBus, Published
from hubruntime.lua.manifest import load_plugin
from hubruntime.lua.modules.storage import StorageModule
from hubruntime.lua.plugins import PluginHost
from hubruntime.proto.backoff import Backoff
from hubruntime.sources.osc import OscClient
from hubruntime.store import Store

TOOL = Path(__file__).resolve().parents[2] / "tools" / "fake_osc_camera.py"


def _load_tool():
    # tools/ is not a package; load the file itself so the tests run from any directory.
    spec = importlib.util.spec_from_file_location("hubruntime_tools_fake_osc_camera", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fake = _load_tool()
FakeOscCamera = fake.FakeOscCamera

PID = "test.osc"

# Logs one line per osc_state_changed: streamId|source|fingerprint|#changed|key=value;...
# (changed keys in the order the event lists them; a removed key shows as nil, since a Lua
# table cannot hold nil; a table value shows its sorted fields).
HANDLER = """
local params = ...
if params.event ~= "osc_state_changed" then return end
local function show(v)
  if type(v) ~= "table" then return tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. show(v[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end
local parts = {}
for _, key in ipairs(params.changed) do
  parts[#parts + 1] = key .. "=" .. show(params.state[key])
end
require("logging").info("osc|" .. params.streamId .. "|" .. params.source .. "|" ..
  params.fingerprint .. "|" .. #params.changed .. "|" .. table.concat(parts, ";"))
"""


def make_plugin(root: Path) -> Path:
    return subscriber_plugin(root, PID, HANDLER, ["cameras", "logging"])


class Harness:
    """A bus, a plugin host running one real plugin, and a record of what reached both."""

    def __init__(self, tmp: Path) -> None:
        self.store = Store(tmp / "db.sqlite3")
        self.bus = EventBus()
        cfg = LuaConfig(wall_budget_secs=2.0, instruction_budget=2_000_000, max_memory_mb=16,
                        restart_backoff_secs=0.05)
        self.host = PluginHost(cfg, self.bus, StorageModule(self.store).handlers())
        self.root = tmp / "plugins"
        self.logs: list[str] = []
        self.changed = trio.Event()
        self.host.log_listeners.append(self._on_log)
        self.box = self.bus.subscribe("test", maxlen=1000)

    def _on_log(self, pid: str, level: str, where: str, text: str) -> None:
        if pid == PID:
            self.logs.append(text)
            self.changed.set()
            self.changed = trio.Event()

    def osc_lines(self) -> list[str]:
        return [t for t in self.logs if t.startswith("osc|")]

    async def wait_log(self, text: str, timeout: float = 15.0) -> None:
        with trio.fail_after(timeout):
            while text not in self.logs:
                await self.changed.wait()

    async def next_event(self, timeout: float) -> Published:
        with trio.fail_after(timeout):
            (item,) = await self.box.get_batch(1)
        return item


@pytest.fixture
async def harness(tmp_path: Path, nursery: trio.Nursery):
    h = Harness(tmp_path)
    await nursery.start(h.host.run, [load_plugin(make_plugin(h.root))])
    assert h.host.runners[PID].stats.failed == 0
    yield h
    h.store.close()


async def eventually(predicate: Callable[[], bool], timeout: float = 15.0,
                     what: str = "condition") -> None:
    """Wait until ``predicate()`` holds, checking every 10 ms, failing after ``timeout``."""
    try:
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(0.01)
    except trio.TooSlowError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


async def start_client(nursery: trio.Nursery, client: OscClient,
                       cam: Any) -> OscClient:
    """Run ``client`` until it holds the baseline state and polls: its first poll answered
    (an immediate camera) or held (a long-polling one)."""
    await nursery.start(client.run)
    await eventually(lambda: client.state_fetches >= 1 and (client.polls >= 1 or cam.holding),
                     what="the client's first poll")
    return client


STATE = {"batteryLevel": 0.75, "storageUri": "http://127.0.0.1/storage/1",
         "_captureStatus": "idle", "_gone": "soon", "_cam": {"a": 1, "b": "x"}}


async def test_long_polling_camera_change_reaches_plugin_at_once(harness, nursery):
    h = harness
    cam = FakeOscCamera(mode="longpoll", state=STATE)
    url = await nursery.start(cam.serve)
    client = OscClient(OscSource("cam1", url), h.bus, wait_timeout=10, min_interval=1.0)
    await nursery.start(client.run)
    # baseline fetched, and a poll is being held by the camera (no event for the baseline)
    await eventually(lambda: client.state_fetches == 1 and cam.holding == 1, what="a held poll")
    assert client.fingerprint == "FIG_0001" and client.state == STATE
    assert client.info is not None and client.info.api_level == (2,)
    assert len(h.box) == 0

    t0 = trio.current_time()
    cam.update({"batteryLevel": 0.25, "_gone": None, "_cam": {"a": 2, "b": "x"}})
    item = await h.next_event(timeout=5)
    seen_after = trio.current_time() - t0
    assert item.event == {
        "event": "osc_state_changed", "streamId": "cam1", "source": "osc",
        "fingerprint": "FIG_0002", "changed": ["_cam", "_gone", "batteryLevel"],
        "state": {"_cam": {"a": 2, "b": "x"}, "_gone": None, "batteryLevel": 0.25}}
    # the held request answered on the change: seen well before the 10 s hold or a 1 s poll
    assert seen_after < 0.5, seen_after
    await h.wait_log("osc|cam1|osc|FIG_0002|3|_cam={a=2,b=x};_gone=nil;batteryLevel=0.25")

    # a second change, while the next poll is held again
    await eventually(lambda: cam.holding == 1, what="the next held poll")
    cam.update({"_captureStatus": "shooting"})
    await h.wait_log("osc|cam1|osc|FIG_0003|1|_captureStatus=shooting")
    assert h.osc_lines() == [
        "osc|cam1|osc|FIG_0002|3|_cam={a=2,b=x};_gone=nil;batteryLevel=0.25",
        "osc|cam1|osc|FIG_0003|1|_captureStatus=shooting"]
    assert client.changes == 2 and client.errors == 0
    assert cam.xsrf_missing == 0
    assert cam.requests["/osc/info"] == 1 and cam.requests["/osc/state"] == 3
    assert h.host.runners[PID].stats.failed == 0


async def test_immediate_camera_is_not_hammered(harness, nursery):
    h = harness
    cam = FakeOscCamera(mode="immediate", state=STATE)
    url = await nursery.start(cam.serve)
    min_interval = 0.5
    client = await start_client(nursery, OscClient(OscSource("cam2", url), h.bus,
                                                   wait_timeout=10, min_interval=min_interval),
                                cam)
    window = 3.0
    t0 = trio.current_time()
    await trio.sleep(window)  # the measuring window itself
    polls = cam.polls_between(t0, t0 + window)
    # at most one poll per min_interval (+1 for the window's edge); and it does keep polling
    assert polls <= window / min_interval + 1, polls
    assert polls >= 2, polls
    # spacing as the camera saw it (request latency varies a little under load)
    starts = cam.poll_times
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= min_interval * 0.6, gaps

    # a fingerprint that moves with no state change gives no event
    cam.bump()
    with trio.fail_after(10):
        await client.wait_until(lambda c: c.unchanged_fingerprints == 1)
    assert client.fingerprint == "FIG_0002" and client.changes == 0

    cam.update({"_captureStatus": "self-timer-countdown", "batteryLevel": 0.5})
    await h.wait_log("osc|cam2|osc|FIG_0003|2|_captureStatus=self-timer-countdown;"
                     "batteryLevel=0.5")
    assert h.osc_lines() == ["osc|cam2|osc|FIG_0003|2|_captureStatus=self-timer-countdown;"
                             "batteryLevel=0.5"]
    assert client.errors == 0 and cam.xsrf_missing == 0


async def test_erroring_camera_logs_bounded_retries_and_recovers(harness, nursery, caplog):
    caplog.set_level(logging.INFO, logger="hubruntime.sources")
    h = harness
    cam = FakeOscCamera(mode="longpoll", state=STATE, auth=("admin", "s3cret-pw"))
    base = await nursery.start(cam.serve)
    url = base.replace("http://", "http://admin:s3cret-pw@")
    backoff = Backoff(initial=0.1, maximum=0.4, reset_after=60.0)
    client = await start_client(nursery, OscClient(OscSource("cam3", url), h.bus,
                                                   wait_timeout=5, min_interval=0.2,
                                                   backoff=backoff), cam)
    assert cam.unauthorized >= 1  # Digest was negotiated from the camera's challenge

    # each error mode in turn: the held poll returns on the change, then requests fail
    expected = {"osc": "HTTP 503 serverError: the fake camera is told to fail",
                "http500": "HTTP 500: Internal Server Error",
                "badjson": "answer is not JSON"}
    cam.set_error("osc")
    cam.update({"batteryLevel": 0.5})  # made during the outage, reported after it
    for mode, text in expected.items():
        cam.set_error(mode)
        before = client.errors
        with trio.fail_after(15):
            await client.wait_until(lambda c, before=before: c.errors >= before + 2)
        assert text in client.last_error, (mode, client.last_error)

    # bounded retries: with delays of at least 0.05 s growing to 0.2-0.4 s, a 2 s window
    # holds a handful of attempts, not a tight loop
    errors0 = client.errors
    await trio.sleep(2.0)  # the measuring window itself
    retries = client.errors - errors0
    assert 2 <= retries <= 2.0 / 0.2 + 1, retries
    assert client.changes == 0 and h.osc_lines() == []

    cam.set_error(None)
    await h.wait_log("osc|cam3|osc|FIG_0002|1|batteryLevel=0.5", timeout=15)
    errors_after = client.errors
    await eventually(lambda: client.last_error is None and cam.holding == 1,
                     what="polling again")
    cam.update({"batteryLevel": 0.4})
    await h.wait_log("osc|cam3|osc|FIG_0003|1|batteryLevel=0.4")
    assert client.errors == errors_after

    warnings = [r.getMessage() for r in caplog.records
                if r.name == "hubruntime.sources" and r.levelno == logging.WARNING]
    # one warning per distinct reason (a reason that repeats is logged again only minutes later)
    assert len(warnings) == 3, warnings
    assert all(w.startswith("osc cam3 (http://***@127.0.0.1:") for w in warnings)
    assert "POST /osc/state: camera answered HTTP 503 serverError: the fake camera is told " \
           "to fail; retry 1 in " in warnings[0]
    assert re.search(r"POST /osc/state: camera answered HTTP 500: Internal Server Error "
                     r"\(after \d+ unlogged repeat\(s\) of the previous failure\); retry \d+ in ",
                     warnings[1]), warnings[1]
    assert "POST /osc/state: bad answer: answer is not JSON (" in warnings[2]
    assert any("the camera answers again" in r.getMessage() for r in caplog.records)
    assert "s3cret" not in caplog.text


async def test_refused_connection_is_retried_until_the_camera_appears(harness, nursery, caplog):
    caplog.set_level(logging.INFO, logger="hubruntime.sources")
    h = harness
    with socket.socket() as s:  # a port with nothing listening on it (yet)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backoff = Backoff(initial=0.1, maximum=0.4, reset_after=60.0)
    client = OscClient(OscSource("cam4", f"http://127.0.0.1:{port}"), h.bus, wait_timeout=5,
                       min_interval=0.2, backoff=backoff)
    await nursery.start(client.run)
    with trio.fail_after(15):
        await client.wait_until(lambda c: c.errors >= 3)
    assert "GET /osc/info: cannot connect" in client.last_error
    assert client.info is None

    cam = FakeOscCamera(mode="longpoll", state=STATE, port=port)
    await nursery.start(cam.serve)
    with trio.fail_after(15):
        await client.wait_until(lambda c: c.state_fetches >= 1)
    await eventually(lambda: cam.holding == 1, what="a held poll")
    cam.update({"_captureStatus": "shooting"})
    await h.wait_log("osc|cam4|osc|FIG_0002|1|_captureStatus=shooting")
    assert client.info is not None and client.last_error is None
    refused = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(refused) == 1 and "GET /osc/info: cannot connect" in refused[0], refused


async def test_bad_url_is_refused_without_showing_the_password():
    for url in ("rtsp://u:pw1@cam/", "http://u:pw1@", "not a url"):
        with pytest.raises(ValueError, match="not an http") as info:
            OscClient(OscSource("cam5", url), EventBus())
        assert "pw1" not in str(info.value)


async def test_fake_camera_as_a_program():
    """``python tools/fake_osc_camera.py --port 0 --mode immediate``: the base URL comes first,
    and the camera is controlled over HTTP."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(TOOL), "--port", "0", "--mode", "immediate", "--throttle", "3"],
        stdout=-1)
    try:
        line = b""
        with trio.fail_after(20):
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(1)
                assert chunk, "the fake camera exited before printing its URL"
                line += chunk
        url = line.decode().strip()
        assert url.startswith("http://127.0.0.1:")
        headers = {"X-XSRF-Protected": "1"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as http:
            r = await http.post("/control/set", json={"batteryLevel": 0.1, "_new": [1]})
            assert r.json() == {"fingerprint": "FIG_0002"}
            r = await http.post("/osc/state")
            assert r.headers["x-content-type-options"] == "nosniff"
            state: dict[str, Any] = r.json()["state"]
            assert state["batteryLevel"] == 0.1 and state["_new"] == [1]
            r = await http.post("/osc/checkForUpdates",
                                json={"stateFingerprint": "FIG_0002", "waitTimeout": 5})
            assert r.json() == {"stateFingerprint": "FIG_0002", "throttleTimeout": 3}
            r = await http.post("/osc/checkForUpdates", json={"waitTimeout": 5})
            assert r.status_code == 400
            assert r.json()["error"]["code"] == "missingParameter"
            r = await http.post("/control/error", json={"mode": "osc"})
            r = await http.post("/osc/state")
            assert r.status_code == 503 and r.json()["state"] == "error"
            stats = (await http.get("/control/stats")).json()
            assert stats["polls"] == 2 and stats["xsrfMissing"] == 0
    finally:
        proc.kill()
        with trio.move_on_after(10):
            await proc.wait()
