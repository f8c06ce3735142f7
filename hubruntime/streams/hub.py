"""StreamHub: the one place a camera stream's packets arrive, and leave from (DESIGN §9).

The publishing session (the stream's FFmpeg reader, over the internal RTSP endpoint) is the one
caller of :meth:`StreamHub.publish_started`, :meth:`StreamHub.receive` and
:meth:`StreamHub.publish_stopped`. Each interleaved frame is parsed once here into an
:class:`~hubruntime.proto.rtp.RtpPacket`; the hub then, in this order and synchronously on the
publisher's task, feeds the receive statistics, the health monitor and the GOP cache, and hands
the packet to every registered :class:`PacketSink` (the viewers' fan-out now; the snapshotter,
the recorder and the listen side of audio next). Sinks must be quick and never block: one that
needs to wait queues boundedly on its own side.

Why one owner: the publication's lifecycle (start, stop, its SDP, its GOP) used to be followed
in several places (the supervisor, the fan-out, the live streams by polling); now everything
that cares registers here and is told.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from hubruntime.proto.h264 import keyframe_detector
from hubruntime.proto.rtp import RtpPacket
from hubruntime.proto.sdp import SessionDescription
from hubruntime.streams.gop import GopCache
from hubruntime.streams.health import HealthEvent, HealthMonitor, Track

log = logging.getLogger("hubruntime.streams")

MALFORMED_LOG_EVERY = 1000
"""A malformed packet is logged on the first, then on every ``MALFORMED_LOG_EVERY``-th one."""


@dataclass
class Publication:
    """What the current publisher announced, and the state the hub keeps for it."""

    sdp_text: str
    sdp: SessionDescription
    started_at: float
    video_track: int | None = None  # the SDP media the GOP cache follows (H.264/H.265), if any


class PacketSink(Protocol):
    """A consumer of one stream's packets (viewers' fan-out, snapshotter, recorder, audio).

    ``on_start`` is called when a publication starts (at once on registration if one is
    running), ``on_packet`` for each packet in arrival order, ``on_flush`` after each
    publisher read (a sink that writes to sockets writes then: one write per read, not per
    packet), ``on_stop`` when the publication ends. None may block or await; a sink that
    raises is removed and logged, and the publication goes on.
    """

    def on_start(self, publication: Publication) -> None: ...

    def on_packet(self, pkt: RtpPacket) -> None: ...

    def on_flush(self) -> None: ...

    def on_stop(self, reason: str) -> None: ...


def _noop_events(events: list[HealthEvent]) -> None:
    pass


def _noop() -> None:
    pass


class StreamHub:
    """One stream's publication, its GOP cache, its health monitor feed and its sinks."""

    def __init__(self, stream_id: str, *, packet_delay_secs: float = 1.0,
                 accumulated_delay_secs: float = 5.0) -> None:
        self.stream_id = stream_id
        self.packet_delay_secs = packet_delay_secs
        self.accumulated_delay_secs = accumulated_delay_secs
        self.publication: Publication | None = None
        self.monitor: HealthMonitor | None = None
        self.gop: GopCache | None = None
        self.stats: Any = None  # TEMP until streams/stats.py lands
        # set by the stream's supervisor: what the monitor reports, and a delayed stream
        # flowing again
        self.on_health: Callable[[list[HealthEvent]], None] = _noop_events
        self.on_recovered: Callable[[], None] = _noop
        self._delayed = False
        self._sinks: list[PacketSink] = []  # get packets
        self._watchers: list[PacketSink] = []  # get start/stop only
        self._started = trio.Event()
        self._stopped = trio.Event()
        self._stopped.set()
        self.packets = 0
        self.bytes = 0
        self.malformed = 0
        self.sink_errors = 0

    # sinks ---------------------------------------------------------------------------------
    @property
    def viewers(self) -> int:
        """Sinks that want packets now; with none, the publisher is read in batches."""
        return len(self._sinks)

    def add_sink(self, sink: PacketSink, *, packets: bool = True, replay_gop: bool = False
                 ) -> None:
        """Register ``sink``; with ``packets=False`` it follows the lifecycle only.

        With a publication running, ``on_start`` is called at once and, with ``replay_gop``,
        the cached GOP is replayed through ``on_packet`` (then ``on_flush``).
        """
        where = self._sinks if packets else self._watchers
        if sink in where:
            return
        where.append(sink)
        pub = self.publication
        if pub is None:
            return
        if not self._call(sink, "on_start", pub):
            return
        if replay_gop and packets and self.gop is not None:
            for pkt in self.gop.snapshot():
                if not self._call(sink, "on_packet", pkt):
                    return
            self._call(sink, "on_flush")

    def remove_sink(self, sink: PacketSink) -> None:
        for where in (self._sinks, self._watchers):
            if sink in where:
                where.remove(sink)

    def _call(self, sink: PacketSink, method: str, *args: object) -> bool:
        try:
            getattr(sink, method)(*args)
            return True
        except Exception:
            self._drop(sink, method)
            return False

    def _drop(self, sink: PacketSink, method: str) -> None:
        self.sink_errors += 1
        log.exception("stream %s: sink %s failed in %s; removed", self.stream_id,
                      type(sink).__name__, method)
        self.remove_sink(sink)

    async def wait_published(self) -> Publication:
        """The running publication, waiting for one to start if there is none."""
        while self.publication is None:
            await self._started.wait()
        return self.publication

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # the publisher side --------------------------------------------------------------------
    def publish_started(self, sdp_text: str, sdp: SessionDescription, now: float
                        ) -> Publication:
        if self.publication is not None:
            self.publish_stopped("replaced")
        video: int | None = None
        detector = None
        for m in sdp.media:
            if m.kind == "video":
                detector = keyframe_detector(m.encoding)
                if detector is not None:
                    video = m.index
                    break
        self.gop = GopCache(video, detector)
        tracks = [Track(m.index, m.kind, m.clock_rate)  # type: ignore[arg-type]
                  for m in sdp.media if m.kind in ("video", "audio")]
        self.monitor = HealthMonitor(tracks, packet_delay_secs=self.packet_delay_secs,
                                     accumulated_delay_secs=self.accumulated_delay_secs)
        self.monitor.start(now)
        try:  # TEMP until streams/stats.py lands
            from hubruntime.streams.stats import StreamStats
            self.stats = StreamStats([(t.index, t.kind, t.clock_rate) for t in tracks])
        except ImportError:
            self.stats = None
        self._delayed = False
        self.publication = pub = Publication(sdp_text, sdp, now, video)
        self._stopped = trio.Event()
        self._started.set()
        for sink in [*self._watchers, *self._sinks]:
            self._call(sink, "on_start", pub)
        return pub

    def publish_stopped(self, reason: str = "closed") -> None:
        """The publication ended (its connection closed, or it was replaced or kicked)."""
        if self.publication is None:
            return
        self.publication = None
        if self.monitor is not None:
            self.monitor.stop()
        self.monitor = None
        self._started = trio.Event()
        self._stopped.set()
        for sink in [*self._watchers, *self._sinks]:
            self._call(sink, "on_stop", reason)

    def receive(self, track: int, rtcp: bool, data: bytes, now: float) -> None:
        """One interleaved frame of the publisher, for SDP media ``track``, arrived at ``now``."""
        pkt = RtpPacket.parse(track, data, now, rtcp)
        if pkt is None:
            self.malformed += 1
            if self.malformed % MALFORMED_LOG_EVERY == 1:
                log.warning("stream %s: malformed %s packet on track %d dropped (%d so far)",
                            self.stream_id, "RTCP" if rtcp else "RTP", track, self.malformed)
            return
        self.packet(pkt)

    def packet(self, pkt: RtpPacket) -> None:
        """One parsed packet: statistics, health, GOP cache, then every sink."""
        if self.publication is None:
            return
        self.packets += 1
        self.bytes += len(pkt.data)
        stats = self.stats
        if stats is not None:
            stats.on_packet(pkt)
        monitor = self.monitor
        if monitor is not None:
            if pkt.rtcp:
                events = monitor.on_rtcp(pkt.arrival, pkt.track)
            else:
                events = monitor.on_rtp(pkt.arrival, pkt.track, pkt.seq, pkt.timestamp)
            if events:
                if any(ev.name == "camera_packet_delay" for ev in events):
                    self._delayed = True
                self.on_health(events)
            elif self._delayed and monitor.state == "streaming":
                self._delayed = False
                self.on_recovered()
        gop = self.gop
        if gop is not None:
            pkt.keyframe = gop.add(pkt)
        for sink in tuple(self._sinks):
            try:
                sink.on_packet(pkt)
            except Exception:
                self._drop(sink, "on_packet")

    def poll_health(self, now: float) -> None:
        """Run the monitor's timers (the supervisor sleeps until ``monitor.next_deadline()``)."""
        monitor = self.monitor
        if monitor is None:
            return
        events = monitor.poll(now)
        if events:
            if any(ev.name == "camera_packet_delay" for ev in events):
                self._delayed = True
            self.on_health(events)

    def flush(self) -> None:
        """The end of one publisher read."""
        for sink in tuple(self._sinks):
            try:
                sink.on_flush()
            except Exception:
                self._drop(sink, "on_flush")
