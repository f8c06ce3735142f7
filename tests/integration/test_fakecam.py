"""The fake camera against real clients: FFmpeg, and a minimal RTSP client built on our parser.

Timing assertions use wide margins (the machine has 2 cores and runs other tests): pacing is
checked to within ~20 %, gaps to within 0.1 s of what was asked.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from hubruntime.fakecam import Capture, FakeCamera, capture_packets, ensure_clip
from hubruntime.proto.rtp import is_rtcp, parse_rtcp_sr, parse_rtp_header
from hubruntime.proto.rtsp import (
    Frame,
    Request,
    RtspParser,
    encode_response,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FFMPEG = shutil.which("ffmpeg")
FFPROBE = shutil.which("ffprobe")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="FFmpeg not on PATH")


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if FFMPEG is None:
        pytest.skip("FFmpeg not on PATH")
    cache = tmp_path_factory.mktemp("fakecam-cache")
    return trio.run(ensure_clip, None, cache)


@pytest.fixture(scope="session")
def capture(clip: Path) -> Capture:
    return trio.run(capture_packets, clip)


@pytest.fixture
async def camera(capture: Capture, nursery: trio.Nursery) -> FakeCamera:
    cam = FakeCamera(capture)
    await nursery.start(cam.serve)
    return cam


# a minimal RTSP client ---------------------------------------------------------------------------
from rtsp_client import MiniClient  # noqa: E402


@pytest.fixture
async def client_factory(camera: FakeCamera) -> AsyncIterator[list[MiniClient]]:
    clients: list[MiniClient] = []
    yield clients
    for c in clients:
        await c.aclose()


async def playing(camera: FakeCamera, clients: list[MiniClient]) -> MiniClient:
    c = await MiniClient.connect(camera.url)
    clients.append(c)
    await c.play()
    return c


def max_gap(packets: list[tuple[float, int, int]]) -> float:
    return max(b[0] - a[0] for a, b in zip(packets, packets[1:], strict=False))


def ffmpeg_read(url: str, out: Path, seconds: float) -> list[str]:
    return [FFMPEG or "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
            "-rtsp_transport", "tcp", "-i", url, "-t", str(seconds), "-c", "copy",
            "-f", "mpegts", "-y", str(out)]


def codecs(path: Path) -> list[str]:
    if FFPROBE:
        r = subprocess.run([FFPROBE, "-v", "error", "-show_entries", "stream=codec_name",
                            "-of", "csv=p=0", str(path)], capture_output=True, text=True,
                           timeout=30, check=True)
        return sorted(set(r.stdout.split()))  # MPEG-TS lists streams per program too
    r = subprocess.run([FFMPEG or "ffmpeg", "-hide_banner", "-i", str(path)],
                       capture_output=True, text=True, timeout=30)
    return sorted(set(re.findall(r"Stream #\S+: (?:Video|Audio): (\w+)", r.stderr)))


# (a) (b) FFmpeg as the client ---------------------------------------------------------------------
@needs_ffmpeg
async def test_ffmpeg_reads_h264_and_aac_at_real_time_pace(camera: FakeCamera,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "out.ts"
    start = trio.current_time()
    with trio.fail_after(30):
        done = await trio.run_process(ffmpeg_read(camera.url, out, 3), capture_stderr=True,
                                      check=False)
    wall = trio.current_time() - start
    assert done.returncode == 0, done.stderr.decode()
    assert codecs(out) == ["aac", "h264"]
    assert wall >= 2.5, f"3 s of media in {wall:.2f} s: not paced at real time"
    assert camera.stats.connections == 1 and camera.stats.packets_sent[0] > 0


@needs_ffmpeg
async def test_two_ffmpeg_clients_at_once_both_get_media(camera: FakeCamera,
                                                         tmp_path: Path) -> None:
    outs = [tmp_path / "one.ts", tmp_path / "two.ts"]
    results: list[subprocess.CompletedProcess[bytes]] = []

    async def read(out: Path) -> None:
        results.append(await trio.run_process(ffmpeg_read(camera.url, out, 2),
                                              capture_stderr=True, check=False))

    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, camera.playing_clients)
            await trio.sleep(0.05)

    with trio.fail_after(30):
        async with trio.open_nursery() as watcher:
            watcher.start_soon(watch)
            async with trio.open_nursery() as readers:
                for out in outs:
                    readers.start_soon(read, out)
            watcher.cancel_scope.cancel()
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert peak == 2
    for out in outs:
        assert codecs(out) == ["aac", "h264"]
        assert out.stat().st_size > 100_000
    assert camera.stats.connections == 2


# (c) stalls -------------------------------------------------------------------------------------
async def test_stall_gaps_every_track_then_goes_on_live(camera: FakeCamera,
                                                        client_factory: list[MiniClient]) -> None:
    c = await playing(camera, client_factory)
    await c.collect(0.6)
    stalled_at = trio.current_time()
    camera.stall(1.5)
    await c.collect(2.3)
    for channel, clock in ((0, 90000), (2, 48000)):
        packets = c.rtp(channel)
        gap = max_gap(packets)
        assert 1.4 <= gap <= 1.75, f"channel {channel}: gap {gap:.3f}"
        # after the gap: the live position, so the timestamps jumped by the stall too, and
        # the pace is real time again (no burst of the skipped frames)
        i = next(i for i, (a, b) in enumerate(zip(packets, packets[1:], strict=False))
                 if b[0] - a[0] == gap)
        jump = ((packets[i + 1][2] - packets[i][2]) & 0xFFFFFFFF) / clock
        assert 1.4 <= jump <= 1.7, f"channel {channel}: timestamps jumped {jump:.3f} s"
        assert (packets[i + 1][1] - packets[i][1]) & 0xFFFF == 1  # no sequence gap
        after = [p for p in packets if p[0] > stalled_at + 1.5]
        media = ((after[-1][2] - after[0][2]) & 0xFFFFFFFF) / clock
        assert media <= after[-1][0] - after[0][0] + 0.2


async def test_stall_video_gaps_video_only(camera: FakeCamera,
                                           client_factory: list[MiniClient]) -> None:
    c = await playing(camera, client_factory)
    await c.collect(0.6)
    stalled_at = trio.current_time()
    camera.stall_video(1.5)
    await c.collect(2.3)
    assert 1.4 <= max_gap(c.rtp(0)) <= 1.75
    audio = c.rtp(2)
    assert max_gap(audio) < 0.3
    during = [p for p in audio if stalled_at + 0.1 < p[0] < stalled_at + 1.4]
    assert len(during) >= 40  # ~47 AAC packets per second keep coming


# (d) drop, refuse, restore ---------------------------------------------------------------------
async def test_drop_closes_connections(camera: FakeCamera,
                                       client_factory: list[MiniClient]) -> None:
    c = await playing(camera, client_factory)
    await c.collect(0.3)
    assert camera.drop() == 1
    await c.until_eof(5)
    assert c.eof and camera.stats.dropped_by_command == 1


async def test_refuse_then_restore(camera: FakeCamera,
                                   client_factory: list[MiniClient]) -> None:
    c = await playing(camera, client_factory)
    camera.refuse()
    sock = trio.socket.socket()
    with sock, pytest.raises(ConnectionRefusedError):
        with trio.fail_after(5):
            await sock.connect(("127.0.0.1", camera.port))
    # the client already connected is still served
    before = len(c.rtp(0))
    await c.collect(0.5)
    assert len(c.rtp(0)) > before and not c.eof
    camera.restore()
    again = await MiniClient.connect(camera.url)
    client_factory.append(again)
    assert (await again.request("OPTIONS")).status == 200
    assert camera.stats.connections == 2


# (e) slow, and looping --------------------------------------------------------------------------
async def test_slow_makes_the_stream_fall_behind(camera: FakeCamera,
                                                 client_factory: list[MiniClient]) -> None:
    c = await playing(camera, client_factory)
    await c.collect(0.5)
    camera.slow(0.5)
    since = trio.current_time()
    await c.collect(2.0)
    video = c.rtp(0, since=since + 0.05)
    wall = video[-1][0] - video[0][0]
    media = ((video[-1][2] - video[0][2]) & 0xFFFFFFFF) / 90000
    assert wall >= 1.8
    assert abs(media / wall - 0.5) < 0.1, f"{media:.2f} s of media in {wall:.2f} s"
    # an RTCP sender report per track and second, from the RTP stream's SSRC
    for channel in (0, 2):
        ssrcs = {parse_rtp_header(p).ssrc for _, ch, p in c.frames  # type: ignore[union-attr]
                 if ch == channel}
        reports = [parse_rtcp_sr(p) for _, ch, p in c.frames if ch == channel + 1]
        assert len(reports) >= 2 and all(r is not None and {r.ssrc} == ssrcs for r in reports)
        # ...which keep mapping the RTP clock to wall time at the nominal rate: the packets'
        # timestamps fall behind them (else FFmpeg would re-time the stream and hide the lag)
        first, last = reports[0], reports[-1]
        assert first is not None and last is not None
        rate = ((last.rtp_timestamp - first.rtp_timestamp) & 0xFFFFFFFF) / (90000, 48000)[
            channel // 2] / (last.ntp_seconds - first.ntp_seconds)
        assert abs(rate - 1) < 0.05
    camera.restore()
    since = trio.current_time()
    await c.collect(1.0)
    video = c.rtp(0, since=since + 0.05)
    media = ((video[-1][2] - video[0][2]) & 0xFFFFFFFF) / 90000
    assert abs(media / (video[-1][0] - video[0][0]) - 1) < 0.2


@needs_ffmpeg
async def test_slow_camera_lag_survives_an_ffmpeg_reader(camera: FakeCamera,
                                                         nursery: trio.Nursery) -> None:
    """The hub's own pipeline (DESIGN §3): FFmpeg reads the camera and publishes to us with
    ``-c copy``; the timestamps it publishes must show the camera falling behind."""
    arrivals: list[tuple[float, int]] = []
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    nursery.start_soon(record_publisher, listener, arrivals)
    camera.slow(0.5)
    cmd = [FFMPEG or "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
           "-rtsp_transport", "tcp", "-analyzeduration", "200000", "-probesize", "32768",
           "-i", camera.url, "-t", "2.5", "-c", "copy", "-max_interleave_delta", "0",
           "-f", "rtsp", "-rtsp_transport", "tcp",
           f"rtsp://127.0.0.1:{listener.socket.getsockname()[1]}/pub"]
    with trio.fail_after(30):
        done = await trio.run_process(cmd, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    (t0, ts0), (t1, ts1) = arrivals[len(arrivals) // 5], arrivals[-1]
    media = ((ts1 - ts0) & 0xFFFFFFFF) / 90000
    assert t1 - t0 > 3
    assert abs(media / (t1 - t0) - 0.5) < 0.1, f"{media:.2f} s of media in {t1 - t0:.2f} s"


async def record_publisher(listener: trio.SocketListener,
                           arrivals: list[tuple[float, int]]) -> None:
    """Accept one RTSP publisher; record (arrival, RTP timestamp) of its channel-0 packets."""
    async with listener:
        stream = await listener.accept()
    parser = RtspParser()
    async with stream:
        while data := await stream.receive_some(1 << 16):
            now = trio.current_time()
            for item in parser.feed(data):
                if isinstance(item, Frame):
                    if item.channel == 0 and not is_rtcp(item.payload):
                        header = parse_rtp_header(item.payload)
                        assert header is not None
                        arrivals.append((now, header.timestamp))
                    continue
                assert isinstance(item, Request)
                if item.method == "TEARDOWN":
                    return  # FFmpeg closes without waiting for an answer
                headers = [("Session", "pub")]
                if item.method == "SETUP":
                    headers.append(("Transport", item.headers.get("Transport") or ""))
                await stream.send_all(encode_response(200, item.cseq, headers))


async def test_loops_with_continuous_numbering(camera: FakeCamera, capture: Capture,
                                               client_factory: list[MiniClient]) -> None:
    # A fast camera (10 × real time) crosses the end of the 10 s clip in about a second.
    camera.slow(10)
    c = await playing(camera, client_factory)
    await c.collect(1.6)
    for channel, clock in ((0, 90000), (2, 48000)):
        packets = c.rtp(channel)
        media = ((packets[-1][2] - packets[0][2]) & 0xFFFFFFFF) / clock
        assert media > capture.duration + 1
        seqs = [p[1] for p in packets]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
        steps = [((b[2] - a[2]) & 0xFFFFFFFF) / clock
                 for a, b in zip(packets, packets[1:], strict=False)]
        assert all(0 <= s <= 0.05 for s in steps), max(steps)  # no jump back at the seam


async def test_skew_offsets_timestamps(camera: FakeCamera,
                                       client_factory: list[MiniClient]) -> None:
    c = await playing(camera, client_factory)
    await c.collect(0.4)
    camera.skew(3)
    since = trio.current_time()
    await c.collect(0.4)
    before = [p for p in c.rtp(0) if p[0] < since]
    after = c.rtp(0, since=since + 0.05)
    step = ((after[0][2] - before[-1][2]) & 0xFFFFFFFF) / 90000
    assert 2.9 < step < 3.2


# (f) protocol answers ---------------------------------------------------------------------------
async def test_auth_paths_and_errors(capture: Capture, nursery: trio.Nursery,
                                     tmp_path: Path) -> None:
    cam = FakeCamera(capture, user="admin", password="s3cret")
    await nursery.start(cam.serve)
    c = await MiniClient.connect(cam.url)
    try:
        assert (await c.request("OPTIONS")).status == 200
        r = await c.request("DESCRIBE")
        assert r.status == 401
        assert r.headers.get("WWW-Authenticate") == 'Basic realm="fakecam"'
        wrong = "Basic " + base64.b64encode(b"admin:nope").decode()
        assert (await c.request("DESCRIBE", headers=[("Authorization", wrong)])).status == 401
        good = [("Authorization", "Basic " + base64.b64encode(b"admin:s3cret").decode())]
        r = await c.request("DESCRIBE", headers=good)
        assert r.status == 200 and r.headers.get("Content-Type") == "application/sdp"
        assert r.headers.get("Content-Base") == cam.url + "/"
        body = r.body.decode()
        assert "a=control:trackID=0" in body and "a=control:trackID=1" in body
        r = await c.request("DESCRIBE", cam.url.replace("/cam", "/other"), good)
        assert r.status == 404
        udp = [*good, ("Transport", "RTP/AVP;unicast;client_port=5000-5001")]
        assert (await c.request("SETUP", cam.url + "/trackID=0", udp)).status == 461
        assert (await c.request("PLAY", headers=[*good, ("Session", "nope")])).status == 454
        assert (await c.request("FOO", headers=good)).status == 501
        with trio.fail_after(5):
            await c.stream.send_all(b"HELLO\r\n\r\n")
        r = await c.response()
        assert r.status == 400
        await c.until_eof(5)
    finally:
        await c.aclose()
    if FFMPEG is not None:  # FFmpeg answers the 401 with Basic credentials from the URL
        url = cam.url.replace("rtsp://", "rtsp://admin:s3cret@")
        with trio.fail_after(30):
            done = await trio.run_process(ffmpeg_read(url, tmp_path / "a.ts", 0.5),
                                          capture_stderr=True, check=False)
        assert done.returncode == 0, done.stderr.decode()


async def test_pause_and_play_resume_live(camera: FakeCamera,
                                          client_factory: list[MiniClient]) -> None:
    c = await playing(camera, client_factory)
    await c.collect(0.3)
    assert (await c.request("PAUSE")).status == 200
    paused = trio.current_time()
    await c.collect(0.8)
    assert not c.rtp(0, since=paused + 0.1)
    r = await c.request("PLAY")
    assert r.status == 200 and "rtptime=" in (r.headers.get("RTP-Info") or "")
    await c.collect(0.3)
    assert c.rtp(0, since=paused + 0.8)
    assert (await c.request("GET_PARAMETER")).status == 200
    assert (await c.request("TEARDOWN")).status == 200


async def test_a_client_that_reads_nothing_is_dropped_alone(capture: Capture,
                                                            nursery: trio.Nursery) -> None:
    cam = FakeCamera(capture, send_timeout=0.5)
    await nursery.start(cam.serve)
    stuck_sock = trio.socket.socket()
    stuck_sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    with trio.fail_after(5):
        await stuck_sock.connect(("127.0.0.1", cam.port))
    stuck = MiniClient(trio.SocketStream(stuck_sock), cam.url)
    good = await MiniClient.connect(cam.url)
    try:
        await stuck.play()
        await good.play()
        cam.slow(20)  # fill the stuck client's buffers quickly
        with trio.fail_after(20):
            while cam.stats.active_clients > 1:
                await good.collect(0.1)
        assert cam.stats.dropped_slow == 1 and not good.eof
        before = len(good.rtp(0))
        await good.collect(0.3)
        assert len(good.rtp(0)) > before
    finally:
        await stuck.aclose()
        await good.aclose()


# (g) the command line ---------------------------------------------------------------------------
async def test_cli_prints_url_first_takes_control_commands_and_stops_on_sigterm(
        clip: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "tools" / "fakecam"), "--port", "0", "--control", "0",
           "--clip", str(clip), "--fault", "0:skew 3"]
    with (tmp_path / "stderr.txt").open("wb") as errfile:
        proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=errfile,
                                                start_new_session=True)
    try:
        with trio.fail_after(30):
            assert proc.stdout is not None
            lines = await read_lines(proc.stdout, 2)
            url, control = lines
            assert url.startswith("rtsp://127.0.0.1:") and url.endswith("/cam")
            assert control.startswith("control: 127.0.0.1:")
            ctl = await trio.open_tcp_stream("127.0.0.1", int(control.rsplit(":", 1)[1]))
            async with ctl:
                assert await ask(ctl, "stall 1") == "ok stall 1"
                assert (await ask(ctl, "stall -1")).startswith("error ")
                while True:  # the scheduled fault runs right after start
                    status = json.loads((await ask(ctl, "status"))[3:])
                    if status["faults"]["skew"] == 3:
                        break
                    await trio.sleep(0.05)
                assert status["faults"]["stall"] > 0
            rtsp = await MiniClient.connect(url)
            assert (await rtsp.request("OPTIONS")).status == 200
            await rtsp.aclose()
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0, (tmp_path / "stderr.txt").read_text()
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            with trio.fail_after(10):
                await proc.wait()


def test_cli_rejects_a_bad_fault_without_starting() -> None:
    r = subprocess.run([sys.executable, "-m", "hubruntime.fakecam.cli", "--fault", "soon:stall"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--fault" in r.stderr and r.stdout == ""


async def read_lines(stream: trio.abc.ReceiveStream, count: int) -> list[str]:
    buf = b""
    while buf.count(b"\n") < count:
        data = await stream.receive_some(4096)
        assert data, f"process ended; stdout so far: {buf!r}"
        buf += data
    return buf.decode().splitlines()[:count]


async def ask(stream: trio.SocketStream, line: str) -> str:
    await stream.send_all(line.encode() + b"\n")
    buf = b""
    while not buf.endswith(b"\n"):
        data = await stream.receive_some(4096)
        assert data
        buf += data
    return buf.decode().strip()
