import struct

import pytest

from hubruntime.proto.h264 import is_keyframe_start, is_keyframe_start_h265, keyframe_detector


def nal(nal_type: int, body: bytes = b"\x88\x84\x00", nri: int = 3) -> bytes:
    return bytes([(nri << 5) | nal_type]) + body


def stap_a(*nals: bytes) -> bytes:
    return b"\x78" + b"".join(struct.pack("!H", len(n)) + n for n in nals)  # NRI 3, type 24


def fu_a(nal_type: int, *, start: bool, end: bool = False, nri: int = 3) -> bytes:
    indicator = (nri << 5) | 28
    header = (0x80 if start else 0) | (0x40 if end else 0) | nal_type
    return bytes([indicator, header]) + b"\x11" * 20


SPS = nal(7, b"\x64\x00\x1f\xac\xd9\x40")
PPS = nal(8, b"\xeb\xe3\xcb")
IDR = nal(5)
P_SLICE = nal(1, nri=2)
SEI = nal(6, b"\x05\x10", nri=0)


@pytest.mark.parametrize("payload, expected", [
    (IDR, True),
    (SPS, True),
    (PPS, False),  # repeated before ordinary frames by some encoders
    (P_SLICE, False),
    (SEI, False),
    (nal(9, b"\xf0", nri=0), False),  # access unit delimiter
    (stap_a(SPS, PPS), True),
    (stap_a(SPS, PPS, IDR), True),
    (stap_a(SEI, IDR), True),
    (stap_a(SEI, PPS), False),
    (stap_a(SEI, P_SLICE), False),
    (fu_a(5, start=True), True),
    (fu_a(5, start=False), False),  # a middle fragment of an IDR is no place to start
    (fu_a(5, start=False, end=True), False),
    (fu_a(1, start=True), False),
    (fu_a(7, start=True), True),
    (b"\x7d" + bytes([0x85]) + b"\x00\x01" + b"x" * 10, True),  # FU-B (29), start, IDR
    (b"\x79\x00\x01" + struct.pack("!H", len(IDR)) + IDR, True),  # STAP-B (25): DON first
])
def test_h264_keyframe_start(payload, expected):
    assert is_keyframe_start(payload) is expected


@pytest.mark.parametrize("payload", [
    b"",
    b"\x7c",  # FU-A without its FU header
    b"\x78",  # empty STAP-A
    b"\x78\x00",  # STAP-A cut inside the size
    b"\x78\x00\x05\x67",  # STAP-A whose NAL is shorter than its size says
    b"\x78\x00\x00\x65\x88",  # zero-size NAL in a STAP-A
    b"\x7a" + b"\x65" * 10,  # MTAP16 (26): not used by cameras
    b"\x60",  # type 0: unspecified
    b"\x7e\x85",  # type 30: reserved
])
def test_h264_malformed_or_unsupported_payload_is_not_a_keyframe(payload):
    assert is_keyframe_start(payload) is False


def test_h264_stap_a_with_truncated_later_nal_still_sees_the_first():
    good = stap_a(SPS)
    assert is_keyframe_start(good + b"\x00\x09\x68") is True


# -- H.265 -------------------------------------------------------------------------------


def hnal(nal_type: int, body: bytes = b"\xaf\x09\x40") -> bytes:
    return bytes([nal_type << 1, 0x01]) + body  # layer 0, TID 1


def ap(*nals: bytes) -> bytes:
    return bytes([48 << 1, 0x01]) + b"".join(struct.pack("!H", len(n)) + n for n in nals)


def fu(nal_type: int, *, start: bool, end: bool = False) -> bytes:
    header = (0x80 if start else 0) | (0x40 if end else 0) | nal_type
    return bytes([49 << 1, 0x01, header]) + b"\x22" * 20


VPS, HSPS, HPPS = hnal(32), hnal(33), hnal(34)


@pytest.mark.parametrize("payload, expected", [
    (hnal(19), True),  # IDR_W_RADL
    (hnal(20), True),  # IDR_N_LP
    (hnal(21), True),  # CRA
    (hnal(16), True),  # BLA_W_LP
    (hnal(1), False),  # TRAIL_R
    (hnal(0), False),
    (hnal(9), False),  # RASL_R
    (VPS, True),
    (HSPS, True),
    (HPPS, False),
    (hnal(39), False),  # prefix SEI
    (ap(VPS, HSPS, HPPS), True),
    (ap(hnal(39), HPPS), False),
    (ap(hnal(39), hnal(19)), True),
    (fu(19, start=True), True),
    (fu(21, start=True), True),
    (fu(19, start=False), False),
    (fu(19, start=False, end=True), False),
    (fu(1, start=True), False),
    (b"", False),
    (b"\x26", False),  # one byte: no full NAL header
    (bytes([49 << 1, 0x01]), False),  # FU without FU header
    (bytes([48 << 1, 0x01, 0x00]), False),  # AP cut inside the size
    (bytes([48 << 1, 0x01, 0x00, 0x09, 0x40, 0x01]), False),  # AP NAL shorter than its size
    (bytes([50 << 1, 0x01, 0x80]), False),  # PACI: not handled
])
def test_h265_keyframe_start(payload, expected):
    assert is_keyframe_start_h265(payload) is expected


def test_h264_detector_does_not_read_h265_headers_and_vice_versa():
    # an H.265 IDR_W_RADL header byte (0x26) reads as H.264 type 6 (SEI): not a keyframe
    assert is_keyframe_start(hnal(19)) is False
    # an H.264 IDR byte (0x65) reads as H.265 type 50 (PACI): not a keyframe
    assert is_keyframe_start_h265(IDR) is False


@pytest.mark.parametrize("encoding, expected", [
    ("H264", is_keyframe_start),
    ("h264", is_keyframe_start),
    (" H264 ", is_keyframe_start),
    ("H265", is_keyframe_start_h265),
    ("HEVC", is_keyframe_start_h265),
    ("hevc", is_keyframe_start_h265),
    ("JPEG", None),
    ("MPEG4-GENERIC", None),
    ("PCMU", None),
    ("", None),
])
def test_keyframe_detector_by_sdp_encoding(encoding, expected):
    assert keyframe_detector(encoding) is expected
