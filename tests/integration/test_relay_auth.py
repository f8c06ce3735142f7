"""Optional Digest auth on the viewer side, checked with FFmpeg as the client."""

from __future__ import annotations

import shutil

import trio

from hubruntime.config import HubConfig, RtspConfig
from hubruntime.fakecam import FakeCamera, default_capture
from hubruntime.hub import Hub

FFPROBE = shutil.which("ffprobe") or "ffprobe"


async def probe(url: str) -> tuple[int, str]:
    r = await trio.run_process(
        [FFPROBE, "-v", "error", "-rtsp_transport", "tcp", "-show_entries",
         "stream=codec_name", "-of", "csv=p=0", url],
        capture_stdout=True, capture_stderr=True, check=False)
    return r.returncode, (r.stdout + r.stderr).decode()


async def test_viewers_need_credentials_when_configured(tmp_path, nursery):
    cam = FakeCamera(await default_capture())
    await nursery.start(cam.serve)
    cfg = HubConfig(data_dir=tmp_path, advertise_host="127.0.0.1",
                    rtsp=RtspConfig(port=0, bind="127.0.0.1", user="viewer", password="s3cret"))
    hub = Hub(cfg)
    await nursery.start(hub.run)
    assert hub.manager is not None and hub.live is not None and hub.bus is not None
    box = hub.bus.subscribe("t")
    await hub.manager.add("cam", "Cam", cam.url)
    await hub.live.create("cam")
    with trio.fail_after(15):
        while True:
            items = await box.get_batch(10)
            if any(p.name == "live_rtsp_stream_started" for p in items):
                break
    url = hub.live.url("cam")
    with trio.fail_after(30):
        code, out = await probe(url)
        assert code != 0 and "401" in out
        code, out = await probe(url.replace("rtsp://", "rtsp://viewer:wrong@"))
        assert code != 0 and "401" in out
        code, out = await probe(url.replace("rtsp://", "rtsp://viewer:s3cret@"))
    assert code == 0, out
    assert out.split() == ["h264", "aac"]
