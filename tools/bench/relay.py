"""Relay benchmark: one ~4 Mbit/s camera re-published to 1, 10 and 50 viewers, by the hub and by
GStreamer's RTSP server. Prints figures, asserts nothing.

Run as ``python tools/bench/relay.py [--quick]`` (60 s per viewer count, ``--quick`` 10 s;
``--viewers 1,10,50``, ``--seconds S`` and ``--profile FILE`` change that).

Who runs where (each box its own process, so each CPU figure is one process's alone):

- Camera: ``python -m hubruntime.fakecam.cli`` serving a ~4 Mbit/s clip (the fake camera's
  default clip at 1280x720 with 3750 kbit/s video + 64 kbit/s AAC, generated once into its cache
  folder; testsrc2 tops out near 3.3 Mbit/s at 640x360).
- Tap proxy (``relay.py --proxy-child``): a transparent TCP proxy in front of the camera, one
  port per relay (and one for the floor viewer). Each relay reads the camera *through* it, so the
  proxy sees exactly the bytes the relay gets and stamps each video frame (``time.time()`` just
  before the bytes are handed to the relay's socket): that is "packet in". Needed because the
  fake camera plays the clip from its start for each client at that client's PLAY, so two
  clients never see the same frame at the same time.
- Ours: the hub, ``relay.py --hub-child`` = what ``hubruntime run --config CFG --plugins DIR``
  runs (``load_config``, ``setup_logging``, ``Hub(cfg).run``, stop on SIGTERM) plus a tap (below).
  Its TOML config binds the viewer RTSP server to 127.0.0.1 on a free port; a tiny Lua plugin adds
  the camera (``cameras.add_camera_stream``) and makes it live
  (``cameras.create_live_rtsp_stream``) at startup. The hub reads the camera through its FFmpeg
  reader (a child process, ``-c copy``, publishing to the hub's loopback endpoint): CPU is
  reported for the hub process alone and for hub + reader, since GStreamer reads the camera
  itself.
- Peer: ``/usr/bin/python3 tools/bench/gst_relay.py`` (gst-rtsp-server, one shared media
  ``rtspsrc ! rtph264depay ! rtph264pay`` + ``rtpmp4gdepay ! rtpmp4gpay``, no transcoding; see
  that file).
- Viewers: ``relay.py --viewers-child`` processes, outside everything measured, reading
  RTP/AVP/TCP interleaved (DESCRIBE, SETUP per track, PLAY, GET_PARAMETER keep-alives). One
  *probe* process holds the relay's first and last viewer (first and last attached) and the floor
  viewer; they read as data comes and take each read's arrival time from the kernel
  (``SO_TIMESTAMPNS``: when the last byte reached the socket, whatever the probe's own
  scheduling). The other viewers are *counting* viewers in worker processes (at most 25 each)
  that read every 20 ms (fewer wake-ups on this 2-core machine; the socket buffers absorb 20 ms,
  so the relays send exactly as to eager readers) and count RTP bytes and packets.

Timeline: camera, proxy, hub (until its stream is live), GStreamer relay and viewer processes
up; then for each viewer count N a window for ours and then one for GStreamer, each half the time
per viewer count (the two relays never compete for the 2 cores, and the default run stays under
~4.5 min): open N viewers (+ the floor viewer), warm up, *measure*, close them. GStreamer's shared
media (and its camera connection) exists only while it has viewers; the hub reads the camera all
the time (its stream is monitored), so the hub's CPU in GStreamer's windows is its 0-viewer
baseline.

CPU: ``utime + stime`` from ``/proc/<pid>/stat`` over the window, as % of one core: the hub
process, its FFmpeg reader(s) (children of the hub named ffmpeg, sampled every second so a
restarted reader still counts), GStreamer's process (all threads); camera, proxy, viewer
processes and the whole machine as context.

Delivered rate: RTP + RTCP bytes (RTP headers included, interleaved framing not) per viewer over
its window, against what the relay itself received from the camera in the same window (counted
by the proxy). "Full rate": every viewer got >= 97 % of that.

Added latency ("packet in -> packet out"), per video frame: a frame is identified by a CRC-32 of
its H.264 slice NAL units (types 1 and 5, reassembled from single-NAL, STAP-A and FU-A packets;
SPS/PPS/SEI left out, GStreamer's ``config-interval`` adds SPS/PPS), which neither relay changes
however it re-packetizes. A frame "arrives" with its last RTP packet. Latency = kernel arrival at
the viewer - proxy hand-over to the relay of the same frame (matched by CRC, nearest in time; the
clip loops every 10 s, so a CRC repeats only 10 s apart). For ours it is split further by a tap in
the hub process: a ``StreamHub`` listener records each video RTP packet the publisher hands over,
with the hub's own arrival time (trio clock mapped to ``time.time()``); the hub forwards packets
unchanged, so they are matched by RTP seq + timestamp: "reader" = hub arrival of the frame's last
packet - proxy hand-over (the FFmpeg reader and the loopback publish connection); "hub" = viewer
arrival - hub arrival, per video packet. The tap is one list append per video packet, only during
ours' windows. "Floor" = a viewer reading the camera through the proxy: kernel arrival - proxy
hand-over, i.e. what the method itself adds (loopback, the proxy's stamping).

Bounded: every wait has a deadline, every loop a count. Every process started is ended
(SIGTERM, then SIGKILL), and the run ends by checking that none of them, nor the hub's FFmpeg
reader, is left.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    alive,
    children_of,
    machine_cpu,
    make_clip,
    out,
    percentile,
    proc_cpu,
    proc_rss_kb,
    proc_wakeups,
    start_py_spy,
    summarize_profile,
)

HERE = Path(__file__).resolve().parent
SELF = Path(__file__).resolve()
GST_RELAY = HERE / "gst_relay.py"
SYSTEM_PYTHON = "/usr/bin/python3"
STREAM_ID = "relay"
CLIP_OVERRIDES = {"size": "1280x720", "video_bitrate": "3750k"}  # ~4.0 Mbit/s on the wire
GOAL_CPU_RATIO = 1.5  # ours (hub + reader) / GStreamer at 10 viewers
GOAL_CPU_AT = 10
GOAL_P99_MS = 5.0
FULL_RATE = 0.97
PER_WORKER = 25
GRID = 0.02  # counting viewers read every 20 ms
KEEPALIVE = 20.0
SAMPLE_EVERY = 1.0
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS is the same
_RTP = struct.Struct("!BBHII")
_TS = struct.Struct("qq")


# ==========================================================================================
# frames: content identity of H.264 access units, independent of packetization


class FrameAssembler:
    """Feed it the video RTP packets of one connection; it appends ``(crc, arrival of the last
    packet, seq of it, rtp timestamp, packets)`` to ``frames`` for each access unit that has a
    slice. The CRC covers the slice NAL units (1, 5) only, header byte included."""

    def __init__(self, frames: list[tuple[int, float, int, int, int]]) -> None:
        self.frames = frames
        self._ts: int | None = None
        self._crc = 0
        self._slices = False
        self._t = 0.0
        self._seq = 0
        self._npk = 0

    def packet(self, t: float, p: bytes) -> tuple[int, int] | None:
        """Process one RTP packet; its (seq, timestamp), or None if it is not RTP."""
        if len(p) < 13:
            return None
        b0, b1, seq, ts, _ = _RTP.unpack_from(p)
        off = 12 + 4 * (b0 & 0x0F)
        if b0 & 0x10:
            off += 4 + 4 * int.from_bytes(p[off + 2:off + 4], "big")
        end = len(p) - (p[-1] if b0 & 0x20 else 0)
        if self._ts is not None and ts != self._ts:
            self.finish()
        if self._ts is None:
            self._ts, self._crc, self._slices, self._npk = ts, 0, False, 0
        pl = p[off:end]
        if pl:
            nal = pl[0] & 0x1F
            crc = self._crc
            if nal in (1, 5):
                crc = zlib.crc32(pl, crc)
                self._slices = True
            elif nal == 24:  # STAP-A
                i = 1
                while i + 2 <= len(pl):
                    size = (pl[i] << 8) | pl[i + 1]
                    sub = pl[i + 2:i + 2 + size]
                    if sub and sub[0] & 0x1F in (1, 5):
                        crc = zlib.crc32(sub, crc)
                        self._slices = True
                    i += 2 + size
            elif nal == 28 and len(pl) > 2:  # FU-A
                fu = pl[1] & 0x1F
                if fu in (1, 5):
                    if pl[1] & 0x80:
                        crc = zlib.crc32(bytes([(pl[0] & 0xE0) | fu]), crc)
                    crc = zlib.crc32(pl[2:], crc)
                    self._slices = True
            self._crc = crc
        self._npk += 1
        self._t, self._seq = t, seq
        if b1 & 0x80:
            self.finish()
        return seq, ts

    def finish(self) -> None:
        if self._slices and self._ts is not None:
            self.frames.append((self._crc, self._t, self._seq, self._ts, self._npk))
        self._ts = None


# ==========================================================================================
# viewer side (runs in the --viewers-child processes)


class Viewer:
    """One RTSP/TCP viewer: DESCRIBE, SETUP (interleaved) each track, PLAY, then read.

    ``probe``: reads as data comes, kernel arrival stamps, reassembles video frames.
    ``count``: reads on a 20 ms grid and counts. Both count RTP/RTCP bytes and packets."""

    def __init__(self, url: str, tag: str, mode: str) -> None:
        self.url = url
        self.tag = tag
        self.mode = mode
        self.stream: Any = None
        self.parser: Any = None
        self.cseq = 0
        self.session = ""
        self.video_ch: int | None = None
        self.pending: list[Any] = []
        self.recording = False
        self.t_begin = self.t_end = 0.0
        self.bytes = 0
        self.packets: Counter[str] = Counter()
        self.error = ""
        self.eof = False
        self.keepalives = 0
        self.no_kernel_stamp = 0
        self.frames: list[tuple[int, float, int, int, int]] = []
        self.assembler = FrameAssembler(self.frames)
        self.vpackets: list[tuple[int, int, float]] = []  # (seq, ts, arrival) while recording

    async def _request(self, method: str, uri: str, headers: list[tuple[str, str]]) -> Any:
        import trio

        from hubruntime.proto.rtsp import Response, encode_request

        self.cseq += 1
        hdrs = list(headers)
        if self.session:
            hdrs.append(("Session", self.session))
        await self.stream.send_all(encode_request(method, uri, self.cseq, hdrs))
        with trio.fail_after(10):
            for _ in range(100_000):
                for i, item in enumerate(self.pending):
                    if isinstance(item, Response):
                        del self.pending[i]
                        return item
                data = await self.stream.receive_some(1 << 16)
                if not data:
                    raise ConnectionError(f"{method}: connection closed")
                self.pending.extend(self.parser.feed(data))
        raise ConnectionError(f"{method}: no response")

    async def setup(self) -> None:
        import trio

        from hubruntime.proto.rtsp import RtspParser
        from hubruntime.proto.sdp import parse_sdp

        host, _, port = self.url.split("/")[2].rpartition(":")
        with trio.fail_after(10):
            self.stream = await trio.open_tcp_stream(host, int(port))
        if self.mode == "probe":
            self.stream.socket.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.parser = RtspParser()
        r = await self._request("DESCRIBE", self.url, [("Accept", "application/sdp")])
        if r.status != 200:
            raise ConnectionError(f"DESCRIBE {r.status}")
        base = r.headers.get("Content-Base") or self.url
        if not base.endswith("/"):
            base += "/"
        sdp = parse_sdp(r.body.decode())
        for m in sdp.media:
            ctl = m.control or ""
            track = ctl if "://" in ctl else base + ctl
            ch = 2 * m.index
            r = await self._request("SETUP", track, [
                ("Transport", f"RTP/AVP/TCP;unicast;interleaved={ch}-{ch + 1}")])
            if r.status != 200:
                raise ConnectionError(f"SETUP {track}: {r.status}")
            self.session = (r.headers.get("Session") or "").split(";")[0].strip()
            if m.kind == "video" and self.video_ch is None:
                self.video_ch = ch
        r = await self._request("PLAY", self.url, [("Range", "npt=0.000-")])
        if r.status != 200:
            raise ConnectionError(f"PLAY {r.status}")

    async def _receive(self) -> tuple[bytes, float]:
        """Some bytes and when they arrived: the kernel's stamp of the last of them (probe), or
        now."""
        if self.mode != "probe":
            data = await self.stream.receive_some(1 << 18)
            return data, time.time()
        data, anc, _, _ = await self.stream.socket.recvmsg(1 << 18, 256)
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                sec, nsec = _TS.unpack_from(value)
                return data, sec + nsec * 1e-9
        if data:
            self.no_kernel_stamp += 1
        return data, time.time()

    async def run(self) -> None:
        import trio

        from hubruntime.proto.rtsp import Frame, encode_request

        last_ka = time.monotonic()
        grid = GRID
        try:
            self._frames(time.time(), [i for i in self.pending if isinstance(i, Frame)])
            self.pending = []
            for _ in range(10**9):
                if self.mode != "probe":
                    await trio.sleep_until(math.ceil(trio.current_time() / grid) * grid)
                data, t = await self._receive()
                if not data:
                    self.eof = True
                    return
                self._frames(t, [i for i in self.parser.feed(data) if isinstance(i, Frame)])
                if time.monotonic() - last_ka > KEEPALIVE:
                    last_ka = time.monotonic()
                    self.keepalives += 1
                    self.cseq += 1
                    await self.stream.send_all(encode_request(
                        "GET_PARAMETER", self.url, self.cseq, [("Session", self.session)]))
        except trio.Cancelled:
            raise
        except Exception as exc:  # recorded, reported: one viewer must not end the others
            self.error = repr(exc)[:200]

    def _frames(self, t: float, frames: list[Any]) -> None:
        rec = self.recording
        vch = self.video_ch
        probe = self.mode == "probe"
        for f in frames:
            ch = f.channel
            if rec:
                self.bytes += len(f.payload)
                if ch & 1:
                    self.packets["rtcp"] += 1
                elif ch == vch:
                    self.packets["video"] += 1
                else:
                    self.packets["audio"] += 1
            if probe and ch == vch:
                st = self.assembler.packet(t, f.payload)
                if rec and st is not None:
                    self.vpackets.append((st[0], st[1], t))

    def begin(self, t: float) -> None:
        self.recording = True
        self.t_begin = t
        self.bytes = 0
        self.packets = Counter()
        self.vpackets = []

    def end(self, t: float) -> None:
        self.recording = False
        self.t_end = t

    def result(self, lo: float, hi: float) -> dict[str, Any]:
        r: dict[str, Any] = {
            "tag": self.tag, "mode": self.mode, "bytes": self.bytes,
            "packets": dict(self.packets), "secs": self.t_end - self.t_begin,
            "error": self.error, "eof": self.eof, "keepalives": self.keepalives,
        }
        if self.mode == "probe":
            r["frames"] = [f for f in self.frames if lo <= f[1] <= hi]
            r["vpackets"] = self.vpackets
            r["no_kernel_stamp"] = self.no_kernel_stamp
        return r

    async def close(self) -> None:
        import trio

        from hubruntime.proto.rtsp import encode_request

        if self.stream is not None:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                try:
                    self.cseq += 1
                    await self.stream.send_all(encode_request(
                        "TEARDOWN", self.url, self.cseq, [("Session", self.session)]))
                except Exception:
                    pass
                await self.stream.aclose()


async def _stdin_lines() -> Any:
    import trio

    stream = trio.lowlevel.FdStream(os.dup(0))
    buf = b""
    for _ in range(10_000_000):
        while b"\n" not in buf:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            buf += chunk
        line, _, buf = buf.partition(b"\n")
        yield json.loads(line)


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def viewers_child() -> None:
    """Commands on stdin, one JSON object a line; one JSON reply a line on stdout."""
    import trio

    viewers: list[Viewer] = []
    scopes: list[trio.CancelScope] = []

    async def run_viewer(v: Viewer, scope: trio.CancelScope) -> None:
        with scope:
            await v.run()

    async with trio.open_nursery() as nursery:
        _reply({"ready": True, "pid": os.getpid()})
        async for cmd in _stdin_lines():
            what = cmd["cmd"]
            if what == "open":
                errors: list[str] = []
                opened = 0
                for i in range(int(cmd["n"])):
                    v = Viewer(cmd["url"], cmd["tag"], cmd["mode"])
                    try:
                        with trio.fail_after(20):
                            await v.setup()
                    except Exception as exc:
                        errors.append(f"{cmd['tag']}#{i}: {exc!r}"[:200])
                        await v.close()
                        continue
                    opened += 1
                    viewers.append(v)
                    scope = trio.CancelScope()
                    scopes.append(scope)
                    nursery.start_soon(run_viewer, v, scope)
                _reply({"opened": opened, "errors": errors[:3]})
            elif what == "begin":
                t = time.time()
                for v in viewers:
                    v.begin(t)
                _reply({"t": t})
            elif what == "end":
                t = time.time()
                for v in viewers:
                    v.end(t)
                lo, hi = float(cmd.get("lo", 0.0)), float(cmd.get("hi", t + 10))
                _reply({"t": t, "viewers": [v.result(lo, hi) for v in viewers]})
            elif what == "close":
                for s in scopes:
                    s.cancel()
                for v in viewers:
                    await v.close()
                viewers, scopes = [], []
                _reply({"closed": True})
            elif what == "quit":
                break
        nursery.cancel_scope.cancel()
    for v in viewers:
        await v.close()


# ==========================================================================================
# the tap proxy (runs in the --proxy-child process)


class Tap:
    """One proxy port: what went from the camera to whoever connects there (a relay)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.frames: list[tuple[int, float, int, int, int]] = []
        self.connections = 0
        self.recording = False
        self.t_begin = self.t_end = 0.0
        self.bytes = 0
        self.packets: Counter[str] = Counter()

    async def handle(self, client: Any, camera: tuple[str, int]) -> None:
        import trio

        from hubruntime.proto.rtp import is_rtcp
        from hubruntime.proto.rtsp import Frame, Response, RtspParser
        from hubruntime.proto.sdp import parse_sdp

        self.connections += 1
        try:
            with trio.fail_after(10):
                cam = await trio.open_tcp_stream(*camera)
        except (OSError, trio.TooSlowError):
            await client.aclose()
            return
        parser = RtspParser()
        assembler = FrameAssembler(self.frames)
        video_pt: set[int] = set()

        async def up() -> None:  # relay -> camera, as is
            for _ in range(10**9):
                data = await client.receive_some(1 << 16)
                if not data:
                    return
                await cam.send_all(data)

        async def down() -> None:  # camera -> relay, stamped as it is handed over
            for _ in range(10**9):
                data = await cam.receive_some(1 << 18)
                if not data:
                    return
                t = time.time()
                await client.send_all(data)
                for item in parser.feed(data):
                    if isinstance(item, Frame):
                        p = item.payload
                        rtcp = is_rtcp(p)
                        if self.recording:
                            self.bytes += len(p)
                            self.packets["rtcp" if rtcp else
                                         "video" if (p[1] & 0x7F) in video_pt else "audio"] += 1
                        if not rtcp and len(p) > 12 and (p[1] & 0x7F) in video_pt:
                            assembler.packet(t, p)
                    elif isinstance(item, Response) and item.body:
                        try:
                            for m in parse_sdp(item.body.decode()).media:
                                if m.kind == "video":
                                    video_pt.update(int(f) for f in m.formats if f.isdigit())
                        except Exception:
                            pass

        try:
            async with trio.open_nursery() as nursery:
                async def one(fn: Any) -> None:
                    try:
                        await fn()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(one, up)
                nursery.start_soon(one, down)
        finally:
            with trio.CancelScope(shield=True):
                await cam.aclose()
                await client.aclose()

    def begin(self, t: float) -> None:
        self.recording, self.t_begin, self.bytes, self.packets = True, t, 0, Counter()

    def end(self, t: float, lo: float, hi: float) -> dict[str, Any]:
        self.recording, self.t_end = False, t
        frames = [f for f in self.frames if lo <= f[1] <= hi]
        self.frames[:] = [f for f in self.frames if f[1] > t - 30]  # bounded memory
        return {"tag": self.tag, "bytes": self.bytes, "packets": dict(self.packets),
                "secs": self.t_end - self.t_begin, "frames": frames,
                "connections": self.connections}


