"""A fake IP camera for tests and the demo: a recorded clip served over RTSP/TCP at real-time
pace, looping, with faults injected on command (DESIGN §3 is what it exercises).

    capture = await default_capture()            # generate + packetise once per process
    camera = FakeCamera(capture)                 # port 0: any free port
    url = await nursery.start(camera.serve)      # rtsp://127.0.0.1:<port>/cam
    camera.stall(2)                              # …or stall_video, slow, drop, refuse, skew

Modules: ``clip`` (clip generation, FFmpeg capture to RTP), ``pacing`` (sans-I/O timing and
header rewriting), ``session`` (one client), ``server`` (the camera and its faults), ``control``
(line protocol), ``cli`` (``hubruntime fakecam``).
"""

from __future__ import annotations

from pathlib import Path

from hubruntime.fakecam.clip import (
    Capture,
    CapturedPacket,
    ClipError,
    capture_packets,
    default_cache_dir,
    ensure_clip,
)
from hubruntime.fakecam.server import FakeCamera

__all__ = [
    "Capture",
    "CapturedPacket",
    "ClipError",
    "FakeCamera",
    "capture_packets",
    "default_cache_dir",
    "default_capture",
    "ensure_clip",
]


async def default_capture(cache_dir: Path | None = None) -> Capture:
    """The default clip (generated on first use in ``cache_dir``) as RTP packets."""
    return await capture_packets(await ensure_clip(None, cache_dir or default_cache_dir()))
