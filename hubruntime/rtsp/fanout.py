"""Fan-out of one stream's packets to its viewers, from the single upstream.

The publisher's connection task calls ``Fanout.on_packet`` for every packet; it must never wait,
so each viewer has a bounded ``ViewerQueue`` and its own writer task. A viewer that falls behind
loses its queue and waits for the next keyframe (a picture that starts cleanly beats a smeared
one); a viewer that makes no progress for too long is dropped. Nothing a viewer does slows the
others or the health monitor, which sits on the same packets.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import trio

from hubruntime.proto.rtsp import frame_header
from hubruntime.streams.gop import GopCache
from hubruntime.streams.hub import StreamHub

log = logging.getLogger("hubruntime.rtsp")

Packet = tuple[int, bool, bytes]  # media, is_rtcp, bytes
RAW = -1
"""``media`` of a queue item that is already-encoded wire bytes: the unsent tail of a direct
write, which the writer task must send first and as is."""


class ViewerQueue:
    """Packets waiting for one viewer. ``push`` never blocks; ``take`` waits for some."""

    def __init__(self, media: set[int], *, max_packets: int = 4096, max_bytes: int = 8 << 20,
                 video_media: int | None = None) -> None:
        self.media = media
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.video_media = video_media
        self._items: deque[Packet] = deque()
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
        # back. ``frame(packets)`` turns queued packets into those bytes (sending the viewer's
        # UDP datagrams on the way). Caught-up TCP-only viewers (``wire_layout``) get a read the
        # fan-out framed once for every viewer with the same channel layout.
        self.write_wire: Callable[[bytes], int] | None = None
        self.frame: Callable[[list[Packet]], bytes] | None = None
        self.wire_layout: tuple[tuple[int, int, int], ...] | None = None
        self.writer_idle = False
        self.direct_writes = 0

    def __len__(self) -> int:
        return len(self._items)

    def prime(self, packets: list[tuple[int, bytes]]) -> None:
        """Start with the cached GOP, so the first picture shows at once."""
        for media, data in packets:
            if media in self.media:
                self._items.append((media, False, data))
                self._bytes += len(data)
        self._wakeup.set()

    def push(self, media: int, is_rtcp: bool, data: bytes, keyframe: bool) -> None:
        if self.closed or media not in self.media:
            return
        if self.waiting_keyframe:
            if not keyframe:
                self.skipped += 1
                return
            self.waiting_keyframe = False
        if len(self._items) >= self.max_packets or self._bytes + len(data) > self.max_bytes:
            # behind by a whole queue: drop it and restart at the next keyframe
            self.overflows += 1
            head = self._items[0] if self._items and self._items[0][0] == RAW else None
            self.skipped += len(self._items) - (head is not None)
            self._items.clear()
            self._bytes = 0
            if head is not None:  # a half-written frame's tail must still go, or framing breaks
                self._items.append(head)
                self._bytes = len(head[2])
            if self.video_media is not None and not keyframe:
                self.waiting_keyframe = True
                self.skipped += 1
                return
        self._items.append((media, is_rtcp, data))
        self._bytes += len(data)
        if self.write_wire is None:
            self._wakeup.set()

    def flush(self) -> None:
        """End of one publisher read: write what is queued now, or wake the writer task."""
        if not self._items:
            return
        if self.writer_idle and self.write_wire is not None and self.frame is not None:
            self.send_wire(self.frame(self.drain()), 0)
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

    def drain(self) -> list[Packet]:
        """Everything queued, for a direct write (which puts back a tail with ``unsend``)."""
        out = list(self._items)
        self._items.clear()
        self._bytes = 0
        self.sent += len(out)
        return out

    def unsend(self, wire: bytes) -> None:
        """The unsent tail of a direct write goes first, to be written by the writer task."""
        self._items.appendleft((RAW, False, wire))
        self._bytes += len(wire)

    async def take(self, max_items: int = 256) -> list[Packet]:
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
        self._bytes -= sum(len(p[2]) for p in out)
        self.sent += n
        return out

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()


class Fanout:
    """Keeps one stream's GOP cache and feeds every attached viewer queue."""

    def __init__(self, hub: StreamHub) -> None:
        self.hub = hub
        self.queues: list[ViewerQueue] = []
        self.gop: GopCache | None = None
        self.video_media: int | None = None
        self.packets_in = 0
        self.shared_writes = 0
        self._pending: list[tuple[int, bool, bytes, bool]] = []  # this publisher read's packets
        self._publication = None
        self.on_publication: list[Callable[[], None]] = []
        hub.add_listener(self.on_packet)
        hub.add_flusher(self.flush)
        self._on_start = lambda pub: self._reset()
        hub.on_publish_start(self._on_start)
        if hub.publication is not None:
            self._reset()

    def _reset(self) -> None:
        """A (new) publication: pick the video track and its keyframe detector."""
        from hubruntime.proto.h264 import keyframe_detector

        pub = self.hub.publication
        self.video_media = None
        detector = None
        if pub is not None:
            for m in pub.sdp.media:
                if m.kind == "video":
                    detector = keyframe_detector(m.encoding)
                    if detector is not None:
                        self.video_media = m.index
                        break
        self.gop = GopCache(self.video_media, detector)
        for q in self.queues:
            q.video_media = self.video_media
        for fn in list(self.on_publication):
            fn()

    def close(self) -> None:
        self.hub.remove_listener(self.on_packet)
        self.hub.remove_flusher(self.flush)
        self.hub.remove_publish_start(self._on_start)
        for q in self.queues:
            q.close()
        self.queues.clear()
        self.hub.viewers = 0

    def attach(self, queue: ViewerQueue) -> None:
        self.flush()  # the cached GOP below already holds this read's packets: no duplicates
        queue.video_media = self.video_media
        snapshot = self.gop.snapshot() if self.gop is not None else []
        if snapshot:
            queue.prime(snapshot)
        elif self.video_media is not None:
            # no keyframe cached yet (the stream just started): wait for one rather than show
            # the smear of P-frames without their reference
            queue.waiting_keyframe = True
        self.queues.append(queue)
        self.hub.viewers = len(self.queues)

    def detach(self, queue: ViewerQueue) -> None:
        if queue in self.queues:
            self.queues.remove(queue)
        self.hub.viewers = len(self.queues)

    def on_packet(self, now: float, media: int, is_rtcp: bool, data: bytes) -> None:
        self.packets_in += 1
        keyframe = False
        if self.gop is not None:
            keyframe = self.gop.add(now, media, is_rtcp, data)
        if self.queues:
            self._pending.append((media, is_rtcp, data, keyframe))

    def flush(self) -> None:
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
        wires: dict[tuple[tuple[int, int, int], ...], tuple[bytes, int]] = {}
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
            for media, is_rtcp, data, keyframe in pending:
                q.push(media, is_rtcp, data, keyframe)
            q.flush()


def frame_packets(packets: list[tuple[int, bool, bytes, bool]],
                  layout: tuple[tuple[int, int, int], ...]) -> tuple[bytes, int]:
    """``packets`` as RTSP interleaved frames for a viewer whose tracks use ``layout``
    (``(media, rtp channel, rtcp channel)`` each), and how many packets that is."""
    channels = {m: (rtp_ch, rtcp_ch) for m, rtp_ch, rtcp_ch in layout}
    parts: list[bytes] = []
    for media, is_rtcp, data, _kf in packets:
        ch = channels.get(media)
        if ch is None or len(data) > 0xFFFF:
            continue
        parts.append(frame_header(ch[1] if is_rtcp else ch[0], len(data)))
        parts.append(data)
    return b"".join(parts), len(parts) // 2
