"""The TomTom Bandit backchannel end to end, over real TCP and HTTP on 127.0.0.1.

Fake camera (tools/fake_backchannel_camera.py, in-process or as a subprocess) → status document →
BackchannelClient → EventBus → a real Lua plugin in its worker process, which logs the fields it
sees; and the hub's own BackchannelServer → TCP clients. Every wait has a deadline; nothing
sleeps to pass.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from plugin_dirs import subscriber_plugin

from hubruntime.api.backchannel_server import BackchannelServer, parse_listen
from hubruntime.config import BackchannelSource, LuaConfig
from hubruntime.events import catalogue
from hubruntime.events.bus import EventBus
from hubruntime.lua.manifest import load_plugin
from hubruntime.lua.modules.storage import StorageModule
from hubruntime.lua.plugins import PluginHost
from hubruntime.proto.backchannel import ObjectSplitter
from hubruntime.sources.backchannel import BackchannelClient
from hubruntime.store import Store

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "fake_backchannel_camera.py"


def _load_fake_camera():
    # tools/ is not a package; load the file itself so the tests run from any directory.
    spec = importlib.util.spec_from_file_location("hubruntime_tools_fake_bandit", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


FAKE = _load_fake_camera()
DEADLINE = 20.0  # generous: the machine is shared; the assertions on content are exact


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll ``predicate`` every 10 ms; fail with ``what`` after ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- the plugin side (the harness of tests/integration/test_plugins.py) -------------------------
HANDLER = r"""
local params = ...
local log = require("logging")
log.info("ev " .. require("json").encode(params))
local e = params.event
local f
if e == "recording_started" then
  f = tostring(params.recording_active)
elseif e == "recording_stopped" then
  local v = params.items[1]
  f = #params.items .. "|" .. v.id .. "|" .. v.size_bytes .. "|" .. v.length_secs .. "|" .. v.mode
elseif e == "tag_created" then
  f = params.id .. "|" .. tostring(params.offset_secs) .. "|" .. tostring(params.tag_button)
      .. "|" .. tostring(params.max_speed_mps) .. "|" .. tostring(params.max_heartrate_bpm)
elseif e == "photo_captured" then
  f = #params.items .. "|" .. params.items[2].path .. "|" .. tostring(params.items[2].is_valid)
      .. "|" .. params.items[1].lat_deg
elseif e == "memory_low" then
  f = tostring(params.available_bytes)
elseif e == "memory_error" then
  f = "-"
elseif e == "wifi_stopped" then
  f = tostring(params.wifi_active)
elseif e == "transcoding_progress" then
  f = tostring(params.progress_pct)
elseif e == "viewfinder_started" or e == "viewfinder_stopped" then
  f = tostring(params.viewfinder_active)
elseif e == "shutting_down" then
  f = tostring(params.battery_critical) .. "|" .. tostring(params.user_initiated) .. "|"
      .. tostring(params.overtemperature_shutdown)
else
  f = "?"
end
log.info("f " .. e .. "|" .. tostring(params.source) .. "|" .. tostring(params.streamId)
         .. "|" .. f)
