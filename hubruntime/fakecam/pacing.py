"""When each packet of a looping clip is due, and what its RTP header says: sans-I/O.

Why a module of its own: the faults the camera injects (stalls, slowness, clock jumps) are all
statements about time, and getting them exactly right is easier to check with plain numbers than
with sockets. Nothing here reads a clock; every function is given ``now`` (trio's clock in the
server, plain floats in tests).

Vocabulary: *position* is seconds of media since a client's PLAY (it keeps growing across
loops); the camera's :class:`MediaClock` says which position is due at which wall time.
"""

from __future__ import annotations

import bisect
import math
import struct
from dataclasses import dataclass
from typing import NamedTuple

from hubruntime.fakecam.clip import Capture

NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)
_HISTORY = 64  # speed changes remembered, so recent positions still map to their wall time


class MediaClock:
    """The camera's media clock: seconds of media produced as a function of wall time.

    It runs at wall speed until :meth:`set_speed` (the ``slow`` fault) changes its rate from a
    given moment on. Past segments are kept, so :meth:`time_at` can still say when an earlier
    position was due: a late sender must judge a packet by when it *should* have gone out.
    """

    def __init__(self, now: float) -> None:
        # (wall time, position, speed) from which each segment runs
        self._segments: list[tuple[float, float, float]] = [(now, 0.0, 1.0)]

    @property
    def speed(self) -> float:
        return self._segments[-1][2]

    def set_speed(self, now: float, speed: float) -> None:
        if not (speed > 0 and math.isfinite(speed)):
            raise ValueError(f"speed must be a positive number, not {speed!r}")
        self._segments.append((now, self.position(now), speed))
        del self._segments[:-_HISTORY]

    def position(self, now: float) -> float:
        for t, v, speed in reversed(self._segments):
            if now >= t:
                return v + (now - t) * speed
        t, v, speed = self._segments[0]
        return v + (now - t) * speed

    def time_at(self, position: float) -> float:
        """The wall time at which ``position`` is (or was) due."""
        for t, v, speed in reversed(self._segments):
            if position >= v:
                return t + (position - v) / speed
        t, v, speed = self._segments[0]
        return t + (position - v) / speed


@dataclass(frozen=True, slots=True)
class Interval:
    """A half-open span of wall time ``[start, end)``; an end of ``inf`` is still open."""

    start: float
    end: float

    def __contains__(self, t: object) -> bool:
        return isinstance(t, float | int) and self.start <= t < self.end


NEVER = Interval(math.inf, math.inf)


def extend(old: Interval, now: float, seconds: float) -> Interval:
    """A stall of ``seconds`` from ``now``; one already running is lengthened, not restarted, so
    the packets it already skipped stay skipped."""
    if now in old:
        return Interval(old.start, max(old.end, now + seconds))
    return Interval(now, now + seconds)


def cut(old: Interval, now: float) -> Interval:
    """End a stall now (``restore``); what it skipped stays skipped."""
    return Interval(old.start, min(old.end, now)) if old.start <= now else NEVER


class Entry(NamedTuple):
    position: float  # seconds since the start of the loop when the packet is due
    media: int
    data: bytes
    ticks: int  # RTP timestamp relative to the track's first one (its clock's units)


class Schedule:
    """The clip's packets in due order, looped for ever: entry ``n`` of loop ``n // len``.

    A packet is due when its media time comes; within a track the due times never go back (a
    B-frame's earlier timestamp does not make it due before the frame sent ahead of it), and
    tracks are merged by due time, keeping each track's order.
    """

    def __init__(self, capture: Capture) -> None:
        clocks = capture.clock_rates
        latest = [0.0] * len(clocks)
        due = []
        for order, p in enumerate(capture.packets):
            latest[p.media] = max(latest[p.media], p.time)
            due.append((latest[p.media], order, p))
        due.sort(key=lambda item: (item[0], item[1]))
        self.duration = capture.duration
        self.clock_rates = clocks
        self.loop_ticks = tuple(round(capture.duration * c) for c in clocks)
        self._entries = [Entry(d, p.media, p.data, round(p.time * clocks[p.media]))
                         for d, _, p in due]
        self._positions = [e.position for e in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, n: int) -> Entry:
        """Entry ``n`` counted across loops, with position and ticks of that loop."""
        loop, i = divmod(n, len(self._entries))
        e = self._entries[i]
        if not loop:
            return e
        return Entry(loop * self.duration + e.position, e.media, e.data,
                     loop * self.loop_ticks[e.media] + e.ticks)

    def index_at(self, position: float) -> int:
        """The first entry due at or after ``position``."""
        loop = max(0, math.floor(position / self.duration))
        i = bisect.bisect_left(self._positions, position - loop * self.duration)
        return loop * len(self._entries) + i

    def ticks_at(self, media: int, position: float) -> int:
        """The relative RTP timestamp a track shows at ``position`` (RTP-Info, sender reports)."""
        loop = max(0, math.floor(position / self.duration))
        rest = position - loop * self.duration
        return loop * self.loop_ticks[media] + round(rest * self.clock_rates[media])


@dataclass(slots=True)
class TrackOut:
    """One client's view of one track: its interleaved channels and RTP numbering."""

    media: int
    channel: int  # RTP; RTCP goes on channel + 1
    ssrc: int
    seq: int  # the next sequence number
    ts_base: int
    clock_rate: int
    packets: int = 0
    octets: int = 0
    last_report: float = -math.inf

    def timestamp(self, ticks: int, skew: float) -> int:
        return (self.ts_base + ticks + round(skew * self.clock_rate)) & 0xFFFFFFFF

    def rewrite(self, data: bytes, timestamp: int) -> bytes:
        """``data`` with this client's sequence number, timestamp and SSRC; counts it."""
        out = bytearray(data)
        struct.pack_into("!HII", out, 2, self.seq, timestamp, self.ssrc)
        self.seq = (self.seq + 1) & 0xFFFF
        self.packets += 1
        self.octets += len(data) - 12
        return bytes(out)

    def sender_report(self, unix_time: float, timestamp: int) -> bytes:
        """An RTCP SR (RFC 3550 §6.4.1) mapping ``timestamp`` to ``unix_time``, no report
        blocks, followed by the SDES CNAME a compound RTCP packet must carry (§6.1)."""
        ntp = unix_time + NTP_UNIX_OFFSET
        msw = int(ntp)
        lsw = int((ntp - msw) * 2**32) & 0xFFFFFFFF
        sr = struct.pack("!BBHIIIIII", 0x80, 200, 6, self.ssrc, msw & 0xFFFFFFFF, lsw,
                         timestamp, self.packets & 0xFFFFFFFF, self.octets & 0xFFFFFFFF)
        cname = b"fakecam"
        item = bytes((1, len(cname))) + cname
        chunk = struct.pack("!I", self.ssrc) + item + b"\x00" * (4 - len(item) % 4)
        sdes = struct.pack("!BBH", 0x81, 202, len(chunk) // 4) + chunk
        return sr + sdes
