"""Timing traces for the health monitor: generate, distort, replay (DESIGN.md §3).

Why: the health rules are about *when* packets arrive relative to their RTP timestamps, so they
are best tested on timing alone, hours of it, deterministically. A trace is a list of
:class:`Packet` (arrival, track, seq, ts) and optionally :class:`Rtcp` entries, in arrival order.
:func:`steady` makes a healthy camera; the transformers (:func:`stall`, :func:`slow`,
:func:`drift`, :func:`wrap_timestamps`, :func:`reorder`, :func:`bframes`, :func:`with_rtcp`)
inject one fault or quirk each and compose; :func:`replay` drives a
:class:`~hubruntime.streams.health.HealthMonitor` through a trace the way the stream's event loop
does, and returns the events with the time they were produced.

Everything is a pure function of its arguments: randomness comes only from ``random.Random(seed)``.
Conventions: times in seconds from an arbitrary origin, track 0 is video and track 1 audio (as
:func:`tracks` declares them), timestamps and sequence numbers are the 32/16-bit wire values.

Run ``python tools/traces.py`` to print what the monitor says on a few faulty traces.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from hubruntime.proto.rtp import TimestampUnwrapper
from hubruntime.streams.health import HealthEvent, HealthMonitor, Track

VIDEO = 0
AUDIO = 1

_TS_MOD = 1 << 32
_SEQ_MOD = 1 << 16


class Packet(NamedTuple):
    """One RTP packet: when it arrived, its track (SDP media index), its wire seq and ts."""

    arrival: float
    track: int
    seq: int
    ts: int


class Rtcp(NamedTuple):
    """One RTCP packet of a track: only its arrival matters to the monitor."""

    arrival: float
    track: int


Entry = Packet | Rtcp
Trace = list[Entry]


def tracks(
    video_clock: int = 90000, audio_clock: int = 48000, *, audio: bool = True
) -> list[Track]:
    """The tracks :func:`steady` produces, for building the monitor that replays it."""
    out = [Track(VIDEO, "video", video_clock)]
    if audio:
        out.append(Track(AUDIO, "audio", audio_clock))
    return out


def _sorted(entries: Iterable[Entry]) -> Trace:
    # Stable: entries with equal arrival keep their order (a burst stays in packet order).
    return sorted(entries, key=lambda e: e.arrival)


# ---------------------------------------------------------------------------------------------
# Generator


def steady(
    duration: float,
    fps: float = 25.0,
    audio_rate: float = 50.0,
    video_clock: int = 90000,
    audio_clock: int = 48000,
    start_ts: int | None = None,
    jitter: float = 0.0,
    *,
    seed: int = 0,
    start: float = 0.0,
    start_seq: int | None = None,
    packets_per_frame: int = 1,
    keep_order: bool = False,
) -> Trace:
    """A healthy camera: ``fps`` video frames and ``audio_rate`` audio packets per second.

    ``start_ts``/``start_seq``: the first wire values of every track; ``None`` draws them from
    the seeded generator (RFC 3550 wants them random, which is also what exposes wrap bugs).
    ``jitter``: each arrival moves by a uniform offset in ±jitter; packets may then overtake
    each other (as over UDP) unless ``keep_order`` (as over TCP, where a late packet holds back
    the ones behind it). ``packets_per_frame`` > 1 splits a frame into packets 0.5 ms apart that
    share its timestamp, like a fragmented H.264 frame. ``audio_rate=0`` gives video only.
    """
    if duration < 0 or fps <= 0 or audio_rate < 0 or jitter < 0 or packets_per_frame < 1:
        raise ValueError("steady: negative duration/jitter or non-positive rate")
    rng = random.Random(seed)
    sent: list[tuple[float, Packet]] = []  # (send time, packet)

    def emit(track: int, rate: float, clock: int, per_unit: int) -> None:
        ts0 = rng.getrandbits(32) if start_ts is None else start_ts % _TS_MOD
        seq = rng.getrandbits(16) if start_seq is None else start_seq % _SEQ_MOD
        for k in range(math.ceil(duration * rate - 1e-9)):
            ts = (ts0 + round(k * clock / rate)) % _TS_MOD
            for j in range(per_unit):
                nominal = start + k / rate + j * 0.0005
                arrival = nominal + (rng.uniform(-jitter, jitter) if jitter else 0.0)
                sent.append((nominal, Packet(arrival, track, seq, ts)))
                seq = (seq + 1) % _SEQ_MOD

    emit(VIDEO, fps, video_clock, packets_per_frame)
    if audio_rate:
        emit(AUDIO, audio_rate, audio_clock, 1)
    if not keep_order:
        return _sorted(p for _, p in sent)
    # One ordered connection: in send order, nothing arrives before what was sent earlier.
    sent.sort(key=lambda s: s[0])
    out: Trace = []
    last = -math.inf
    for _, p in sent:
        last = max(last, p.arrival)
        out.append(p._replace(arrival=last))
    return out


# ---------------------------------------------------------------------------------------------
# Transformers


def stall(
    trace: Trace,
    at: float,
    secs: float,
    tracks: Sequence[int] | None = None,
    skip_frames: bool = True,
    burst: bool = False,
    *,
    burst_spacing: float = 0.0005,
) -> Trace:
    """The camera stops sending ``tracks`` (default: all) from ``at`` for ``secs``.

    What happens to the media of the stall:

    * ``skip_frames`` (default): the camera drops it; timestamps jump forward by the stall, so
      media time keeps pace with wall time and there is no lag, only a gap.
    * ``burst``: the camera held it and delivers it all at ``at + secs``, ``burst_spacing``
      apart, then goes on live: a gap, a transient lag of ``secs`` that catches up at once.
    * neither: the camera resumes where it left: every later packet of those tracks arrives
      ``secs`` late for good, a permanent lag of ``secs``.

    RTCP entries are left alone (they keep coming during a stall).
    """
    end = at + secs
    selected = set(tracks) if tracks is not None else None
    out: list[Entry] = []
    affected: list[tuple[int, Packet]] = []  # (position in out, packet), in send order
    held: list[Packet] = []
    for e in trace:
        if isinstance(e, Rtcp) or (selected is not None and e.track not in selected):
            out.append(e)
            continue
        if e.arrival < at:
            out.append(e)
        elif e.arrival < end:
            if skip_frames:
                continue
            if burst:
                held.append(e)
            else:
                out.append(e._replace(arrival=e.arrival + secs))
        elif skip_frames or burst:
            affected.append((len(out), e))
            out.append(e)
        else:
            out.append(e._replace(arrival=e.arrival + secs))
    if burst and held:
        flushed = [p._replace(arrival=end + i * burst_spacing) for i, p in enumerate(held)]
        last = flushed[-1].arrival
        # Live packets sent after the backlog cannot overtake it on the camera's connection.
        for pos, p in affected:
            if p.arrival > last:
                break
            last += burst_spacing
            out[pos] = p._replace(arrival=last)
        out.extend(flushed)
    return _sorted(out)


def slow(trace: Trace, factor: float, from_: float = 0.0) -> Trace:
    """From ``from_`` on, the camera delivers media at ``factor`` times real time (0.8: four
    seconds of media every five seconds), so the lag grows by ``1 - factor`` per second."""
    if factor <= 0:
        raise ValueError(f"slow: factor must be positive, got {factor}")
    return _sorted(
        e._replace(arrival=from_ + (e.arrival - from_) / factor) if e.arrival > from_ else e
        for e in trace
    )


def drift(trace: Trace, ppm: float) -> Trace:
    """The camera's media clock runs ``ppm`` parts per million fast (positive: timestamps
    advance faster than wall time) or slow (negative); 1000 ppm is 0.1 %."""
    scale = 1 + ppm * 1e-6
    unwrappers: dict[int, TimestampUnwrapper] = {}
    bases: dict[int, int] = {}
    out: Trace = []
    for e in trace:
        if isinstance(e, Packet):
            u = unwrappers.setdefault(e.track, TimestampUnwrapper())
            ext = u.unwrap(e.ts)
            base = bases.setdefault(e.track, ext)
            e = e._replace(ts=(base + round((ext - base) * scale)) % _TS_MOD)
        out.append(e)
    return out


def wrap_timestamps(
    trace: Trace, near_wrap: int = 90000, seq_near_wrap: int | None = None
) -> Trace:
    """Shift each track's timestamps so that its first one is ``near_wrap`` ticks before 2**32
    (90000: one second of 90 kHz video), and if ``seq_near_wrap`` is given, its sequence numbers
    so that the first one is that many before 65536: both then wrap early in the trace."""
    ts_shift: dict[int, int] = {}
    seq_shift: dict[int, int] = {}
    out: Trace = []
    for e in trace:
        if isinstance(e, Packet):
            dt = ts_shift.setdefault(e.track, (_TS_MOD - near_wrap - e.ts) % _TS_MOD)
            e = e._replace(ts=(e.ts + dt) % _TS_MOD)
            if seq_near_wrap is not None:
                ds = seq_shift.setdefault(e.track, (_SEQ_MOD - seq_near_wrap - e.seq) % _SEQ_MOD)
                e = e._replace(seq=(e.seq + ds) % _SEQ_MOD)
        out.append(e)
    return out


def reorder(trace: Trace, every: int = 10) -> Trace:
    """Every ``every``-th packet of each track arrives after the next one (their seq/ts swap
    arrival slots), as UDP on a multipath network does."""
    if every < 2:
        raise ValueError(f"reorder: every must be at least 2, got {every}")
    out: Trace = list(trace)
    positions: dict[int, list[int]] = {}
    for i, e in enumerate(out):
        if isinstance(e, Packet):
            positions.setdefault(e.track, []).append(i)
    for idx in positions.values():
        for k in range(every - 1, len(idx) - 1, every):
            a, b = out[idx[k]], out[idx[k + 1]]
            assert isinstance(a, Packet) and isinstance(b, Packet)
            out[idx[k]] = a._replace(seq=b.seq, ts=b.ts)
            out[idx[k + 1]] = b._replace(seq=a.seq, ts=a.ts)
    return out


def bframes(trace: Trace, tracks: Sequence[int] = (VIDEO,), group: int = 3) -> Trace:
    """Decode order with B-frames: after the first frame, each run of ``group`` frames is sent
    as its last (the P-frame) then the others (the B-frames that reference it), so timestamps
    step back within every group (display t1 t2 t3 → sent t3 t1 t2)."""
    if group < 2:
        raise ValueError(f"bframes: group must be at least 2, got {group}")
    out: Trace = list(trace)
    for track in tracks:
        frames: list[list[int]] = []  # positions of each frame's packets, frames in send order
        last_ts: int | None = None
        for i, e in enumerate(out):
            if isinstance(e, Packet) and e.track == track:
                if e.ts != last_ts:
                    frames.append([])
                    last_ts = e.ts
                frames[-1].append(i)
        stamps = [out[f[0]].ts for f in frames]  # type: ignore[union-attr]
        new = list(stamps)
        for start in range(1, len(frames) - group + 1, group):
            chunk = stamps[start : start + group]
            new[start : start + group] = [chunk[-1], *chunk[:-1]]
        for f, ts in zip(frames, new, strict=True):
            for i in f:
                p = out[i]
                assert isinstance(p, Packet)
                out[i] = p._replace(ts=ts)
    return out


def with_rtcp(
    trace: Trace,
    every: float = 1.0,
    tracks: Sequence[int] | None = None,
    start: float | None = None,
    end: float | None = None,
) -> Trace:
    """Add an RTCP packet per track every ``every`` seconds over ``[start, end]`` (default: the
    trace's span), stalls included: FFmpeg's reports do not stop when the media does."""
    if not trace:
        return []
    if tracks is None:
        tracks = sorted({e.track for e in trace})
    t0 = trace[0].arrival if start is None else start
    t1 = trace[-1].arrival if end is None else end
    extra: list[Entry] = []
    n = 0
    while t0 + n * every <= t1:
        extra.extend(Rtcp(t0 + n * every, track) for track in tracks)
        n += 1
    return _sorted([*trace, *extra])


# ---------------------------------------------------------------------------------------------
# Replay


def replay(
    monitor: HealthMonitor,
    trace: Trace,
    poll_step: float = 0.01,
    *,
    start: bool = True,
    until: float | None = None,
    calls: Iterable[tuple[float, Callable[[float], object]]] = (),
) -> list[tuple[float, HealthEvent]]:
    """Feed ``trace`` to ``monitor`` as the stream's event loop would, and return the events
    with the time each was produced.

    Between packets the loop sleeps until ``monitor.next_deadline()``; its timer wakes on the
    next multiple of ``poll_step`` at or after the deadline (0: exactly at it), and then polls.
    A deadline reached at the very arrival of a packet is polled before the packet. ``start``
    calls ``monitor.start`` at the first arrival if the monitor is idle. ``until`` keeps polling
    after the last packet (to see a stall at the end). ``calls`` are ``(time, fn)`` actions run
    in time order among the packets (before a packet of the same time), called as ``fn(time)``:
    ``(90.0, monitor.start)``, ``(60.0, lambda now: monitor.stop())``.
    """
    entries = _sorted(trace)
    actions = sorted(calls, key=lambda c: c[0])
    ai = 0
    out: list[tuple[float, HealthEvent]] = []
    if start and monitor.state == "idle":
        monitor.start(entries[0].arrival if entries else 0.0)

    def wake_time(deadline: float) -> float:
        if poll_step <= 0:
            return deadline
        return max(deadline, math.ceil(deadline / poll_step - 1e-9) * poll_step)

    def run_until(t: float) -> None:
        nonlocal ai
        while True:
            deadline = monitor.next_deadline()
            wake = math.inf if deadline is None else wake_time(deadline)
            action_at = actions[ai][0] if ai < len(actions) else math.inf
            if min(wake, action_at) > t:
                return
            if action_at <= wake:
                actions[ai][1](action_at)
                ai += 1
                continue
            events = monitor.poll(wake)
            if not events and monitor.next_deadline() == deadline:
                raise RuntimeError(f"poll({wake}) at deadline {deadline} reported nothing")
            out.extend((wake, e) for e in events)

    for e in entries:
        run_until(e.arrival)
        if isinstance(e, Packet):
            events = monitor.on_rtp(e.arrival, e.track, e.seq, e.ts)
        else:
            events = monitor.on_rtcp(e.arrival, e.track)
        out.extend((e.arrival, ev) for ev in events)
    end = until if until is not None else (entries[-1].arrival if entries else 0.0)
    run_until(end)
    return out


def _demo() -> None:  # pragma: no cover - a printout for humans
    scenarios: dict[str, Trace] = {
        "steady 60 s": steady(60),
        "3 s stall, frames skipped": stall(steady(30), 10, 3),
        "3 s stall, then burst": stall(steady(30), 10, 3, skip_frames=False, burst=True),
        "7 s stall, resumes where it left": stall(steady(30), 10, 7, skip_frames=False),
        "video frozen, audio live": stall(steady(30), 10, 3, tracks=[VIDEO]),
        "slow (0.8x)": slow(steady(40), 0.8),
    }
    for name, trace in scenarios.items():
        monitor = HealthMonitor(tracks())
        events = replay(monitor, trace)
        print(f"{name}: {len(events)} event(s)")
        for t, ev in events:
            print(f"  {t:8.3f}  {ev.name} {ev.fields}")


if __name__ == "__main__":  # pragma: no cover
    _demo()