"""

VIDEO = FAKE.VIDEO_ID
# What the plugin must log, in order, for the default stream (field values read in Lua).
EXPECTED_FIELDS = [
    "recording_started|backchannel|{s}|true",
    "memory_low|backchannel|{s}|104857600",
    "recording_stopped|backchannel|{s}|1|…-100-000-0001|123|9.5|normal",
    "recording_started|backchannel|{s}|true",
    f"recording_stopped|backchannel|{{s}}|1|{VIDEO}|52428800|42.5|slow_motion",
    "tag_created|backchannel|{s}|a1b2c3d4-0000-4000-8000-000000000001|12.5|true|nil|nil",
    "tag_created|backchannel|{s}|a1b2c3d4-0000-4000-8000-000000000002|30.25|nil|17.5|nil",
    "photo_captured|backchannel|{s}|2|/100TTCAM/PHOT0002.JPG|false|52.3759",
    "memory_low|backchannel|{s}|1073741824",
    "memory_error|backchannel|{s}|-",
    "wifi_stopped|backchannel|{s}|false",
    "transcoding_progress|backchannel|{s}|42",
    "viewfinder_started|backchannel|{s}|true",
    "viewfinder_stopped|backchannel|{s}|false",
    "shutting_down|backchannel|{s}|true|false|false",
    "shutting_down|backchannel|{s}|false|true|false",
    'tag_created|backchannel|{s}|x}{"]\\[ é€😀|nil|nil|nil|172',
    "transcoding_progress|backchannel|{s}|100",
    "memory_low|backchannel|{s}|7",
]


def fields_for(stream_id: str) -> list[str]:
    return [line.replace("{s}", stream_id) for line in EXPECTED_FIELDS]


def expected_events(stream_id: str) -> list[dict[str, Any]]:
    """The event tables of the default stream, built with the catalogue directly."""
    out = []
    for frame in FAKE.DEFAULT_STREAM:
        obj = json.loads(frame)
        if "shutting_down" in obj and len(obj) > 1:  # the flags beside the key (Android form)
            out.append({"event": "shutting_down", "source": "backchannel", "streamId": stream_id,
                        "battery_critical": False, "user_initiated": True,
                        "overtemperature_shutdown": False})
            continue
        for name, payload in obj.items():
            out.append(catalogue.from_notification("backchannel", name, payload,
                                                   stream_id=stream_id))
    return out


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.store = Store(tmp / "db.sqlite3")
        self.bus = EventBus()
        cfg = LuaConfig(wall_budget_secs=2.0, instruction_budget=2_000_000, max_memory_mb=32,
                        restart_backoff_secs=0.05)
        self.host = PluginHost(cfg, self.bus, StorageModule(self.store).handlers())
        self.logs: list[str] = []
        self.host.log_listeners.append(lambda pid, level, where, text: self.logs.append(text))

    def fields(self, stream_id: str | None = None) -> list[str]:
        lines = [t[2:] for t in self.logs if t.startswith("f ")]
        if stream_id is None:
            return lines
        return [x for x in lines if x.split("|")[2] == stream_id]

    def events(self, stream_id: str) -> list[dict[str, Any]]:
        evs = [json.loads(t[3:]) for t in self.logs if t.startswith("ev ")]
        return [e for e in evs if e.get("streamId") == stream_id]


@pytest.fixture
async def harness(tmp_path: Path, nursery: trio.Nursery):
    h = Harness(tmp_path)
    folder = subscriber_plugin(tmp_path / "plugins", "test.backchannel", HANDLER,
                               ["cameras", "logging", "json"])
    await nursery.start(h.host.run, [load_plugin(folder)])
    assert h.host.runners["test.backchannel"].subscribers == 1
    yield h
    h.store.close()


async def start_camera(nursery: trio.Nursery, **options: Any) -> Any:
    cam = FAKE.FakeBandit(**options)
    await nursery.start(cam.run)
    return cam


def start_client(nursery: trio.Nursery, bus: EventBus, stream_id: str, url: str,
                 **options: Any) -> BackchannelClient:
    client = BackchannelClient(BackchannelSource(stream_id, url), bus, **options)
    nursery.start_soon(client.run)
    return client


# -- camera → plugin ------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk, newlines", [(0, True), (1, False), (1, True), (5, False)],
                         ids=["whole-lines", "1-byte-no-newlines", "1-byte-lines", "5-byte"])
async def test_every_notification_reaches_a_lua_plugin_with_its_fields(
        harness, nursery, chunk, newlines):
    h = harness
    cam = await start_camera(nursery, chunk=chunk, newlines=newlines)
    client = start_client(nursery, h.bus, "cam1", cam.status_url)
    want = fields_for("cam1")
    await wait_until(lambda: len(h.fields("cam1")) >= len(want), "every notification in Lua")
    assert h.fields("cam1") == want
    assert h.events("cam1") == expected_events("cam1")
    assert client.connects == 1 and client.events == len(want) and client.errors == 0
    assert client.failures == 0 and client.connected
    assert cam.stats.status_requests == 1 and cam.stats.connections == 1
    # the connection stays up and carries later notifications
    cam.push(b'{"tag_created":{"id":"late","max_g_force":2.5}}')
    await wait_until(lambda: len(h.fields("cam1")) > len(want), "the pushed notification")
    assert h.fields("cam1")[-1] == "tag_created|backchannel|cam1|late|nil|nil|nil|nil"
    assert h.events("cam1")[-1]["max_g_force"] == 2.5


@pytest.mark.parametrize("port_key", ["flat", "camel", "nested", "string"])
async def test_status_port_spellings_and_status_errors_are_retried(nursery, caplog, port_key):
    bus = EventBus()
    box = bus.subscribe("test")
    cam = await start_camera(nursery, port_key=port_key, status_errors=2)
    client = start_client(nursery, bus, "cam1", cam.status_url, initial_backoff=0.05,
                          max_backoff=0.2)
    n = len(expected_events("cam1"))
    await wait_until(lambda: len(box) >= n, "the stream after two status errors")
    assert [p.event for p in box.get_nowait_batch(n)] == expected_events("cam1")
    assert client.failures == 2 and client.connects == 1
    assert cam.stats.status_requests == 3
    assert sum("status: HTTP 500; reconnecting in" in r.getMessage() for r in caplog.records) == 2


async def test_bad_notifications_are_skipped_and_the_connection_goes_on(harness, nursery, caplog):
    h = harness
    frames = (
        b'{"recording_started":{"recording_active":"yes"}}',  # contradicts the catalogue
        b'{"camera_stream_closed":{"attempt":1}}',  # a hub event's name
        b'{"wifi_stopped":{"wifi_active":false},"tag_created":{"id":5}}',  # one good, one bad
        b'{"memory_low":{"available_bytes":3}}',
    )
    cam = await start_camera(nursery, notifications=frames)
    client = start_client(nursery, h.bus, "cam1", cam.status_url)
    await wait_until(lambda: len(h.fields("cam1")) >= 2, "the good notifications")
    await wait_until(lambda: client.errors == 3, "three skipped notifications")
    assert h.fields("cam1") == ["wifi_stopped|backchannel|cam1|false",
                                "memory_low|backchannel|cam1|3"]
    assert client.connects == 1 and client.failures == 0 and client.events == 2
    skipped = [r.getMessage() for r in caplog.records
               if r.name == "hubruntime.sources" and "skipped notification" in r.getMessage()]
    assert skipped and "recording_active" in skipped[0]  # rate-limited: at least the first


@pytest.mark.parametrize("fault, words", [
    ({"garbage": True}, "expected a JSON object, got b'HTTP/1.1"),
    ({"huge": True}, "exceeds 1048576 bytes without its closing brace"),
    ({"huge": True, "chunk": 1000}, "exceeds 1048576 bytes without its closing brace"),
    ({"close_after": 2}, "the camera closed the connection"),
], ids=["garbage", "huge", "huge-small-writes", "close-after-2"])
async def test_faulty_camera_reconnects_with_backoff_while_others_flow(
        harness, nursery, caplog, fault, words):
    h = harness
    bad_cam = await start_camera(nursery, **fault)
    good_cam = await start_camera(nursery)
    t0 = trio.current_time()
    bad = start_client(nursery, h.bus, "bad", bad_cam.status_url, initial_backoff=0.1,
                       max_backoff=0.4)
    good = start_client(nursery, h.bus, "good", good_cam.status_url, initial_backoff=0.1,
                        max_backoff=0.4)
    await wait_until(lambda: bad.failures >= 4, "four failed connections")
    elapsed = trio.current_time() - t0
    # Bounded attempts: the delays before attempts 2..4 are at least 0.05 + 0.1 + 0.2 s
    # (exponential from 0.1 s with "equal jitter"), so no reconnect storm.
    assert elapsed >= 0.35, elapsed
    assert bad.connects == bad.failures or bad.connects == bad.failures + 1
    reconnects = [r.getMessage() for r in caplog.records
                  if r.name == "hubruntime.sources" and "reconnecting in" in r.getMessage()
                  and "backchannel bad " in r.getMessage()]
    assert len(reconnects) >= 4 and all(words in m for m in reconnects), reconnects[:2]
    # the notifications before the fault arrived, once per connection
    per_conn = 2 if "close_after" in fault else 1
    await wait_until(lambda: len(h.fields("bad")) >= per_conn * 4, "the bad camera's good part")
    assert set(h.fields("bad")[: per_conn * 4]) <= {
        "recording_started|backchannel|bad|true", "memory_low|backchannel|bad|104857600"}
    # meanwhile the other camera and the hub's own events flow
    want = fields_for("good")
    await wait_until(lambda: len(h.fields("good")) >= len(want), "the good camera's stream")
    assert h.fields("good")[: len(want)] == want
    good_cam.push(b'{"transcoding_progress":{"progress_pct":77}}')
    h.bus.publish("camera_stream_closed", streamId="hubcam", attempt=1)
    await wait_until(lambda: "transcoding_progress|backchannel|good|77" in h.fields("good"),
                     "a push while the bad camera keeps failing")
    await wait_until(lambda: any("camera_stream_closed|nil|hubcam|?" == x for x in h.fields()),
                     "a hub event")
    assert good.connects == 1 and good.failures == 0 and good.errors == 0
    assert bad.errors == 0
    # the faulty camera's connections are all closed but the current one
    await wait_until(lambda: bad_cam.stats.open_connections <= 1, "closed connections")


async def test_backoff_resets_after_a_healthy_connection(nursery):
    bus = EventBus()
    cam = await start_camera(nursery, status_errors=3)
    client = start_client(nursery, bus, "cam1", cam.status_url, initial_backoff=0.1,
                          max_backoff=0.8, reset_after=0.3)
    await wait_until(lambda: client.connects == 1, "the first connection")
    # three failures grew the delay: the next base is 0.8 s, so an unreset delay is >= 0.4 s
    assert client.failures == 3 and client.backoff.failures == 3
    t_connected = trio.current_time()
    await wait_until(lambda: trio.current_time() - t_connected > 0.5, "a healthy half second")
    cam.drop_connections()
    await wait_until(lambda: client.failures == 4, "the dropped connection noticed")
    assert client.last_error == "the camera closed the connection"
    assert client.last_delay <= 0.1 and client.backoff.failures == 1
    await wait_until(lambda: client.connects == 2, "the reconnection")
    # a connection that fails at once does not reset it
    cam.drop_connections()
    await wait_until(lambda: client.failures == 5, "the second drop noticed")
    assert 0.1 <= client.last_delay <= 0.2 and client.backoff.failures == 2


async def test_credentials_in_the_status_url_are_never_logged(nursery, caplog):
    caplog.set_level(logging.DEBUG)
    bus = EventBus()
    cam = await start_camera(nursery, garbage=True)
    url = cam.status_url.replace("http://", "http://admin:s3cr3t@")
    client = start_client(nursery, bus, "cam1", url, initial_backoff=0.05, max_backoff=0.1)
    await wait_until(lambda: client.failures >= 2, "two failures")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "reconnecting in" in text and "***@127.0.0.1" in text
    assert "s3cr3t" not in text and "admin" not in text
    assert "s3cr3t" not in (client.last_error or "")


async def test_camera_subprocess_prints_its_url_first_and_serves_the_stream(tmp_path):
    bus = EventBus()
    box = bus.subscribe("test")
    cmd = [sys.executable, str(TOOL), "--port", "0", "--chunk", "3", "--no-newlines",
           "--port-key", "camel"]
    with (tmp_path / "stderr.txt").open("wb") as errfile:
        proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=errfile,
                                                start_new_session=True)
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(DEADLINE):
                assert proc.stdout is not None
                buf = b""
                while b"\n" not in buf:
                    data = await proc.stdout.receive_some(4096)
                    assert data, (tmp_path / "stderr.txt").read_text()
                    buf += data
                url = buf.split(b"\n", 1)[0].decode()
                assert url.startswith("http://127.0.0.1:") and url.endswith("/api/2/status")
                client = start_client(nursery, bus, "sub", url)
                n = len(expected_events("sub"))
                await wait_until(lambda: len(box) >= n, "the subprocess camera's stream")
                assert [p.event for p in box.get_nowait_batch(n)] == expected_events("sub")
                assert client.connects == 1
                nursery.cancel_scope.cancel()
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(DEADLINE):
            assert await proc.wait() == 0, (tmp_path / "stderr.txt").read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- hub → backchannel clients -------------------------------------------------------------------
class LineClient:
    """A backchannel client of the hub: reads lines, decodes each as one JSON object."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""
        self.lines: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.eof = False

    @classmethod
    async def connect(cls, port: int) -> LineClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def read_until(self, count: int, timeout: float = DEADLINE) -> None:
        with trio.fail_after(timeout):
            while len(self.lines) < count:
                data = await self.stream.receive_some(65536)
                if not data:
                    self.eof = True
                    raise AssertionError(f"EOF after {len(self.lines)} lines")
                self.buf += data
                *complete, self.buf = self.buf.split(b"\n")
                for line in complete:
                    self.raw.append(line)
                    self.lines.append(json.loads(line))


