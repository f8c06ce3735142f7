"""Ingest benchmark: N fake cameras → N FFmpeg readers → one hub. Prints figures, asserts nothing.

Run as ``python tools/bench/ingest.py [--streams 16] [--seconds 60] [--quick] [--profile FILE]``
(``--quick``: 4 streams, 15 s).

Who runs where:

- The cameras are separate processes, one per camera (``python -m hubruntime.fakecam.cli``), so
  their CPU stays out of the hub's figure; they serve a ~2 Mbit/s clip (the default clip's
  parameters with a higher video bitrate, generated once into the fake camera's cache folder).
  Their CPU is measured from ``/proc`` and printed apart, as context.
- The hub runs in this process (``Hub`` on a temporary data dir), so its CPU is this process's
  CPU time (``time.process_time()``, every thread) less the benchmark's own sampling, which is
  timed with ``time.thread_time()`` and subtracted. What is left of the benchmark in it is the
  event collector (a few events a second) and the stall injector (two short control lines a
  second), both negligible.
- The FFmpeg readers are the hub's children; their CPU is ``utime + stime`` of every
  ``supervisor.pid`` from ``/proc/<pid>/stat``, sampled every 0.5 s (a reader may restart: each
  pid is counted from the window's start, or from 0 if it was born during it).

Timeline: cameras up → hub up → idle window (hub, no stream) → add the streams, wait until each
flows, warm up → *steady window* (no faults: CPU, RSS, throughput at full load) → *fault window*
(every stream stalled for 2 s every ``--stall-every`` s, staggered over the streams; detection
latency, and CPU again). Both windows are the same run; the peer ratio compares the hub's CPU per
stream with one reader's over the same window: the reader moves exactly the same packets (it
receives each from the camera and sends it to the hub), with no Python in its path.

Stall detection latency: the stall starts at the camera when it acknowledges ``stall 2`` on its
control channel; the benchmark stamps ``time.time()`` when the ``ok`` line is read. The first
``camera_packet_delay`` of that stream after it (one per track; the first counts) gives
``latency = event.wall - ack - threshold``. The camera's last packet before the stall may have
left up to one frame (40 ms) earlier than the ack, so a latency can be slightly negative. The
event's own ``gapSecs - threshold`` (the hub's timer lateness alone, measured inside the hub) is
printed beside it.

Every loop is bounded in count and time; the whole run takes about seconds + 15 s. Every process
started is ended: the cameras (SIGTERM, then SIGKILL), the hub (cancelled: it kills and reaps its
readers; the benchmark then checks that no FFmpeg child is left), py-spy if asked for.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from benchlib import (
    children_of,
    goal,
    machine_cpu,
    make_clip,
    out,
    percentile,
    proc_cpu,
    proc_pss_kb,
    proc_rss_kb,
    proc_wakeups,
    start_py_spy,
    summarize_profile,
)

from hubruntime.config import HealthConfig, HubConfig
from hubruntime.hub import Hub

GOAL_P99_MS = 100.0  # detection, past the threshold
GOAL_HUB_PCT_PER_STREAM = 1.0  # % of one core
STALL_SECS = 2.0
CLIP_VIDEO_BITRATE = "1900k"  # + 64k AAC + RTP headers: ~2.0 Mbit/s on the wire
SAMPLE_EVERY = 0.5


@dataclass
class Camera:
    name: str
    proc: subprocess.Popen[bytes]
    url: str = ""
    control_port: int = 0
    buf: bytes = b""


def start_cameras(cams: list[Camera], n: int, clip: Path, logdir: Path, timeout: float) -> None:
    """Start ``n`` camera processes at once (appended to ``cams`` as they start, so that the
    caller can end them whatever happens) and read the two lines each prints (URL, control)."""
    for i in range(n):
        name = f"cam{i + 1}"
        log = open(logdir / f"{name}.log", "wb")  # noqa: SIM115 (the child keeps it)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hubruntime.fakecam.cli", "--port", "0", "--control",
                 "0", "--path", name, "--clip", str(clip), "--log-level", "WARNING"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
        finally:
            log.close()
        cams.append(Camera(name, proc))
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    for cam in cams:
        assert cam.proc.stdout is not None
        sel.register(cam.proc.stdout, selectors.EVENT_READ, cam)
    pending = len(cams)
    try:
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
                cam = key.data
                chunk = os.read(key.fd, 4096)
                cam.buf += chunk
                lines = cam.buf.decode(errors="replace").splitlines()
                if not chunk or (len(lines) >= 2 and cam.buf.endswith(b"\n")):
                    sel.unregister(key.fileobj)
                    pending -= 1
                    if len(lines) >= 2 and lines[1].startswith("control: "):
                        cam.url = lines[0].strip()
                        cam.control_port = int(lines[1].rsplit(":", 1)[1])
    finally:
        sel.close()
    bad = [c for c in cams if not c.url]
    if bad:
        tails = "; ".join(f"{c.name}: {(logdir / (c.name + '.log')).read_text()[-300:]!r}"
                          for c in bad[:3])
        raise RuntimeError(f"{len(bad)} camera(s) did not start within {timeout:.0f} s: {tails}")


def stop_processes(procs: list[subprocess.Popen[Any]], timeout: float = 5.0) -> list[int]:
    """SIGTERM each, wait up to ``timeout`` in all, SIGKILL what is left; the pids killed."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    killed = []
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
            killed.append(p.pid)
        if p.stdout is not None:
            p.stdout.close()
    return killed


