"""Stream health rules (DESIGN.md §3): packet gaps and accumulated delay, sans-I/O.

Why pure: FFmpeg neither exits nor complains when a camera stalls, so every watchdog lives in the
hub, on the packets FFmpeg publishes. Keeping the rules free of trio, sockets and clocks (every
method takes ``now``, a monotonic arrival time in seconds) lets them be replayed from timing
traces (``tools/traces.py``) and tested deterministically on hours of stream in milliseconds.

The caller (the stream's hub task) feeds every RTP packet to :meth:`HealthMonitor.on_rtp`, every
RTCP packet to :meth:`HealthMonitor.on_rtcp`, and sleeps until :meth:`HealthMonitor.next_deadline`
to call :meth:`HealthMonitor.poll`, which is how a stall is reported *while* it lasts. It adds
``streamId`` to each :class:`HealthEvent` and publishes it.

Two rules:

``camera_packet_delay`` (``gapSecs``, ``track``)
    A gap timer per track, reset only by RTP packets of that track: neither RTCP (FFmpeg keeps
    sending reports) nor another track (a frozen picture with live audio) may hide a stall.
    Reported once per gap, by ``poll`` when the gap reaches the threshold, or by ``on_rtp`` if the
    caller polled too late to see it.

``camera_accumulated_delay`` (``delaySecs``)
    How far media time has fallen behind wall time: per track, the offset
    ``(arrival - first_arrival) - (max_ts - first_ts) / clock_rate`` on unwrapped timestamps,
    less ``drift_tolerance`` per second of media so that an imprecise camera clock (0.1 % is
    common) never adds up to an alarm. ``max_ts`` is the highest timestamp so far, because
    B-frames make timestamps go backwards in decode order. Reported once, then silent until the
    supervisor has restarted the reader and called :meth:`HealthMonitor.start`; a restart is the
    remedy (it drops the backlog), so repeating the event before it would be noise.

    The lag is measured from the lowest tolerated offset seen so far rather than from the first
    packet only (see :meth:`HealthMonitor.lag_secs`): otherwise the tolerance, which grows with
    media time, and a camera clock running fast would both build up a credit that hides a real
    backlog on a stream that has been up for hours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hubruntime.proto.rtp import SeqUnwrapper, TimestampUnwrapper

__all__ = [
    "ACCUMULATED_DELAY",
    "PACKET_DELAY",
    "HealthEvent",
    "HealthMonitor",
    "Track",
]

PACKET_DELAY = "camera_packet_delay"
ACCUMULATED_DELAY = "camera_accumulated_delay"


CLOCK_JUMP_SECS = 1.0
"""A timestamp step this far from the arrival step, with no gap, is a clock jump, not lag
(B-frame reordering moves timestamps by a few frames, far less)."""


@dataclass(frozen=True)
class Track:
    """One media of the stream, as the SDP describes it.

    ``index`` is the media's position in the SDP, which is how packets are attributed to tracks
    (the interleaved channel maps to it); ``clock_rate`` is the RTP clock of its ``a=rtpmap``.
    """

    index: int
    kind: Literal["video", "audio"]
    clock_rate: int

    def __post_init__(self) -> None:
        if self.kind not in ("video", "audio"):
            raise ValueError(f"track kind must be 'video' or 'audio', got {self.kind!r}")
        if not isinstance(self.clock_rate, int) or self.clock_rate <= 0:
            raise ValueError(f"track clock_rate must be a positive integer, got {self.clock_rate}")


@dataclass(frozen=True)
class HealthEvent:
    """An event for the bus, without ``event``/``streamId``: the monitor does not know the
    stream's id, the caller adds it (and ``name`` becomes ``event``)."""

    name: str
    fields: dict[str, Any]


