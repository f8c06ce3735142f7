"""GStreamer's RTSP server as a fake camera (tools/peers/gst_rtsp_camera.py), read by FFmpeg.

These tests check the peer itself, so that tests of the hub can trust it: it serves H.264 (+ AAC)
over RTSP on TCP and UDP, and its user/password check answers 401. The peer runs under the
system python (/usr/bin/python3 with Debian's python3-gi); without the packages that
tools/peers/install-debian.sh installs, the module is skipped.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "peers" / "gst_rtsp_camera.py"
SYSTEM_PYTHON = "/usr/bin/python3"
URL_DEADLINE = 15.0  # seconds for the peer to print its URL (measured: ~0.05 s)
FFMPEG = shutil.which("ffmpeg")
FFPROBE = shutil.which("ffprobe")


def _gst_rtsp_server_importable() -> tuple[bool, str]:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False, f"{SYSTEM_PYTHON} not found"
    try:
        proc = subprocess.run(
            [SYSTEM_PYTHON, "-c",
             "import gi; gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import GstRtspServer"],
            capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return False, f"{SYSTEM_PYTHON} timed out importing gi"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return False, f"{SYSTEM_PYTHON} cannot load GstRtspServer 1.0 ({last})"
    return True, ""


_OK, _WHY = _gst_rtsp_server_importable()
if not _OK:
    pytest.skip(f"GStreamer RTSP server peer unavailable: {_WHY}; "
                "run tools/peers/install-debian.sh", allow_module_level=True)
if FFMPEG is None:
    pytest.skip("ffmpeg not on PATH; run tools/peers/install-debian.sh",
                allow_module_level=True)


def _start(args: list[str], stderr_file) -> tuple[subprocess.Popen[bytes], str]:
    """Start the peer and return it with the URL it prints, or fail within URL_DEADLINE."""
    proc = subprocess.Popen(
        [SYSTEM_PYTHON, str(SCRIPT), "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=stderr_file, stdin=subprocess.DEVNULL,
        start_new_session=True)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + URL_DEADLINE
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _stop(proc)
            pytest.fail(f"peer printed no URL in {URL_DEADLINE} s: {_read(stderr_file)}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:  # EOF: the peer exited
                _stop(proc)
                pytest.fail(f"peer exited with {proc.returncode} before printing its URL: "
                            f"{_read(stderr_file)}")
            buf += chunk
    url = buf.split(b"\n", 1)[0].decode()
    assert re.fullmatch(r"rtsp://127\.0\.0\.1:\d+/\S+", url), url
    return proc, url


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


def _read(f) -> str:
    f.flush()
    f.seek(0)
    data = f.read()
    return data.decode(errors="replace")[-2000:] if isinstance(data, bytes) else data[-2000:]


@pytest.fixture
def start_gst_camera() -> Iterator[Callable[..., str]]:
    """Start peers with extra arguments; each is stopped (and checked to exit 0) at teardown."""
    started: list[tuple[subprocess.Popen[bytes], object]] = []

    def start(*args: str) -> str:
        err = tempfile.TemporaryFile()
        proc, url = _start(list(args), err)
        started.append((proc, err))
        return url

    yield start
    failures = []
    for proc, err in started:
        code = _stop(proc)
        if code != 0:
            failures.append(f"peer exited {code}: {_read(err)}")
        err.close()
    assert not failures, failures


@pytest.fixture
def gst_camera(start_gst_camera: Callable[..., str]) -> str:
    """URL of a running GStreamer RTSP camera (H.264 + AAC, no auth) on 127.0.0.1."""
    return start_gst_camera()


def _ffmpeg(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    assert FFMPEG is not None
    return subprocess.run([FFMPEG, "-hide_banner", "-nostdin", *args],
                          capture_output=True, text=True, timeout=timeout)


def _record(url: str, out: Path, transport: str = "tcp", seconds: float = 2) -> None:
    proc = _ffmpeg("-rtsp_transport", transport, "-i", url, "-t", str(seconds),
                   "-c", "copy", "-y", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]


def _streams(path: Path) -> tuple[list[str], float]:
    """(codec names, duration in s) of a media file, by ffprobe or else `ffmpeg -i`."""
    if FFPROBE is not None:
        proc = subprocess.run(
            [FFPROBE, "-v", "error", "-show_entries", "stream=codec_name:format=duration",
             "-of", "json", str(path)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        info = json.loads(proc.stdout)
        return ([s["codec_name"] for s in info["streams"]],
                float(info["format"].get("duration", 0)))
    proc = _ffmpeg("-i", str(path))  # exits 1 ("At least one output file"), prints the info
    codecs = re.findall(r"Stream #\d+:\d+.*?: (?:Video|Audio): (\w+)", proc.stderr)
    m = re.search(r"Duration: (\d+):(\d+):([\d.]+)", proc.stderr)
    duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else 0.0
    return codecs, duration


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_ffmpeg_reads_h264_and_aac(gst_camera: str, tmp_path: Path, transport: str) -> None:
    out = tmp_path / "cam.ts"
    _record(gst_camera, out, transport)
    codecs, duration = _streams(out)
    assert codecs[:1] == ["h264"] and codecs.count("h264") == 1, codecs
    assert len(codecs) == 2 and codecs[1] in ("aac", "pcm_alaw"), codecs
    assert 1.5 <= duration <= 3.0, duration


def test_no_audio_serves_video_only(start_gst_camera, tmp_path: Path) -> None:
    url = start_gst_camera("--no-audio", "--path", "video")
    assert url.endswith("/video")
    out = tmp_path / "cam.ts"
    _record(url, out, seconds=1)
    assert _streams(out)[0] == ["h264"]


@pytest.mark.parametrize("scheme", ["digest", "basic"])
def test_credentials_are_required(start_gst_camera, tmp_path: Path, scheme: str) -> None:
    url = start_gst_camera("--user", "viewer", "--password", "s3cret", "--auth", scheme)

    refused = _ffmpeg("-rtsp_transport", "tcp", "-i", url, "-t", "1", "-f", "null", "-")
    assert refused.returncode != 0
    assert "401" in refused.stderr, refused.stderr[-2000:]

    wrong = _ffmpeg("-rtsp_transport", "tcp", "-i", url.replace("rtsp://", "rtsp://viewer:x@"),
                    "-t", "1", "-f", "null", "-")
    assert wrong.returncode != 0
    assert "401" in wrong.stderr, wrong.stderr[-2000:]

    out = tmp_path / "cam.ts"
    _record(url.replace("rtsp://", "rtsp://viewer:s3cret@"), out, seconds=1)
    assert "h264" in _streams(out)[0]


def test_taken_port_exits_1(gst_camera: str) -> None:
    port = gst_camera.split(":")[2].split("/")[0]
    proc = subprocess.run([SYSTEM_PYTHON, str(SCRIPT), "--port", port],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Address already in use" in proc.stderr
