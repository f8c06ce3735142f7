"""Keyframe detection in H.264 (RFC 6184) and H.265 (RFC 7798) RTP payloads.

Why: a new RTSP viewer is primed with the cached group of pictures, and a viewer that fell
behind skips to the next keyframe (DESIGN §4). Both need to know, per RTP packet, whether it
opens a picture a decoder can start from. That only takes the NAL unit header(s) at the front of
the payload, never the slice data, so it is cheap enough to run on every packet of the fan-out.

A packet counts as a keyframe start when it carries the beginning of an IDR/IRAP picture or of a
sequence parameter set (which in-band encoders send right before the keyframe, in the same
access unit). Picture parameter sets alone do not count: some encoders repeat them before
ordinary frames, and a PPS sent in the keyframe's access unit is kept anyway because the GOP
cache starts at the first packet of that access unit (``streams/gop.py``).

Pure and total: any byte string gives a bool, malformed or truncated payloads give ``False``.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["is_keyframe_start", "is_keyframe_start_h265", "keyframe_detector"]

# H.264 NAL unit types (ITU-T H.264 table 7-1) and RTP packet types (RFC 6184 §5.4)
H264_IDR = 5
H264_SPS = 7
H264_STAP_A = 24
H264_STAP_B = 25
H264_FU_A = 28
H264_FU_B = 29
_H264_KEY = frozenset((H264_IDR, H264_SPS))

# H.265 NAL unit types (ITU-T H.265 table 7-1) and RTP packet types (RFC 7798 §4.4)
H265_IRAP = range(16, 24)  # BLA_W_LP … CRA_NUT (16-21) and the two reserved IRAP types
H265_VPS = 32
H265_SPS = 33
H265_AP = 48
H265_FU = 49
_H265_PARAMS = frozenset((H265_VPS, H265_SPS))


def _h264_key_nal(nal_type: int) -> bool:
    return nal_type in _H264_KEY


def is_keyframe_start(rtp_payload: bytes) -> bool:
    """Whether an H.264 RTP payload starts an IDR picture or carries an SPS.

    Handles single NAL unit packets, aggregation packets (STAP-A, and STAP-B whose 2-byte DON
    comes first) where any aggregated NAL unit may be the SPS or IDR, and fragmentation units
    (FU-A, FU-B) only on their first fragment: a middle fragment of an IDR is no place to start.
    MTAP packets (interleaved mode, unused by cameras) give ``False``.
    """
    if not rtp_payload:
        return False
    nal_type = rtp_payload[0] & 0x1F
    if 1 <= nal_type <= 23:
        return _h264_key_nal(nal_type)
    if nal_type in (H264_STAP_A, H264_STAP_B):
        pos = 1 if nal_type == H264_STAP_A else 3
        end = len(rtp_payload)
        while pos + 2 < end:  # a size and at least one byte of NAL header
            size = (rtp_payload[pos] << 8) | rtp_payload[pos + 1]
            if size == 0 or pos + 2 + size > end:
                return False
            if _h264_key_nal(rtp_payload[pos + 2] & 0x1F):
                return True
            pos += 2 + size
        return False
    if nal_type in (H264_FU_A, H264_FU_B):
        if len(rtp_payload) < 2:
            return False
        fu_header = rtp_payload[1]
        return bool(fu_header & 0x80) and _h264_key_nal(fu_header & 0x1F)
    return False


def _h265_key_nal(nal_type: int) -> bool:
    return nal_type in H265_IRAP or nal_type in _H265_PARAMS


def is_keyframe_start_h265(rtp_payload: bytes) -> bool:
    """Whether an H.265 RTP payload starts an IRAP picture (IDR, CRA, BLA) or carries a VPS/SPS.

    The payload header is the 2-byte NAL unit header (type in bits 1-6 of the first byte).
    Aggregation packets (AP) are searched for such a NAL unit; fragmentation units (FU) count
    on their first fragment only. We assume ``sprop-max-don-diff`` is 0, as cameras send it, so
    no DONL/DOND fields sit in between; with them the sizes would not add up and we say
    ``False`` rather than guess.
    """
    if len(rtp_payload) < 2:
        return False
    nal_type = (rtp_payload[0] >> 1) & 0x3F
    if nal_type < H265_AP:
        return _h265_key_nal(nal_type)
    if nal_type == H265_AP:
        pos = 2
        end = len(rtp_payload)
        while pos + 3 < end:  # a size and a 2-byte NAL header
            size = (rtp_payload[pos] << 8) | rtp_payload[pos + 1]
            if size < 2 or pos + 2 + size > end:
                return False
            if _h265_key_nal((rtp_payload[pos + 2] >> 1) & 0x3F):
                return True
            pos += 2 + size
        return False
    if nal_type == H265_FU:
        if len(rtp_payload) < 3:
            return False
        fu_header = rtp_payload[2]
        return bool(fu_header & 0x80) and _h265_key_nal(fu_header & 0x3F)
    return False


def keyframe_detector(encoding: str) -> Callable[[bytes], bool] | None:
    """The detector for an SDP ``a=rtpmap`` encoding name, or ``None`` if we know none.

    ``None`` tells the fan-out to treat the track as having no keyframes to wait for (MJPEG,
    audio, unknown codecs), rather than stall viewers on a condition that never comes.
    """
    name = encoding.strip().upper()
    if name == "H264":
        return is_keyframe_start
    if name in ("H265", "HEVC"):
        return is_keyframe_start_h265
    return None