class _TrackState:
    """What the monitor remembers of one track since the last :meth:`HealthMonitor.start`."""

    __slots__ = (
        "track",
        "last_arrival",
        "gap_reported",
        "seq",
        "ts",
        "first_arrival",
        "first_ts",
        "max_ts",
        "floor",
        "lag",
        "prev_arrival",
        "prev_ts",
    )

    def __init__(self, track: Track, now: float) -> None:
        self.track = track
        self.last_arrival = now  # armed at start(): a track that never sends is a stall too
        self.gap_reported = False
        self.seq = SeqUnwrapper()
        self.ts = TimestampUnwrapper()
        self.first_arrival: float | None = None
        self.first_ts = 0
        self.max_ts = 0
        self.floor = 0.0
        self.lag = 0.0
        self.prev_arrival = now
        self.prev_ts = 0


class HealthMonitor:
    """The health rules of one stream. See the module docstring for the why of each rule.

    ``state`` is ``idle`` before :meth:`start` and after :meth:`stop`, ``delayed`` while a
    reported gap is open on some track or once an accumulated delay was reported (until the next
    :meth:`start`), and ``streaming`` otherwise.

    Packets of a track index that is not among ``tracks`` (an ONVIF metadata or data stream, say)
    are ignored: they are not media whose timing can be judged.
    """

    def __init__(
        self,
        tracks: Sequence[Track],
        *,
        packet_delay_secs: float = 1.0,
        accumulated_delay_secs: float = 5.0,
        drift_tolerance: float = 0.002,
    ) -> None:
        if not packet_delay_secs > 0:
            raise ValueError(f"packet_delay_secs must be positive, got {packet_delay_secs}")
        if not accumulated_delay_secs > 0:
            raise ValueError(
                f"accumulated_delay_secs must be positive, got {accumulated_delay_secs}"
            )
        if not 0 <= drift_tolerance < 1:
            raise ValueError(f"drift_tolerance must be in [0, 1), got {drift_tolerance}")
        indices = [t.index for t in tracks]
        if len(set(indices)) != len(indices):
            raise ValueError(f"track indices must be unique, got {indices}")
        self.tracks: tuple[Track, ...] = tuple(tracks)
        self.packet_delay_secs = float(packet_delay_secs)
        self.accumulated_delay_secs = float(accumulated_delay_secs)
        self.drift_tolerance = float(drift_tolerance)
        self._states: dict[int, _TrackState] = {}
        self._running = False
        self._accumulated_reported = False

    # ---------------------------------------------------------------------------------------
    # Lifecycle

    def start(self, now: float) -> None:
        """The reader is publishing (again): forget everything and arm every gap timer at ``now``.

        A restarted reader is a new RTP session (new sequence numbers, timestamps, and a fresh
        reference for the lag), which is also why a reported accumulated delay may fire again
        only after this.
        """
        self._states = {t.index: _TrackState(t, now) for t in self.tracks}
        self._running = True
        self._accumulated_reported = False

    def stop(self) -> None:
        """The reader is gone: no events, no deadline, until :meth:`start`."""
        self._states = {}
        self._running = False
        self._accumulated_reported = False

    @property
    def state(self) -> Literal["idle", "streaming", "delayed"]:
        if not self._running:
            return "idle"
        if self._accumulated_reported or any(s.gap_reported for s in self._states.values()):
            return "delayed"
        return "streaming"

    # ---------------------------------------------------------------------------------------
    # Input

    def on_rtp(self, now: float, track: int, seq: int, timestamp: int) -> list[HealthEvent]:
        """One RTP packet of ``track`` (SDP media index) arrived at ``now``."""
        st = self._states.get(track)
        if st is None:  # idle, or not a media track we judge
            return []
        events: list[HealthEvent] = []
        if not st.gap_reported and now >= st.last_arrival + self.packet_delay_secs:
            # The caller polled too late to see this gap while it lasted: report it now, once.
            events.append(self._gap_event(st, now))
        if now > st.last_arrival:
            st.last_arrival = now
        st.gap_reported = False
        st.seq.unwrap(seq)  # tolerates reordering/duplicates; kept for the unwrapper's state
        lag = self._update_lag(st, now, st.ts.unwrap(timestamp))
        if not self._accumulated_reported and lag > self.accumulated_delay_secs:
            self._accumulated_reported = True
            events.append(HealthEvent(ACCUMULATED_DELAY, {"delaySecs": round(lag, 3)}))
        return events

    def on_rtcp(self, now: float, track: int) -> list[HealthEvent]:
        """One RTCP packet arrived. It proves the reader is alive, not that media flows (FFmpeg
        sends reports during a stall), so it never resets a gap timer; it reports nothing."""
        return []

    def poll(self, now: float) -> list[HealthEvent]:
        """Report the gaps that reached the threshold by ``now``; call it at :meth:`next_deadline`.

        A deadline is inclusive (a gap equal to the threshold is reported), so an event loop
        that wakes exactly at :meth:`next_deadline` always gets its event and never spins.
        """
        events: list[HealthEvent] = []
        for st in self._states.values():
            if not st.gap_reported and now >= st.last_arrival + self.packet_delay_secs:
                events.append(self._gap_event(st, now))
        return events

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`poll` may report something, ``None`` if it cannot (idle, or
        every track's gap already reported). It moves only when packets arrive or on poll."""
        deadlines = [
            st.last_arrival + self.packet_delay_secs
            for st in self._states.values()
            if not st.gap_reported
        ]
        return min(deadlines) if deadlines else None

    # ---------------------------------------------------------------------------------------
    # Diagnostics

    def lag_secs(self, track: int) -> float | None:
        """The current accumulated lag of ``track`` in seconds (0 when media keeps pace, after
        drift tolerance); ``None`` when idle, unknown, or before the track's first packet.

        It is ``h - min(h)`` with ``h = offset - drift_tolerance * media_secs`` over the packets
        since :meth:`start`, ``offset`` being the DESIGN.md formula; the first packet has
        ``h = 0``, so this is never below the plain formula, and equals it as long as media never
        ran ahead of the start. Anchoring at the lowest ``h`` keeps the tolerance a *rate*: with
        the first packet as the only anchor, ``drift_tolerance * media_secs`` grows without bound
        (12 s of credit after an hour at 0.2 %), and a fast camera clock or a forward jump of the
        timestamps would likewise hide a real backlog.
        """
        st = self._states.get(track)
        if st is None or st.first_arrival is None:
            return None
        return st.lag

    # ---------------------------------------------------------------------------------------

    def _gap_event(self, st: _TrackState, now: float) -> HealthEvent:
        st.gap_reported = True
        gap = now - st.last_arrival
        return HealthEvent(PACKET_DELAY, {"gapSecs": round(gap, 3), "track": st.track.kind})

    def _update_lag(self, st: _TrackState, now: float, ts: int) -> float:
        if st.first_arrival is None:
            st.first_arrival = now
            st.first_ts = st.max_ts = st.prev_ts = ts
            st.prev_arrival = now
            st.floor = st.lag = 0.0
            return 0.0
        clock = st.track.clock_rate
        step = now - st.prev_arrival
        jump = (ts - st.prev_ts) / clock - step
        st.prev_arrival, st.prev_ts = now, ts
        if abs(jump) > CLOCK_JUMP_SECS and step < self.packet_delay_secs:
            # Timestamps leapt while packets kept arriving at their pace: the camera's clock
            # (or FFmpeg re-anchoring on a sender report) jumped, the media did not. Move the
            # reference with it, so the lag neither drops nor grows by the leap. A leap back
            # after a *gap* is not this: that is a camera resuming where it left, a real lag.
            # A leap ahead first pays back lag the stream really had (FFmpeg, after a camera
            # stall, resumes the old timestamps and jumps them ahead at the next sender report:
            # that is the stream catching up, not a clock jump); only the rest is absorbed.
            if jump > 0:
                jump -= min(jump, st.lag)
            shift = round(jump * clock)
            st.first_ts += shift
            st.max_ts = max(st.max_ts + shift, ts)
        if ts > st.max_ts:
            st.max_ts = ts
        media = (st.max_ts - st.first_ts) / st.track.clock_rate
        h = (now - st.first_arrival) - media - self.drift_tolerance * media
        if h < st.floor:
            st.floor = h
        st.lag = h - st.floor
        return st.lag
