"""The fake camera's material: a test clip on disk, and that clip cut into RTP packets.

Why packets and not the file: serving means sending RTP at real-time pace, and packetising H.264
and AAC correctly (FU-A fragmentation, SPS/PPS in the SDP, AU headers) is exactly what FFmpeg's
RTP muxer already does. So the clip is published once by FFmpeg, as fast as it can (no ``-re``),
to a tiny ANNOUNCE/SETUP/RECORD receiver on a loopback port; what it receives is the SDP and every
RTP packet, which the cameras then replay and loop with rewritten sequence numbers, timestamps and
SSRCs. One capture serves any number of cameras in the process (it is cached in memory).

The default clip is generated once per cache folder with FFmpeg: 10 s of ``testsrc2`` (the moving
colour pattern with a frame counter) and a sine tone, named by a hash of its parameters and
written under a temporary name first, so concurrent test processes never see half a file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import trio

from hubruntime.proto.rtp import TimestampUnwrapper, is_rtcp, parse_rtp_header
from hubruntime.proto.rtsp import (
    Frame,
    ProtocolError,
    Request,
    RtspParser,
    encode_response,
    parse_transport,
)
from hubruntime.proto.sdp import SdpError, media_for_control, parse_sdp

log = logging.getLogger("hubruntime.fakecam")

# The default clip. Changing any value changes the cache file name, so old files are never
# served with new parameters.
CLIP_PARAMS: dict[str, str | int] = {
    "size": "640x360",
    "fps": 25,
    "seconds": 10,
    "video_bitrate": "1500k",
    "gop": 25,  # one keyframe per second: a client waits at most 1 s for a picture
    "audio_rate": 48000,
    "tone_hz": 440,
}
GENERATE_TIMEOUT = 120.0
CAPTURE_TIMEOUT = 60.0


class ClipError(RuntimeError):
    """The clip cannot be made or read (no FFmpeg, FFmpeg failed, nothing received)."""


class CapturedPacket(NamedTuple):
    """One RTP packet as FFmpeg's muxer made it.

    ``time`` is media time in seconds from the RTP timestamp, relative to the first timestamp of
    the packet's own track (so it starts at 0 on every track).
    """

    media: int
    data: bytes
    time: float


@dataclass(frozen=True)
class Capture:
    """A clip as RTP: what a fake camera serves. Immutable, so cameras share one."""

    sdp: str  # as FFmpeg announced it (controls are rewritten when served)
    kinds: tuple[str, ...]  # per media: "video", "audio"
    clock_rates: tuple[int, ...]  # per media
    packets: tuple[CapturedPacket, ...]  # in the order FFmpeg sent them
    duration: float  # one loop, seconds (every track loops on this)

    def packet_counts(self) -> list[int]:
        counts = [0] * len(self.kinds)
        for p in self.packets:
            counts[p.media] += 1
        return counts


def default_cache_dir() -> Path:
    """Where generated clips live between runs: ``$XDG_CACHE_HOME/hubruntime/fakecam``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hubruntime" / "fakecam"


def find_ffmpeg_exe() -> str:
    """The FFmpeg binary: the project's finder if present, else PATH, else imageio-ffmpeg."""
    try:
        from hubruntime.media.ffmpeg import FFmpegNotFound, find_ffmpeg
    except ImportError:
        pass
    else:
        try:
            return find_ffmpeg()
        except FFmpegNotFound as exc:
            raise ClipError(str(exc)) from None
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg
    except ImportError:
        raise ClipError("FFmpeg not found on PATH and imageio-ffmpeg is not installed") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def clip_command(ffmpeg: str, out: Path, params: dict[str, str | int] = CLIP_PARAMS) -> list[str]:
    """The FFmpeg command that writes the default clip to ``out`` (an .mp4)."""
    p = params
    secs = p["seconds"]
    return [
        ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={p['size']}:rate={p['fps']}:duration={secs}",
        "-f", "lavfi", "-i", f"sine=frequency={p['tone_hz']}:sample_rate={p['audio_rate']}"
                             f":duration={secs}",
        "-map", "0:v", "-map", "1:a",
        # No B-frames: RTP timestamps then rise monotonically, like most IP cameras.
        "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-profile:v", "main",
        "-pix_fmt", "yuv420p", "-bf", "0", "-g", str(p["gop"]), "-keyint_min", str(p["gop"]),
        "-sc_threshold", "0", "-b:v", str(p["video_bitrate"]),
        "-maxrate", str(p["video_bitrate"]), "-bufsize", str(p["video_bitrate"]),
        "-c:a", "aac", "-b:a", "64k", "-ac", "1", "-ar", str(p["audio_rate"]),
        "-shortest", "-f", "mp4", str(out),
    ]