async def proxy_child(camera_url: str, tags: list[str]) -> None:
    import trio

    parts = camera_url.split("/")  # rtsp://host:port/path
    hostport, path = parts[2], "/".join(parts[3:])
    host, _, port = hostport.rpartition(":")
    camera = (host, int(port))
    taps = {tag: Tap(tag) for tag in tags}
    urls = {}
    async with trio.open_nursery() as nursery:
        for tag, tap in taps.items():
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            p = listeners[0].socket.getsockname()[1]
            urls[tag] = f"rtsp://127.0.0.1:{p}/{path}"

            async def serve(stream: Any, tap: Tap = tap) -> None:
                await tap.handle(stream, camera)

            nursery.start_soon(trio.serve_listeners, serve, listeners)
        _reply({"ready": True, "urls": urls, "pid": os.getpid()})
        async for cmd in _stdin_lines():
            what = cmd["cmd"]
            if what == "begin":
                t = time.time()
                for tap in taps.values():
                    tap.begin(t)
                _reply({"t": t})
            elif what == "end":
                t = time.time()
                lo, hi = float(cmd.get("lo", 0.0)), float(cmd.get("hi", t + 10))
                _reply({"t": t, "taps": {k: tap.end(t, lo, hi) for k, tap in taps.items()}})
            elif what == "quit":
                break
        nursery.cancel_scope.cancel()