def subscribers(bus: EventBus) -> int:
    return bus.subscriber_count


async def start_server(nursery: trio.Nursery, bus: EventBus, caplog: Any,
                       **options: Any) -> BackchannelServer:
    caplog.set_level(logging.INFO, logger="hubruntime.api")
    server = BackchannelServer(bus, "127.0.0.1:0", **options)
    port = await nursery.start(server.run)
    assert port == server.port and port > 0
    assert f"backchannel server listening on 127.0.0.1:{port}" in caplog.messages
    return server


async def test_two_clients_get_every_event_published_after_they_connected(nursery, caplog):
    bus = EventBus()
    server = await start_server(nursery, bus, caplog)
    bus.publish("hub_connected_to_local_network")  # before anyone connected: nobody gets it
    a = await LineClient.connect(server.port)
    b = await LineClient.connect(server.port)
    await wait_until(lambda: server.clients == 2, "two clients")
    assert subscribers(bus) == 2
    bus.publish("camera_stream_closed", streamId="s1", attempt=3)
    bus.publish_event(catalogue.from_notification(
        "backchannel", "recording_stopped", [{"id": "…-1", "length_secs": 9.5}], stream_id="c"))
    bus.publish("stream_snapshotted", streamId="s1", snapshotId="x",
                cloudStorageKey={"uuid": "u", "key": "k"})
    bus.publish("hub_disconnected_from_local_network")
    want = [
        {"camera_stream_closed": {"streamId": "s1", "attempt": 3}},
        {"recording_stopped": {"source": "backchannel", "streamId": "c",
                               "items": [{"id": "…-1", "length_secs": 9.5}]}},
        {"stream_snapshotted": {"streamId": "s1", "snapshotId": "x",
                                "cloudStorageKey": {"uuid": "u", "key": "k"}}},
        {"hub_disconnected_from_local_network": {}},
    ]
    for client in (a, b):
        await client.read_until(4)
        assert client.lines == want
        assert all(b"\n" not in r and r.startswith(b"{") for r in client.raw)
        assert "…".encode() in client.raw[1]  # UTF-8 on the wire, not \u escapes
    # what the hub sends, our own camera-side splitter reads (the Bandit wire form)
    wire = b"\n".join(a.raw) + b"\n"
    assert list(ObjectSplitter().feed(wire)) == want
    await a.stream.aclose()
    await b.stream.aclose()
    await wait_until(lambda: server.clients == 0, "both clients gone")
    assert subscribers(bus) == 0 and server.accepted == 2 and server.lines_sent == 8


