import struct

from hubruntime.proto.h264 import is_keyframe_start, is_keyframe_start_h265
from hubruntime.proto.rtp import RtpPacket
from hubruntime.streams.gop import GopCache

VIDEO, AUDIO = 0, 1
_seq = {VIDEO: 0, AUDIO: 0}


def rtp(payload: bytes, ts: int, *, media: int = VIDEO, marker: bool = False, pt: int = 96,
        csrcs: tuple[int, ...] = (), padding: int = 0) -> bytes:
    _seq[media] = (_seq[media] + 1) & 0xFFFF
    b0 = 0x80 | (0x20 if padding else 0) | len(csrcs)
    head = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, _seq[media], ts, 0x1234 + media)
    head += b"".join(struct.pack("!I", c) for c in csrcs)
    pad = (b"\x00" * (padding - 1) + bytes([padding])) if padding else b""
    return head + payload + pad


AUD = b"\x09\xf0"
SPS = b"\x67\x64\x00\x1f\xac"
PPS = b"\x68\xeb\xe3\xcb"
SEI = b"\x06\x05\x10"


def fu(nal_type: int, start: bool = False, end: bool = False) -> bytes:
    return bytes([0x7C, (0x80 if start else 0) | (0x40 if end else 0) | nal_type]) + b"\x00" * 100


def idr_au(ts: int, *, with_params: bool = True, fragments: int = 3) -> list[bytes]:
    """SPS, PPS as single NAL packets, then an IDR in FU-A fragments, all at ``ts``."""
    out = [rtp(SPS, ts), rtp(PPS, ts)] if with_params else []
    out.append(rtp(fu(5, start=True), ts))
    out.extend(rtp(fu(5), ts) for _ in range(fragments - 2))
    out.append(rtp(fu(5, end=True), ts, marker=True))
    return out


def p_frame(ts: int) -> list[bytes]:
    return [rtp(fu(1, start=True), ts), rtp(fu(1, end=True), ts, marker=True)]


def audio(ts: int) -> bytes:
    return rtp(b"\xff\xf1" + b"a" * 50, ts, media=AUDIO, pt=97)


def add(cache: GopCache, now: float, media: int, rtcp: bool, data: bytes) -> bool:
    """One packet as the StreamHub hands it over: parsed once into an RtpPacket."""
    pkt = RtpPacket.parse(media, data, now, rtcp)
    assert pkt is not None
    return cache.add(pkt)


def snap(cache: GopCache) -> list[tuple[int, bytes]]:
    return [(p.track, p.data) for p in cache.snapshot()]


def feed(cache: GopCache, packets: list[bytes], *, media: int = VIDEO, now: float = 0.0
         ) -> list[bool]:
    return [add(cache, now, media, False, p) for p in packets]


def h264_cache(**kw) -> GopCache:
    return GopCache(VIDEO, is_keyframe_start, **kw)


def test_empty_until_the_first_keyframe_then_starts_at_its_sps():
    c = h264_cache()
    assert feed(c, p_frame(1000) + p_frame(4000)) == [False] * 4
    assert add(c, 0.0, AUDIO, False, audio(10)) is False
    assert snap(c) == []
    au = idr_au(7000)
    assert feed(c, au) == [True, False, False, False, False]  # only the SPS starts it
    assert snap(c) == [(VIDEO, p) for p in au]


def test_gop_collects_every_media_in_arrival_order_and_restarts_at_the_next_keyframe():
    c = h264_cache()
    first = idr_au(1000)
    feed(c, first)
    a1 = audio(100)
    assert add(c, 0.01, AUDIO, False, a1) is False
    p1 = p_frame(4000)
    feed(c, p1, now=0.04)
    a2 = audio(200)
    add(c, 0.05, AUDIO, False, a2)
    expected = [(VIDEO, p) for p in first] + [(AUDIO, a1)] + [(VIDEO, p) for p in p1]
    assert snap(c) == expected + [(AUDIO, a2)]
    second = idr_au(7000)
    assert feed(c, second, now=0.08)[0] is True
    assert snap(c) == [(VIDEO, p) for p in second]  # a2 came before the keyframe
    a3 = audio(300)
    add(c, 0.09, AUDIO, False, a3)
    assert snap(c)[-1] == (AUDIO, a3)


