"""The hub's RTSP server for viewers (DESIGN §4), end to end with real clients.

A real hub re-publishes the fake camera (640x360 H.264 + AAC) on loopback; FFmpeg, FFprobe and
GStreamer play it over TCP and UDP. ``MiniClient`` (tests/integration/rtsp_client.py) is used
only for what the real clients cannot show: per-packet arrival times, twenty viewers at once, a
viewer that stops reading, and malformed requests. Every wait has a deadline, every process
started here is ended (``trio.run_process`` under ``fail_after`` kills it when cancelled).
"""

from __future__ import annotations

import math
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from rtsp_client import MiniClient
from waits import run, until

import hubruntime.rtsp.live as live_mod
from hubruntime.config import HubConfig, RtspConfig
from hubruntime.events.bus import Mailbox, Published
from hubruntime.fakecam import FakeCamera, default_capture
from hubruntime.hub import Hub
from hubruntime.lua.modules.args import ApiError
from hubruntime.proto.h264 import is_keyframe_start
from hubruntime.proto.rtp import RtpPacket, is_rtcp, parse_rtp_header
from hubruntime.proto.rtsp import Response, RtspParser, encode_request, parse_transport
from hubruntime.rtsp.fanout import Fanout
from hubruntime.rtsp.live import LiveStreams
from hubruntime.rtsp.viewer import ViewerServer

FFMPEG = shutil.which("ffmpeg")
FFPROBE = shutil.which("ffprobe")
GST_LAUNCH = shutil.which("gst-launch-1.0")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(FFMPEG is None or FFPROBE is None, reason="FFmpeg not on PATH"),
]
needs_gst = pytest.mark.skipif(GST_LAUNCH is None, reason="gst-launch-1.0 not on PATH")

SID = "cam1"
RECORD_SECS = 5
GST_MIN_BUFFERS = 75  # decoded frames at fakesink: 3 s of the 25 fps clip
RATE_WINDOW = 3.0
RATE_TOLERANCE = 0.10
FIRST_KEYFRAME_MAX = 0.2  # seconds from sending PLAY to the first video packet
NON_VCL = (6, 7, 8, 9)  # SEI, SPS, PPS, access unit delimiter


@pytest.fixture(scope="session")
def capture():
    return trio.run(default_capture)


class Rig:
    def __init__(self, hub: Hub, box: Mailbox, cam: FakeCamera) -> None:
        self.hub = hub
        self.box = box
        self.cam = cam
        self.seen: list[Published] = []

    @property
    def live(self) -> LiveStreams:
        assert self.hub.live is not None
        return self.hub.live

    @property
    def server(self) -> ViewerServer:
        return self.live.server

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def url(self) -> str:
        return self.live.url(SID)

    @property
    def fanout(self) -> Fanout:
        return self.live.fanouts[SID]

    def publisher_packets(self) -> int:
        assert self.hub.ingest is not None
        return self.hub.ingest.hubs[SID].packets

    def video_channel(self) -> int:
        pub = self.fanout.hub.publication
        assert pub is not None
        (video,) = [m.index for m in pub.sdp.media if m.kind == "video"]
        return 2 * video

    async def wait_event(self, name: str, timeout: float,
                         match: Callable[[dict[str, Any]], bool] = lambda e: True) -> Published:
        for p in self.seen:
            if p.name == name and match(p.event):
                self.seen.remove(p)
                return p
        with trio.fail_after(timeout):
            while True:
                for p in await self.box.get_batch(100):
                    if p.name == name and match(p.event):
                        return p
                    self.seen.append(p)


