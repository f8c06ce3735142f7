"""Fan-out of one stream's packets to its viewers, from the single upstream.

``Fanout`` is the live stream's one :class:`~hubruntime.streams.hub.PacketSink`, registered with
the stream's ``StreamHub`` while it has viewers; under it, each viewer has a bounded
``ViewerQueue`` (a tree of handlers, as go2rtc's consumers: one sink per live stream, so a
read is framed once and shared by every caught-up TCP viewer instead of once per viewer). The
publisher's task calls it and it never waits: a viewer that falls behind loses its queue and
waits for the next keyframe (a picture that starts cleanly beats a smeared one); a viewer that
makes no progress for too long is dropped by its writer. Nothing a viewer does slows the others
or the health monitor, which sits on the same packets.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

import trio

from hubruntime.proto.rtp import RtpPacket
from hubruntime.proto.rtsp import frame_header
from hubruntime.streams.hub import Publication, StreamHub

Item = RtpPacket | bytes
"""A queued item: a packet, or (``bytes``) the unsent tail of a direct write, which the writer
must send first and as is."""

Layout = tuple[tuple[int, int, int], ...]
"""A TCP viewer's channels: ``(track, rtp channel, rtcp channel)`` per track, sorted."""


def frame(items: Iterable[Item], channels: dict[int, tuple[int, int]],
          udp: Callable[[RtpPacket], None] | None = None) -> tuple[bytes, int]:
    """The one framer of every viewer writer: ``items`` as the bytes of an RTSP connection
    (interleaved frames on ``channels``, a raw tail as is), and how many packets that is.
    A packet of a track not in ``channels`` goes to ``udp`` (the viewer's UDP sender), if any.
    """
    parts: list[bytes] = []
    n = 0
    for item in items:
        if type(item) is bytes:
            parts.append(item)
            continue
        assert isinstance(item, RtpPacket)
        ch = channels.get(item.track)
        if ch is None:
            if udp is not None:
                udp(item)
                n += 1
            continue
        data = item.data
        if len(data) > 0xFFFF:
            continue
        parts.append(frame_header(ch[1] if item.rtcp else ch[0], len(data)))
        parts.append(data)
        n += 1
    return b"".join(parts), n


def frame_packets(packets: Iterable[RtpPacket], layout: Layout) -> tuple[bytes, int]:
    """``packets`` framed for a TCP viewer whose tracks use ``layout``."""
    return frame(packets, {m: (rtp_ch, rtcp_ch) for m, rtp_ch, rtcp_ch in layout})


class ViewerQueue:
    """Packets waiting for one viewer. ``push`` never blocks; ``take`` waits for some."""

    def __init__(self, media: set[int], *, max_packets: int = 4096, max_bytes: int = 8 << 20,
                 video_media: int | None = None) -> None:
        self.media = media
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.video_media = video_media
        self._items: deque[Item] = deque()
        self._bytes = 0
        self._wakeup = trio.Event()
        self.waiting_keyframe = False
        self.overflows = 0
        self.skipped = 0
        self.sent = 0
        self.closed = False
        # Direct path: ``write_wire(bytes)`` writes to the viewer's socket without blocking,
        # from the publisher's task, and returns how much went out (-1: could not try now, e.g.
        # an RTSP reply is being written). One write per viewer per publisher read replaces a
        # task wake-up per packet per viewer; the writer task only runs when the socket pushes
        # back. ``framer(items)`` turns queued items into those bytes (sending the viewer's
        # UDP datagrams on the way). Caught-up TCP-only viewers (``wire_layout``) get a read the
        # fan-out framed once for every viewer with the same channel layout.
        self.write_wire: Callable[[bytes], int] | None = None
        self.framer: Callable[[Iterable[Item]], tuple[bytes, int]] | None = None
        self.wire_layout: Layout | None = None
        self.writer_idle = False
        self.direct_writes = 0

    def __len__(self) -> int:
        return len(self._items)

    def first_packets(self) -> dict[int, RtpPacket]:
        """The first queued RTP packet of each track (a PLAY reply's RTP-Info)."""
        firsts: dict[int, RtpPacket] = {}
        for item in self._items:
            if isinstance(item, RtpPacket) and not item.rtcp and item.track not in firsts:
                firsts[item.track] = item
        return firsts

    def prime(self, packets: list[RtpPacket]) -> None:
        """Start with the cached GOP, so the first picture shows at once."""
        for pkt in packets:
            if pkt.track in self.media:
                self._items.append(pkt)
                self._bytes += len(pkt.data)
        self._wakeup.set()

    def push(self, pkt: RtpPacket) -> None:
        if self.closed or pkt.track not in self.media:
            return
        if self.waiting_keyframe:
            if not pkt.keyframe:
                self.skipped += 1
                return
            self.waiting_keyframe = False
        size = len(pkt.data)
        if len(self._items) >= self.max_packets or self._bytes + size > self.max_bytes:
            # behind by a whole queue: drop it and restart at the next keyframe
            self.overflows += 1
            head = self._items[0] if self._items and type(self._items[0]) is bytes else None
            self.skipped += len(self._items) - (head is not None)
            self._items.clear()
            self._bytes = 0
            if head is not None:  # a half-written frame's tail must still go, or framing breaks
                self._items.append(head)
                self._bytes = len(head)
            if self.video_media is not None and not pkt.keyframe:
                self.waiting_keyframe = True
                self.skipped += 1
                return
        self._items.append(pkt)
        self._bytes += size
        if self.write_wire is None:
            self._wakeup.set()

    def flush(self) -> None:
        """End of one publisher read: write what is queued now, or wake the writer task."""
        if not self._items:
            return
        if self.writer_idle and self.write_wire is not None and self.framer is not None:
            items = list(self._items)
            self._items.clear()
            self._bytes = 0
            self.send_wire(*self.framer(items))
            return
        self._wakeup.set()

    def send_wire(self, wire: bytes, packets: int) -> None:
        """Write ready-framed bytes now; what does not go out waits for the writer task."""
        assert self.write_wire is not None
        self.sent += packets
        if not wire:
            return
        self.direct_writes += 1
        n = self.write_wire(wire)
        if n >= len(wire):
            return
        self.unsend(wire[max(n, 0):])
        self._wakeup.set()

    def unsend(self, wire: bytes) -> None:
        """The unsent tail of a direct write goes first, to be written by the writer task."""
        self._items.appendleft(wire)
        self._bytes += len(wire)

    async def take(self, max_items: int = 256) -> list[Item]:
        while not self._items:
            if self.closed:
                return []
            self._wakeup = trio.Event()
            self.writer_idle = True
            try:
                await self._wakeup.wait()
            finally:
                self.writer_idle = False
        items = self._items
        n = min(max_items, len(items))
        out = [items.popleft() for _ in range(n)]
        self._bytes -= sum(len(p) if type(p) is bytes else len(p.data)  # type: ignore[union-attr]
                           for p in out)
        return out

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()


