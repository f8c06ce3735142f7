"""The health rules, on timing traces (tools/traces.py) and on hand-fed packets. No I/O, no sleeps:
time is whatever the trace says."""

import importlib.util
import random
import sys
from pathlib import Path

import pytest

from hubruntime.streams.health import (
    ACCUMULATED_DELAY,
    PACKET_DELAY,
    HealthEvent,
    HealthMonitor,
    Track,
)


def _load_traces():
    # tools/ is not a package; load the file itself so the tests run from any directory.
    path = Path(__file__).resolve().parents[2] / "tools" / "traces.py"
    spec = importlib.util.spec_from_file_location("hubruntime_tools_traces", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


T = _load_traces()
VIDEO, AUDIO = T.VIDEO, T.AUDIO
THR = 1.0


def run(trace, monitor=None, **kwargs):
    monitor = monitor or HealthMonitor(T.tracks())
    return T.replay(monitor, trace, **kwargs)


def named(events, name):
    return [(t, e) for t, e in events if e.name == name]


def gaps(events):
    return [(t, e.fields["track"], e.fields["gapSecs"]) for t, e in named(events, PACKET_DELAY)]


def last_before(trace, track, t):
    return max(p.arrival for p in trace if isinstance(p, T.Packet) and p.track == track
               and p.arrival < t)


# ---------------------------------------------------------------------------------------------
# Healthy streams: never an event


def test_steady_ten_minutes():
    monitor = HealthMonitor(T.tracks())
    assert run(T.steady(600), monitor) == []
    assert monitor.state == "streaming"
    assert monitor.lag_secs(VIDEO) == pytest.approx(0, abs=0.01)
    assert monitor.lag_secs(AUDIO) == pytest.approx(0, abs=0.01)


def test_timestamp_and_sequence_wrap_around():
    trace = T.wrap_timestamps(T.steady(120), near_wrap=90000, seq_near_wrap=30)
    assert trace[0].ts > 2**32 - 90000 - 1
    assert any(p.ts < 90000 for p in trace[200:])  # it did wrap, early
    monitor = HealthMonitor(T.tracks())
    assert run(trace, monitor) == []
    assert monitor.lag_secs(VIDEO) == pytest.approx(0, abs=0.01)


def test_reordered_packets():
    trace = T.reorder(T.steady(120, packets_per_frame=3), every=7)
    assert [p.seq for p in trace if p.track == AUDIO][:8] != sorted(
        p.seq for p in trace if p.track == AUDIO
    )[:8]
    assert run(trace) == []


def test_bframes():
    for per_frame in (1, 4):
        trace = T.bframes(T.steady(120, packets_per_frame=per_frame), group=3)
        stamps = [p.ts for p in trace if p.track == VIDEO]
        assert any(b < a for a, b in zip(stamps, stamps[1:], strict=False))  # goes backwards
        monitor = HealthMonitor(T.tracks())
        assert run(trace, monitor) == []
        assert monitor.lag_secs(VIDEO) < 0.1


def test_separate_audio_and_video_clocks():
    for audio_clock, audio_rate in ((48000, 50), (8000, 25), (44100, 43)):
        trace = T.steady(300, audio_rate=audio_rate, audio_clock=audio_clock)
        monitor = HealthMonitor(T.tracks(audio_clock=audio_clock))
        assert run(trace, monitor) == []
        assert monitor.lag_secs(AUDIO) == pytest.approx(0, abs=0.05)


def test_wrong_clock_rate_would_be_caught():
    # Sanity check that the previous test means something: the clock rate is per track.
    trace = T.steady(120, audio_clock=44100)
    events = run(trace, HealthMonitor(T.tracks(audio_clock=48000)))
    assert [e.name for _, e in events] == [ACCUMULATED_DELAY]


@pytest.mark.parametrize("ppm", [1000, -1000])
def test_camera_clock_drift_over_two_hours(ppm):
    trace = T.drift(T.steady(7200, fps=10, audio_rate=20), ppm)
    monitor = HealthMonitor(T.tracks())
    assert run(trace, monitor) == []
    assert monitor.lag_secs(VIDEO) < 0.1


@pytest.mark.parametrize("seed", range(6))
def test_random_jittery_steady_streams_never_fire(seed):
    rng = random.Random(seed)
    audio_rate = rng.choice([0, 25, 50])
    trace = T.steady(
        180,
        fps=rng.choice([10, 15, 25, 30]),
        audio_rate=audio_rate,
        jitter=rng.uniform(0.05, 0.2),
        seed=seed,
        packets_per_frame=rng.randint(1, 4),
        keep_order=rng.random() < 0.5,
    )
    if rng.random() < 0.5:
        trace = T.wrap_timestamps(trace, near_wrap=rng.randint(1, 2_000_000))
    monitor = HealthMonitor(T.tracks(audio=audio_rate > 0))
    assert run(trace, monitor, poll_step=rng.choice([0, 0.001, 0.01, 0.05])) == []
    assert monitor.lag_secs(VIDEO) < 0.5


# ---------------------------------------------------------------------------------------------
# Stalls


def test_stall_of_both_tracks():
    at = 30.0
    trace = T.stall(T.steady(60), at, 3.0)
    events = run(trace)
    assert {e.name for _, e in events} == {PACKET_DELAY}
    assert sorted(track for _, track, _ in gaps(events)) == ["audio", "video"]
    for t, track, gap in gaps(events):
        assert at + THR - 0.05 <= t <= at + THR + 0.05  # detected during the stall
        assert gap == pytest.approx(THR, abs=0.011)
        last = last_before(trace, VIDEO if track == "video" else AUDIO, at)
        assert t - last == pytest.approx(gap, abs=0.0011)


def test_video_frozen_audio_live():
    events = run(T.stall(T.steady(60), 20.0, 3.0, tracks=[VIDEO]))
    assert [(e.name, e.fields["track"]) for _, e in events] == [(PACKET_DELAY, "video")]
    assert 20.95 <= events[0][0] <= 21.05


def test_rtcp_does_not_reset_the_gap_timer():
    plain = T.stall(T.steady(60), 20.0, 3.0)
    trace = T.with_rtcp(plain, every=0.1)
    assert sum(isinstance(e, T.Rtcp) and 20 < e.arrival < 23 for e in trace) > 20
    assert run(trace) == run(plain)
    assert len(run(trace)) == 2


def test_burst_after_stall_adds_nothing():
    for secs in (3.0, 4.5):
        trace = T.stall(T.steady(60), 20.0, secs, skip_frames=False, burst=True)
        monitor = HealthMonitor(T.tracks())
        events = run(trace, monitor)
        assert sorted(track for _, track, _ in gaps(events)) == ["audio", "video"]
        assert len(events) == 2  # one packet delay per track, no accumulated delay
        assert monitor.state == "streaming"
        assert monitor.lag_secs(VIDEO) < 0.1  # caught up


def test_stall_with_frame_skipping_leaves_no_lag():
    monitor = HealthMonitor(T.tracks())
    run(T.stall(T.steady(60), 20.0, 7.0, skip_frames=True), monitor)
    assert monitor.lag_secs(VIDEO) < 0.1 and monitor.state == "streaming"


def test_long_stall_resuming_where_it_left_is_packet_then_accumulated_delay():
    at, secs = 20.0, 7.0
    events = run(T.stall(T.steady(60), at, secs, skip_frames=False))
    assert [e.name for _, e in events] == [PACKET_DELAY, PACKET_DELAY, ACCUMULATED_DELAY]
    t, accumulated = events[-1]
    assert t == pytest.approx(at + secs, abs=0.05)
    assert accumulated.fields["delaySecs"] == pytest.approx(secs, abs=0.1)


def test_stall_at_the_end_of_the_trace_is_seen_while_it_lasts():
    trace = T.steady(30)
    events = run(trace, until=40.0)
    assert sorted(track for _, track, _ in gaps(events)) == ["audio", "video"]
    assert all(30 < t < 31.05 for t, _ in events)


# ---------------------------------------------------------------------------------------------
# Accumulated delay


def test_slow_stream_gives_one_accumulated_delay_until_restart():
    trace = T.slow(T.steady(100), 0.8)  # 125 s of arrivals
    monitor = HealthMonitor(T.tracks())
    events = run(trace, monitor)
    assert [e.name for _, e in events] == [ACCUMULATED_DELAY]
    t, event = events[0]
    assert 24.5 <= t <= 26.0
    assert 5.0 < event.fields["delaySecs"] < 5.1
    assert monitor.state == "delayed"
    assert monitor.lag_secs(VIDEO) > 20  # still growing, still silent

    # The supervisor restarts the reader: a new reference, and the rule is armed again.
    monitor = HealthMonitor(T.tracks())
    events = run(trace, monitor, calls=[(60.0, monitor.start)])
    assert [e.name for _, e in events] == [ACCUMULATED_DELAY, ACCUMULATED_DELAY]
    assert 84.5 <= events[1][0] <= 86.0


def test_slow_from_later_on():
    events = run(T.slow(T.steady(100), 0.5, from_=40.0))
    assert [e.name for _, e in events] == [ACCUMULATED_DELAY]
    assert 49.5 <= events[0][0] <= 51.0


def test_fast_camera_clock_does_not_hide_a_backlog():
    # Two hours of a clock 0.1 % fast, then the camera falls 7 s behind for good.
    trace = T.drift(T.steady(7200, fps=10, audio_rate=0), 1000)
    trace = T.stall(trace, 7000.0, 7.0, skip_frames=False)
    events = run(trace, HealthMonitor(T.tracks(audio=False)))
    assert [e.name for _, e in events] == [PACKET_DELAY, ACCUMULATED_DELAY]
    assert events[1][1].fields["delaySecs"] == pytest.approx(7.0, abs=0.2)


# ---------------------------------------------------------------------------------------------
# Thresholds, stop/start


def test_thresholds_from_the_constructor():
    fast = HealthMonitor(T.tracks(), packet_delay_secs=0.5)
    events = run(T.stall(T.steady(30), 10.0, 0.8), fast)
    assert sorted(track for _, track, _ in gaps(events)) == ["audio", "video"]
    assert all(10.45 <= t <= 10.55 and gap == pytest.approx(0.5, abs=0.011)
               for t, _, gap in gaps(events))
    assert run(T.stall(T.steady(30), 10.0, 0.8)) == []  # default 1 s: nothing

    lenient = HealthMonitor(T.tracks(), packet_delay_secs=2.0)
    assert run(T.stall(T.steady(30), 10.0, 1.5), lenient) == []
    lenient = HealthMonitor(T.tracks(), packet_delay_secs=2.0)
    events = run(T.stall(T.steady(30), 10.0, 3.0), lenient)
    assert [round(gap, 1) for _, _, gap in gaps(events)] == [2.0, 2.0]

    early = HealthMonitor(T.tracks(), accumulated_delay_secs=2.0)
    events = run(T.slow(T.steady(40), 0.8), early)
    assert [e.name for _, e in events] == [ACCUMULATED_DELAY]
    assert 9.5 <= events[0][0] <= 10.5

    strict = HealthMonitor(T.tracks(audio=False), drift_tolerance=0.0)
    events = run(T.drift(T.steady(7200, fps=10, audio_rate=0), -1000), strict)
    assert [e.name for _, e in events] == [ACCUMULATED_DELAY]  # ~5000 s at 0.1 %


def test_stop_silences_everything():
    monitor = HealthMonitor(T.tracks())
    trace = T.stall(T.slow(T.steady(60), 0.5), 30.0, 5.0)
    events = run(trace, monitor, calls=[(2.0, lambda now: monitor.stop())])
    assert events == []
    assert monitor.state == "idle" and monitor.next_deadline() is None
    assert monitor.poll(1e6) == [] and monitor.on_rtp(1e6, VIDEO, 1, 1) == []
    assert monitor.lag_secs(VIDEO) is None

    # start() brings the rules back.
    events = run(trace, monitor, calls=[(2.0, lambda now: monitor.stop()), (20.0, monitor.start)])
    assert {e.name for _, e in events} == {PACKET_DELAY, ACCUMULATED_DELAY}
    assert all(t > 20 for t, _ in events)


# ---------------------------------------------------------------------------------------------
# The monitor fed by hand


def test_start_arms_every_track_and_a_silent_track_is_a_stall():
    m = HealthMonitor([Track(0, "video", 90000), Track(2, "audio", 16000)])
    assert m.state == "idle" and m.next_deadline() is None and m.poll(100.0) == []
    m.start(100.0)
    assert m.state == "streaming" and m.next_deadline() == 101.0
    assert m.on_rtp(100.5, 0, 10, 0) == []
    assert m.next_deadline() == 101.0  # the audio track's timer, armed at start
    assert m.poll(100.99) == []
    assert m.poll(101.0) == [HealthEvent(PACKET_DELAY, {"gapSecs": 1.0, "track": "audio"})]
    assert m.state == "delayed"
    assert m.next_deadline() == 101.5  # video's; audio has fired and waits for a packet
    assert m.poll(101.2) == []  # once per gap


def test_late_poll_gap_is_reported_by_the_packet_once():
    m = HealthMonitor([Track(0, "video", 90000)])
    m.start(0.0)
    m.on_rtp(0.0, 0, 1, 0)
    events = m.on_rtp(2.3456, 0, 2, 3600)
    assert events == [HealthEvent(PACKET_DELAY, {"gapSecs": 2.346, "track": "video"})]
    assert m.poll(2.5) == [] and m.state == "streaming"
    # ...but not a gap poll already reported
    assert m.poll(3.4) == [HealthEvent(PACKET_DELAY, {"gapSecs": 1.054, "track": "video"})]
    assert m.on_rtp(4.0, 0, 3, 7200) == []
    assert m.next_deadline() == 5.0


def test_rtcp_and_other_tracks_never_reset_a_timer():
    m = HealthMonitor([Track(0, "video", 90000), Track(1, "audio", 48000)])
    m.start(0.0)
    m.on_rtp(0.0, 0, 1, 0)
    for k in range(1, 20):
        t = k * 0.1
        assert m.on_rtcp(t, 0) == []
        assert m.on_rtp(t, 1, k, k * 4800) == []
        assert m.on_rtp(t, 7, k, k) == []  # a track we do not judge (metadata): ignored
    assert m.next_deadline() == 1.0
    assert m.poll(1.0) == [HealthEvent(PACKET_DELAY, {"gapSecs": 1.0, "track": "video"})]


def test_duplicates_and_reordering_reset_the_timer_only():
    m = HealthMonitor([Track(0, "video", 90000)])
    m.start(0.0)
    for t, seq, ts in [(0.0, 5, 0), (0.5, 5, 0), (0.9, 4, 0), (1.8, 6, 3600)]:
        assert m.on_rtp(t, 0, seq, ts) == []
    assert m.next_deadline() == 2.8


def test_lag_and_state_by_hand():
    m = HealthMonitor([Track(0, "video", 90000)], accumulated_delay_secs=5.0, drift_tolerance=0)
    m.start(0.0)
    assert m.lag_secs(0) is None and m.lag_secs(9) is None
    m.on_rtp(0.0, 0, 0, 1000)
    assert m.lag_secs(0) == 0.0
    m.on_rtp(0.5, 0, 1, 1000 + 90000)  # media ahead of wall time: no lag
    assert m.lag_secs(0) == 0.0
    m.on_rtp(3.0, 0, 2, 1000 + 2 * 90000)  # 1 s of media in 2.5 s: 1.5 s behind the best
    assert m.lag_secs(0) == pytest.approx(1.5)
    m.on_rtp(3.1, 0, 3, 1000 + 2 * 90000 - 10800)  # a B-frame: the highest timestamp counts
    assert m.lag_secs(0) == pytest.approx(1.6)
    events = m.on_rtp(7.6, 0, 4, 1000 + 3 * 90000)
    assert events == [
        HealthEvent(PACKET_DELAY, {"gapSecs": 4.5, "track": "video"}),  # poll was not called
        HealthEvent(ACCUMULATED_DELAY, {"delaySecs": 5.1}),
    ]
    assert m.state == "delayed"
    assert m.on_rtp(20.0, 0, 5, 1000 + 4 * 90000) == [
        HealthEvent(PACKET_DELAY, {"gapSecs": 12.4, "track": "video"})
    ]
    assert m.state == "delayed"  # until start()
    m.start(21.0)
    assert m.state == "streaming" and m.lag_secs(0) is None


def test_constructor_checks():
    with pytest.raises(ValueError, match="unique"):
        HealthMonitor([Track(0, "video", 90000), Track(0, "audio", 48000)])
    with pytest.raises(ValueError, match="packet_delay_secs"):
        HealthMonitor([], packet_delay_secs=0)
    with pytest.raises(ValueError, match="accumulated_delay_secs"):
        HealthMonitor([], accumulated_delay_secs=-1)
    with pytest.raises(ValueError, match="clock_rate"):
        Track(0, "video", 0)
    with pytest.raises(ValueError, match="kind"):
        Track(0, "data", 90000)  # type: ignore[arg-type]


def test_clock_jumps_without_a_gap_are_absorbed():
    """A camera clock leaping ahead or back while packets keep their pace is not lag; nor is a
    leap ahead followed by a leap back (FFmpeg re-anchoring on the next sender report)."""
    for leaps in ([10.0], [-10.0], [10.0, -10.0], [-3.0, 6.0, -20.0]):
        m = HealthMonitor([Track(0, "video", 90000)], accumulated_delay_secs=2.0)
        m.start(0.0)
        offset = 0.0
        events = []
        for i in range(25 * 60):  # 60 s at 25 fps
            t = i / 25
            if i and i % 250 == 0 and leaps:
                offset += leaps.pop(0)
            events += m.on_rtp(t, 0, i & 0xFFFF, int((t + offset) * 90000 + 5000) & 0xFFFFFFFF)
            events += m.poll(t)
        assert events == [], leaps
        assert m.lag_secs(0) < 0.1


def test_leap_back_after_a_gap_is_real_lag():
    m = HealthMonitor([Track(0, "video", 90000)], accumulated_delay_secs=2.0)
    m.start(0.0)
    for i in range(50):
        m.on_rtp(i / 25, 0, i, i * 3600)
    # 3 s of nothing, then the camera goes on from where it stopped
    events = m.on_rtp(2.0 + 3.0, 0, 50, 50 * 3600)
    assert [e.name for e in events] == [PACKET_DELAY, ACCUMULATED_DELAY]


def test_catch_up_leap_after_a_stall_repays_the_lag():
    """FFmpeg's pattern after a camera stall: the timestamps resume where they stopped (the gap
    looks like lag), then leap ahead at the next sender report. Three such stalls must not add
    up to an accumulated delay."""
    m = HealthMonitor([Track(0, "video", 90000)], accumulated_delay_secs=5.0)
    m.start(0.0)
    t, ts, seq, events = 0.0, 0, 0, []
    for _stall in range(3):
        for _ in range(150):  # 6 s of steady frames
            t += 0.04
            ts += 3600
            seq += 1
            events += m.on_rtp(t, 0, seq, ts)
        t += 2.0  # 2 s stall; the next frames carry on the old timestamps ...
        for i in range(3):
            t += 0.04 if i else 0.0
            ts += 3600
            seq += 1
            events += m.on_rtp(t, 0, seq, ts)
        ts += 2 * 90000  # ... and then leap ahead by the stall
    for _ in range(10):
        t += 0.04
        ts += 3600
        seq += 1
        events += m.on_rtp(t, 0, seq, ts)
    assert [e.name for e in events] == [PACKET_DELAY] * 3
    assert m.lag_secs(0) < 0.2
