"""Ingest end to end: a real hub, real FFmpeg readers, the fake camera with injected faults.

Each fault must give exactly its event(s), once, within the threshold + 0.5 s, and the stream
must flow again after ``restore``. Events are collected from the bus with their publish time;
every wait has a deadline.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from hubruntime.config import HealthConfig, HubConfig, RtspConfig
from hubruntime.events.bus import Mailbox, Published
from hubruntime.fakecam.clip import capture_packets, default_cache_dir, ensure_clip
from hubruntime.fakecam.server import FakeCamera
from hubruntime.hub import Hub

SLACK = 0.5


@pytest.fixture(scope="session")
def capture():
    return trio.run(_capture)


async def _capture():
    return await capture_packets(await ensure_clip(None, default_cache_dir()))


class Rig:
    def __init__(self, hub: Hub, box: Mailbox) -> None:
        self.hub = hub
        self.box = box
        self.seen: list[Published] = []

    async def add(self, sid: str, url: str) -> None:
        assert self.hub.manager is not None
        await self.hub.manager.add(sid, f"Camera {sid}", url)

    def state(self, sid: str) -> str:
        assert self.hub.manager is not None
        return self.hub.manager.state(sid).state

    async def wait_state(self, sid: str, state: str, timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while self.state(sid) != state:
                await trio.sleep(0.02)

    def packets(self, sid: str) -> int:
        assert self.hub.ingest is not None
        hub = self.hub.ingest.hubs.get(sid)
        return hub.packets if hub else 0

    async def wait_packets_flow(self, sid: str, n: int = 50, timeout: float = 10.0) -> None:
        start = self.packets(sid)
        with trio.fail_after(timeout):
            while self.packets(sid) < start + n:
                await trio.sleep(0.02)

    async def events_until(self, deadline_wall: float) -> list[Published]:
        """Every event published until ``deadline_wall`` (time.time())."""
        got: list[Published] = []
        with trio.move_on_after(max(0.0, deadline_wall - time.time())):
            while True:
                got.extend(await self.box.get_batch(100))
        got.extend(self.box.get_nowait_batch(10_000))
        self.seen.extend(got)
        return got

    async def wait_event(self, name: str, timeout: float) -> Published:
        with trio.fail_after(timeout):
            while True:
                for p in await self.box.get_batch(100):
                    self.seen.append(p)
                    if p.name == name:
                        return p


async def start_rig(tmp_path: Path, nursery: trio.Nursery, **health: Any) -> Rig:
    cfg = HubConfig(data_dir=tmp_path / "data", health=HealthConfig(**health),
                    rtsp=RtspConfig(port=0, bind="127.0.0.1"), advertise_host="127.0.0.1")
    hub = Hub(cfg)
    await nursery.start(hub.run)
    assert hub.bus is not None
    return Rig(hub, hub.bus.subscribe("test", maxlen=100_000))


async def start_camera(nursery: trio.Nursery, capture: Any, **kw: Any) -> FakeCamera:
    cam = FakeCamera(capture, **kw)
    await nursery.start(cam.serve)
    return cam


def names(events: list[Published]) -> list[str]:
    return [p.name for p in events]


async def test_stall_gives_one_packet_delay_per_track_then_flows(tmp_path, nursery, capture):
    rig = await start_rig(tmp_path, nursery)
    cam = await start_camera(nursery, capture)
    await rig.add("cam1", cam.url)
    await rig.wait_state("cam1", "streaming")
    await rig.wait_packets_flow("cam1")
    t0 = time.time()
    cam.stall(2.5)
    events = await rig.events_until(t0 + 2.5 + 1.5)
    assert sorted(names(events)) == ["camera_packet_delay", "camera_packet_delay"], names(events)
    assert sorted(p.event["track"] for p in events) == ["audio", "video"]
    for p in events:
        assert p.event["streamId"] == "cam1"
        assert 1.0 <= p.event["gapSecs"] < 1.0 + SLACK
        assert p.wall - t0 < 1.0 + SLACK, p.wall - t0
    await rig.wait_packets_flow("cam1")
    await rig.wait_state("cam1", "streaming")


async def test_frozen_video_with_live_audio_is_caught(tmp_path, nursery, capture):
    rig = await start_rig(tmp_path, nursery)
    cam = await start_camera(nursery, capture)
    await rig.add("cam1", cam.url)
    await rig.wait_packets_flow("cam1")
    t0 = time.time()
    cam.stall_video(2.0)
    events = await rig.events_until(t0 + 3.5)
    assert names(events) == ["camera_packet_delay"]
    assert events[0].event["track"] == "video"
    assert events[0].wall - t0 < 1.0 + SLACK


async def test_slow_camera_gives_one_accumulated_delay_and_a_restart(tmp_path, nursery, capture):
    rig = await start_rig(tmp_path, nursery, accumulated_delay_secs=2.0)
    cam = await start_camera(nursery, capture)
    await rig.add("cam1", cam.url)
    await rig.wait_packets_flow("cam1")
    assert rig.hub.ingest is not None
    sup = rig.hub.ingest.supervisors["cam1"]
    readers = sup.readers_started
    t0 = time.time()
    cam.slow(0.5)  # the lag grows by 0.5 s each second: past 2 s after ~4 s
    p = await rig.wait_event("camera_accumulated_delay", timeout=10)
    cam.restore()
    assert 2.0 <= p.event["delaySecs"] < 2.0 + SLACK
    assert 3.5 <= p.wall - t0 <= 4.0 + 1.0 + SLACK
    with trio.fail_after(10):
        while sup.readers_started == readers:
            await trio.sleep(0.02)
    await rig.wait_packets_flow("cam1")
    later = await rig.events_until(time.time() + 1.0)
    assert "camera_accumulated_delay" not in names(later)
    assert "camera_stream_closed" not in names(rig.seen)  # our own restart is not a close


async def test_drop_gives_stream_closed_then_reconnects(tmp_path, nursery, capture):
    rig = await start_rig(tmp_path, nursery)
    cam = await start_camera(nursery, capture)
    await rig.add("cam1", cam.url)
    await rig.wait_packets_flow("cam1")
    t0 = time.time()
    cam.drop()
    p = await rig.wait_event("camera_stream_closed", timeout=1.0 + SLACK)
    assert p.event == {"event": "camera_stream_closed", "streamId": "cam1", "attempt": 1}
    assert p.wall - t0 < SLACK
    await rig.wait_state("cam1", "streaming")
    await rig.wait_packets_flow("cam1")
    rest = await rig.events_until(time.time() + 0.5)
    assert "camera_stream_closed" not in names(rest)


async def test_camera_clock_jumps(tmp_path, nursery, capture):
    """``skew``: the camera's RTP clock leaps. Measured through FFmpeg (the reader re-anchors on
    sender reports): a leap back is absorbed, nothing is late; a leap ahead makes FFmpeg clamp
    its output timestamps, so the stream's clock stands still while wall time goes on. The hub
    reports that as an accumulated delay at the threshold and restarts the reader, which clears
    it."""
    rig = await start_rig(tmp_path, nursery, accumulated_delay_secs=2.0)
    cam = await start_camera(nursery, capture)
    await rig.add("cam1", cam.url)
    await rig.wait_packets_flow("cam1")
    assert rig.hub.ingest is not None
    sup = rig.hub.ingest.supervisors["cam1"]
    readers = sup.readers_started
    t0 = time.time()
    cam.skew(10.0)
    p = await rig.wait_event("camera_accumulated_delay", timeout=2.0 + SLACK + 1.0)
    assert 2.0 <= p.event["delaySecs"] < 2.0 + SLACK
    # the clock stands still from FFmpeg's next sender report on, up to ~1 s after the leap
    assert p.wall - t0 < 2.0 + SLACK + 1.0
    with trio.fail_after(10):
        while sup.readers_started == readers:
            await trio.sleep(0.02)
    await rig.wait_packets_flow("cam1")
    readers = sup.readers_started
    cam.skew(-10.0)  # for the new reader's session: a leap back by 20 s
    events = await rig.events_until(time.time() + 3.0)
    assert names(events) == []
    assert sup.readers_started == readers


async def test_refusing_camera_backs_off_and_recovers(tmp_path, nursery, capture):
    """60 s of refusal: a bounded number of attempts and events, never a storm."""
    rig = await start_rig(tmp_path, nursery)
    cam = await start_camera(nursery, capture)
    await rig.add("cam1", cam.url)
    await rig.wait_packets_flow("cam1")
    assert rig.hub.ingest is not None
    sup = rig.hub.ingest.supervisors["cam1"]
    cam.refuse()
    cam.drop()
    t0 = time.time()
    readers = sup.readers_started
    events = await rig.events_until(t0 + 60)
    attempts = sup.readers_started - readers
    unreachable = [p for p in events if p.name == "camera_unreachable"]
    assert names(events)[0] == "camera_stream_closed"
    assert all(p.event["reason"] == "refused" for p in unreachable)
    assert 4 <= len(unreachable) <= 10, len(unreachable)
    assert attempts <= 11
    assert rig.state("cam1") in ("unreachable", "restarting", "connecting")
    cam.restore()
    await rig.wait_state("cam1", "streaming", timeout=35)
    await rig.wait_packets_flow("cam1")


async def test_bad_urls_are_unreachable_with_reason_and_no_secret(tmp_path, nursery, capture,
                                                                  caplog):
    caplog.set_level(logging.INFO)
    rig = await start_rig(tmp_path, nursery)
    cam = await start_camera(nursery, capture, user="admin", password="right-pass")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    host_port = cam.url.split("//", 1)[1].split("/", 1)[0]
    await rig.add("refused", f"rtsp://u:topsecret1@127.0.0.1:{port}/x")
    await rig.add("notfound", f"rtsp://admin:right-pass@{host_port}/nope")
    await rig.add("badauth", f"rtsp://admin:topsecret2@{host_port}/cam")
    want = {"refused": "refused", "notfound": "not_found", "badauth": "unauthorized"}
    got: dict[str, str] = {}
    with trio.fail_after(15):
        while len(got) < 3:
            for p in await rig.box.get_batch(100):
                if p.name == "camera_unreachable":
                    got.setdefault(p.event["streamId"], p.event["reason"])
                    assert "topsecret" not in p.event.get("errorMessage", "")
    assert got == want
    assert rig.state("refused") == "unreachable"
    text = caplog.text
    assert "topsecret" not in text and "right-pass" not in text
    assert "rtsp://***@127.0.0.1" in text


async def test_garbage_camera_is_reported_and_others_do_not_notice(tmp_path, nursery, capture):
    async def garbage(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"\x00\xffNOT RTSP AT ALL\r\n\r\n" * 20)
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    gport = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, garbage, listeners)
    rig = await start_rig(tmp_path, nursery)
    cam = await start_camera(nursery, capture)
    await rig.add("good", cam.url)
    await rig.wait_packets_flow("good")
    await rig.add("junk", f"rtsp://127.0.0.1:{gport}/cam")
    p = await rig.wait_event("camera_unreachable", timeout=10)
    assert p.event["streamId"] == "junk" and p.event["reason"] == "protocol"
    others = await rig.events_until(time.time() + 1.5)
    assert not [e for e in others + rig.seen if e.event.get("streamId") == "good"]
    await rig.wait_packets_flow("good")


async def test_state_reader_processes_and_removal(tmp_path, capture):
    async with trio.open_nursery() as nursery:
        rig = await start_rig(tmp_path, nursery)
        cam = await start_camera(nursery, capture)
        await rig.add("a", cam.url)
        await rig.add("b", cam.url)
        await rig.wait_packets_flow("a")
        await rig.wait_packets_flow("b")
        assert rig.hub.ingest is not None and rig.hub.manager is not None
        pid_a = rig.hub.ingest.supervisors["a"].pid
        pid_b = rig.hub.ingest.supervisors["b"].pid
        assert pid_a and pid_b and _alive(pid_a) and _alive(pid_b)
        assert cam.playing_clients == 2  # one upstream connection per stream
        await rig.hub.manager.remove("a")
        with trio.fail_after(5):
            while _alive(pid_a) or "a" in rig.hub.ingest.supervisors:
                await trio.sleep(0.02)
        assert _alive(pid_b)
        await rig.wait_packets_flow("b")
        nursery.cancel_scope.cancel()
    assert not _alive(pid_b)
    assert not _ffmpeg_children()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _ffmpeg_children() -> list[int]:
    me = os.getpid()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and comm.startswith("ffmpeg"):
            out.append(int(entry.name))
    return out


async def test_plugins_see_health_events_and_stream_state(tmp_path, nursery, capture):
    """The chain a plugin author relies on: fault → event table → script → cameras state."""
    plugin = tmp_path / "plugins" / "test.watch"
    (plugin / "scripts").mkdir(parents=True)
    (plugin / "config.json").write_text(
        '{"id": "test.watch", "version": "1", "permissions": ["cameras", "logging"], '
        '"startup": "scripts/startup"}')
    (plugin / "scripts" / "startup.lua").write_text(
        'require("cameras").subscribe("scripts/on_event")\n')
    (plugin / "scripts" / "on_event.lua").write_text("""