# ------------------------------------------------------------------------------------------
# measurements


class ReaderCpu:
    """CPU seconds of the hub's FFmpeg readers over a window, pids coming and going."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.last: dict[int, float] = {}
        self.base: dict[int, float] = {}
        self.seen: set[int] = set()

    def pids(self) -> list[int]:
        assert self.hub.ingest is not None
        return [s.pid for s in list(self.hub.ingest.supervisors.values()) if s.pid]

    def sample(self) -> None:
        for pid in self.pids():
            cpu = proc_cpu(pid)
            if cpu is not None:
                self.last[pid] = cpu
                self.seen.add(pid)

    def begin(self) -> None:
        self.sample()
        self.base = dict(self.last)
        self.seen = set(self.base)

    def end(self) -> tuple[float, int]:
        """(CPU seconds since begin, distinct reader pids seen)."""
        self.sample()
        total = sum(self.last[p] - self.base.get(p, 0.0) for p in self.seen)
        return total, len(self.seen)


def ctx_switches() -> int:
    """Voluntary context switches of this process's main thread (the trio thread): each is a
    sleep in epoll_wait followed by a wakeup."""
    return proc_wakeups(os.getpid()) or 0


@dataclass
class Snap:
    mono: float
    cpu: float  # this process
    user: float
    system: float
    wakeups: int
    overhead: float  # the benchmark's own sampling inside it
    cams: list[float | None]
    packets: int
    bytes: int
    readers_started: int
    machine: tuple[float, float]


@dataclass
class Window:
    name: str
    secs: float
    hub_cpu: float
    hub_user: float  # not corrected for the sampling overhead (which is tiny)
    hub_system: float
    hub_wakeups: int
    readers_cpu: float
    reader_pids: int
    cams_cpu: float
    packets: int
    bytes: int
    restarts: int
    machine_busy: float  # fraction of all cores


@dataclass
class Stall:
    sid: str
    sent: float  # wall
    ack: float  # wall
    event_wall: float | None = None
    gap_secs: float | None = None
    track: str = ""


@dataclass
class Run:
    n: int
    clip_mbit: float
    idle: Window | None = None
    windows: list[Window] = field(default_factory=list)
    rss_before_kb: int = 0
    rss_after_kb: int = 0
    rss_end_kb: int = 0
    reader_rss_kb: list[int] = field(default_factory=list)
    reader_pss_kb: list[int] = field(default_factory=list)
    cam_rss_kb: list[int] = field(default_factory=list)
    flowing: int = 0
    up_secs: float = 0.0
    per_stream_mbit: list[float] = field(default_factory=list)
    stalls: list[Stall] = field(default_factory=list)
    stall_errors: list[str] = field(default_factory=list)
    events: list[tuple[float, str, str, dict[str, Any]]] = field(default_factory=list)
    threshold: float = 1.0
    leftover_ffmpeg: list[int] = field(default_factory=list)
    profile: str | None = None


class Bench:
    def __init__(self, args: argparse.Namespace, cams: list[Camera], run: Run) -> None:
        self.args = args
        self.cams = cams
        self.run = run
        self.hub: Hub | None = None
        self.readers: ReaderCpu | None = None
        self.overhead = 0.0  # thread CPU seconds spent sampling

    # -- snapshots ---------------------------------------------------------------------------
    def _timed_sample(self) -> None:
        t = time.thread_time()
        assert self.readers is not None
        self.readers.sample()
        self.overhead += time.thread_time() - t

    def snap(self) -> Snap:
        t = time.thread_time()
        hub = self.hub
        packets = byts = started = 0
        if hub is not None and hub.ingest is not None:
            for h in list(hub.ingest.hubs.values()):
                packets += h.packets
                byts += h.bytes
            started = sum(s.readers_started for s in list(hub.ingest.supervisors.values()))
        s = Snap(time.monotonic(), 0.0, 0.0, 0.0, ctx_switches(), 0.0,
                 [proc_cpu(c.proc.pid) for c in self.cams], packets, byts, started,
                 machine_cpu())
        self.overhead += time.thread_time() - t
        s.overhead = self.overhead
        times = os.times()
        s.cpu = time.process_time()
        s.user, s.system = times.user, times.system
        return s

    def window(self, name: str, a: Snap, b: Snap, readers: tuple[float, int]) -> Window:
        cams = sum((y or 0.0) - (x or 0.0) for x, y in zip(a.cams, b.cams, strict=True))
        busy = (b.machine[0] - a.machine[0]) / max(1.0, b.machine[1] - a.machine[1])
        return Window(name, b.mono - a.mono, (b.cpu - a.cpu) - (b.overhead - a.overhead),
                      b.user - a.user, b.system - a.system, b.wakeups - a.wakeups,
                      readers[0], readers[1], cams, b.packets - a.packets, b.bytes - a.bytes,
                      b.readers_started - a.readers_started, busy)

    async def sample_until(self, end: float) -> None:
        """Sample the readers every SAMPLE_EVERY s until trio time ``end`` (bounded count)."""
        for _ in range(int((end - trio.current_time()) / SAMPLE_EVERY) + 2):
            now = trio.current_time()
            if now >= end:
                return
            await trio.sleep(min(SAMPLE_EVERY, end - now))
            self._timed_sample()

    # -- events --------------------------------------------------------------------------------
    async def collect(self, box: Any) -> None:
        while True:
            for p in await box.get_batch(1000):
                self.run.events.append((p.wall, p.name, p.event.get("streamId", ""), p.event))

    # -- stalls --------------------------------------------------------------------------------
    async def stall_stream(self, i: int, cam: Camera, sid: str, start: float, end: float,
                           period: float) -> None:
        """Stall ``cam`` every ``period`` s from ``start`` (+ its stagger) while the event can
        still arrive before ``end`` (trio times). One control connection, kept open."""
        thr = self.run.threshold
        offset = (i + 0.5) * period / self.run.n
        try:
            with trio.fail_after(5):
                stream = await trio.open_tcp_stream("127.0.0.1", cam.control_port)
        except (OSError, trio.TooSlowError) as exc:
            self.run.stall_errors.append(f"{sid}: control connect: {exc}")
            return
        async with stream:
            for k in range(int((end - start) / period) + 1):
                at = start + offset + k * period
                if at + STALL_SECS + thr + 1.0 > end:
                    return
                await trio.sleep_until(at)
                sent = time.time()
                try:
                    with trio.fail_after(2):
                        await stream.send_all(f"stall {STALL_SECS:g}\n".encode())
                        answer = b""
                        while b"\n" not in answer and len(answer) < 4096:
                            chunk = await stream.receive_some(4096)
                            if not chunk:
                                raise trio.BrokenResourceError("control closed")
                            answer += chunk
                except (trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
                    self.run.stall_errors.append(f"{sid}: {exc!r}")
                    return
                ack = time.time()
                if not answer.startswith(b"ok"):
                    self.run.stall_errors.append(f"{sid}: {answer[:80]!r}")
                    continue
                self.run.stalls.append(Stall(sid, sent, ack))

    # -- the run -------------------------------------------------------------------------------
    async def main(self, data_dir: Path) -> None:
        args, run, n = self.args, self.run, self.run.n
        cfg = HubConfig(data_dir=data_dir, health=HealthConfig(packet_delay_secs=args.threshold))
        self.hub = hub = Hub(cfg)
        sids = [f"cam{i + 1}" for i in range(n)]
        async with trio.open_nursery() as nursery:
            with trio.fail_after(15):
                await nursery.start(hub.run)
            assert hub.bus is not None and hub.manager is not None and hub.ingest is not None
            self.readers = ReaderCpu(hub)
            nursery.start_soon(self.collect, hub.bus.subscribe("bench", maxlen=100_000))

            # idle hub: no stream
            await trio.sleep(0.3)
            gc.collect()
            run.rss_before_kb = proc_rss_kb(os.getpid()) or 0
            a = self.snap()
            await trio.sleep(args.idle)
            run.idle = self.window("idle hub (no stream)", a, self.snap(), (0.0, 0))

            # add the streams, wait until each flows
            t_add = trio.current_time()
            for sid, cam in zip(sids, self.cams, strict=True):
                await hub.manager.add(sid, f"Camera {sid}", cam.url)
            with trio.move_on_after(20):
                while True:
                    flowing = sum(1 for s in sids
                                  if (h := hub.ingest.hubs.get(s)) is not None and h.packets >= 100)
                    if flowing == n:
                        break
                    await trio.sleep(0.05)
            run.flowing = flowing
            run.up_secs = trio.current_time() - t_add
            await trio.sleep(args.warmup)
            gc.collect()
            run.rss_after_kb = proc_rss_kb(os.getpid()) or 0

            # steady window
            profiler = self.start_profiler(args.steady) if args.profile else None
            per_stream0 = {s: h.bytes for s, h in hub.ingest.hubs.items()}
            self.readers.begin()
            a = self.snap()
            await self.sample_until(trio.current_time() + args.steady)
            b = self.snap()
            run.windows.append(self.window("steady (no faults)", a, b, self.readers.end()))
            secs = b.mono - a.mono
            run.per_stream_mbit = [(h.bytes - per_stream0.get(s, 0)) * 8 / secs / 1e6
                                   for s, h in hub.ingest.hubs.items()]
            pids = self.readers.pids()
            run.reader_rss_kb = [v for p in pids if (v := proc_rss_kb(p)) is not None]
            run.reader_pss_kb = [v for p in pids if (v := proc_pss_kb(p)) is not None]
            run.cam_rss_kb = [v for c in self.cams if (v := proc_rss_kb(c.proc.pid)) is not None]
            if profiler is not None:
                await self.finish_profiler(profiler)

            # fault window
            self.readers.begin()
            a = self.snap()
            start = trio.current_time()
            end = start + args.faults
            async with trio.open_nursery() as stallers:
                for i, (sid, cam) in enumerate(zip(sids, self.cams, strict=True)):
                    stallers.start_soon(self.stall_stream, i, cam, sid, start, end,
                                        args.stall_every)
                await self.sample_until(end)
            b = self.snap()
            run.windows.append(self.window(f"faults ({STALL_SECS:g} s stall every "
                                           f"{args.stall_every:g} s per stream)", a, b,
                                           self.readers.end()))
            gc.collect()
            run.rss_end_kb = proc_rss_kb(os.getpid()) or 0
            await trio.sleep(0.1)  # the last events
            nursery.cancel_scope.cancel()

    # -- py-spy ----------------------------------------------------------------------------------
    def start_profiler(self, secs: float) -> subprocess.Popen[bytes] | None:
        proc = start_py_spy(os.getpid(), secs, self.args.profile)
        if proc is None:
            self.run.profile = "py-spy not found on PATH: no profile"
        return proc

    async def finish_profiler(self, proc: subprocess.Popen[bytes]) -> None:
        with trio.move_on_after(10):
            while proc.poll() is None:
                await trio.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
        err = proc.communicate(timeout=5)[1].decode(errors="replace") if proc.stderr else ""
        if proc.returncode != 0:
            self.run.profile = f"py-spy failed ({proc.returncode}): {err.strip()[-300:]}"


# ------------------------------------------------------------------------------------------
# analysis and report


def match_stalls(run: Run) -> list[float]:
    """Give each stall its first camera_packet_delay; returns the unmatched events' walls."""
    thr = run.threshold
    delays = sorted((w, sid, ev) for w, name, sid, ev in run.events
                    if name == "camera_packet_delay")
    used: set[int] = set()
    by_sid: dict[str, list[Stall]] = {}
    for st in run.stalls:
        by_sid.setdefault(st.sid, []).append(st)
    for stalls in by_sid.values():
        for st in stalls:
            lo, hi = st.ack + thr - 0.5, st.ack + STALL_SECS + thr + 0.5
            for j, (w, sid, ev) in enumerate(delays):
                if sid == st.sid and lo <= w <= hi:
                    if st.event_wall is None:
                        st.event_wall, st.gap_secs = w, ev.get("gapSecs")
                        st.track = ev.get("track", "")
                    used.add(j)
    return [w for j, (w, _, _) in enumerate(delays) if j not in used]


