"""Fan-out decisions without sockets: where a new viewer starts, and the shared framing."""

from hubruntime.proto.sdp import parse_sdp
from hubruntime.rtsp.fanout import Fanout, ViewerQueue, frame_packets
from hubruntime.streams.hub import StreamHub
from tests.unit.test_gop import AUDIO, VIDEO, audio, idr_au, p_frame

SDP = """v=0
o=- 0 0 IN IP4 127.0.0.1
s=test
c=IN IP4 127.0.0.1
t=0 0
m=video 0 RTP/AVP 96
a=rtpmap:96 H264/90000
a=control:trackID=0
m=audio 0 RTP/AVP 97
a=rtpmap:97 MPEG4-GENERIC/48000/2
a=control:trackID=1
"""


def published_hub() -> StreamHub:
    hub = StreamHub("cam")
    hub.publish_started(SDP, parse_sdp(SDP), 0.0)
    return hub


def read(hub: StreamHub, packets: list[tuple[int, bytes]]) -> None:
    for media, data in packets:
        hub.packet(0.0, media, False, data)
    hub.flush()


def test_a_viewer_attached_before_any_keyframe_starts_at_the_first_one() -> None:
    hub = published_hub()
    fan = Fanout(hub)
    q = ViewerQueue({VIDEO, AUDIO})
    fan.attach(q)
    read(hub, [(VIDEO, p) for p in p_frame(1000)] + [(AUDIO, audio(10))])
    assert len(q) == 0 and q.waiting_keyframe  # P-frames without their reference: skipped
    au = idr_au(4000)
    read(hub, [(VIDEO, p) for p in au])
    assert [item[2] for item in q._items] == au and not q.waiting_keyframe


def test_a_viewer_attached_later_starts_at_the_cached_keyframe() -> None:
    hub = published_hub()
    fan = Fanout(hub)
    gop = idr_au(1000) + p_frame(4000)
    first = ViewerQueue({VIDEO})
    fan.attach(first)
    read(hub, [(VIDEO, p) for p in p_frame(0) + gop])  # a P-frame before: not cached
    late = ViewerQueue({VIDEO})
    fan.attach(late)
    assert [item[2] for item in late._items] == gop
    assert not late.waiting_keyframe


def test_shared_framing_follows_each_layout_and_skips_other_tracks() -> None:
    packets = [(VIDEO, False, b"v" * 3, True), (AUDIO, False, b"a", False),
               (VIDEO, True, b"r" * 2, False)]
    wire, n = frame_packets(packets, ((VIDEO, 0, 1),))
    assert n == 2
    assert wire == b"$\x00\x00\x03vvv" + b"$\x01\x00\x02rr"
    wire, n = frame_packets(packets, ((VIDEO, 2, 3), (AUDIO, 0, 1)))
    assert n == 3 and wire.startswith(b"$\x02\x00\x03vvv$\x00\x00\x01a$\x03")
