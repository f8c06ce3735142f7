"""The reader command run by the real FFmpeg against loopback peers, and its failures classified.

Each peer is a small trio TCP server in the test that answers RTSP requests with canned replies
(or not at all); the publish side is a minimal RTSP sink accepting ANNOUNCE/SETUP/RECORD. Only
loopback traffic: no name is ever resolved (DNS texts are covered by the unit tests). Every
FFmpeg run is bounded by trio.fail_after; the reader's -timeout is 1 s to keep runs short.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from hubruntime.media.ffmpeg import classify_failure, find_ffmpeg, probe_version, reader_command
from hubruntime.redact import redact

pytestmark = pytest.mark.integration

RUN_LIMIT = 10.0  # seconds for any one FFmpeg run; the slowest below takes ~3.3 s
READER_TIMEOUT = 1.0  # the reader's -timeout, in seconds

try:
    find_ffmpeg()
except Exception as exc:  # noqa: BLE001 - any reason to have no FFmpeg skips the module
    pytest.skip(f"no ffmpeg: {exc}", allow_module_level=True)


# --- a scriptable loopback RTSP peer ---------------------------------------------------------


@dataclass
class Request:
    method: str
    uri: str
    headers: dict[str, str]
    body: bytes

    @property
    def cseq(self) -> str:
        return self.headers.get("cseq", "0")


CLOSE = b"<close>"  # an answer that makes the peer close the connection
Answer = Callable[[Request], bytes | None]  # None: say nothing, keep the connection


@dataclass
class Peer:
    answer: Answer
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    packets: dict[int, list[float]] = field(default_factory=dict)  # channel -> arrival times

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/x"

    async def handle(self, stream: trio.SocketStream) -> None:
        buf = b""
        try:
            while True:
                if buf[:1] == b"$":  # RTP/RTCP interleaved in the TCP connection
                    if len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[2:4], "big"):
                        end = 4 + int.from_bytes(buf[2:4], "big")
                        self.packets.setdefault(buf[1], []).append(trio.current_time())
                        buf = buf[end:]
                        continue
                elif b"\r\n\r\n" in buf:
                    head, rest = buf.split(b"\r\n\r\n", 1)
                    lines = head.decode("latin-1").split("\r\n")
                    headers = {}
                    for line in lines[1:]:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                    length = int(headers.get("content-length", "0"))
                    if len(rest) >= length:
                        method, uri, *_ = (lines[0] + "  ").split(" ")
                        request = Request(method, uri, headers, rest[:length])
                        buf = rest[length:]
                        self.requests.append(request)
                        reply = self.answer(request)
                        if reply == CLOSE:
                            return
                        if reply:
                            await stream.send_all(reply)
                        continue
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()


@asynccontextmanager
async def serving(answer: Answer) -> AsyncIterator[Peer]:
    """Run a peer on 127.0.0.1 for the duration of the block."""
    peer = Peer(answer)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        peer.port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, peer.handle, listeners)
        try:
            yield peer
        finally:
            nursery.cancel_scope.cancel()


def reply(req: Request, status: str, headers: str = "", body: bytes = b"") -> bytes:
    if body:
        headers += f"Content-Length: {len(body)}\r\n"
    return f"RTSP/1.0 {status}\r\nCSeq: {req.cseq}\r\n{headers}\r\n".encode() + body


def fail_with(status: str, headers: str = "", *, on: str = "OPTIONS") -> Answer:
    """Answer 200 until ``on``, then ``status`` (cameras often answer OPTIONS without auth)."""

    def answer(req: Request) -> bytes:
        if req.method == "OPTIONS" and on != "OPTIONS":
            return reply(req, "200 OK", "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n")
        return reply(req, status, headers)

    return answer


SPS_PPS = "Z0LAHtoCgL/lwFqDAwNSgAAAAwCAAAAZR4sXUA==,aM48gA=="
H264_SDP = (
    "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=cam\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
    "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    f"a=fmtp:96 packetization-mode=1; sprop-parameter-sets={SPS_PPS}\r\n"
    "a=control:trackID=0\r\n"
).encode()
# AAC with its config in the SDP: FFmpeg can open the output without receiving any packet.
AAC_SDP = (
    b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=cam\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
    b"m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/1\r\n"
    b"a=fmtp:97 profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;"
    b"indexdeltalength=3; config=118856E500\r\na=control:trackID=0\r\n"
)


def camera(sdp: bytes, setup_transport: str | None = None) -> Answer:
    """A camera that answers every step and then never sends a packet (a stall after PLAY)."""

    def answer(req: Request) -> bytes:
        if req.method == "DESCRIBE":
            return reply(req, "200 OK", "Content-Type: application/sdp\r\n", sdp)
        if req.method == "SETUP":
            transport = setup_transport or req.headers["transport"]
            return reply(req, "200 OK", f"Session: 1234\r\nTransport: {transport}\r\n")
        return reply(req, "200 OK", "Session: 1234\r\nPublic: OPTIONS, DESCRIBE, SETUP, PLAY\r\n")

    return answer


def sink(req: Request) -> bytes:
    """The hub's publish endpoint, reduced to accepting everything."""
    if req.method == "SETUP":
        return reply(req, "200 OK", f"Session: 42\r\nTransport: {req.headers['transport']}\r\n")
    return reply(req, "200 OK", "Session: 42\r\n")