def report(run: Run, args: argparse.Namespace, started: float) -> None:
    n = run.n
    cores = os.cpu_count() or 1
    out()
    out(f"== Ingest benchmark: {n} streams, clip {run.clip_mbit:.2f} Mbit/s (file), "
        f"steady {args.steady:g} s + faults {args.faults:g} s, threshold {run.threshold:g} s, "
        f"{cores} CPU(s), Python {sys.version.split()[0]}, trio {trio.__version__}")
    out(f"   streams flowing: {run.flowing}/{n}, all up {run.up_secs:.1f} s after being added")
    if run.idle is not None:
        w = run.idle
        out(f"   idle hub (no stream, {w.secs:.1f} s): {100 * w.hub_cpu / w.secs:.2f} % of a core")

    for w in run.windows:
        s = w.secs
        hub_pct = 100 * w.hub_cpu / s
        rd_pct = 100 * w.readers_cpu / s
        cam_pct = 100 * w.cams_cpu / s
        pkts = w.packets / s
        mbit = w.bytes * 8 / s / 1e6
        out()
        out(f"-- {w.name}: {s:.1f} s")
        out(f"   ingested: {pkts:,.0f} packets/s, {mbit:.1f} Mbit/s in total "
            f"({pkts / n:,.0f} packets/s, {mbit / n:.2f} Mbit/s per stream; RTP+RTCP, "
            "RTP headers included)")
        hub_ps = hub_pct / n
        out(f"   hub process CPU:   {hub_pct:6.1f} % of one core total, {hub_ps:.2f} % per stream"
            f"   [goal <= {GOAL_HUB_PCT_PER_STREAM:g} % per stream: "
            f"{goal(hub_ps <= GOAL_HUB_PCT_PER_STREAM)}]")
        if w.packets:
            out(f"                      {1e6 * w.hub_cpu / w.packets:.1f} µs of hub CPU per packet,"
                f" {1e3 * w.hub_cpu / max(1e-9, w.bytes * 8 / 1e6):.1f} ms per Mbit; user "
                f"{100 * w.hub_user / s:.1f} % + system {100 * w.hub_system / s:.1f} %")
            out(f"                      trio thread wakeups: {w.hub_wakeups / s:,.0f}/s "
                f"({w.packets / max(1, w.hub_wakeups):.1f} packets per wakeup, "
                f"{1e6 * w.hub_cpu / max(1, w.hub_wakeups):.0f} µs of CPU per wakeup)")
        per_reader = rd_pct / n
        out(f"   FFmpeg readers:    {rd_pct:6.1f} % total, {per_reader:.2f} % per reader "
            f"({w.reader_pids} reader pid(s) seen, {w.restarts} reader start(s) in the window)")
        if per_reader > 0:
            out(f"   peer ratio hub/reader per stream: {hub_ps / per_reader:.2f} "
                "(the reader receives and re-sends every packet, in C)")
        out(f"   camera processes:  {cam_pct:6.1f} % total, {cam_pct / n:.2f} % per camera "
            "(context only: not the hub)")
        out(f"   whole machine busy: {100 * w.machine_busy:.0f} % of {cores} cores "
            f"(hub + readers + cameras = {(hub_pct + rd_pct + cam_pct) / cores:.0f} %)")

    out()
    out("-- memory (VmRSS)")
    per = (run.rss_after_kb - run.rss_before_kb) / 1024 / max(1, n)
    out(f"   hub: {run.rss_before_kb / 1024:.1f} MB before the streams, "
        f"{run.rss_after_kb / 1024:.1f} MB with {n} streams up, {run.rss_end_kb / 1024:.1f} MB at "
        f"the end -> {per * 1024:.0f} kB per stream")
    if run.reader_rss_kb:
        pss = (f", Pss median {statistics.median(run.reader_pss_kb) / 1024:.1f} MB"
               if run.reader_pss_kb else "")
        out(f"   one FFmpeg reader: median {statistics.median(run.reader_rss_kb) / 1024:.1f} MB, "
            f"max {max(run.reader_rss_kb) / 1024:.1f} MB{pss}")
    if run.cam_rss_kb:
        out(f"   one camera process: median {statistics.median(run.cam_rss_kb) / 1024:.1f} MB")
    if run.per_stream_mbit:
        out(f"   per-stream ingest (steady): min {min(run.per_stream_mbit):.2f}, "
            f"max {max(run.per_stream_mbit):.2f} Mbit/s")

    spurious = match_stalls(run)
    lat = [1000 * (s.event_wall - s.ack - run.threshold) for s in run.stalls
           if s.event_wall is not None]
    lat_sent = [1000 * (s.event_wall - s.sent - run.threshold) for s in run.stalls
                if s.event_wall is not None]
    inner = [1000 * (s.gap_secs - run.threshold) for s in run.stalls if s.gap_secs is not None]
    rtt = [1000 * (s.ack - s.sent) for s in run.stalls]
    missed = [s for s in run.stalls if s.event_wall is None]
    out()
    out(f"-- stall detection: {len(run.stalls)} stalls of {STALL_SECS:g} s injected, "
        f"{len(lat)} detected, {len(missed)} missed, {len(spurious)} camera_packet_delay "
        "event(s) outside any stall")
    if lat:
        p99 = percentile(lat, 99)
        out(f"   latency past threshold (event.wall - ack - {run.threshold:g} s): "
            f"p50 {percentile(lat, 50):.0f} ms, p99 {p99:.0f} ms, max {max(lat):.0f} ms, "
            f"min {min(lat):.0f} ms   [goal p99 <= {GOAL_P99_MS:g} ms: "
            f"{goal(p99 <= GOAL_P99_MS)}]")
        out(f"   same from the command's send time: p50 {percentile(lat_sent, 50):.0f} ms, "
            f"p99 {percentile(lat_sent, 99):.0f} ms (control round trip p50 "
            f"{percentile(rtt, 50):.1f} ms, max {max(rtt):.1f} ms)")
        out(f"   hub timer lateness alone (gapSecs - threshold, inside the hub): "
            f"p50 {percentile(inner, 50):.0f} ms, p99 {percentile(inner, 99):.0f} ms, "
            f"max {max(inner):.0f} ms")
        tracks = Counter(s.track for s in run.stalls if s.event_wall is not None)
        out(f"   first event's track: {dict(tracks)}")
        out("   note: the stall starts at the camera when it acks; its last packet may have left"
            " up to a frame earlier, so a latency can be slightly negative.")
    names = Counter(name for _, name, _, _ in run.events if name != "camera_packet_delay")
    if names:
        out(f"   other events: {dict(names)}")
    if names.get("camera_accumulated_delay"):
        out("   note: the fake cameras skip the frames of a stall and resume live (no backlog), "
            "so a camera_accumulated_delay here is a false alarm (and restarts a reader).")
    for e in run.stall_errors[:5]:
        out(f"   stall injection error: {e}")

    if run.profile:
        out()
        out("-- py-spy profile of the hub process (steady window)")
        for line in run.profile.splitlines():
            out(f"   {line}")
    out()
    out(f"   FFmpeg children left after the hub stopped: {len(run.leftover_ffmpeg)}"
        + (f" (killed: {run.leftover_ffmpeg})" if run.leftover_ffmpeg else ""))
    out(f"   total run time {time.monotonic() - started:.1f} s")


# ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=None, help="cameras/streams (default 16)")
    p.add_argument("--seconds", type=float, default=None,
                   help="measured time: a third steady, the rest with faults (default 60)")
    p.add_argument("--quick", action="store_true", help="4 streams, 15 s")
    p.add_argument("--stall-every", type=float, default=None,
                   help="seconds between two stalls of one stream (default 8; 4 with --quick)")
    p.add_argument("--threshold", type=float, default=1.0, help="packet_delay_secs (default 1)")
    p.add_argument("--profile", type=Path, metavar="FILE",
                   help="record the hub with py-spy during the steady window into FILE (raw "
                        "collapsed stacks) and print a summary; perturbs the figures a little")
    args = p.parse_args(argv)
    args.streams = args.streams or (4 if args.quick else 16)
    args.seconds = args.seconds or (15.0 if args.quick else 60.0)
    args.stall_every = args.stall_every or (4.0 if args.quick else 8.0)
    if args.streams < 1 or args.seconds < 6:
        p.error("need at least 1 stream and 6 seconds")
    if args.stall_every < STALL_SECS + args.threshold + 0.5:
        p.error(f"--stall-every must be >= {STALL_SECS + args.threshold + 0.5:g} s")
    args.steady = round(args.seconds / 3, 1)
    args.faults = args.seconds - args.steady
    args.idle = 1.0 if args.quick else 2.0
    args.warmup = 1.0 if args.quick else 2.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    clip, clip_mbit = make_clip({"video_bitrate": CLIP_VIDEO_BITRATE})
    run = Run(args.streams, clip_mbit, threshold=args.threshold)
    with tempfile.TemporaryDirectory(prefix="hubruntime-bench-ingest-") as tmp:
        tmpdir = Path(tmp)
        cams: list[Camera] = []
        try:
            start_cameras(cams, args.streams, clip, tmpdir, timeout=20 + args.streams)
            bench = Bench(args, cams, run)
            budget = args.seconds + args.idle + args.warmup + 45
            trio.run(_bounded, bench, tmpdir / "data", budget)
        finally:
            left = children_of(os.getpid(), "ffmpeg")
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
            run.leftover_ffmpeg = left
            killed = stop_processes([c.proc for c in cams])
            if killed:
                out(f"camera processes that needed SIGKILL: {killed}")
            alive = [c.proc.pid for c in cams if c.proc.poll() is None]
            if alive:
                out(f"WARNING: camera processes still alive: {alive}")
    if args.profile and run.profile is None and args.profile.is_file():
        run.profile = "\n".join(summarize_profile(
            args.profile, 14,
            "inclusive (function and what it calls), hubruntime and trio frames:"))
    report(run, args, started)
    return 0


async def _bounded(bench: Bench, data_dir: Path, budget: float) -> None:
    with trio.fail_after(budget):
        await bench.main(data_dir)


if __name__ == "__main__":
    sys.exit(main())