def clip_name(params: dict[str, str | int] = CLIP_PARAMS) -> str:
    digest = hashlib.sha256(repr(sorted(params.items())).encode()).hexdigest()[:12]
    return f"testsrc2-{params['size']}-{params['seconds']}s-{digest}.mp4"


async def ensure_clip(path: Path | None, cache_dir: Path) -> Path:
    """The clip to serve: ``path`` if given (it must exist), else the default clip in
    ``cache_dir``, generated with FFmpeg the first time (about 0.7 s on a 2-core machine)."""
    if path is not None:
        if not path.is_file():
            raise ClipError(f"clip {path} does not exist")
        return path
    target = cache_dir / clip_name()
    if target.is_file() and target.stat().st_size > 0:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{target.stem}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    cmd = clip_command(find_ffmpeg_exe(), tmp)
    started = time.monotonic()
    try:
        with trio.fail_after(GENERATE_TIMEOUT):
            done = await trio.run_process(cmd, stdin=subprocess.DEVNULL, capture_stdout=True,
                                          capture_stderr=True, check=False)
        if done.returncode != 0 or not tmp.is_file():
            raise ClipError(f"FFmpeg could not generate the clip (exit {done.returncode}): "
                            f"{_tail(done.stderr)}")
        os.replace(tmp, target)  # atomic: readers see no file or the whole file
    except trio.TooSlowError:
        raise ClipError(f"FFmpeg took over {GENERATE_TIMEOUT:.0f} s to generate the clip") from None
    finally:
        tmp.unlink(missing_ok=True)
    log.info("generated %s in %.2f s", target, time.monotonic() - started)
    return target


# capture ---------------------------------------------------------------------------------------
_captures: dict[tuple[str, int, int], Capture] = {}
_capture_lock: trio.lowlevel.RunVar[trio.Lock] = trio.lowlevel.RunVar("fakecam_capture_lock")


async def capture_packets(clip: Path) -> Capture:
    """The clip as RTP packets, made once per process and clip file (cached in memory)."""
    st = clip.stat()
    key = (str(clip.resolve()), st.st_mtime_ns, st.st_size)
    cached = _captures.get(key)
    if cached is not None:
        return cached
    try:
        lock = _capture_lock.get()
    except LookupError:
        lock = trio.Lock()
        _capture_lock.set(lock)
    async with lock:  # tests start many cameras at once: capture only once
        cached = _captures.get(key)
        if cached is None:
            started = time.monotonic()
            cached = await _capture(clip)
            log.info("captured %s: %d packets, %.2f s of media, in %.2f s", clip,
                     len(cached.packets), cached.duration, time.monotonic() - started)
            _captures[key] = cached
        return cached


@dataclass
class _Publish:
    """What the receiver got from FFmpeg's publishing session."""

    sdp: str | None = None
    channels: dict[int, int] = field(default_factory=dict)  # interleaved RTP channel → media
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    teardown: bool = False


async def _capture(clip: Path) -> Capture:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    # -muxdelay 0.01: the RTP muxer then puts one AAC frame in each packet (47 packets/s at
    # 48 kHz), as cameras do; its default (0.7 s) packs about seven, 150 ms per packet.
    cmd = [find_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-i", str(clip),
           "-map", "0:v?", "-map", "0:a?", "-c", "copy", "-muxdelay", "0.01",
           "-f", "rtsp", "-rtsp_transport", "tcp", f"rtsp://127.0.0.1:{port}/capture"]
    got = _Publish()
    exit_status: list[subprocess.CompletedProcess[bytes]] = []
    failures: list[ClipError] = []

    async def publisher(cancel_receiver: trio.CancelScope) -> None:
        exit_status.append(await trio.run_process(cmd, stdin=subprocess.DEVNULL,
                                                  capture_stderr=True, check=False))
        # If FFmpeg never connected (a bad clip), nothing more will come; if it did, its
        # connection is closed and the receiver is about to see EOF.
        if connected.is_set():
            with trio.move_on_after(5):
                await received.wait()
        cancel_receiver.cancel()

    connected = trio.Event()
    received = trio.Event()
    try:
        with trio.fail_after(CAPTURE_TIMEOUT):
            async with trio.open_nursery() as nursery:
                receive_scope = trio.CancelScope()
                nursery.start_soon(publisher, receive_scope)
                with receive_scope:
                    async with listener:
                        stream = await listener.accept()
                    connected.set()
                    async with stream:
                        try:
                            await _receive_publish(stream, got)
                        except ClipError as exc:  # raised after the nursery: no group
                            failures.append(exc)
                    received.set()
    except trio.TooSlowError:
        raise ClipError(f"capturing {clip} took over {CAPTURE_TIMEOUT:.0f} s") from None
    if failures:
        raise failures[0]
    done = exit_status[0]
    if done.returncode != 0 or not got.frames or got.sdp is None:
        raise ClipError(f"FFmpeg could not publish {clip} (exit {done.returncode}, "
                        f"{len(got.frames)} packets): {_tail(done.stderr)}")
    return build_capture(got.sdp, got.frames)