class Fanout:
    """One live stream's viewers, as a single sink of the stream's ``StreamHub``."""

    def __init__(self, hub: StreamHub) -> None:
        self.hub = hub
        self.queues: list[ViewerQueue] = []
        self.packets_in = 0
        self.shared_writes = 0
        self._pending: list[RtpPacket] = []  # this publisher read's packets

    @property
    def video_media(self) -> int | None:
        pub = self.hub.publication
        return pub.video_track if pub is not None else None

    # PacketSink -----------------------------------------------------------------------------
    def on_start(self, publication: Publication) -> None:
        for q in self.queues:
            q.video_media = publication.video_track

    def on_packet(self, pkt: RtpPacket) -> None:
        self.packets_in += 1
        self._pending.append(pkt)

    def on_stop(self, reason: str) -> None:
        self._pending = []

    def on_flush(self) -> None:
        """The publisher finished one read: hand its packets to every viewer.

        A viewer that is caught up (empty queue, writer idle) and plays over TCP gets the read as
        one ready-made byte string, framed once per channel layout and shared by every viewer with
        that layout: one ``write`` per viewer per read, no per-packet work per viewer. Any other
        viewer gets the packets queued one by one, then one direct write attempt.
        """
        pending = self._pending
        if not pending:
            return
        self._pending = []
        wires: dict[Layout, tuple[bytes, int]] = {}
        for q in self.queues:
            sig = q.wire_layout
            if (sig is not None and q.write_wire is not None and q.writer_idle and not q._items
                    and not q.waiting_keyframe and not q.closed):
                wire = wires.get(sig)
                if wire is None:
                    wire = wires[sig] = frame_packets(pending, sig)
                self.shared_writes += 1
                q.send_wire(*wire)
                continue
            for pkt in pending:
                q.push(pkt)
            q.flush()

    # viewers ----------------------------------------------------------------------------
    def attach(self, queue: ViewerQueue) -> None:
        self.on_flush()  # the cached GOP below already holds this read's packets: no duplicates
        queue.video_media = self.video_media
        gop = self.hub.gop
        snapshot = gop.snapshot() if gop is not None else []
        if snapshot:
            queue.prime(snapshot)
        elif queue.video_media is not None:
            # no keyframe cached yet (the stream just started): wait for one rather than show
            # the smear of P-frames without their reference
            queue.waiting_keyframe = True
        self.queues.append(queue)
        if len(self.queues) == 1:
            self.hub.add_sink(self)

    def detach(self, queue: ViewerQueue) -> None:
        if queue in self.queues:
            self.queues.remove(queue)
        if not self.queues:
            self.hub.remove_sink(self)
            self._pending = []

    def close(self) -> None:
        self.hub.remove_sink(self)
        for q in self.queues:
            q.close()
        self.queues.clear()
        self._pending = []