local params = ...
local cameras = require("cameras")
local s = cameras.get_camera_stream(params.streamId)
require("logging").info(params.event .. " " .. tostring(params.track) .. " state=" .. s.state
    .. " url=" .. tostring(s.rtspUrl))
""")
    cfg = HubConfig(data_dir=tmp_path / "data", plugin_dirs=(plugin,),
                    rtsp=RtspConfig(port=0, bind="127.0.0.1"))
    hub = Hub(cfg)
    await nursery.start(hub.run)
    assert hub.plugins is not None and hub.manager is not None
    lines: list[str] = []
    changed = trio.Event()

    def on_log(pid: str, level: str, where: str, text: str) -> None:
        nonlocal changed
        lines.append(text)
        changed.set()
        changed = trio.Event()

    hub.plugins.log_listeners.append(on_log)
    cam = await start_camera(nursery, capture)
    await hub.manager.add("cam1", "Cam", cam.url)
    with trio.fail_after(10):
        while hub.manager.state("cam1").state != "streaming":
            await trio.sleep(0.02)
    cam.stall_video(2.0)
    with trio.fail_after(5):
        while not any(t.startswith("camera_packet_delay video") for t in lines):
            await changed.wait()
    assert "camera_packet_delay video state=delayed url=nil" in lines
    with trio.fail_after(5):
        while hub.manager.state("cam1").state != "streaming":
            await trio.sleep(0.02)