async def _receive_publish(stream: trio.SocketStream, got: _Publish) -> None:
    """Answer one FFmpeg publisher (OPTIONS, ANNOUNCE, SETUP…, RECORD, TEARDOWN) and keep the
    SDP and the RTP packets of every set-up channel. Returns at TEARDOWN or EOF."""
    parser = RtspParser()
    sdp = None
    while True:
        try:
            data = await stream.receive_some(1 << 16)
        except trio.BrokenResourceError:
            return  # a reset after the last packet: FFmpeg's exit code decides
        if not data:
            return
        try:
            items = parser.feed(data)
        except ProtocolError as exc:
            raise ClipError(f"FFmpeg's publishing session broke the protocol: {exc}") from None
        for item in items:
            if isinstance(item, Frame):
                media = got.channels.get(item.channel)
                if media is not None and not is_rtcp(item.payload):
                    got.frames.append((media, item.payload))
                continue
            if not isinstance(item, Request):
                continue
            status, headers = 200, [("Session", "capture")]
            if item.method == "OPTIONS":
                headers = [("Public", "OPTIONS, ANNOUNCE, SETUP, RECORD, TEARDOWN")]
            elif item.method == "ANNOUNCE":
                got.sdp = item.body.decode("utf-8", "replace")
                try:
                    sdp = parse_sdp(got.sdp)
                except SdpError as exc:
                    raise ClipError(f"FFmpeg announced an SDP we cannot read: {exc}") from None
                headers = []
            elif item.method == "SETUP":
                try:
                    transports = parse_transport(item.headers.get("Transport") or "")
                except ProtocolError as exc:
                    raise ClipError(f"FFmpeg asked for an unexpected transport: {exc}") from None
                media = media_for_control(sdp, item.uri) if sdp is not None else None
                if media is None or transports[0].interleaved is None:
                    status = 459 if media is None else 461
                else:
                    got.channels[transports[0].interleaved[0]] = media.index
                    headers.append(("Transport", transports[0].encode()))
            elif item.method == "TEARDOWN":
                got.teardown = True
            elif item.method != "RECORD":
                status = 501
            try:
                await stream.send_all(encode_response(status, item.cseq, headers))
            except trio.BrokenResourceError:
                return  # FFmpeg does not wait for the TEARDOWN answer; its exit code decides
            if got.teardown:
                return


def build_capture(sdp_text: str, frames: Sequence[tuple[int, bytes]]) -> Capture:
    """Turn received (media index, RTP packet) pairs into a :class:`Capture` (pure)."""
    sdp = parse_sdp(sdp_text)
    clocks = tuple(m.clock_rate for m in sdp.media)
    unwrappers = [TimestampUnwrapper() for _ in sdp.media]
    first: list[int | None] = [None] * len(sdp.media)
    packets = []
    for media, data in frames:
        header = parse_rtp_header(data)
        if header is None:
            continue
        ts = unwrappers[media].unwrap(header.timestamp)
        base = first[media]
        if base is None:
            base = first[media] = ts
        packets.append(CapturedPacket(media, bytes(data), (ts - base) / clocks[media]))
    if not packets:
        raise ClipError("no RTP packets in the capture")
    return Capture(sdp=sdp_text, kinds=tuple(m.kind for m in sdp.media), clock_rates=clocks,
                   packets=tuple(packets), duration=loop_duration(packets, len(clocks)))


def loop_duration(packets: Sequence[CapturedPacket], tracks: int) -> float:
    """One loop of the clip: the end of its longest track, i.e. that track's last media time plus
    its usual step (a frame at 25 fps is 40 ms), so the loop seam looks like any other frame."""
    end = 0.0
    for media in range(tracks):
        times = sorted({p.time for p in packets if p.media == media})
        if not times:
            continue
        steps = sorted(b - a for a, b in zip(times, times[1:], strict=False))
        step = steps[len(steps) // 2] if steps else 0.04
        end = max(end, times[-1] + step)
    return end


def _tail(stderr: bytes | None, lines: int = 5) -> str:
    text = (stderr or b"").decode("utf-8", "replace").strip().splitlines()
    return " | ".join(text[-lines:]) or "no error text"
