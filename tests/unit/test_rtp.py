import struct

import pytest

from hubruntime.proto.rtp import (
    SeqUnwrapper,
    TimestampUnwrapper,
    is_rtcp,
    parse_rtcp_sr,
    parse_rtp_header,
)


def rtp(
    *,
    pt=96,
    marker=False,
    seq=1,
    ts=1000,
    ssrc=0xDEADBEEF,
    csrcs=(),
    ext=None,
    payload=b"\x65\x88",
    padding=0,
    version=2,
):
    b0 = (version << 6) | (0x20 if padding else 0) | (0x10 if ext is not None else 0) | len(csrcs)
    data = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq, ts, ssrc)
    data += b"".join(struct.pack("!I", c) for c in csrcs)
    if ext is not None:
        profile, words = ext
        data += struct.pack("!HH", profile, len(words)) + b"".join(
            struct.pack("!I", w) for w in words
        )
    data += payload
    if padding:
        data += b"\x00" * (padding - 1) + bytes([padding])
    return data


def sr(*, ssrc=0x1234, msw=3_900_000_000, lsw=1 << 31, rtp_ts=90000, packets=10, octets=1000,
       rc=0, extra=b""):
    body = struct.pack("!IIIIII", ssrc, msw, lsw, rtp_ts, packets, octets) + b"\x00" * 24 * rc
    words = (4 + len(body)) // 4 - 1
    return struct.pack("!BBH", 0x80 | rc, 200, words) + body + extra


def test_plain_header():
    h = parse_rtp_header(rtp(pt=97, marker=True, seq=65535, ts=0xFFFFFFFF, ssrc=7))
    assert h is not None
    assert (h.payload_type, h.marker, h.seq, h.timestamp, h.ssrc) == (97, True, 65535, 2**32 - 1, 7)
    assert h.csrcs == () and h.extension_profile is None
    assert (h.header_length, h.padding, h.length, h.payload_length) == (12, 0, 14, 2)


def test_csrcs_extension_and_padding_are_measured():
    data = rtp(csrcs=(1, 2), ext=(0xBEDE, (0xAABBCCDD, 0x01020304)), payload=b"xyz", padding=4)
    h = parse_rtp_header(data)
    assert h is not None
    assert h.csrcs == (1, 2) and h.extension_profile == 0xBEDE
    assert h.header_length == 12 + 8 + 4 + 8
    assert h.padding == 4 and h.payload_length == 3
    assert data[h.header_length : h.length - h.padding] == b"xyz"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        rtp()[:11],
        rtp(version=1),
        rtp(version=3),
        rtp(csrcs=(1, 2, 3), payload=b"")[:20],  # CSRC list cut short
        rtp(ext=(1, (5, 6)), payload=b"")[:-1],  # extension longer than the packet
        rtp(ext=(1, ()), payload=b"")[:14],  # extension preamble cut short
    ],
)
def test_malformed_or_short_is_none(data):
    assert parse_rtp_header(data) is None


def test_empty_payload_is_fine():
    h = parse_rtp_header(rtp(payload=b""))
    assert h is not None and h.payload_length == 0


def test_bad_padding_is_none():
    zero = bytearray(rtp(padding=1))
    zero[-1] = 0
    assert parse_rtp_header(bytes(zero)) is None
    too_much = bytearray(rtp(payload=b"", padding=1))
    too_much[-1] = 2  # one byte of packet after the header, claims two
    assert parse_rtp_header(bytes(too_much)) is None


def test_is_rtcp():
    for packet_type in (200, 201, 202, 203, 204, 205, 206, 207):
        assert is_rtcp(struct.pack("!BBH", 0x80, packet_type, 1))
    assert not is_rtcp(rtp(pt=96, marker=True))  # 224
    assert not is_rtcp(rtp(pt=96))
    assert not is_rtcp(rtp(pt=0, marker=True))  # 128: PCMU with marker
    assert not is_rtcp(struct.pack("!BBH", 0x40, 200, 1))  # version 1
    assert not is_rtcp(b"\x80")


def test_sender_report():
    report = parse_rtcp_sr(sr() + struct.pack("!BBHI", 0x81, 202, 1, 0x1234))  # + SDES
    assert report is not None
    assert report.ssrc == 0x1234
    assert report.ntp_seconds == pytest.approx(3_900_000_000.5)
    assert report.ntp_raw == (3_900_000_000 << 32) | (1 << 31)
    assert (report.rtp_timestamp, report.packet_count, report.octet_count) == (90000, 10, 1000)
    assert parse_rtcp_sr(sr(rc=1)) is not None


def test_sender_report_rejects():
    assert parse_rtcp_sr(sr()[:27]) is None
    rr = bytearray(sr())
    rr[1] = 201
    assert parse_rtcp_sr(bytes(rr)) is None
    v1 = bytearray(sr())
    v1[0] = 0x40
    assert parse_rtcp_sr(bytes(v1)) is None
    long = bytearray(sr())
    long[3] += 1  # declares one word more than there is
    assert parse_rtcp_sr(bytes(long)) is None
    blocks = bytearray(sr())
    blocks[0] |= 1  # claims a report block it does not have
    assert parse_rtcp_sr(bytes(blocks)) is None


def test_seq_unwrap_wraps_and_tolerates_reordering():
    u = SeqUnwrapper()
    assert [u.unwrap(s) for s in (65533, 65534, 65535, 0, 1)] == [65533, 65534, 65535, 65536, 65537]
    assert u.unwrap(65535) == 65535  # late packet from before the wrap: below, not 65536 ahead
    assert u.unwrap(1) == 65537  # duplicate
    assert u.unwrap(3) == 65539
    assert u.unwrap(2) == 65538
    assert u.highest == 65539
    for _ in range(3):  # many wraps
        for s in range(4, 65536, 1000):
            u.unwrap(s)
        u.unwrap(0)
        u.unwrap(3)
    assert u.highest == 65539 + 3 * 65536


def test_seq_unwrap_late_packet_before_the_first():
    u = SeqUnwrapper()
    assert u.unwrap(0) == 0
    assert u.unwrap(65535) == -1
    assert u.unwrap(1) == 1
    assert u.highest == 1


def test_timestamp_unwrap_wraps_forward_and_steps_back():
    u = TimestampUnwrapper()
    base = 2**32 - 7200
    values = [base, base + 3600, 0, 3600, 7200]
    wire = [v % 2**32 for v in values]
    assert [u.unwrap(w) for w in wire] == [base, base + 3600, 2**32, 2**32 + 3600, 2**32 + 7200]
    # B-frames: decode order P, B, B across the wrap back below it
    u = TimestampUnwrapper()
    order = [2**32 - 3000, 2**32 + 3000, 2**32 - 0, 2**32 - 3000 + 3000 * 3]
    assert [u.unwrap(v % 2**32) for v in order] == order
    assert u.unwrap((2**32 - 6000) % 2**32) == 2**32 - 6000  # back across the wrap
    assert u.last == 2**32 - 6000


def test_timestamp_unwrap_long_run():
    u = TimestampUnwrapper()
    start = 4_000_000_000
    step = 3600
    for k in range(0, 400_000, 97):
        assert u.unwrap((start + k * step) % 2**32) == start + k * step


def test_unwrappers_refuse_out_of_range():
    with pytest.raises(ValueError):
        SeqUnwrapper().unwrap(65536)
    with pytest.raises(ValueError):
        TimestampUnwrapper().unwrap(-1)
