"""Fan-out decisions without sockets: where a new viewer starts, and the shared framing."""

from hubruntime.proto.rtp import RtpPacket
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
        hub.receive(media, False, data, 0.0)
    hub.flush()


def queued(q: ViewerQueue) -> list[bytes]:
    return [item.data for item in q._items]  # type: ignore[union-attr]


def test_a_viewer_attached_before_any_keyframe_starts_at_the_first_one() -> None:
    hub = published_hub()
    fan = Fanout(hub)
    q = ViewerQueue({VIDEO, AUDIO})
    fan.attach(q)
    read(hub, [(VIDEO, p) for p in p_frame(1000)] + [(AUDIO, audio(10))])
    assert len(q) == 0 and q.waiting_keyframe  # P-frames without their reference: skipped
    au = idr_au(4000)
    read(hub, [(VIDEO, p) for p in au])
    assert queued(q) == au and not q.waiting_keyframe


def test_a_viewer_attached_later_starts_at_the_cached_keyframe() -> None:
    hub = published_hub()
    fan = Fanout(hub)
    gop = idr_au(1000) + p_frame(4000)
    first = ViewerQueue({VIDEO})
    fan.attach(first)
    read(hub, [(VIDEO, p) for p in p_frame(0) + gop])  # a P-frame before: not cached
    late = ViewerQueue({VIDEO})
    fan.attach(late)
    assert queued(late) == gop
    assert not late.waiting_keyframe


def test_shared_framing_follows_each_layout_and_skips_other_tracks() -> None:
    def pkt(track: int, rtcp: bool, data: bytes) -> RtpPacket:
        return RtpPacket(track, rtcp, 0, 0, False, 96, 0, 0.0, data, 0, len(data))

    packets = [pkt(VIDEO, False, b"v" * 3), pkt(AUDIO, False, b"a"), pkt(VIDEO, True, b"r" * 2)]
    wire, n = frame_packets(packets, ((VIDEO, 0, 1),))
    assert n == 2
    assert wire == b"$\x00\x00\x03vvv" + b"$\x01\x00\x02rr"
    wire, n = frame_packets(packets, ((VIDEO, 2, 3), (AUDIO, 0, 1)))
    assert n == 3 and wire.startswith(b"$\x02\x00\x03vvv$\x00\x00\x01a$\x03")


class Raising:
    """A sink that fails: it must be removed, and the publication and other sinks go on."""

    def __init__(self, where: str) -> None:
        self.where = where

    def _maybe(self, where: str) -> None:
        if where == self.where:
            raise RuntimeError(f"sink broke in {where}")

    def on_start(self, publication: object) -> None:
        self._maybe("on_start")

    def on_packet(self, pkt: RtpPacket) -> None:
        self._maybe("on_packet")

    def on_flush(self) -> None:
        self._maybe("on_flush")

    def on_stop(self, reason: str) -> None:
        self._maybe("on_stop")


def test_a_sink_that_raises_is_removed_and_the_others_go_on() -> None:
    hub = published_hub()
    fan = Fanout(hub)
    q = ViewerQueue({VIDEO})
    bad = [Raising(where) for where in ("on_start", "on_packet", "on_flush")]
    for sink in bad:
        hub.add_sink(sink)
    fan.attach(q)
    au = idr_au(4000)
    read(hub, [(VIDEO, p) for p in au])
    assert queued(q) == au
    assert hub.sink_errors == 3 and hub.viewers == 1  # only the fan-out is left
    assert hub.publication is not None and hub.packets == len(au)


def test_malformed_packets_are_dropped_and_counted() -> None:
    hub = published_hub()
    fan = Fanout(hub)
    q = ViewerQueue({VIDEO})
    fan.attach(q)
    read(hub, [(VIDEO, b"\x80"), (VIDEO, b"garbage!" * 3)] + [(VIDEO, p) for p in idr_au(9)])
    assert hub.malformed == 2 and len(queued(q)) == len(idr_au(9))


def test_sinks_follow_the_publication_without_polling() -> None:
    hub = StreamHub("cam")
    seen: list[str] = []

    class Watcher:
        def on_start(self, publication: object) -> None:
            seen.append("start")

        def on_packet(self, pkt: RtpPacket) -> None:
            seen.append("packet")

        def on_flush(self) -> None:
            pass

        def on_stop(self, reason: str) -> None:
            seen.append(f"stop:{reason}")

    w = Watcher()
    hub.add_sink(w, packets=False)
    hub.publish_started(SDP, parse_sdp(SDP), 0.0)
    read(hub, [(VIDEO, p) for p in idr_au(9)])
    hub.publish_stopped("closed")
    hub.add_sink(w, packets=False)  # twice: still once
    assert seen == ["start", "stop:closed"]