@dataclass
class Run:
    returncode: int
    stderr: str
    elapsed: float

    @property
    def classified(self) -> tuple[str, str]:
        return classify_failure(self.returncode, self.stderr)


async def run_reader(camera_url: str, publish_url: str) -> Run:
    cmd = reader_command(camera_url, publish_url, timeout_secs=READER_TIMEOUT)
    start = trio.current_time()
    with trio.fail_after(RUN_LIMIT):
        proc = await trio.run_process(
            cmd, stdin=subprocess.DEVNULL, capture_stderr=True, check=False
        )
    return Run(proc.returncode, proc.stderr.decode("utf-8", "replace"), trio.current_time() - start)


async def read_from(camera_answer: Answer) -> tuple[Run, Peer]:
    async with serving(camera_answer) as cam, serving(sink) as hub:
        return await run_reader(cam.url, hub.url), cam


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port nobody listens on (bound then closed: the kernel answers RST)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port


@contextmanager
def unanswered_port() -> Iterator[int]:
    """A listener whose accept queue is full, so a new SYN gets no answer: a connect timeout
    like a camera that is off, without leaving the loopback interface."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(0)
        port = srv.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                c = socket.socket()
                c.setblocking(False)
                try:
                    c.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
                fillers.append(c)
            yield port
        finally:
            for c in fillers:
                c.close()


# --- the command line -------------------------------------------------------------------------


def _pairs(cmd: list[str]) -> list[tuple[str, str]]:
    return list(zip(cmd, cmd[1:], strict=False))


def test_reader_command_flags() -> None:
    camera_url = "rtsp://admin:pw1234@10.0.0.9:554/Streaming/Channels/101"
    publish_url = "rtsp://127.0.0.1:5554/s1"
    cmd = reader_command(camera_url, publish_url, timeout_secs=2.5)
    assert cmd[0] == find_ffmpeg()
    i = cmd.index("-i")
    assert cmd[i + 1] == camera_url  # as given, credentials included: FFmpeg needs them
    before, after = _pairs(cmd[:i]), _pairs(cmd[i + 2 :])
    for pair in [
        ("-rtsp_transport", "tcp"),
        ("-timeout", "2500000"),  # µs: FFmpeg >= 5.0 name for RTSP input (no -stimeout)
        ("-analyzeduration", "200000"),
        ("-probesize", "32768"),
    ]:
        assert pair in before, pair
    for pair in [
        ("-map", "0:v?"),
        ("-map", "0:a?"),
        ("-c", "copy"),
        ("-max_interleave_delta", "1"),
        ("-muxdelay", "0"),
        ("-f", "rtsp"),
        ("-rtsp_transport", "tcp"),
        ("-loglevel", "error"),
    ]:
        assert pair in after, pair
    for flag in ("-hide_banner", "-nostdin", "-y"):
        assert flag in cmd
    assert "-fflags" not in cmd  # nobuffer drops the probed keyframe: see reader_command
    out = cmd.index(publish_url)
    assert cmd[out - 2 : out] == ["-rtsp_transport", "tcp"]  # applies to the output
    assert cmd.count(camera_url) == 1

    shown = redact(" ".join(cmd))
    assert "pw1234" not in shown
    assert "rtsp://***@10.0.0.9:554/Streaming/Channels/101" in shown


def test_reader_command_options() -> None:
    cmd = reader_command("rtsp://cam/x", "rtsp://127.0.0.1:5554/s", transport="udp")
    assert ("-rtsp_transport", "udp") in _pairs(cmd[: cmd.index("-i")])
    assert ("-timeout", "5000000") in _pairs(cmd)
    with pytest.raises(ValueError):
        reader_command("rtsp://cam/x", "rtsp://127.0.0.1:5554/s", transport="carrier-pigeon")
    with pytest.raises(ValueError):
        reader_command("rtsp://cam/x", "rtsp://127.0.0.1:5554/s", timeout_secs=0)


async def test_probe_version() -> None:
    line = await probe_version()
    assert line.startswith("ffmpeg version ")


# --- failures, as FFmpeg reports them ---------------------------------------------------------


async def test_refused() -> None:
    async with serving(sink) as hub:
        with closed_port() as port:
            run = await run_reader(f"rtsp://127.0.0.1:{port}/x", hub.url)
        low_port = await run_reader("rtsp://127.0.0.1:1/x", hub.url)
    assert run.returncode != 0
    assert run.classified[0] == "refused", run.stderr
    assert f"127.0.0.1:{port}" in run.classified[1]
    assert low_port.classified[0] == "refused", low_port.stderr
    assert run.elapsed < 3 and low_port.elapsed < 3


async def test_connect_timeout() -> None:
    async with serving(sink) as hub:
        with unanswered_port() as port:
            run = await run_reader(f"rtsp://127.0.0.1:{port}/x", hub.url)
    assert "timed out" in run.stderr
    assert run.classified[0] == "timeout", run.stderr
    assert READER_TIMEOUT * 0.8 < run.elapsed < READER_TIMEOUT + 3


async def test_silent_peer_reads_as_protocol() -> None:
    # A peer that accepts and never answers: after -timeout FFmpeg says "Invalid data found",
    # not "timed out", exactly as for garbage. Only the elapsed time tells them apart.
    run, cam = await read_from(lambda req: None)
    assert [r.method for r in cam.requests] == ["OPTIONS"]
    assert run.returncode != 0
    assert "Invalid data found when processing input" in run.stderr
    assert run.classified[0] == "protocol"
    assert run.elapsed >= READER_TIMEOUT * 0.8


async def test_garbage_peer() -> None:
    answered = []

    def once(req: Request) -> bytes | None:
        # Answer the first request only: FFmpeg takes the garbage for a server request and
        # replies "501", which must not start a ping-pong.
        if answered:
            return None
        answered.append(req)
        return b"HELLO THIS IS NOT RTSP\r\n\r\n"

    run, _ = await read_from(once)
    assert run.classified[0] == "protocol", run.stderr


async def test_peer_closing_at_once() -> None:
    run, _ = await read_from(lambda req: CLOSE)
    reason, message = run.classified
    assert reason == "protocol", run.stderr
    assert "Invalid data found when processing input" in message


@pytest.mark.parametrize("on", ["OPTIONS", "DESCRIBE"])
@pytest.mark.parametrize(
    ("status", "headers", "reason"),
    [
        ("404 Not Found", "", "not_found"),
        ("401 Unauthorized", 'WWW-Authenticate: Basic realm="cam"\r\n', "unauthorized"),
        (
            "401 Unauthorized",
            'WWW-Authenticate: Digest realm="cam", nonce="4f2a", qop="auth"\r\n',
            "unauthorized",
        ),
        ("403 Forbidden", "", "unauthorized"),
        ("500 Internal Server Error", "", "protocol"),
        ("503 Service Unavailable", "", "protocol"),
        ("461 Unsupported Transport", "", "protocol"),
    ],
)
async def test_status_replies(status: str, headers: str, reason: str, on: str) -> None:
    run, cam = await read_from(fail_with(status, headers, on=on))
    assert cam.requests[-1].method == on
    assert run.returncode != 0
    got, message = run.classified
    assert got == reason, run.stderr
    assert f"method {on} failed: {status.split()[0]}" in message


async def test_nonmatching_transport() -> None:
    # The camera answers SETUP with UDP although TCP was asked for.
    udp = "RTP/AVP;unicast;client_port=5000-5001;server_port=6000-6001"
    run, _ = await read_from(camera(H264_SDP, setup_transport=udp))
    assert run.classified == ("protocol", "Nonmatching transport in server reply"), run.stderr


async def test_bad_scheme() -> None:
    async with serving(sink) as hub:
        run = await run_reader("foo://bar", hub.url)
    reason, message = run.classified
    assert reason == "protocol", run.stderr
    assert "Protocol not found" in message


async def test_stall_after_play_is_timeout_with_exit_0() -> None:
    async with serving(camera(AAC_SDP)) as cam, serving(sink) as hub:
        run = await run_reader(cam.url, hub.url)
        methods = [r.method for r in hub.requests]
    assert [r.method for r in cam.requests][-1] in ("PLAY", "TEARDOWN")
    assert "RECORD" in methods  # the publish did start: the hub could watch for packets
    assert run.returncode == 0
    reason, message = run.classified
    assert reason == "timeout", run.stderr
    # 5.1: "<url>: Connection timed out"; 9.0: "Error during demuxing: Connection timed out"
    assert message.endswith("Connection timed out")


async def test_credentials_are_used_and_never_shown() -> None:
    async with (
        serving(
            fail_with("401 Unauthorized", 'WWW-Authenticate: Basic realm="c"\r\n', on="DESCRIBE")
        ) as cam,
        serving(sink) as hub,
    ):
        url = f"rtsp://viewer:s3cr3t@127.0.0.1:{cam.port}/x"
        run = await run_reader(url, hub.url)
    # FFmpeg got the URL as given: it answered the Basic challenge with these credentials.
    token = base64.b64encode(b"viewer:s3cr3t").decode()
    assert any(r.headers.get("authorization") == f"Basic {token}" for r in cam.requests)
    assert "s3cr3t" in run.stderr  # FFmpeg prints the URL as it was given...
    reason, message = run.classified
    assert reason == "unauthorized"
    assert "s3cr3t" not in message  # ...the classification never does
    assert "s3cr3t" not in redact(run.stderr)


async def test_publish_side_failures_are_not_the_camera() -> None:
    async with serving(camera(AAC_SDP)) as cam:
        with closed_port() as port:
            refused = await run_reader(cam.url, f"rtsp://127.0.0.1:{port}/s1")
        async with serving(fail_with("404 Not Found", on="ANNOUNCE")) as hub:
            not_found = await run_reader(cam.url, hub.url)
    assert refused.classified[0] == "closed", refused.stderr
    assert "publishing to the hub failed" in refused.classified[1]
    assert "Connection refused" in refused.classified[1]
    reason, message = not_found.classified
    assert reason == "closed", not_found.stderr
    # 9.0 writes "404 (Not Found)"
    assert message.startswith("publishing to the hub failed: method ANNOUNCE failed: 404")


# --- a real camera, when GStreamer's RTSP server is installed ---------------------------------

GST_CAMERA = Path(__file__).resolve().parents[2] / "tools" / "peers" / "gst_rtsp_camera.py"
SYSTEM_PYTHON = "/usr/bin/python3"


def _gst_available() -> bool:
    if not (GST_CAMERA.exists() and os.access(SYSTEM_PYTHON, os.X_OK)):
        return False
    probe = "import gi; gi.require_version('GstRtspServer', '1.0')"
    try:
        done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


@pytest.mark.skipif(
    not _gst_available(), reason="needs tools/peers/gst_rtsp_camera.py with GStreamer's RTSP server"
)
async def test_real_camera_publishes_video_and_audio_fast() -> None:
    cam = await trio.lowlevel.open_process(
        [SYSTEM_PYTHON, str(GST_CAMERA), "--port", "0", "--path", "cam"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert cam.stdout is not None
        with trio.fail_after(15):
            first_line = b""
            while not first_line.endswith(b"\n"):
                chunk = await cam.stdout.receive_some(4096)
                assert chunk, "camera exited before printing its URL"
                first_line += chunk
        camera_url = first_line.decode().strip()
        async with serving(sink) as hub:
            cmd = reader_command(camera_url, hub.url, timeout_secs=READER_TIMEOUT)
            start = trio.current_time()
            reader = await trio.lowlevel.open_process(
                cmd, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                with trio.move_on_after(4):
                    while len(hub.packets.get(0, [])) < 50 or len(hub.packets.get(2, [])) < 20:
                        await trio.sleep(0.05)
            finally:
                reader.terminate()
                with trio.move_on_after(5):
                    await reader.wait()
                if reader.returncode is None:
                    reader.kill()
                    await reader.wait()
        announce = next(r for r in hub.requests if r.method == "ANNOUNCE").body.decode()
        assert "H264/90000" in announce and "MPEG4-GENERIC/48000" in announce
        # Channels 0 and 2 carry RTP of video and audio (1 and 3 are their RTCP).
        first_video = hub.packets[0][0] - start
        first_audio = hub.packets[2][0] - start
        # Measured ~0.3-0.5 s with these probing values; ~1.3-1.45 s with FFmpeg's defaults.
        assert first_video < 1.2 and first_audio < 1.2, (first_video, first_audio)
        assert len(hub.packets[2]) >= 20  # AAC is not aggregated (-muxdelay 0)
        assert reader.returncode == 255  # SIGTERM: FFmpeg's own exit status, no text
        assert classify_failure(reader.returncode, "")[0] == "closed"
    finally:
        cam.terminate()
        with trio.move_on_after(5):
            await cam.wait()
        if cam.returncode is None:
            cam.kill()
            await cam.wait()