async def test_a_client_that_stops_reading_is_dropped_and_blocks_nobody(nursery, caplog):
    bus = EventBus()
    server = await start_server(nursery, bus, caplog, queue_size=20, send_timeout=1.0)
    stuck = await trio.open_tcp_stream("127.0.0.1", server.port)
    good = await LineClient.connect(server.port)
    await wait_until(lambda: server.clients == 2, "two clients")
    blob = "x" * 65536
    total = 600  # ~40 MB: far more than the stuck client's socket buffers hold
    t0 = trio.current_time()
    for i in range(total):
        bus.publish_event(catalogue.from_notification(
            "backchannel", "bulk_test", {"n": i, "blob": blob}, stream_id="c"))
        # lockstep with the good client, so only the stuck one can fall behind
        await good.read_until(i + 1)
    elapsed = trio.current_time() - t0
    assert [line["bulk_test"]["n"] for line in good.lines] == list(range(total))
    await wait_until(lambda: server.slow_disconnects == 1, "the stuck client dropped")
    await wait_until(lambda: server.clients == 1 and subscribers(bus) == 1, "its unsubscription")
    assert elapsed < DEADLINE
    messages = caplog.messages
    assert any("stopped reading for 1 s: disconnecting" in m for m in messages)
    assert any("backchannel client 127.0.0.1:" in m and "cannot keep up: dropped" in m
               for m in messages)  # the bus counted and logged its overflow
    # the good client still gets events after the stuck one was dropped
    bus.publish("hub_connected_to_local_network")
    await good.read_until(total + 1)
    assert good.lines[-1] == {"hub_connected_to_local_network": {}}
    await stuck.aclose()
    await good.stream.aclose()


