"""The client interfaces wired into a whole hub, configured as ``hubruntime run --config`` would
be: a fake backchannel camera and a fake OSC camera feed events to a Lua plugin; events created
through the HTTP API reach the plugin, the event listing and the backchannel server; the OSC
fingerprint follows the hub's streams; each listener's address is logged.

The pieces have their own detailed tests (test_backchannel, test_osc, test_api); this one proves
that ``Hub`` composes them as DESIGN §1 draws it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from plugin_dirs import subscriber_plugin

from hubruntime.config import (
    ApiConfig,
    ApiToken,
    BackchannelSource,
    HubConfig,
    OscSource,
    RtspConfig,
)
from hubruntime.hub import Hub
from hubruntime.proto.backchannel import ObjectSplitter

ROOT = Path(__file__).resolve().parents[2]
CAM = "588b7eb528b12d03be86f36f"
OSC_CAM = "osc-cam"
TOKEN = "test-token"
DEADLINE = 20.0


def _tool(name: str, file: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


BANDIT = _tool("hubruntime_tools_fake_bandit_hub", "fake_backchannel_camera.py")
OSC = _tool("hubruntime_tools_fake_osc_hub", "fake_osc_camera.py")

HANDLER = """
local params = ...
local json = require("json")
require("logging").info("EV " .. json.encode(params))
"""


def make_plugin(root: Path) -> Path:
    subscriber_plugin(root, "test.recorder", HANDLER, ["cameras", "logging", "json"])
    return root


class Seen:
    """What the plugin logged, as decoded event tables."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.changed = trio.Event()

    def on_log(self, pid: str, level: str, where: str, text: str) -> None:
        if text.startswith("EV "):
            self.events.append(json.loads(text[3:]))
            self.changed.set()
            self.changed = trio.Event()

    async def wait(self, pred: Any, what: str) -> dict[str, Any]:
        with trio.fail_after(DEADLINE):
            while True:
                for e in self.events:
                    if pred(e):
                        return e
                await self.changed.wait()
        raise AssertionError(what)  # pragma: no cover


@pytest.fixture
async def rig(tmp_path: Path, nursery: trio.Nursery, caplog: Any) -> Any:
    caplog.set_level(logging.INFO)
    bandit = BANDIT.FakeBandit()
    status_url = await nursery.start(bandit.run)
    osc = OSC.FakeOscCamera(mode="longpoll", state={"batteryLevel": 0.9})
    osc_url = await nursery.start(osc.serve)
    cfg = HubConfig(
        data_dir=tmp_path / "data",
        plugin_dirs=(make_plugin(tmp_path / "plugins"),),
        rtsp=RtspConfig(port=0, bind="127.0.0.1"),
        advertise_host="127.0.0.1",
        api=ApiConfig(listen="127.0.0.1:0", tokens=(ApiToken(TOKEN), ApiToken("scoped", CAM))),
        backchannel=(BackchannelSource(CAM, status_url),),
        osc=(OscSource(OSC_CAM, osc_url),),
    )
    hub = Hub(cfg)
    seen = Seen()
    await nursery.start(hub.run)
    assert hub.plugins is not None and hub.api is not None
    hub.plugins.log_listeners.append(seen.on_log)
    return hub, seen, bandit, osc, caplog


async def test_camera_sources_reach_a_plugin_through_the_hub(rig: Any) -> None:
    hub, seen, bandit, osc, caplog = rig
    # the fake Bandit sends its default catalogue on connect; one of them:
    ev = await seen.wait(lambda e: e.get("source") == "backchannel", "a backchannel event")
    assert ev["streamId"] == CAM
    # the OSC camera's state changes: the long-poll client notices and the plugin gets it
    await seen_client_ready(hub)
    osc.update({"batteryLevel": 0.5})
    ev = await seen.wait(lambda e: e["event"] == "osc_state_changed", "osc_state_changed")
    assert ev["streamId"] == OSC_CAM and ev["changed"] == ["batteryLevel"]
    assert ev["state"] == {"batteryLevel": 0.5}
    logged = caplog.text
    assert "HTTP API listening on http://127.0.0.1:" in logged
    assert "backchannel server listening on 127.0.0.1:" in logged