def test_rtcp_is_neither_cached_nor_a_start():
    c = h264_cache()
    feed(c, idr_au(1000))
    before = snap(c)
    sr = b"\x80\xc8\x00\x06" + b"\x00" * 24
    assert add(c, 0.0, VIDEO, True, sr) is False
    assert add(c, 0.0, AUDIO, True, sr) is False
    assert snap(c) == before


def test_start_is_the_first_packet_of_the_access_unit_even_before_the_sps():
    c = h264_cache()
    feed(c, p_frame(1000))
    a = audio(50)
    add(c, 0.0, AUDIO, False, a)
    aud, sei = rtp(AUD, 4000), rtp(SEI, 4000)
    a_mid = audio(60)
    assert add(c, 0.0, VIDEO, False, aud) is False
    assert add(c, 0.0, AUDIO, False, a_mid) is False
    assert add(c, 0.0, VIDEO, False, sei) is False
    au = idr_au(4000)
    assert feed(c, au)[0] is True
    assert snap(c) == [(VIDEO, aud), (AUDIO, a_mid), (VIDEO, sei)] + [(VIDEO, p) for p in au]


def test_keyframe_without_in_band_parameter_sets_starts_at_the_idr():
    c = h264_cache()
    feed(c, p_frame(1000))
    au = idr_au(4000, with_params=False)
    assert feed(c, au) == [True, False, False]
    assert snap(c) == [(VIDEO, p) for p in au]
    single = rtp(b"\x65\x88\x84", 7000)  # an IDR as a single NAL unit packet
    assert add(c, 0.0, VIDEO, False, single) is True
    assert snap(c) == [(VIDEO, single)]


def test_stap_a_with_sps_starts_the_keyframe():
    c = h264_cache()
    stap = rtp(b"\x78" + struct.pack("!H", len(SPS)) + SPS + struct.pack("!H", len(PPS)) + PPS,
               2000)
    assert add(c, 0.0, VIDEO, False, stap) is True
    idr = rtp(fu(5, start=True), 2000)
    assert add(c, 0.0, VIDEO, False, idr) is False
    assert snap(c) == [(VIDEO, stap), (VIDEO, idr)]


def test_later_slices_of_the_same_idr_do_not_restart_the_gop():
    c = h264_cache()
    slice1 = [rtp(fu(5, start=True), 9000), rtp(fu(5, end=True), 9000)]
    slice2 = [rtp(fu(5, start=True), 9000), rtp(fu(5, end=True), 9000, marker=True)]
    assert feed(c, [rtp(SPS, 9000), rtp(PPS, 9000)] + slice1 + slice2) == [True] + [False] * 5
    assert len(snap(c)) == 6


def test_a_reordered_older_packet_does_not_split_the_keyframe_access_unit():
    c = h264_cache()
    feed(c, p_frame(1000))
    sps, pps = rtp(SPS, 4000), rtp(PPS, 4000)
    late = rtp(fu(1, end=True), 1000, marker=True)  # the previous frame's tail, reordered
    idr = rtp(fu(5, start=True), 4000)
    assert feed(c, [sps, pps, late, idr]) == [True, False, False, False]
    assert snap(c) == [(VIDEO, sps), (VIDEO, pps), (VIDEO, late), (VIDEO, idr)]


def test_too_many_bytes_drop_the_gop_until_the_next_keyframe():
    c = h264_cache(max_bytes=2000)
    feed(c, idr_au(1000))
    assert snap(c)
    ts = 1000
    while snap(c):
        ts += 3000
        assert feed(c, p_frame(ts)) == [False, False]
    assert c.drops == 1
    feed(c, p_frame(ts + 3000))
    assert snap(c) == []
    assert c.nbytes <= 300  # without a start it holds at most the access unit in progress
    au = idr_au(ts + 6000)
    assert feed(c, au)[0] is True
    assert snap(c) == [(VIDEO, p) for p in au]


