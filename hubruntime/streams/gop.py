"""The fan-out's keyframe cache: the packets of the current group of pictures (GOP).

Why: a new viewer that started with whatever packet comes next would see a grey or smeared
picture until the camera's next keyframe, often seconds away (DESIGN §4). So the fan-out keeps
every RTP packet, of every media, from the start of the latest keyframe on, and primes a new
viewer's queue with them; the decoder gets a clean start at once and catches up to live.

Where a keyframe starts: a keyframe of H.264/H.265 spans several RTP packets (fragmentation
units, one per slice), and in-band parameter sets (SPS/PPS, and SEI or access unit delimiters)
come before it as separate packets of the same access unit, i.e. with the same RTP timestamp.
The GOP therefore starts at the *first packet of the access unit* in which the detector fires,
which may be a packet seen before it (a PPS, an AUD), and later detector hits in that same
access unit (the IDR after its SPS, the second slice of an IDR) do not start another GOP.
We assume the parameter sets share the keyframe's timestamp, as RFC 6184 §5.1 requires of the
NAL units of one access unit and as FFmpeg and cameras send them.

Bounds: a GOP over ``max_bytes`` or spanning more than ``max_secs`` is dropped whole: a GOP cut
at the front has no usable start, and replaying more than a few seconds to a new viewer is worse
than a short wait. The cache then stays empty until the next keyframe.

Sans-I/O: the caller passes arrival time in; nothing here reads a clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from hubruntime.proto.rtp import RtpPacket

__all__ = ["GopCache"]


class GopCache:
    """Keeps the packets from the latest keyframe start of ``video_media`` on.

    With no video media or no keyframe detector (audio only, MJPEG, unknown codec) there is no
    keyframe to wait for: it caches nothing and every packet is a usable start.
    """

    def __init__(self, video_media: int | None, is_keyframe: Callable[[bytes], bool] | None,
                 max_bytes: int = 8 << 20, max_secs: float = 10.0) -> None:
        self.video_media = video_media
        self.is_keyframe = is_keyframe
        self.max_bytes = max_bytes
        self.max_secs = max_secs
        self._packets: deque[RtpPacket] = deque()
        self._bytes = 0
        self._base = 0  # stream-wide number of _packets[0]
        self._valid = False  # whether _packets[0] is a keyframe start
        self._au_ts: int | None = None  # RTP timestamp of the latest video access unit
        self._au_start = 0  # stream-wide number of that access unit's first packet
        self._key_ts: int | None = None  # RTP timestamp of the latest keyframe access unit
        self.drops = 0  # GOPs dropped for going over the bounds

    @property
    def enabled(self) -> bool:
        """Whether there is a video track to cache for."""
        return self.video_media is not None and self.is_keyframe is not None

    @property
    def nbytes(self) -> int:
        """Bytes held, including packets of an access unit not yet known to be a keyframe."""
        return self._bytes

    def add(self, pkt: RtpPacket) -> bool:
        """Take one packet of the stream; return whether it starts a keyframe.

        ``True`` only for the packet on which the detector first fires in a keyframe's access
        unit: a viewer waiting for a keyframe resumes there. RTCP is never cached (a viewer's
        receiver gets fresh sender reports soon enough, and stale ones would mislead its clock).
        """
        if not self.enabled:
            return True
        if pkt.rtcp:
            return False
        number = self._base + len(self._packets)
        starts = False
        if pkt.track == self.video_media:
            starts = self._video(number, pkt)
        self._packets.append(pkt)
        self._bytes += len(pkt.data)
        if not self._valid:
            # Keep only the access unit in progress: its keyframe may still be found.
            self._drop_before(self._au_start)
        if self._bytes > self.max_bytes or pkt.arrival - self._packets[0].arrival > self.max_secs:
            if self._valid:
                self.drops += 1
            self.clear()
        return starts

    def _video(self, number: int, pkt: RtpPacket) -> bool:
        """Track access units; on a new keyframe start drop what came before it."""
        assert self.is_keyframe is not None
        if pkt.payload_end <= pkt.payload_start:
            return False
        ts = pkt.timestamp
        if ts != self._au_ts:
            self._au_ts = ts
            self._au_start = number
        if not self.is_keyframe(pkt.data[pkt.payload_start:pkt.payload_end]):
            return False
        if ts == self._key_ts:
            # Another part of the keyframe already started on (the IDR after its SPS, a later
            # slice); by timestamp, not adjacency, so a reordered packet in between does not
            # split the access unit.
            return False
        self._key_ts = ts
        self._drop_before(max(self._au_start, self._base))
        self._valid = True
        return True

    def _drop_before(self, number: int) -> None:
        packets = self._packets
        while self._base < number and packets:
            self._bytes -= len(packets.popleft().data)
            self._base += 1

    def snapshot(self) -> list[RtpPacket]:
        """The packets in arrival order from the keyframe start; empty without one."""
        if not self._valid:
            return []
        return list(self._packets)

    def clear(self) -> None:
        """Forget everything; the cache is unusable until the next keyframe starts.

        The timestamp of the last keyframe is kept: the rest of that access unit (later slices,
        the IDR after its SPS) has lost its beginning and must not pass for a new start.
        """
        self._base += len(self._packets)
        self._packets.clear()
        self._bytes = 0
        self._valid = False