# ==========================================================================================
# hub side (runs in the --hub-child process)


async def hub_child(config: Path, plugins: Path) -> None:
    """``hubruntime run --config CONFIG --plugins PLUGINS``, plus the tap and a command loop."""
    import trio

    from hubruntime.config import load_config
    from hubruntime.hub import Hub
    from hubruntime.logsetup import setup_logging

    cfg = load_config(config, plugin_dirs=(plugins,))
    setup_logging(cfg.log_level, cfg.log_file)
    hub = Hub(cfg)
    tap: dict[str, Any] = {"rec": None, "vm": -1}

    class Tap:
        """A PacketSink noting when each video packet reached the hub."""

        def on_start(self, publication: Any) -> None:
            pass

        def on_packet(self, pkt: Any) -> None:
            rec = tap["rec"]
            if rec is not None and pkt.track == tap["vm"] and not pkt.rtcp:
                rec.append((pkt.arrival, pkt.data[2:8]))

        def on_flush(self) -> None:
            pass

        def on_stop(self, reason: str) -> None:
            pass

    async def stop_on_signals(scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                scope.cancel()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signals, nursery.cancel_scope)
        await nursery.start(hub.run)
        assert hub.live is not None and hub.ingest is not None
        url = None
        with trio.move_on_after(30):
            while STREAM_ID not in hub.live.fanouts:
                await trio.sleep(0.05)  # the bench's own wait, bounded by the 30 s above
            url = hub.live.url(STREAM_ID)
        if url is None:
            _reply({"error": "stream not live within 30 s"})
            nursery.cancel_scope.cancel()
            return
        sh = hub.ingest.hubs[STREAM_ID]
        sh.add_sink(Tap())
        _reply({"live": url, "pid": os.getpid()})
        async for cmd in _stdin_lines():
            what = cmd["cmd"]
            if what == "tap_begin":
                pub = sh.publication
                tap["vm"] = next((m.index for m in pub.sdp.media if m.kind == "video"), -1) \
                    if pub is not None else -1
                tap["rec"] = []
                _reply({"ok": True, "video_media": tap["vm"]})
            elif what == "tap_end":
                rec, tap["rec"] = tap["rec"] or [], None
                # trio's clock is perf_counter + an offset; map it to time.time()
                to_wall = time.time() - trio.current_time()
                pkts = []
                for now, b in rec:
                    seq, ts = struct.unpack("!HI", b)
                    pkts.append((seq, ts, now + to_wall))
                _reply({"packets": pkts, "viewers": sh.viewers})
            elif what == "quit":
                break
        nursery.cancel_scope.cancel()