def api_line(obj: dict[str, Any]) -> bool:
    return obj.get("memory_low", {}).get("source") == "api"


async def seen_client_ready(hub: Hub) -> None:
    """The OSC client has its first state (a change before that is not a change to it)."""
    from hubruntime.sources.osc import OscClient

    client = next(s for s in hub.sources if isinstance(s, OscClient))
    with trio.fail_after(DEADLINE):
        while client.fingerprint is None:
            await trio.sleep(0.02)


async def test_api_events_reach_plugin_listing_and_backchannel_server(rig: Any) -> None:
    hub, seen, _bandit, _osc, _caplog = rig
    await hub.manager.add(CAM, "Front door", "rtsp://127.0.0.1:9/none")
    assert hub.backchannel_server is not None and hub.backchannel_server.port
    client = await trio.open_tcp_stream("127.0.0.1", hub.backchannel_server.port)
    base = f"http://127.0.0.1:{hub.api.port}"
    headers = {"Authorization": f"Acc {TOKEN}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as http:
        status = (await http.get("/api/1/status")).json()
        assert status["backchannel_port"] == hub.backchannel_server.port
        with trio.fail_after(DEADLINE):  # the server subscribes as it accepts; retry until then
            lines: list[dict[str, Any]] = []
            splitter = ObjectSplitter()
            while not any(api_line(obj) for obj in lines):
                r = await http.post("/api/v2/storage/events/", json={
                    "camid": CAM, "name": "memory_low", "meta": {"origin": "e2e"}})
                assert r.status_code in (200, 201), r.text
                with trio.move_on_after(0.5):
                    while not any(api_line(obj) for obj in lines):
                        lines.extend(splitter.feed(await client.receive_some(65536)))
        ev = await seen.wait(lambda e: e["event"] == "memory_low" and e.get("source") == "api",
                             "the API-created event in the plugin")
        assert ev["streamId"] == CAM and ev["meta"] == {"origin": "e2e"}
        line = next(obj for obj in lines if api_line(obj))["memory_low"]
        assert line["streamId"] == CAM and line["meta"] == {"origin": "e2e"}
        with trio.fail_after(DEADLINE):
            while True:
                page = (await http.get("/api/v2/storage/events/",
                                       params={"events": "memory_low", "camid": CAM})).json()
                if page["objects"]:
                    break
                await trio.sleep(0.05)
        assert page["objects"][0]["camid"] == CAM
        assert (await http.get("/api/v2/storage/events/",
                               headers={"Authorization": "Acc nope"})).status_code == 401
        # the token scoped to CAM cannot look at another camera
        other = await http.get("/api/v2/storage/events/", params={"camid": "other-cam"},
                               headers={"Authorization": "Acc scoped"})
        assert other.status_code == 403
    await client.aclose()


async def test_osc_fingerprint_follows_the_hubs_streams(rig: Any) -> None:
    hub, _seen, _bandit, _osc, _caplog = rig
    base = f"http://127.0.0.1:{hub.api.port}"
    headers = {"Authorization": f"Acc {TOKEN}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
        doc = (await http.post("/osc/state")).json()
        fp = doc["fingerprint"]
        # the network watcher's state from the start, not only after a change
        assert hub.netwatch is not None and isinstance(hub.netwatch.connected, bool)
        assert doc["state"]["_network"]["connected"] is hub.netwatch.connected
        got: dict[str, Any] = {}

        async def hold() -> None:
            r = await http.post("/osc/checkForUpdates",
                                json={"stateFingerprint": fp, "waitTimeout": 20})
            got.update(r.json(), t=trio.current_time())

        async with trio.open_nursery() as n:
            n.start_soon(hold)
            await trio.sleep(0.3)  # let the request be held (an early change answers it too)
            t0 = trio.current_time()
            await hub.manager.add("new-cam", "Garage", "rtsp://127.0.0.1:9/none")
        assert got["stateFingerprint"] != fp
        assert got["t"] - t0 < 2.0
