"""``hubruntime demo``: the whole chain on embedded defaults, in one process.

A fake camera serving a generated clip, a hub reading it through FFmpeg, and the example plugin
that prints every event it is handed. A stall and a drop are scheduled so that
``camera_packet_delay`` and ``camera_stream_closed`` show within 30 s; Ctrl-C ends it cleanly.
"""

from __future__ import annotations

import logging
import signal
import tempfile
from pathlib import Path

import trio

from hubruntime.config import HealthConfig, HubConfig, LuaConfig, RtspConfig
from hubruntime.hub import Hub
from hubruntime.plugins import EXAMPLES

log = logging.getLogger("hubruntime.demo")

STREAM_ID = "demo-cam"


async def run_demo(data_dir: Path | None, duration: float, stall_at: float = 8.0,
                   stall_secs: float = 3.0, drop_at: float = 18.0) -> int:
    from hubruntime.fakecam.clip import capture_packets, ensure_clip
    from hubruntime.fakecam.server import FakeCamera

    data = data_dir or Path(tempfile.mkdtemp(prefix="hubruntime-demo-"))
    cache = Path(tempfile.gettempdir()) / "hubruntime-cache"
    log.info("demo: preparing the fake camera's clip (cached in %s)", cache)
    capture = await capture_packets(await ensure_clip(None, cache))
    camera = FakeCamera(capture, path="demo")
    cfg = HubConfig(data_dir=data, plugin_dirs=(EXAMPLES / "example.eventlog",),
                    health=HealthConfig(), rtsp=RtspConfig(), lua=LuaConfig())
    hub = Hub(cfg)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
        url = await nursery.start(camera.serve)
        print(f"fake camera: {url}", flush=True)
        await nursery.start(hub.run)
        assert hub.manager is not None
        if await hub.manager.get(STREAM_ID) is None:
            await hub.manager.add(STREAM_ID, "Demo camera", url, "fake camera from a test clip")
        assert hub.live is not None
        await hub.live.create(STREAM_ID)
        print(f"hub: re-publishing it at {hub.live.url(STREAM_ID)} "
              f"(try: ffplay -rtsp_transport tcp {hub.live.url(STREAM_ID)})", flush=True)
        print(f"hub: data in {data}; stream '{STREAM_ID}' added; the example plugin prints "
              f"each event. A {stall_secs:g} s stall comes at {stall_at:g} s and a drop at "
              f"{drop_at:g} s. Ctrl-C to stop.", flush=True)
        start = trio.current_time()

        async def at(when: float, what: str) -> None:
            await trio.sleep_until(start + when)
            print(f"demo: injecting {what}", flush=True)
            if what == "stall":
                camera.stall(stall_secs)
            else:
                camera.drop()

        nursery.start_soon(at, stall_at, "stall")
        nursery.start_soon(at, drop_at, "drop")
        if duration > 0:
            await trio.sleep(duration)
            nursery.cancel_scope.cancel()
    print("demo: stopped", flush=True)
    return 0


async def _stop_on_signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return