# ==========================================================================================
# the controller: processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """A process we started, speaking JSON lines on stdin/stdout (or just printing lines)."""

    def __init__(self, name: str, cmd: list[str], log: Path, *, stdin: bool = True) -> None:
        self.name = name
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        self.buf = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def line(self, timeout: float) -> str:
        """The next stdout line (without the newline); raises on timeout or EOF."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self.buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: no answer within {timeout:g} s"
                                       f"{self.tail()}")
                if sel.select(timeout=left):
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        raise RuntimeError(f"{self.name} ended (exit {self.proc.poll()})"
                                           f"{self.tail()}")
                    self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace").strip()

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def ask(self, obj: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        self.send(obj)
        return self.reply(timeout)

    def reply(self, timeout: float = 30.0) -> dict[str, Any]:
        return json.loads(self.line(timeout))

    def tail(self) -> str:
        try:
            text = self.log.read_text(errors="replace").strip()
        except OSError:
            return ""
        return f"; stderr: {text[-400:]!r}" if text else ""

    def stop(self, timeout: float = 8.0) -> bool:
        """SIGTERM, wait, SIGKILL; True if it needed SIGKILL."""
        p = self.proc
        killed = False
        if p.poll() is None:
            try:
                if p.stdin is not None:
                    p.stdin.close()
            except OSError:
                pass
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
                killed = True
        for f in (p.stdin, p.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        return killed


# ==========================================================================================
# measurement


@dataclass
class CpuTracker:
    """CPU seconds of a set of pids over a window, pids coming and going (readers)."""

    pids_fn: Any
    which: str = "both"
    last: dict[int, float] = field(default_factory=dict)
    base: dict[int, float] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)

    def sample(self) -> None:
        for pid in self.pids_fn():
            cpu = proc_cpu(pid, self.which)
            if cpu is not None:
                self.last[pid] = cpu
                self.seen.add(pid)

    def begin(self) -> None:
        self.last, self.seen = {}, set()
        self.sample()
        self.base = dict(self.last)

    def end(self) -> tuple[float, int]:
        self.sample()
        return sum(self.last[p] - self.base.get(p, 0.0) for p in self.seen), len(self.seen)


@dataclass
class Result:
    relay: str  # "ours" | "gst"
    n: int
    secs: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # name -> % of one core
    readers_seen: int = 0
    machine_busy: float = 0.0
    opened: int = 0
    open_errors: list[str] = field(default_factory=list)
    viewers: list[dict[str, Any]] = field(default_factory=list)  # the relay's viewers
    source: dict[str, Any] | None = None  # what the relay received (proxy)
    e2e: dict[str, list[float]] = field(default_factory=dict)  # tag -> ms
    unmatched: dict[str, int] = field(default_factory=dict)
    floor_ms: list[float] = field(default_factory=list)
    reader_ms: list[float] = field(default_factory=list)
    hub_ms: list[float] = field(default_factory=list)
    hub_frame_ms: list[float] = field(default_factory=list)
    hub_unmatched: int = 0
    hub_wakeups: float = 0.0  # per second, the hub's main (trio) thread
    publisher_reads: float = 0.0  # per second, publisher reads that carried video
    publisher_video: float = 0.0  # video packets per second into the hub
    no_kernel_stamp: int = 0
    rss_kb: dict[str, int] = field(default_factory=dict)
    profile: list[str] = field(default_factory=list)


def match_frames(src: list[list[Any]], other: list[list[Any]], window: float = 2.0
                 ) -> tuple[list[float], list[tuple[list[Any], float]], int]:
    """For each frame of ``other``, the ``src`` frame with the same CRC nearest in time;
    (latencies in ms, [(other frame, src arrival)], unmatched count)."""
    by_crc: dict[int, list[float]] = {}
    for f in src:
        by_crc.setdefault(f[0], []).append(f[1])
    for v in by_crc.values():
        v.sort()
    lat, pairs, missed = [], [], 0
    for f in other:
        times = by_crc.get(f[0])
        if not times:
            missed += 1
            continue
        i = bisect_left(times, f[1])
        best = min((times[j] for j in (i - 1, i) if 0 <= j < len(times)),
                   key=lambda x: abs(x - f[1]))
        if abs(best - f[1]) > window:
            missed += 1
            continue
        lat.append(1000 * (f[1] - best))
        pairs.append((f, best))
    return lat, pairs, missed


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.children: list[Child] = []
        self.camera: Child | None = None
        self.proxy: Child | None = None
        self.hub: Child | None = None
        self.gst: Child | None = None
        self.probe: Child | None = None
        self.workers: list[Child] = []
        self.camera_url = ""
        self.proxy_urls: dict[str, str] = {}
        self.hub_url = ""
        self.gst_url = ""
        self.gst_launch = "?"
        self.reader_pids: set[int] = set()
        self.results: list[Result] = []
        self.hub_idle: list[tuple[float, float]] = []  # (hub %, reader %) in gst windows
        self.setup_secs = 0.0
        self.deadline = time.monotonic() + args.budget

    def start(self, name: str, cmd: list[str], *, stdin: bool = True) -> Child:
        c = Child(name, cmd, self.tmp / f"{name}.log", stdin=stdin)
        self.children.append(c)
        return c

    def readers(self) -> list[int]:
        pids = children_of(self.hub.pid, "ffmpeg") if self.hub else []
        self.reader_pids.update(pids)
        return pids

    # -- setup ---------------------------------------------------------------------------------
    def setup(self, clip: Path) -> None:
        t0 = time.monotonic()
        py = sys.executable
        self.camera = self.start("camera", [py, "-m", "hubruntime.fakecam.cli", "--port", "0",
                                            "--path", "cam", "--clip", str(clip),
                                            "--log-level", "WARNING"], stdin=False)
        # the viewer processes start meanwhile (imports take a moment)
        nworkers = max(1, math.ceil(max(0, max(self.args.counts) - 2) / PER_WORKER))
        self.probe = self.start("probe", [py, str(SELF), "--viewers-child"])
        self.workers = [self.start(f"viewers{i + 1}", [py, str(SELF), "--viewers-child"])
                        for i in range(nworkers)]
        self.camera_url = self.camera.line(30)
        if not self.camera_url.startswith("rtsp://"):
            raise RuntimeError(f"camera: unexpected first line {self.camera_url!r}")
        self.proxy = self.start("proxy", [py, str(SELF), "--proxy-child", "--camera",
                                          self.camera_url])
        r = self.proxy.reply(20)
        self.proxy_urls = r["urls"]

        port = free_port()
        cfg = self.tmp / "hub.toml"
        cfg.write_text(
            f'data_dir = "{self.tmp / "data"}"\n'
            'log_level = "WARNING"\n'
            'advertise_host = "127.0.0.1"\n'
            "[rtsp]\n"
            f"port = {port}\n"
            'bind = "127.0.0.1"\n')
        plug = self.tmp / "plugins" / "bench.relay"
        (plug / "scripts").mkdir(parents=True)
        (plug / "config.json").write_text(json.dumps(
            {"id": "bench.relay", "version": "1", "permissions": ["cameras"],
             "startup": "scripts/startup"}))
        (plug / "scripts" / "startup.lua").write_text(
            'local cameras = require("cameras")\n'
            f'cameras.add_camera_stream("{STREAM_ID}", "Relay benchmark camera", '
            f'"{self.proxy_urls["ours"]}")\n'
            f'cameras.create_live_rtsp_stream("{STREAM_ID}")\n')
        self.hub = self.start("hub", [py, str(SELF), "--hub-child", "--config", str(cfg),
                                      "--plugins", str(plug)])
        gst_cmd = [SYSTEM_PYTHON, str(GST_RELAY), "--camera", self.proxy_urls["gst"],
                   "--print-launch"]
        if self.args.gst_src_props is not None:
            gst_cmd += ["--src-props", self.args.gst_src_props]
        self.gst = self.start("gst", gst_cmd, stdin=False)
        self.gst_url = self.gst.line(20)
        if not self.gst_url.startswith("rtsp://"):
            raise RuntimeError(f"gst relay: unexpected first line {self.gst_url!r}")
        for c in [self.probe, *self.workers]:
            r = c.reply(20)
            if not r.get("ready"):
                raise RuntimeError(f"{c.name}: {r}")
        r = self.hub.reply(40)
        if "live" not in r:
            raise RuntimeError(f"hub: {r}{self.hub.tail()}")
        self.hub_url = r["live"]
        self.setup_secs = time.monotonic() - t0
        try:
            for line in self.gst.log.read_text(errors="replace").splitlines():
                if line.startswith("gst_relay: launch "):
                    self.gst_launch = line[len("gst_relay: launch "):]
        except OSError:
            pass

    # -- one window ----------------------------------------------------------------------------
    def window(self, relay: str, n: int, secs: float, profile: bool) -> Result:
        assert self.probe and self.hub and self.gst and self.camera and self.proxy
        res = Result(relay, n)
        url = self.hub_url if relay == "ours" else self.gst_url
        probe = self.probe
        try:
            # the relay's first viewer, the counting viewers, its last viewer; the floor viewer
            r = probe.ask({"cmd": "open", "url": url, "n": 1, "mode": "probe", "tag": "first"},
                          30)
            res.opened += r["opened"]
            res.open_errors += r["errors"]
            counting = max(0, n - 2)
            nw = len(self.workers)
            per = [counting // nw + (1 if i < counting % nw else 0) for i in range(nw)]
            asked = []
            for w, k in zip(self.workers, per, strict=True):
                if k:
                    w.send({"cmd": "open", "url": url, "n": k, "mode": "count", "tag": "count"})
                    asked.append(w)
            for w in asked:
                r = w.reply(60)
                res.opened += r["opened"]
                res.open_errors += r["errors"]
            for cmd in ([{"cmd": "open", "url": url, "n": 1, "mode": "probe", "tag": "last"}]
                        if n >= 2 else []) + [
                    {"cmd": "open", "url": self.proxy_urls["floor"], "n": 1, "mode": "probe",
                     "tag": "floor"}]:
                r = probe.ask(cmd, 30)
                if cmd["tag"] != "floor":
                    res.opened += r["opened"]
                res.open_errors += r["errors"]
            time.sleep(self.args.warmup)

            viewers = [probe, *asked]
            rd_cpu = CpuTracker(self.readers)
            trackers = {"hub": CpuTracker(lambda: [self.hub.pid]), "reader": rd_cpu,
                        "hub_sys": CpuTracker(lambda: [self.hub.pid], "system"),
                        "gst": CpuTracker(lambda: [self.gst.pid]),
                        "gst_sys": CpuTracker(lambda: [self.gst.pid], "system"),
                        "camera": CpuTracker(lambda: [self.camera.pid]),
                        "proxy": CpuTracker(lambda: [self.proxy.pid]),
                        "viewers": CpuTracker(lambda: [c.pid for c in viewers])}
            if relay == "ours":
                self.hub.ask({"cmd": "tap_begin"}, 10)
            self.proxy.ask({"cmd": "begin"}, 10)
            for tr in trackers.values():
                tr.begin()
            m0 = machine_cpu()
            w0 = proc_wakeups(self.hub.pid) or 0
            t0 = time.monotonic()
            for c in viewers:
                c.send({"cmd": "begin"})
            begins = [c.reply(10)["t"] for c in viewers]
            spy = self.start_profiler(secs) if profile else None
            end_at = t0 + secs
            for _ in range(int(secs / SAMPLE_EVERY) + 2):
                left = end_at - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(SAMPLE_EVERY, left))
                rd_cpu.sample()
            lo, hi = min(begins) - 3.0, time.time() + 3.0
            for c in viewers:
                c.send({"cmd": "end", "lo": lo, "hi": hi})
            ends = [c.reply(30) for c in viewers]
            t1 = time.monotonic()
            m1 = machine_cpu()
            w1 = proc_wakeups(self.hub.pid) or 0
            cpus = {k: tr.end() for k, tr in trackers.items()}
            taps = self.proxy.ask({"cmd": "end", "lo": lo, "hi": hi + 1}, 30)["taps"]
            res.secs = t1 - t0
            res.cpu = {k: 100 * v[0] / res.secs for k, v in cpus.items()}
            res.readers_seen = cpus["reader"][1]
            res.hub_wakeups = (w1 - w0) / res.secs
            res.machine_busy = (m1[0] - m0[0]) / max(1.0, m1[1] - m0[1])
            for k, pid in (("hub", self.hub.pid), ("gst", self.gst.pid)):
                res.rss_kb[k] = proc_rss_kb(pid) or 0
            hubtap = self.hub.ask({"cmd": "tap_end"}, 30) if relay == "ours" else None
            if spy is not None:
                res.profile = self.finish_profiler(spy)
            floor = None
            for e in ends:
                for v in e["viewers"]:
                    if v["tag"] == "floor":
                        floor = v
                    else:
                        res.viewers.append(v)
            res.source = taps[relay]
            self.analyse(res, min(begins), max(e["t"] for e in ends), taps, floor, hubtap)
        finally:
            for c in [probe, *self.workers]:
                if c.proc.poll() is None:
                    c.send({"cmd": "close"})
            for c in [probe, *self.workers]:
                if c.proc.poll() is None:
                    c.reply(20)
        return res

    def analyse(self, res: Result, t_begin: float, t_end: float, taps: dict[str, Any],
                floor: dict[str, Any] | None, hubtap: dict[str, Any] | None) -> None:
        src = taps[res.relay]["frames"]
        if floor is not None:
            inside = [f for f in floor["frames"] if t_begin <= f[1] <= t_end]
            res.floor_ms, _, _ = match_frames(taps["floor"]["frames"], inside)
        hub_at: dict[tuple[int, int], float] = {}
        if hubtap is not None:
            for seq, ts, t in hubtap["packets"]:
                hub_at[(seq, ts)] = t
            pk = hubtap["packets"]
            if len(pk) > 1:
                span = max(1e-9, pk[-1][2] - pk[0][2])
                res.publisher_reads = len({p[2] for p in pk}) / span
                res.publisher_video = len(pk) / span
        for v in res.viewers:
            if v["mode"] != "probe":
                continue
            res.no_kernel_stamp += v.get("no_kernel_stamp", 0)
            inside = [f for f in v["frames"] if t_begin <= f[1] <= t_end]
            lat, pairs, missed = match_frames(src, inside)
            res.e2e[v["tag"]] = lat
            res.unmatched[v["tag"]] = missed
            if hubtap is None:
                continue
            for f, t_src in pairs:
                t_hub = hub_at.get((f[2], f[3]))
                if t_hub is not None:
                    if v["tag"] == "first":
                        res.reader_ms.append(1000 * (t_hub - t_src))
                    res.hub_frame_ms.append(1000 * (f[1] - t_hub))
            for seq, ts, t in v["vpackets"]:
                t_hub = hub_at.get((seq, ts))
                if t_hub is None:
                    res.hub_unmatched += 1
                else:
                    res.hub_ms.append(1000 * (t - t_hub))

    # -- py-spy --------------------------------------------------------------------------------
    def start_profiler(self, secs: float) -> subprocess.Popen[bytes] | None:
        if self.hub is None:
            return None
        return start_py_spy(self.hub.pid, secs, self.args.profile)

    def finish_profiler(self, proc: subprocess.Popen[bytes]) -> list[str]:
        try:
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=5)
        if proc.returncode != 0 or not self.args.profile.is_file():
            return [f"py-spy failed ({proc.returncode}): "
                    f"{err.decode(errors='replace').strip()[-300:]}"]
        return summarize_profile(self.args.profile, 18)

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> None:
        args = self.args
        for n in args.counts:
            for relay in ("ours", "gst"):
                if time.monotonic() + args.half + args.warmup + 10 > self.deadline:
                    out(f"   (time budget spent: skipping {relay} at {n} viewers)")
                    continue
                profile = bool(args.profile) and relay == "ours" and n == args.profile_viewers
                r = self.window(relay, n, args.half, profile)
                self.results.append(r)
                if relay == "gst":
                    self.hub_idle.append((r.cpu.get("hub", 0.0), r.cpu.get("reader", 0.0)))
                brief(r)

    def stop_all(self) -> list[str]:
        """End every process started (viewers, hub, GStreamer, proxy, camera); what was left."""
        notes = []
        for c in [self.probe, *self.workers, self.hub, self.proxy]:
            if c is not None and c.proc.poll() is None and c.proc.stdin is not None:
                try:
                    c.send({"cmd": "quit"})
                except OSError:
                    pass
        time.sleep(0.3)
        self.readers()
        for c in self.children:
            if c.stop():
                notes.append(f"{c.name} (pid {c.pid}) needed SIGKILL")
        left = [p for p in self.reader_pids if alive(p)]
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if left:
            notes.append(f"FFmpeg reader(s) left after the hub ended, killed: {left}")
        stray = [(c.name, p) for c in self.children for p in children_of(c.pid)]
        stray += [("bench", p) for p in children_of(os.getpid())]
        if stray:
            notes.append(f"processes left: {stray}")
        still = [c.name for c in self.children if c.proc.poll() is None]
        if still:
            notes.append(f"still running: {still}")
        return notes


# ==========================================================================================
# report


def rate_mbit(v: dict[str, Any] | None) -> float:
    if not v:
        return float("nan")
    return v["bytes"] * 8 / max(1e-9, v["secs"]) / 1e6


def lat_text(ms: list[float]) -> str:
    if not ms:
        return "n/a"
    return (f"p50 {percentile(ms, 50):6.2f} ms, p99 {percentile(ms, 99):6.2f} ms, "
            f"max {max(ms):6.2f} ms ({len(ms)})")


def all_e2e(r: Result) -> list[float]:
    return [x for v in r.e2e.values() for x in v]


def relay_cpu(r: Result) -> float:
    return r.cpu.get("gst", 0.0) if r.relay == "gst" else r.cpu.get("hub", 0.0)


def full_rate(r: Result) -> bool:
    rates = [rate_mbit(v) for v in r.viewers]
    return bool(rates) and len(rates) == r.n and min(rates) >= FULL_RATE * rate_mbit(r.source)


def brief(r: Result) -> None:
    name = "ours" if r.relay == "ours" else "GStreamer"
    extra = f" (+ reader {r.cpu.get('reader', 0.0):.1f} %)" if r.relay == "ours" else ""
    rates = [rate_mbit(v) for v in r.viewers]
    e2e = all_e2e(r)
    out(f"   [{r.n:>2} viewers, {name:>9}] {r.secs:4.1f} s: CPU {relay_cpu(r):5.1f} %{extra}, "
        f"{len(rates)}/{r.n} viewers, min {min(rates, default=0):.2f} Mbit/s (in "
        f"{rate_mbit(r.source):.2f}), latency p50 {percentile(e2e, 50):.2f} / p99 "
        f"{percentile(e2e, 99):.2f} ms")


def report(bench: Bench, args: argparse.Namespace, clip_mbit: float, started: float,
           notes: list[str]) -> None:
    cores = os.cpu_count() or 1
    out()
    out(f"== Relay benchmark: one camera, clip {clip_mbit:.2f} Mbit/s (file; H.264 1280x720 25 fps "
        f"GOP 25 + AAC 48 kHz), {args.half:g} s per relay per viewer count, warm-up "
        f"{args.warmup:g} s, {cores} CPU(s), Python {sys.version.split()[0]}")
    out(f"   camera {bench.camera_url} (through the tap proxy), hub {bench.hub_url}, GStreamer "
        f"{bench.gst_url}; set up in {bench.setup_secs:.1f} s")
    out(f"   GStreamer media: {bench.gst_launch}")
    by = {(r.relay, r.n): r for r in bench.results}
    for n in args.counts:
        ours, gst = by.get(("ours", n)), by.get(("gst", n))
        pair = [r for r in (ours, gst) if r is not None]
        out()
        out(f"-- {n} viewer(s)")
        for r in pair:
            name = "ours     " if r.relay == "ours" else "GStreamer"
            out(f"   {name} window {r.secs:.1f} s; viewers playing {r.opened}/{n}"
                + (f"; open errors: {r.open_errors[:2]}" if r.open_errors else ""))
            errs = [v["error"] for v in r.viewers if v["error"]] + \
                [f"{v['tag']}: EOF" for v in r.viewers if v["eof"]]
            if errs:
                out(f"     viewer errors: {len(errs)}: {errs[:3]}")
        if ours and gst:
            g = gst.cpu.get("gst", 0.0)
            h = ours.cpu.get("hub", 0.0)
            hr = h + ours.cpu.get("reader", 0.0)
            hs = ours.cpu.get("hub_sys", 0)
            out(f"   CPU (% of one core): ours: hub {h:.1f} % (system {hs:.1f}"
                f" %), hub + reader {hr:.1f} % (reader {ours.cpu.get('reader', 0.0):.1f} %, "
                f"{ours.readers_seen} pid(s)); GStreamer {g:.1f} % (system "
                f"{gst.cpu.get('gst_sys', 0):.1f} %)")
            if g > 0:
                line = (f"   ratio ours/GStreamer: hub alone {h / g:.2f}, hub + reader "
                        f"{hr / g:.2f}")
                if n == GOAL_CPU_AT:
                    ok = hr <= GOAL_CPU_RATIO * g
                    line += (f"   [goal <= {GOAL_CPU_RATIO:g}x at {GOAL_CPU_AT} viewers (hub + "
                             f"reader vs GStreamer): {'meets' if ok else 'MISSES'}; stretch "
                             f"parity: {'meets' if hr <= g else 'misses'}]")
                out(line)
            out(f"   hub main thread: {ours.hub_wakeups:,.0f} wake-ups/s; publisher: "
                f"{ours.publisher_video:,.0f} video packets/s arriving in "
                f"{ours.publisher_reads:,.0f} reads/s (reads that carried video)")
            out(f"   RSS: hub {ours.rss_kb.get('hub', 0) / 1024:.0f} MB, GStreamer "
                f"{gst.rss_kb.get('gst', 0) / 1024:.0f} MB")
        for r in pair:
            name = "ours     " if r.relay == "ours" else "GStreamer"
            rates = [rate_mbit(v) for v in r.viewers]
            src = r.source or {}
            vid = [v["packets"].get("video", 0) / max(1e-9, v["secs"]) for v in r.viewers]
            srcv = src.get("packets", {}).get("video", 0) / max(1e-9, src.get("secs", 0))
            out(f"   delivered, {name}: per viewer min {min(rates, default=0):.2f} / median "
                f"{statistics.median(rates) if rates else 0:.2f} / max "
                f"{max(rates, default=0):.2f} Mbit/s, total {sum(rates):.1f} Mbit/s; relay's "
                f"input {rate_mbit(r.source):.2f} Mbit/s; video packets/s per viewer min "
                f"{min(vid, default=0):.0f} (input {srcv:.0f})  "
                f"[full rate: {'yes' if full_rate(r) else 'NO'}]")
        for r in pair:
            name = "ours     " if r.relay == "ours" else "GStreamer"
            e2e = all_e2e(r)
            p99 = percentile(e2e, 99)
            ok = bool(e2e) and p99 < GOAL_P99_MS
            per = "; ".join(f"{tag} viewer {lat_text(ms)}" for tag, ms in r.e2e.items())
            miss = sum(r.unmatched.values())
            out(f"   added latency (relay in -> viewer), {name}: {lat_text(e2e)}   [goal p99 < "
                f"{GOAL_P99_MS:g} ms: {'meets' if ok else 'MISSES'}]")
            out(f"      {per}; frames unmatched {miss}"
                + (f"; reads without kernel stamp {r.no_kernel_stamp}"
                   if r.no_kernel_stamp else ""))
            if r.relay == "ours":
                out(f"      split: FFmpeg reader (relay in -> hub arrival, per frame) "
                    f"{lat_text(r.reader_ms)}")
                out(f"             hub (hub arrival -> viewer, per video packet) "
                    f"{lat_text(r.hub_ms)}")
                out(f"             hub, per frame (last packet) {lat_text(r.hub_frame_ms)}"
                    + (f"; {r.hub_unmatched} viewer packets not seen by the tap"
                       if r.hub_unmatched else ""))
            out(f"      floor (camera -> proxy -> probe viewer): {lat_text(r.floor_ms)}")
        for r in pair:
            name = "ours     " if r.relay == "ours" else "GStreamer"
            out(f"   context, {name} window: camera {r.cpu.get('camera', 0):.1f} %, proxy "
                f"{r.cpu.get('proxy', 0):.1f} %, viewer processes {r.cpu.get('viewers', 0):.1f} "
                f"%, machine busy {100 * r.machine_busy:.0f} % of {cores} cores"
                + (f"; hub with 0 viewers (ingest only) {r.cpu.get('hub', 0):.1f} % + reader "
                   f"{r.cpu.get('reader', 0):.1f} %" if r.relay == "gst" else ""))
        for r in pair:
            if r.profile:
                out(f"   py-spy of the hub process ({n} viewers; perturbs this window's "
                    "figures):")
                for line in r.profile:
                    out(f"      {line}")

    out()
    out("-- summary (CPU % of one core; latency = added, relay in -> viewer, per frame, ms)")
    out(f"   {'viewers':>7} | {'hub':>6} {'hub+rd':>7} {'gst':>6} {'ratio':>6} {'ratio+rd':>8} "
        f"| {'ours Mbit/s':>11} {'gst':>6} {'full':>5} | {'ours p50':>8} {'p99':>7} "
        f"{'gst p50':>8} {'p99':>7} | {'hub-only p50':>12} {'p99':>6}")
    for n in args.counts:
        o, g = by.get(("ours", n)), by.get(("gst", n))
        if not (o and g):
            continue
        h, rd, gc = o.cpu.get("hub", 0), o.cpu.get("reader", 0), g.cpu.get("gst", 0)
        ro = [rate_mbit(v) for v in o.viewers] or [0]
        rg = [rate_mbit(v) for v in g.viewers] or [0]
        eo, eg = all_e2e(o), all_e2e(g)
        full = f"{'y' if full_rate(o) else 'N'}/{'y' if full_rate(g) else 'N'}"
        out(f"   {n:>7} | {h:6.1f} {h + rd:7.1f} {gc:6.1f} {h / gc if gc else 0:6.2f} "
            f"{(h + rd) / gc if gc else 0:8.2f} | {min(ro):11.2f} {min(rg):6.2f} {full:>5} | "
            f"{percentile(eo, 50):8.2f} {percentile(eo, 99):7.2f} {percentile(eg, 50):8.2f} "
            f"{percentile(eg, 99):7.2f} | {percentile(o.hub_ms, 50):12.2f} "
            f"{percentile(o.hub_ms, 99):6.2f}")
    out("   (Mbit/s: the lowest viewer's; full: every viewer >= 97 % of the relay's input, "
        "ours/GStreamer)")
    o10, g10 = by.get(("ours", GOAL_CPU_AT)), by.get(("gst", GOAL_CPU_AT))
    if o10 and g10 and g10.cpu.get("gst"):
        hr = o10.cpu.get("hub", 0) + o10.cpu.get("reader", 0)
        ratio = hr / g10.cpu["gst"]
        out(f"   goal CPU: hub + reader <= {GOAL_CPU_RATIO:g}x GStreamer's at {GOAL_CPU_AT} viewers"
            f" (stretch: parity or better): {ratio:.2f}x -> "
            f"{'meets' if ratio <= GOAL_CPU_RATIO else 'MISSES'}"
            f"{', stretch met' if ratio <= 1 else ''}")
    lo_n, hi_n = min(args.counts), max(args.counts)
    o1, g1, oN, gN = (by.get(k) for k in (("ours", lo_n), ("gst", lo_n), ("ours", hi_n),
                                           ("gst", hi_n)))
    if hi_n > lo_n and o1 and g1 and oN and gN:
        pk = statistics.median(sum(v["packets"].values()) / max(1e-9, v["secs"])
                               for v in oN.viewers)
        d = hi_n - lo_n
        mo = (oN.cpu.get("hub", 0) - o1.cpu.get("hub", 0)) / d
        mg = (gN.cpu.get("gst", 0) - g1.cpu.get("gst", 0)) / d
        out(f"   marginal cost of one more viewer ({lo_n} -> {hi_n}): ours {mo:.3f} % of a core "
            f"= {1e4 * mo / pk:.1f} µs per packet sent ({pk:.0f} packets/s per viewer), "
            f"GStreamer {mg:.3f} % = {1e4 * mg / pk:.1f} µs per packet; fixed part (at "
            f"{lo_n}): ours hub {o1.cpu.get('hub', 0) - lo_n * mo:.1f} % + reader "
            f"{o1.cpu.get('reader', 0):.1f} %, GStreamer {g1.cpu.get('gst', 0) - lo_n * mg:.1f} %")
    worst = [(r.n, percentile(all_e2e(r), 99)) for r in bench.results
             if r.relay == "ours" and all_e2e(r)]
    if worst:
        ok = all(p < GOAL_P99_MS for _, p in worst)
        out(f"   goal latency: added p99 < {GOAL_P99_MS:g} ms (ours, relay in -> viewer): "
            + ", ".join(f"{n} viewers {p:.2f} ms" for n, p in worst)
            + f" -> {'meets' if ok else 'MISSES'}")
    if bench.hub_idle:
        out(f"   hub with no viewer (during GStreamer's windows): "
            f"{statistics.median(x[0] for x in bench.hub_idle):.1f} % + reader "
            f"{statistics.median(x[1] for x in bench.hub_idle):.1f} %")
    out()
    for note in notes:
        out(f"   {note}")
    out(f"   processes left after the run: {'none' if not notes else 'see above'}")
    out(f"   total run time {time.monotonic() - started:.1f} s")


# ==========================================================================================


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="10 s per viewer count")
    p.add_argument("--seconds", type=float, default=None,
                   help="measured seconds per viewer count, split between the two relays "
                        "(default 60; 10 with --quick)")
    p.add_argument("--viewers", default="1,10,50", help="viewer counts (default 1,10,50)")
    p.add_argument("--profile", type=Path, metavar="FILE",
                   help="py-spy the hub process during its window at --profile-viewers "
                        "(raw collapsed stacks into FILE) and print a summary")
    p.add_argument("--profile-viewers", type=int, default=GOAL_CPU_AT, metavar="N")
    p.add_argument("--gst-src-props", metavar="PROPS",
                   help="rtspsrc properties for GStreamer's relay (default: gst_relay.py's, "
                        "'buffer-mode=none'; '' for rtspsrc's defaults)")
    # internal: the child processes
    p.add_argument("--viewers-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--proxy-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--hub-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--camera", help=argparse.SUPPRESS)
    p.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--plugins", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.viewers_child or args.hub_child or args.proxy_child:
        return args
    args.seconds = args.seconds or (10.0 if args.quick else 60.0)
    args.counts = [int(x) for x in args.viewers.split(",") if x.strip()]
    if not args.counts or min(args.counts) < 1:
        p.error("--viewers: positive counts, comma-separated")
    if args.seconds < 2:
        p.error("--seconds must be >= 2")
    args.half = args.seconds / 2
    args.warmup = 1.5 if args.quick else 3.0
    # per window: open + warm-up + measure + close; plus setup and teardown
    args.budget = len(args.counts) * 2 * (args.half + args.warmup + 12) + 60
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.viewers_child or args.proxy_child or args.hub_child:
        import trio

        if args.viewers_child:
            trio.run(viewers_child)
        elif args.proxy_child:
            trio.run(proxy_child, args.camera, ["ours", "gst", "floor"])
        else:
            trio.run(hub_child, args.config, args.plugins)
        return 0
    started = time.monotonic()
    if not Path(SYSTEM_PYTHON).exists():
        out(f"{SYSTEM_PYTHON} not found: GStreamer's relay cannot run")
        return 2
    clip, clip_mbit = make_clip(CLIP_OVERRIDES)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hubruntime-bench-relay-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            bench.setup(clip)
            out(f"set up in {bench.setup_secs:.1f} s: camera {bench.camera_url}, hub "
                f"{bench.hub_url} (pid {bench.hub.pid if bench.hub else '?'}), GStreamer "
                f"{bench.gst_url}")
            bench.run()
        except Exception as exc:
            out(f"benchmark failed: {exc!r}")
            for c in bench.children:
                t = c.tail()
                if t:
                    out(f"   {c.name}{t}")
            raise
        finally:
            notes = bench.stop_all()
    report(bench, args, clip_mbit, started, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
