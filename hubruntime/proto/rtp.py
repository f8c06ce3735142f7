"""RTP and RTCP headers (RFC 3550), and unwrapping of sequence numbers and timestamps.

Why this module exists: the hub sees every RTP/RTCP packet FFmpeg publishes, and the health
monitor reasons on *arrival time versus media time*. That needs only the fixed headers, never the
payload, and it needs the 16-bit sequence numbers and 32-bit timestamps turned into monotonic
integers first, because both wrap (a 90 kHz video clock wraps every 13.25 hours, a random start
value may wrap within seconds) and because they are legitimately non-monotonic on the wire
(reordering, and B-frames whose presentation timestamps go backwards in decode order).

Pure and sans-I/O: bytes in, values out; it imports nothing else of ``hubruntime``. Malformed
input gives ``None`` rather than an exception, since a bad packet from a camera is an ordinary
event for a receiver, not a bug.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "RTP_VERSION",
    "RtpHeader",
    "RtpPacket",
    "SenderReport",
    "SeqUnwrapper",
    "TimestampUnwrapper",
    "is_rtcp",
    "parse_rtcp_sr",
    "parse_rtp_header",
]

RTP_VERSION = 2
RTCP_SR = 200

_FIXED = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence, timestamp, SSRC
_SR = struct.Struct("!BBHIIIIII")  # header, SSRC, NTP msw, NTP lsw, RTP ts, packets, octets
_EXT = struct.Struct("!HH")  # extension profile, length in 32-bit words


@dataclass(frozen=True, slots=True)
class RtpHeader:
    """The fixed RTP header of one packet, plus where its payload sits.

    ``header_length`` counts the 12 fixed bytes, the CSRC list and the header extension (its
    4-byte preamble included), so the payload is ``data[header_length:len(data) - padding]``.
    """

    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    csrcs: tuple[int, ...]
    extension_profile: int | None  # None: no header extension
    header_length: int
    padding: int  # padding bytes at the end of the packet, the count byte included
    length: int  # the whole packet

    @property
    def payload_length(self) -> int:
        return self.length - self.header_length - self.padding


@dataclass(frozen=True, slots=True)
class SenderReport:
    """The sender-info part of an RTCP SR: it maps the sender's RTP clock to its NTP wall clock.

    ``ntp_seconds`` counts from the NTP epoch (1900-01-01), as a float because that is how it is
    used (differences, mapping to RTP time); ``ntp_raw`` keeps the exact 64-bit value, whose
    middle 32 bits are what a receiver report echoes as LSR.
    """

    ssrc: int
    ntp_seconds: float
    ntp_raw: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int


class RtpPacket:
    """One packet of a publication, parsed once where it enters the hub (DESIGN §9).

    Every consumer (health monitor, GOP cache, statistics, viewers, snapshotter, recorder)
    reads these fields; nothing downstream parses an RTP header again. A plain ``__slots__``
    class rather than a dataclass: one is made per packet on the hot path, and a hand-written
    ``__init__`` is the cheapest object CPython builds.

    For RTCP (``rtcp`` true) ``payload_type`` is the first RTCP packet type and ``seq``,
    ``timestamp``, ``marker`` are zero/false; ``payload_start``/``payload_end`` bound the RTP
    payload (the bytes after the header, before the padding). ``keyframe`` is set by the
    stream's GOP cache: this packet starts a keyframe's access unit (a place a decoder, a
    viewer that skipped ahead, or a recording can start from).
    """

    __slots__ = ("track", "rtcp", "seq", "timestamp", "marker", "payload_type", "ssrc",
                 "arrival", "data", "payload_start", "payload_end", "keyframe")

    def __init__(self, track: int, rtcp: bool, seq: int, timestamp: int, marker: bool,
                 payload_type: int, ssrc: int, arrival: float, data: bytes,
                 payload_start: int, payload_end: int) -> None:
        self.track = track
        self.rtcp = rtcp
        self.seq = seq
        self.timestamp = timestamp
        self.marker = marker
        self.payload_type = payload_type
        self.ssrc = ssrc
        self.arrival = arrival
        self.data = data
        self.payload_start = payload_start
        self.payload_end = payload_end
        self.keyframe = False

    @property
    def payload(self) -> bytes:
        """The RTP payload (a copy; the keyframe detector needs only its first bytes)."""
        return self.data[self.payload_start:self.payload_end]

    def __repr__(self) -> str:
        kind = "RTCP" if self.rtcp else "RTP"
        return (f"RtpPacket({kind} track={self.track} seq={self.seq} ts={self.timestamp} "
                f"pt={self.payload_type} m={int(self.marker)} {len(self.data)} B "
                f"at {self.arrival:.6f})")

    @classmethod
    def parse(cls, track: int, data: bytes, arrival: float,
              rtcp: bool | None = None) -> RtpPacket | None:
        """Parse ``data`` of ``track``; ``None`` if it is neither valid RTP nor RTCP.

        ``rtcp`` says which the channel carries (RTSP interleaving gives each its own); with
        ``None`` it is told from the second octet (RFC 5761). RTCP is checked only for its
        version and length here: :func:`parse_rtcp_sr` reads what a consumer needs of it.
        """
        if rtcp is None:
            rtcp = is_rtcp(data)
        if rtcp:
            if len(data) < 8 or data[0] >> 6 != RTP_VERSION:
                return None
            ssrc = int.from_bytes(data[4:8], "big")
            return cls(track, True, 0, 0, False, data[1], ssrc, arrival, data, 0, 0)
        if len(data) < 12:
            return None
        b0 = data[0]
        if b0 >> 6 != RTP_VERSION:
            return None
        if b0 & 0x3F == 0:
            # the common case (no CSRC, extension or padding) without the general parser
            b1 = data[1]
            return cls(track, False, (data[2] << 8) | data[3],
                       int.from_bytes(data[4:8], "big"), bool(b1 & 0x80), b1 & 0x7F,
                       int.from_bytes(data[8:12], "big"), arrival, data, 12, len(data))
        h = parse_rtp_header(data)
        if h is None:
            return None
        return cls(track, False, h.seq, h.timestamp, h.marker, h.payload_type, h.ssrc,
                   arrival, data, h.header_length, h.length - h.padding)


def parse_rtp_header(data: bytes) -> RtpHeader | None:
    """Parse the RTP header of ``data``; ``None`` if it is too short, not version 2, or its
    CSRC list, extension or padding do not fit in the packet.

    It does not reject RTCP: over one port they are told apart with :func:`is_rtcp` first.
    """
    if len(data) < _FIXED.size:
        return None
    b0, b1, seq, timestamp, ssrc = _FIXED.unpack_from(data)
    if b0 >> 6 != RTP_VERSION:
        return None
    has_padding = bool(b0 & 0x20)
    has_extension = bool(b0 & 0x10)
    csrc_count = b0 & 0x0F
    offset = _FIXED.size + 4 * csrc_count
    if len(data) < offset:
        return None
    csrcs = struct.unpack_from(f"!{csrc_count}I", data, _FIXED.size) if csrc_count else ()
    extension_profile = None
    if has_extension:
        if len(data) < offset + _EXT.size:
            return None
        extension_profile, words = _EXT.unpack_from(data, offset)
        offset += _EXT.size + 4 * words
        if len(data) < offset:
            return None
    padding = 0
    if has_padding:
        # RFC 3550 §5.1: the last octet counts the padding, itself included; 0 is invalid.
        padding = data[-1]
        if padding == 0 or offset + padding > len(data):
            return None
    return RtpHeader(
        payload_type=b1 & 0x7F,
        marker=bool(b1 & 0x80),
        seq=seq,
        timestamp=timestamp,
        ssrc=ssrc,
        csrcs=tuple(csrcs),
        extension_profile=extension_profile,
        header_length=offset,
        padding=padding,
        length=len(data),
    )


def is_rtcp(data: bytes) -> bool:
    """Whether a version-2 packet is RTCP rather than RTP, by its second octet (RFC 5761 §4).

    The second octet is the RTCP packet type, or the RTP marker bit plus payload type. RFC 5761
    reserves RTP payload types 64-95 when both share a port, which makes RTCP packet types
    192-223 unambiguous; that range holds SR/RR/SDES/BYE/APP (200-204) and also the feedback and
    XR types (205-207) cameras send, which a 200-204 test would take for RTP.
    """
    return len(data) >= 2 and data[0] >> 6 == RTP_VERSION and 192 <= data[1] <= 223


def parse_rtcp_sr(data: bytes) -> SenderReport | None:
    """The sender report that opens a compound RTCP packet, or ``None`` if the first packet is
    not a well-formed version-2 SR (RFC 3550 §6.4.1: a compound packet starts with SR or RR).
    """
    if len(data) < _SR.size:
        return None
    b0, packet_type, words, ssrc, ntp_msw, ntp_lsw, rtp_ts, packets, octets = _SR.unpack_from(data)
    if b0 >> 6 != RTP_VERSION or packet_type != RTCP_SR:
        return None
    length = 4 * (words + 1)
    report_blocks = b0 & 0x1F
    if length > len(data) or length < _SR.size + 24 * report_blocks:
        return None
    return SenderReport(
        ssrc=ssrc,
        ntp_seconds=ntp_msw + ntp_lsw / 2**32,
        ntp_raw=(ntp_msw << 32) | ntp_lsw,
        rtp_timestamp=rtp_ts,
        packet_count=packets,
        octet_count=octets,
    )


class SeqUnwrapper:
    """Turns 16-bit RTP sequence numbers into a monotonic integer sequence.

    Each value is placed at the shortest distance (±32768) from the *highest* number seen, so
    wrap-around continues upwards while a late or duplicated packet maps just below the highest
    (possibly below zero, if it precedes the very first packet) instead of 65536 ahead, which
    would corrupt the reference for every packet after it.
    """

    __slots__ = ("_highest",)

    def __init__(self) -> None:
        self._highest: int | None = None

    @property
    def highest(self) -> int | None:
        """The highest unwrapped number so far; ``None`` before the first packet."""
        return self._highest

    def unwrap(self, seq: int) -> int:
        if not 0 <= seq <= 0xFFFF:
            raise ValueError(f"RTP sequence number must be 0-65535, got {seq}")
        if self._highest is None:
            self._highest = seq
            return seq
        delta = (seq - self._highest) & 0xFFFF
        if delta >= 0x8000:
            delta -= 0x10000
        value = self._highest + delta
        if value > self._highest:
            self._highest = value
        return value

    def reset(self) -> None:
        self._highest = None


class TimestampUnwrapper:
    """Turns 32-bit RTP timestamps into an unbounded integer timeline.

    The step from the *last* value is read as a signed 32-bit difference: forward steps across
    2**32 keep counting up, and small backward steps (B-frames in decode order, reordering) go
    back down instead of jumping 2**32 ahead. Relative to the last value, not the highest, so
    that a long run of backward-stepping frames never drifts out of the ±2**31 window.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: int | None = None

    @property
    def last(self) -> int | None:
        """The last unwrapped value; ``None`` before the first packet."""
        return self._last

    def unwrap(self, timestamp: int) -> int:
        if not 0 <= timestamp <= 0xFFFFFFFF:
            raise ValueError(f"RTP timestamp must be 0-4294967295, got {timestamp}")
        if self._last is None:
            self._last = timestamp
            return timestamp
        delta = (timestamp - self._last) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 0x100000000
        self._last += delta
        return self._last

    def reset(self) -> None:
        self._last = None
