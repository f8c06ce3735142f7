"""``hubruntime streams add/remove`` typed while a hub runs on the same data directory: the hub
notices (its registry watches the database) and starts or stops reading without a restart."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from hubruntime.config import HubConfig, RtspConfig
from hubruntime.hub import Hub

DEADLINE = 20.0


async def cli(data_dir: Path, *args: str) -> str:
    proc = await trio.run_process(
        [sys.executable, "-m", "hubruntime", "streams", *args, "--data-dir", str(data_dir)],
        capture_stdout=True, capture_stderr=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


async def test_a_stream_added_and_removed_by_the_cli_is_read_and_stopped(tmp_path, nursery):
    data = tmp_path / "data"
    hub = Hub(HubConfig(data_dir=data, rtsp=RtspConfig(port=0, bind="127.0.0.1"),
                        advertise_host="127.0.0.1"))
    await nursery.start(hub.run)
    assert hub.bus is not None and hub.ingest is not None
    box = hub.bus.subscribe("test", maxlen=10_000)
    # nothing listens on port 9 of loopback: the reader is refused, which proves it runs
    await cli(data, "add", "porch", "Porch", "rtsp://user:secret@127.0.0.1:9/live")
    with trio.fail_after(DEADLINE):
        while True:
            got = [p for p in await box.get_batch(100)
                   if p.name == "camera_unreachable" and p.event.get("streamId") == "porch"]
            if got:
                break
    assert got[0].event["reason"] == "refused"
    assert "secret" not in got[0].json_bytes.decode()
    assert "porch" in hub.ingest.supervisors
    await cli(data, "remove", "porch")
    with trio.fail_after(DEADLINE):
        while "porch" in hub.ingest.supervisors:
            await trio.sleep(0.05)