def test_a_keyframe_bigger_than_the_cache_is_not_served_cut():
    c = h264_cache(max_bytes=500)
    au = idr_au(1000, fragments=8)  # ~900 bytes
    starts = feed(c, au)
    assert starts[0] is True and not any(starts[1:])
    assert snap(c) == []
    # a later slice of that same keyframe has lost its beginning: not a start either
    assert add(c, 0.0, VIDEO, False, rtp(fu(5, start=True), 1000)) is False
    assert snap(c) == []
    assert feed(c, idr_au(4000, fragments=2))[0] is True
    assert len(snap(c)) == 4


def test_a_gop_longer_than_max_secs_is_dropped():
    c = h264_cache(max_secs=10.0)
    feed(c, idr_au(0), now=100.0)
    for i in range(1, 11):
        feed(c, p_frame(i * 90000), now=100.0 + i)
    assert snap(c)  # exactly 10 s so far
    feed(c, p_frame(11 * 90000), now=110.5)
    assert snap(c) == []
    assert feed(c, idr_au(12 * 90000), now=111.0)[0] is True
    assert snap(c)


def test_audio_only_caches_nothing_and_every_packet_is_a_start():
    for c in (GopCache(None, None), GopCache(None, is_keyframe_start),
              GopCache(VIDEO, None)):  # a video codec we cannot read (MJPEG)
        assert add(c, 0.0, AUDIO, False, audio(1)) is True
        assert add(c, 0.0, VIDEO, False, rtp(b"\x41\x9a", 1)) is True
        assert snap(c) == []
        assert c.nbytes == 0


def test_clear_empties_until_the_next_keyframe():
    c = h264_cache()
    feed(c, idr_au(1000))
    c.clear()
    assert snap(c) == []
    feed(c, p_frame(4000))
    assert snap(c) == []
    assert feed(c, idr_au(7000))[0] is True
    assert len(snap(c)) == 5


def test_payload_is_found_past_csrcs_and_padding():
    c = h264_cache()
    pkt = rtp(SPS, 3000, csrcs=(1, 2), padding=4)
    assert add(c, 0.0, VIDEO, False, pkt) is True
    assert snap(c) == [(VIDEO, pkt)]


def test_malformed_video_packets_neither_crash_nor_start():
    # what does not parse never reaches the cache: the StreamHub drops it (counted, logged)
    for junk in (b"", b"\x80", b"\x00" * 12):
        assert RtpPacket.parse(VIDEO, junk, 0.0, False) is None
    c = h264_cache()
    empty = b"\x80\x60\x00\x01\x00\x00\x00\x01\x00\x00\x00\x01"  # a header, no payload
    assert add(c, 0.0, VIDEO, False, empty) is False
    assert snap(c) == []
    feed(c, idr_au(1000, fragments=2))
    assert add(c, 0.0, VIDEO, False, empty) is False  # kept: the viewer gets what we got
    assert snap(c)[-1] == (VIDEO, empty)


def test_h265_stream():
    c = GopCache(VIDEO, is_keyframe_start_h265)
    trail = rtp(bytes([1 << 1, 1]) + b"x" * 50, 1000)
    assert add(c, 0.0, VIDEO, False, trail) is False
    vps, sps, pps = (rtp(bytes([t << 1, 1]) + b"p", 4000) for t in (32, 33, 34))
    idr = rtp(bytes([49 << 1, 1, 0x80 | 19]) + b"i" * 50, 4000)
    assert feed(c, [vps, sps, pps, idr]) == [True, False, False, False]
    assert snap(c) == [(VIDEO, p) for p in (vps, sps, pps, idr)]