async def test_client_input_is_ignored_and_disconnect_frees_the_subscription(nursery, caplog):
    bus = EventBus()
    server = await start_server(nursery, bus, caplog)
    base = subscribers(bus)
    talker = await LineClient.connect(server.port)
    await wait_until(lambda: server.clients == 1, "the client")
    assert subscribers(bus) == base + 1
    await talker.stream.send_all(b'{"recording_started":{}}\nhello\n' * 1000)
    bus.publish("camera_stream_closed", streamId="s", attempt=1)
    await talker.read_until(1)
    assert talker.lines == [{"camera_stream_closed": {"streamId": "s", "attempt": 1}}]
    assert bus.last_seq == 1  # nothing the client sent became an event
    for _ in range(3):  # connect and leave, repeatedly: nothing accumulates
        c = await LineClient.connect(server.port)
        await wait_until(lambda: server.clients == 2, "a second client")
        await c.stream.aclose()
        await wait_until(lambda: server.clients == 1, "the second client gone")
    assert subscribers(bus) == base + 1
    await talker.stream.aclose()
    await wait_until(lambda: server.clients == 0 and subscribers(bus) == base, "no clients")
    assert server.accepted == 4
    assert any("disconnected (client closed the connection)" in m for m in caplog.messages)


async def test_an_event_that_cannot_be_encoded_is_skipped_not_fatal(nursery, caplog):
    bus = EventBus()
    server = await start_server(nursery, bus, caplog)
    client = await LineClient.connect(server.port)
    await wait_until(lambda: server.clients == 1, "the client")
    # The catalogue lets a lone surrogate through (it is a str); UTF-8 cannot carry it.
    bus.publish_event({"event": "odd_camera_thing", "source": "test", "text": "\ud800"})
    bus.publish("camera_stream_closed", streamId="s", attempt=2)
    await client.read_until(1)
    assert client.lines == [{"camera_stream_closed": {"streamId": "s", "attempt": 2}}]
    assert any("event 1 (odd_camera_thing) cannot be sent" in m for m in caplog.messages)
    assert server.clients == 1


def test_listen_addresses():
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:8081") == ("::1", 8081)
    assert parse_listen(":9000") == ("", 9000)
    for bad in ("nope", "host:", "host:x", "host:70000"):
        with pytest.raises(ValueError, match="listen"):
            parse_listen(bad)