async def start_rig(tmp_path: Path, nursery: trio.Nursery, capture: Any) -> Rig:
    cam = FakeCamera(capture)
    await nursery.start(cam.serve)
    cfg = HubConfig(data_dir=tmp_path / "data", rtsp=RtspConfig(port=0, bind="127.0.0.1"),
                    advertise_host="127.0.0.1")
    hub = Hub(cfg)
    await nursery.start(hub.run)
    assert hub.bus is not None and hub.manager is not None and hub.live is not None
    rig = Rig(hub, hub.bus.subscribe("test", maxlen=100_000), cam)
    await hub.manager.add(SID, "Camera", cam.url)
    await hub.live.create(SID)
    started = await rig.wait_event("live_rtsp_stream_started", 15)
    assert started.event["streamId"] == SID
    assert started.event["localRtspUrl"] == rig.url
    assert rig.url.startswith("rtsp://127.0.0.1:")
    # a keyframe in the cache and packets flowing, so that every viewer starts the same way
    await until(lambda: rig.fanout.hub.gop is not None and bool(rig.fanout.hub.gop.snapshot()), 10,
                "a keyframe in the GOP cache")
    return rig


class Arrivals:
    """Receives from a playing MiniClient, keeping only arrival times (and counts) of packets."""

    def __init__(self, client: MiniClient) -> None:
        self.client = client
        self.times: list[float] = []  # every interleaved frame, RTP and RTCP

    async def pump(self) -> None:
        while not self.client.eof:
            await self.client.collect(0.2)  # receive_some is cancel-safe: nothing is lost
            self.times.extend(t for t, _, _ in self.client.frames)
            self.client.frames.clear()

    def count(self, start: float, end: float) -> int:
        return sum(1 for t in self.times if start <= t < end)

    def max_gap(self, start: float, end: float) -> float:
        ts = [start, *(t for t in self.times if start <= t < end), end]
        return max(b - a for a, b in zip(ts, ts[1:], strict=False))


async def connect_with_rcvbuf(url: str, rcvbuf: int) -> MiniClient:
    """A MiniClient whose socket has a tiny receive buffer (set before connecting)."""
    port = int(url.split("/")[2].rpartition(":")[2])
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    with trio.fail_after(5):
        await sock.connect(("127.0.0.1", port))
    return MiniClient(trio.SocketStream(sock), url)


async def udp_pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """Two UDP sockets on consecutive ports, the first even (RTP, RTCP)."""
    for _ in range(50):
        rtp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await rtp.bind(("127.0.0.1", 0))
        port = rtp.getsockname()[1]
        if port % 2 == 0:
            rtcp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            try:
                await rtcp.bind(("127.0.0.1", port + 1))
                return rtp, rtcp
            except OSError:
                rtcp.close()
        rtp.close()
    pytest.fail("no pair of free UDP ports")


