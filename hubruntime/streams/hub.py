"""StreamHub: the one place a camera stream's packets arrive, and leave from.

The publisher (the stream's FFmpeg reader, over the internal RTSP endpoint) hands every
interleaved frame here with its arrival time. Listeners (the health monitor now; viewers, the
GOP cache, recordings in later parts) are called synchronously from the publisher's connection
task, so they must be quick and never block: a slow viewer gets its own bounded queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from hubruntime.proto.sdp import SessionDescription

log = logging.getLogger("hubruntime.streams")

PacketListener = Callable[[float, int, bool, bytes], None]
"""``listener(arrival, media_index, is_rtcp, payload)``."""


@dataclass
class Publication:
    """What the current publisher announced."""

    sdp_text: str
    sdp: SessionDescription
    started_at: float


class StreamHub:
    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self.publication: Publication | None = None
        self._listeners: list[PacketListener] = []
        self._publisher_changed = trio.Event()
        self.packets = 0
        self.bytes = 0
        self.viewers = 0  # live viewers attached: the publisher is read without batching
        self._on_start: list[Callable[[Publication], None]] = []
        self._on_stop: list[Callable[[], None]] = []
        self._flushers: list[Callable[[], None]] = []

    # listeners -----------------------------------------------------------------------------
    def add_listener(self, fn: PacketListener) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: PacketListener) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def add_flusher(self, fn: Callable[[], None]) -> None:
        """``fn()`` runs after each publisher read, once the read's packets were handed out:
        listeners that buffer (viewer fan-out) write then, one write per read, not per packet."""
        self._flushers.append(fn)

    def remove_flusher(self, fn: Callable[[], None]) -> None:
        if fn in self._flushers:
            self._flushers.remove(fn)

    def flush(self) -> None:
        for fn in self._flushers:
            fn()

    def on_publish_start(self, fn: Callable[[Publication], None]) -> None:
        self._on_start.append(fn)

    def remove_publish_start(self, fn: Callable[[Publication], None]) -> None:
        if fn in self._on_start:
            self._on_start.remove(fn)

    def on_publish_stop(self, fn: Callable[[], None]) -> None:
        self._on_stop.append(fn)

    # publisher side ------------------------------------------------------------------------
    def publish_started(self, sdp_text: str, sdp: SessionDescription, now: float) -> Publication:
        self.publication = pub = Publication(sdp_text, sdp, now)
        for fn in list(self._on_start):
            fn(pub)
        return pub

    def publish_stopped(self) -> None:
        if self.publication is None:
            return
        self.publication = None
        for fn in list(self._on_stop):
            fn()

    def packet(self, now: float, media: int, is_rtcp: bool, payload: bytes) -> None:
        """A packet from the publisher, with its arrival time and the SDP media it belongs to."""
        self.packets += 1
        self.bytes += len(payload)
        for fn in self._listeners:
            fn(now, media, is_rtcp, payload)
