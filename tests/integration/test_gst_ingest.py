"""Ingest against an RTSP server not written here: GStreamer's gst-rtsp-server as the camera."""

from __future__ import annotations

import os
import signal
import tempfile
import time

import trio
from test_gst_peer import _start, _stop  # skips this module too when GStreamer is missing
from test_ingest import Rig, names, start_rig


async def test_hub_ingests_a_gstreamer_camera_and_sees_its_faults(tmp_path, nursery):
    err = tempfile.TemporaryFile()
    proc, url = _start(["--path", "peer"], err)
    try:
        rig: Rig = await start_rig(tmp_path, nursery)
        await rig.add("gst", url)
        await rig.wait_state("gst", "streaming", timeout=15)
        await rig.wait_packets_flow("gst", n=100)
        assert rig.hub.ingest is not None
        publication = rig.hub.ingest.hubs["gst"].publication
        assert publication is not None
        assert [m.kind for m in publication.sdp.media] == ["video", "audio"]

        # a clean stall: the camera process stopped for 2.5 s
        t0 = time.time()
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            events = await rig.events_until(t0 + 2.5)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        delays = [p for p in events if p.name == "camera_packet_delay"]
        assert sorted(p.event["track"] for p in delays) == ["audio", "video"], names(events)
        assert all(p.wall - t0 < 1.5 for p in delays)
        assert names(events) == ["camera_packet_delay"] * 2
        await rig.wait_packets_flow("gst", n=100)
        assert rig.state("gst") == "streaming"

        # the camera goes away: closed, then unreachable (refused) while it stays away
        _stop(proc)
        p = await rig.wait_event("camera_stream_closed", timeout=8)
        assert p.event["attempt"] == 1
        p = await rig.wait_event("camera_unreachable", timeout=10)
        assert p.event["reason"] == "refused"
    finally:
        _stop(proc)
        err.close()
    with trio.fail_after(5):
        while rig.state("gst") not in ("unreachable", "restarting", "connecting"):
            await trio.sleep(0.05)
