"""The fake camera's timing and RTP rewriting, with plain numbers (no clock, no sockets)."""

from __future__ import annotations

import math
import struct

import pytest

from hubruntime.fakecam.clip import Capture, CapturedPacket, build_capture, loop_duration
from hubruntime.fakecam.pacing import NEVER, Interval, MediaClock, Schedule, TrackOut, cut, extend
from hubruntime.proto.rtp import parse_rtcp_sr, parse_rtp_header

SDP = """v=0\r
o=- 0 0 IN IP4 127.0.0.1\r
s=No Name\r
t=0 0\r
m=video 0 RTP/AVP 96\r
a=rtpmap:96 H264/90000\r
a=control:streamid=0\r
m=audio 0 RTP/AVP 97\r
a=rtpmap:97 MPEG4-GENERIC/48000/1\r
a=control:streamid=1\r
"""


def rtp(seq: int, ts: int, pt: int = 96, ssrc: int = 0x1234, payload: bytes = b"x") -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, ts & 0xFFFFFFFF, ssrc) + payload


def test_media_clock_speed_changes_and_history() -> None:
    clock = MediaClock(100.0)
    assert clock.position(101.0) == 1.0
    clock.set_speed(102.0, 0.5)
    assert clock.position(104.0) == 3.0
    assert clock.time_at(3.0) == 104.0
    assert clock.time_at(1.0) == 101.0  # before the change: still the old pace
    assert clock.position(101.0) == 1.0
    clock.set_speed(104.0, 1.0)
    assert clock.position(105.0) == 4.0
    with pytest.raises(ValueError):
        clock.set_speed(105.0, 0.0)


def test_intervals_extend_and_cut() -> None:
    assert 5.0 not in NEVER
    stall = extend(NEVER, 10.0, 2.0)
    assert stall == Interval(10.0, 12.0) and 10.0 in stall and 12.0 not in stall
    assert extend(stall, 11.0, 2.0) == Interval(10.0, 13.0)  # lengthened, start kept
    assert extend(stall, 11.0, 0.5) == Interval(10.0, 12.0)  # never shortened
    assert extend(stall, 20.0, 1.0) == Interval(20.0, 21.0)  # a new one
    assert cut(stall, 11.0) == Interval(10.0, 11.0)
    assert cut(stall, 30.0) == stall
    assert cut(NEVER, 5.0) == NEVER


def capture(packets: list[CapturedPacket], duration: float = 1.0) -> Capture:
    return Capture(sdp=SDP, kinds=("video", "audio"), clock_rates=(90000, 48000),
                   packets=tuple(packets), duration=duration)


def test_schedule_orders_by_due_time_and_loops() -> None:
    cap = capture([CapturedPacket(0, b"v0", 0.0), CapturedPacket(0, b"v1", 0.5),
                   CapturedPacket(1, b"a0", 0.0), CapturedPacket(1, b"a1", 0.25),
                   CapturedPacket(1, b"a2", 0.75)])
    s = Schedule(cap)
    assert len(s) == 5
    assert [s.entry(n).data for n in range(5)] == [b"v0", b"a0", b"a1", b"v1", b"a2"]
    e = s.entry(5 + 3)  # v1 of the second loop
    assert e.position == 1.5 and e.media == 0 and e.ticks == 90000 + 45000
    assert s.entry(10 + 4).ticks == 2 * 48000 + 36000
    assert s.index_at(0.0) == 0
    assert s.index_at(0.3) == 3
    assert s.index_at(1.3) == 8
    assert s.ticks_at(1, 2.5) == 2 * 48000 + 24000


def test_schedule_never_makes_a_packet_due_before_the_one_sent_ahead_of_it() -> None:
    # B-frames: timestamps go back in decode order; the decode order must stay
    cap = capture([CapturedPacket(0, b"I", 0.0), CapturedPacket(0, b"P", 0.12),
                   CapturedPacket(0, b"B", 0.04), CapturedPacket(0, b"B2", 0.08)])
    s = Schedule(cap)
    assert [s.entry(n).data for n in range(4)] == [b"I", b"P", b"B", b"B2"]
    assert [s.entry(n).position for n in range(4)] == [0.0, 0.12, 0.12, 0.12]
    assert s.entry(2).ticks == round(0.04 * 90000)  # the timestamp itself is kept


def test_track_rewrites_headers_and_counts() -> None:
    track = TrackOut(media=0, channel=0, ssrc=0xCAFE, seq=0xFFFF, ts_base=0xFFFFFFF0,
                     clock_rate=90000)
    first = parse_rtp_header(track.rewrite(rtp(7, 123, payload=b"abc"), track.timestamp(0, 0)))
    second = parse_rtp_header(track.rewrite(rtp(8, 456), track.timestamp(3600, 1.0)))
    assert first is not None and second is not None
    assert (first.seq, first.timestamp, first.ssrc) == (0xFFFF, 0xFFFFFFF0, 0xCAFE)
    assert second.seq == 0  # wraps
    assert second.timestamp == (0xFFFFFFF0 + 3600 + 90000) & 0xFFFFFFFF  # wraps, skewed 1 s
    assert first.payload_type == 96
    assert (track.packets, track.octets) == (2, 4)


def test_sender_report_parses_back() -> None:
    track = TrackOut(0, 0, ssrc=0xBEEF, seq=1, ts_base=0, clock_rate=90000, packets=10,
                     octets=1000)
    data = track.sender_report(1_700_000_000.25, 123456)
    sr = parse_rtcp_sr(data)
    assert sr is not None
    assert sr.ssrc == 0xBEEF and sr.rtp_timestamp == 123456
    assert (sr.packet_count, sr.octet_count) == (10, 1000)
    assert math.isclose(sr.ntp_seconds, 1_700_000_000.25 + 2_208_988_800, abs_tol=1e-6)
    assert len(data) % 4 == 0 and data[29] == 202  # followed by SDES
    sdes_words = struct.unpack_from("!H", data, 30)[0]
    assert 28 + 4 * (sdes_words + 1) == len(data)


def test_build_capture_times_are_per_track_and_unwrapped() -> None:
    frames = [(0, rtp(1, 0xFFFFFF00)), (1, rtp(1, 5000, pt=97)),
              (0, rtp(2, 0xFFFFFF00 + 3600)), (0, rtp(3, 0xFFFFFF00 + 7200)),
              (1, rtp(2, 5000 + 1024, pt=97)), (0, b"junk")]
    cap = build_capture(SDP, frames)
    assert cap.kinds == ("video", "audio") and cap.clock_rates == (90000, 48000)
    assert [(p.media, p.time) for p in cap.packets] == [
        (0, 0.0), (1, 0.0), (0, 0.04), (0, 0.08), (1, 1024 / 48000)]
    assert cap.duration == pytest.approx(0.12)
    assert cap.packet_counts() == [3, 2]


def test_loop_duration_adds_one_usual_step() -> None:
    packets = [CapturedPacket(0, b"", t / 25) for t in range(250)]
    assert loop_duration(packets, 1) == pytest.approx(10.0)
    assert loop_duration([CapturedPacket(0, b"", 0.0)], 1) == pytest.approx(0.04)
