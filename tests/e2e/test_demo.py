"""``hubruntime demo`` as a newcomer runs it: events show within 30 s, Ctrl-C ends it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def test_demo_shows_the_scheduled_faults_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubruntime", "demo", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen: list[str] = []
    wanted = ("on_event:10: camera_packet_delay on demo-cam",
              "on_event:8: camera_stream_closed on demo-cam")
    deadline = time.monotonic() + 45
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if all(any(w in s for s in seen) for w in wanted):
                break
            assert time.monotonic() < deadline, "".join(seen[-20:])
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    out = "".join(seen) + rest
    assert proc.returncode == 0, out[-3000:]
    assert out.splitlines()[0].startswith(("fake camera: rtsp://127.0.0.1:", "20"))
    assert "event logger stopped" in out  # the plugin's teardown ran
    assert "demo: stopped" in out
    assert "Traceback" not in out