async def raw_exchange(port: int, data: bytes, timeout: float = 5.0
                       ) -> tuple[list[Response], float]:
    """Send ``data`` on a new connection, read until the server closes it (within
    ``timeout``); the responses and the seconds until the close."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    parser = RtspParser()
    responses: list[Response] = []
    t0 = trio.current_time()
    try:
        with trio.fail_after(timeout):
            if data:
                await stream.send_all(data)
            while chunk := await stream.receive_some(65536):
                responses += [i for i in parser.feed(chunk) if isinstance(i, Response)]
    finally:
        await stream.aclose()
    return responses, trio.current_time() - t0


def sessions_and_queues(rig: Rig) -> tuple[int, int, int]:
    """Server sessions, the fan-out's viewer queues, and the connections ``kick_stream`` would
    cancel (these once stayed listed after the connection ended: a leak per viewer)."""
    fanout = rig.live.fanouts.get(SID)
    return (len(rig.server.sessions), len(fanout.queues) if fanout else 0,
            len(rig.server._kick.get(SID, [])))


# real clients --------------------------------------------------------------------------------

@needs_gst
async def test_ffprobe_ffmpeg_and_gstreamer_play_over_tcp_and_udp(tmp_path, nursery, capture):
    rig = await start_rig(tmp_path, nursery, capture)
    url = rig.url

    r = await run([FFPROBE, "-v", "error", "-rtsp_transport", "tcp", "-show_entries",
                   "stream=codec_name,width,height", "-of", "csv=p=0", url], 20)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["h264,640,360", "aac"], r.stdout.decode()

    most = {"tcp": 0, "udp": 0}  # most sessions seen at once per transport
    done = trio.Event()

    async def watch_transports() -> None:
        while not done.is_set():
            for kind in most:
                now = sum(1 for sess in list(rig.server.sessions.values())
                          if any(t.tcp == (kind == "tcp") for t in sess.tracks.values()))
                most[kind] = max(most[kind], now)
            await trio.sleep(0.05)

    results: dict[str, Any] = {}

    async def record(transport: str) -> None:
        out = tmp_path / f"rec-{transport}.mkv"
        r = await run([FFMPEG, "-nostdin", "-v", "error", "-rtsp_transport", transport,
                       "-i", url, "-t", str(RECORD_SECS), "-c", "copy", "-y", str(out)], 30)
        assert r.returncode == 0, r.stderr.decode()
        decode = await run([FFMPEG, "-nostdin", "-v", "error", "-i", str(out), "-f", "null",
                            "-"], 30)
        dur = await run([FFPROBE, "-v", "error", "-show_entries", "format=duration", "-of",
                         "csv=p=0", str(out)], 20)
        results[f"ffmpeg-{transport}"] = (decode.returncode, decode.stdout + decode.stderr,
                                          float(dur.stdout.decode().strip() or "nan"))

    async def gst(transport: str) -> None:
        out = tmp_path / f"gst-{transport}.out"
        err = tmp_path / f"gst-{transport}.err"
        cmd = [GST_LAUNCH, "-v", "rtspsrc", f"location={url}", f"protocols={transport}", "!",
               "rtph264depay", "!", "h264parse", "!", "avdec_h264", "!", "fakesink",
               "silent=false"]
        with out.open("wb") as fo, err.open("wb") as fe:
            proc = await trio.lowlevel.open_process(cmd, stdout=fo, stderr=fe,
                                                    stdin=subprocess.DEVNULL)
            t0 = trio.current_time()
            try:
                def buffers() -> int:
                    return sum(1 for line in out.read_text(errors="replace").splitlines()
                               if "fakesink0: last-message = chain" in line)

                # stdout is block-buffered into the file: more frames than counted have passed
                await until(lambda: buffers() >= GST_MIN_BUFFERS or proc.returncode is not None,
                            20, f"{GST_MIN_BUFFERS} buffers at fakesink over {transport}")
                assert proc.returncode is None, err.read_text()
                ran = trio.current_time() - t0
                proc.send_signal(signal.SIGINT)
                with trio.move_on_after(10):
                    await proc.wait()
                stopped_by_sigint = proc.returncode is not None
            finally:
                if proc.returncode is None:
                    proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
        text = out.read_text(errors="replace") + err.read_text(errors="replace")
        results[f"gst-{transport}"] = (buffers(), [ln for ln in text.splitlines()
                                                   if "ERROR" in ln], stopped_by_sigint, ran)

    async with trio.open_nursery() as clients:
        nursery.start_soon(watch_transports)
        for transport in ("tcp", "udp"):
            clients.start_soon(record, transport)
            clients.start_soon(gst, transport)
    done.set()

    for transport in ("tcp", "udp"):
        code, output, duration = results[f"ffmpeg-{transport}"]
        assert code == 0 and output == b"", (transport, output[:2000])
        assert duration >= RECORD_SECS - 0.5, (transport, duration)
        count, errors, stopped, _ = results[f"gst-{transport}"]
        assert count >= GST_MIN_BUFFERS, (transport, count)
        assert errors == [], (transport, errors[:10])
        assert stopped, f"gst-launch over {transport} ignored SIGINT"
    assert most == {"tcp": 2, "udp": 2}, most  # FFmpeg's and GStreamer's, on each
    print("\n" + "; ".join(f"{k}: {v[2]:.3f} s recorded" if k.startswith("ffmpeg")
                           else f"{k}: {v[0]} buffers in {v[3]:.1f} s"
                           for k, v in sorted(results.items())))
    # every real client's session and queue is gone once it has ended
    await until(lambda: sessions_and_queues(rig) == (0, 0, 0), 5,
                "sessions freed after the real clients ended", lambda: sessions_and_queues(rig))
    await until(lambda: rig.server.connections == 0, 5, "connections closed")


# many viewers, one stuck ------------------------------------------------------------------------

async def test_twenty_viewers_and_a_stuck_one(tmp_path, nursery, capture):
    rig = await start_rig(tmp_path, nursery, capture)
    published: list[float] = []  # arrival times of the publisher's packets at the hub
    assert rig.hub.ingest is not None
    stream_hub = rig.hub.ingest.hubs[SID]

    class Tap:  # a PacketSink that notes arrival times
        def on_start(self, publication: object) -> None:
            pass

        def on_packet(self, pkt: RtpPacket) -> None:
            published.append(pkt.arrival)

        def on_flush(self) -> None:
            pass

        def on_stop(self, reason: str) -> None:
            pass

    tap = Tap()
    stream_hub.add_sink(tap)
    viewers = [await MiniClient.connect(rig.url) for _ in range(20)]
    for v in viewers:
        await v.play()
    arrivals = [Arrivals(v) for v in viewers]
    counts = [rig.publisher_packets()]
    async with trio.open_nursery() as pumps:
        for a in arrivals:
            pumps.start_soon(a.pump)
        await until(lambda: all(a.times for a in arrivals), 5, "all 20 viewers get packets")

        # before: starting once the cached GOP each viewer starts with is delivered
        t1 = trio.current_time() + 0.5
        await trio.sleep_until(t1 + RATE_WINDOW)
        counts.append(rig.publisher_packets())

        # the stuck viewer: plays, never reads, and its socket takes next to nothing
        stuck = await connect_with_rcvbuf(rig.url, 2048)
        await stuck.play()
        t2 = trio.current_time()
        assert stuck.session is not None
        queue = rig.server.sessions[stuck.session].queue
        assert queue is not None
        await until(lambda: len(queue) > 50, 5, "the stuck viewer's packets pile up")
        await trio.sleep_until(t2 + RATE_WINDOW)
        counts.append(rig.publisher_packets())
        assert not queue.closed, "dropped before the second window ended: nothing measured"
        backlog = len(queue)

        # eventually it skips (queue overflow) or is dropped (stuck for 10 s)
        await until(lambda: queue.closed or queue.overflows > 0, 20,
                    "the stuck viewer is dropped or skips")
        t_gone = trio.current_time() - t2
        outcome = dict(closed=queue.closed, overflows=queue.overflows, skipped=queue.skipped)
        if queue.closed:
            assert stuck.session not in rig.server.sessions
            assert queue not in rig.fanout.queues
            await stuck.until_eof(10)  # what the kernel held, then the server's close
        counts.append(rig.publisher_packets())
        t3 = trio.current_time()
        await until(lambda: all(a.count(t3, math.inf) > 20 for a in arrivals), 2,
                    "the 20 viewers still get packets")
        pumps.cancel_scope.cancel()
    stream_hub.remove_sink(tap)

    def rate(times: list[float], start: float) -> float:
        return sum(1 for t in times if start <= t < start + RATE_WINDOW) / RATE_WINDOW

    pub_before, pub_after = rate(published, t1), rate(published, t2)
    before = [rate(a.times, t1) for a in arrivals]
    after = [rate(a.times, t2) for a in arrivals]
    print(f"\npublisher {pub_before:.1f} -> {pub_after:.1f} packets/s; 20 viewers "
          f"{min(before):.1f}..{max(before):.1f} -> {min(after):.1f}..{max(after):.1f} "
          f"packets/s with the stuck one ({backlog} packets behind); stuck one after "
          f"{t_gone:.1f} s: {outcome}")
    assert counts == sorted(set(counts)), counts  # the publisher's packets keep coming
    assert abs(pub_after - pub_before) <= RATE_TOLERANCE * pub_before
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        assert abs(b - pub_before) <= RATE_TOLERANCE * pub_before, (i, b, pub_before)
        assert abs(a - pub_after) <= RATE_TOLERANCE * pub_after, (i, a, pub_after)
        assert abs(a - b) <= RATE_TOLERANCE * b, (i, b, a)

    for v in viewers:  # abrupt: no TEARDOWN
        await v.aclose()
    await stuck.aclose()
    await until(lambda: sessions_and_queues(rig) == (0, 0, 0), 5,
                "sessions freed after 21 abrupt disconnects", lambda: sessions_and_queues(rig))
    await until(lambda: rig.server.connections == 0, 5, "connections closed")


# sessions and the first picture -------------------------------------------------------------

async def test_new_viewer_starts_at_the_cached_keyframe(tmp_path, nursery, capture):
    rig = await start_rig(tmp_path, nursery, capture)
    video_ch = rig.video_channel()
    delays: list[float] = []
    firsts: list[int] = []  # NAL type of each viewer's first video packet
    for _ in range(5):
        c = await MiniClient.connect(rig.url)
        assert (await c.request("DESCRIBE")).status == 200
        for i in range(2):
            r = await c.request("SETUP", f"{rig.url}/trackID={i}",
                                [("Transport", f"RTP/AVP/TCP;unicast;interleaved={2 * i}-"
                                               f"{2 * i + 1}")])
            assert r.status == 200, r
            c.session = (r.headers.get("Session") or "").split(";")[0]
        t_play = trio.current_time()
        r = await c.request("PLAY", headers=[("Range", "npt=0.000-")])
        assert r.status == 200, r
        with trio.fail_after(2):
            while not c.rtp(video_ch):
                await c.collect(0.05)
        first_t = c.rtp(video_ch)[0][0]
        delays.append(first_t - t_play)
        await c.collect(0.3)  # the rest of the cached GOP, and live packets after it
        video = []  # (header, payload) of each video RTP packet, in arrival order
        for _, ch, packet in c.frames:
            if ch == video_ch and not is_rtcp(packet):
                h = parse_rtp_header(packet)
                assert h is not None
                video.append((h, packet[h.header_length:h.length - h.padding]))
        # The GOP starts at the first packet of the keyframe's access unit: the IDR (or SPS)
        # itself, or an SEI/AUD/PPS sent before it with the same timestamp (libx264's SEI on
        # the clip's first frame, once per loop of the fake camera).
        first_header, first = video[0]
        same_au = [payload for h, payload in video if h.timestamp == first_header.timestamp]
        nal_type = first[0] & 0x1F
        firsts.append(nal_type)
        assert is_keyframe_start(first) or (
            nal_type in NON_VCL and any(is_keyframe_start(p) for p in same_au)), nal_type
        # the cached GOP and the live packets after it: in order, no gap, no duplicate
        seqs = [h.seq for h, _ in video]
        assert all((b - a) % 65536 == 1 for a, b in zip(seqs, seqs[1:], strict=False))
        # RTP-Info announces the first packet the viewer gets
        info = r.headers.get("RTP-Info") or ""
        assert f"trackID={video_ch // 2};seq={seqs[0]};" in info, info
        await c.aclose()
    print(f"\nfirst video packet after PLAY: {', '.join(f'{d * 1000:.1f}' for d in delays)} ms"
          f"; its NAL types {firsts}")
    assert max(delays) < FIRST_KEYFRAME_MAX, delays


async def test_teardown_and_disconnects_free_sessions(tmp_path, nursery, capture):
    rig = await start_rig(tmp_path, nursery, capture)
    baseline = sessions_and_queues(rig)
    assert baseline == (0, 0, 0)

    # TEARDOWN over TCP: answered, and the connection is closed (its last session)
    tcp = [await MiniClient.connect(rig.url) for _ in range(3)]
    for c in tcp:
        await c.play()
    await until(lambda: sessions_and_queues(rig)[:2] == (3, 3), 2, "3 sessions playing")
    for c in tcp:
        r = await c.request("TEARDOWN")
        assert r.status == 200, r
        await c.until_eof(5)
        await c.aclose()
    await until(lambda: sessions_and_queues(rig) == baseline, 5, "sessions freed by TEARDOWN")

    # abrupt disconnects: TCP interleaved, a session set up but never played, and UDP
    abrupt = [await MiniClient.connect(rig.url) for _ in range(3)]
    for c in abrupt[:2]:
        await c.play()
    r = await abrupt[2].request("SETUP", f"{rig.url}/trackID=0",
                                [("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")])
    assert r.status == 200
    udp_client = await MiniClient.connect(rig.url)
    rtp, rtcp = await udp_pair()
    port = rtp.getsockname()[1]
    r = await udp_client.request("SETUP", f"{rig.url}/trackID=0",
                                 [("Transport", f"RTP/AVP;unicast;client_port={port}-{port + 1}")])
    assert r.status == 200, r
    (answer,) = parse_transport(r.headers.get("Transport") or "")
    assert not answer.tcp and answer.server_port is not None
    udp_client.session = (r.headers.get("Session") or "").split(";")[0]
    assert (await udp_client.request("PLAY")).status == 200
    with trio.fail_after(2):
        data = await rtp.recv(65536)
    assert parse_rtp_header(data) is not None
    await until(lambda: sessions_and_queues(rig)[:2] == (4, 3), 2,
                "4 sessions, 3 playing")
    for c in [*abrupt, udp_client]:
        await c.aclose()
    await until(lambda: sessions_and_queues(rig) == baseline, 5,
                "sessions freed by abrupt disconnects")
    await until(lambda: rig.server.connections == 0, 5, "connections closed")
    # the UDP writer is gone: after what was already on its way, nothing more arrives
    while True:  # drain what was on its way
        with trio.move_on_after(0.1) as drained:
            await rtp.recv(65536)
        if drained.cancelled_caught:
            break
    with trio.move_on_after(0.5) as quiet:
        await rtp.recv(65536)
    assert quiet.cancelled_caught, "UDP packets still arrive after the session ended"
    rtp.close()
    rtcp.close()


# bad input -------------------------------------------------------------------------------------

async def test_bad_input_is_answered_and_does_not_disturb_a_viewer(tmp_path, nursery, capture):
    rig = await start_rig(tmp_path, nursery, capture)
    rig.server.first_request_timeout = 1.0
    watcher = await MiniClient.connect(rig.url)
    await watcher.play()
    flow = Arrivals(watcher)
    base = f"rtsp://127.0.0.1:{rig.port}"
    async with trio.open_nursery() as pumps:
        pumps.start_soon(flow.pump)
        await until(lambda: bool(flow.times), 2, "the viewer gets packets")
        t_start = trio.current_time()

        c = await MiniClient.connect(f"{base}/nope")
        assert (await c.request("DESCRIBE")).status == 404
        r = await c.request("SETUP", f"{base}/nope/trackID=0",
                            [("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")])
        assert r.status == 404
        r = await c.request("FROB")
        assert r.status == 501 and "DESCRIBE" in (r.headers.get("Public") or "")
        r = await c.request("ANNOUNCE", headers=[("Content-Type", "application/sdp")])
        assert r.status == 405 and "PLAY" in (r.headers.get("Allow") or "")
        assert (await c.request("OPTIONS")).status == 200  # the connection still works
        await c.aclose()

        long_line = b"DESCRIBE " + f"{base}/".encode() + b"a" * 9000 + b" RTSP/1.0"
        responses, _ = await raw_exchange(rig.port, long_line)
        assert [x.status for x in responses] == [414]

        flood = (encode_request("OPTIONS", base, 1)[:-2]
                 + b"".join(b"X-Flood-%d: y\r\n" % i for i in range(200)) + b"\r\n")
        responses, _ = await raw_exchange(rig.port, flood)
        assert len(responses) == 1 and 400 <= responses[0].status < 500, responses

        big_head = encode_request("OPTIONS", base, 1)[:-2] + b"X-Big: " + b"b" * 20000
        responses, _ = await raw_exchange(rig.port, big_head)
        assert [x.status for x in responses] == [413]

        responses, idle_secs = await raw_exchange(rig.port, b"")
        assert responses == []
        assert 0.9 <= idle_secs < 2.0, idle_secs

        t_end = trio.current_time()
        await until(lambda: flow.count(t_end, math.inf) > 10, 2, "the viewer still plays")
        pumps.cancel_scope.cancel()
    gap = flow.max_gap(t_start, t_end)
    print(f"\nbad input for {t_end - t_start:.2f} s; viewer's longest gap {gap * 1000:.0f} ms, "
          f"first-request timeout closed after {idle_secs:.2f} s")
    assert gap < 0.5, gap
    assert not watcher.eof
    assert len(rig.server.sessions) == 1
    await until(lambda: rig.server.connections == 1, 2, "bad connections closed")
    await watcher.aclose()


# live stream lifecycle -------------------------------------------------------------------------

async def test_delete_ends_viewers_and_failures_report_errors(tmp_path, nursery, capture,
                                                              monkeypatch):
    rig = await start_rig(tmp_path, nursery, capture)
    viewers = [await MiniClient.connect(rig.url) for _ in range(2)]
    for v in viewers:
        await v.play()
    setup_only = await MiniClient.connect(rig.url)
    r = await setup_only.request("SETUP", f"{rig.url}/trackID=0",
                                 [("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")])
    assert r.status == 200
    await until(lambda: len(rig.server.sessions) == 3, 2, "3 sessions")

    t0 = trio.current_time()
    await rig.live.delete(SID)
    for c in [*viewers, setup_only]:
        await c.until_eof(5)
    t_closed = trio.current_time() - t0
    stopped = await rig.wait_event("live_rtsp_stream_stopped", 2,
                                   lambda e: e.get("streamId") == SID)
    assert "errorMessage" not in stopped.event, stopped.event
    assert SID not in rig.live.fanouts
    await until(lambda: not rig.server.sessions and rig.server.connections == 0, 5,
                "sessions and connections gone")
    c = await MiniClient.connect(rig.url)
    assert (await c.request("DESCRIBE")).status == 404
    await c.aclose()
    packets = rig.publisher_packets()
    await until(lambda: rig.publisher_packets() > packets + 20, 5,
                "the camera stream itself goes on")

    # unknown stream: ApiError and a stopped event with the reason
    with pytest.raises(ApiError):
        await rig.live.create("ghost")
    ev = await rig.wait_event("live_rtsp_stream_stopped", 2,
                              lambda e: e.get("streamId") == "ghost")
    assert ev.event.get("errorMessage"), ev.event

    # a camera that refuses connections: stopped with a reason once the wait is over
    monkeypatch.setattr(live_mod, "PUBLICATION_WAIT_SECS", 2.0)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    assert rig.hub.manager is not None
    await rig.hub.manager.add("dead", "Dead", f"rtsp://127.0.0.1:{port}/x")
    t1 = time.monotonic()
    await rig.live.create("dead")
    ev = await rig.wait_event("live_rtsp_stream_stopped", 2.0 + 2.0,
                              lambda e: e.get("streamId") == "dead")
    waited = time.monotonic() - t1
    assert ev.event.get("errorMessage"), ev.event
    assert 2.0 - 0.1 <= waited < 2.0 + 1.0, waited
    assert not [p for p in rig.seen if p.name == "live_rtsp_stream_started"
                and p.event.get("streamId") == "dead"]
    print(f"\nviewers closed {t_closed * 1000:.0f} ms after delete; refusing camera reported "
          f"after {waited:.2f} s: {ev.event['errorMessage']!r}")


async def test_a_connection_that_talks_once_then_idles_without_a_session_is_closed(
        tmp_path, nursery, capture):
    """OPTIONS then silence, holding no session: the server closes it after the session
    timeout instead of keeping the socket and its task for ever."""
    rig = await start_rig(tmp_path, nursery, capture)
    rig.server.first_request_timeout = 0.5
    rig.server.session_timeout = 1.0
    before = rig.server.connections
    options = encode_request("OPTIONS", f"rtsp://127.0.0.1:{rig.port}", 1)
    responses, idle_secs = await raw_exchange(rig.port, options, timeout=5.0)
    assert [x.status for x in responses] == [200]
    assert 1.0 <= idle_secs < 3.0, idle_secs
    await until(lambda: rig.server.connections == before, 2, "the idle connection is freed")
