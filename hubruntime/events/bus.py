"""The event bus: every hub event fans out from here to bounded per-subscriber mailboxes.

Why mailboxes that drop the oldest: a publisher (a stream's health monitor, the network watcher)
must never wait for a subscriber (a slow plugin, the event log on a slow disk). A subscriber that
cannot keep up loses its oldest events; the loss is counted and logged (rate-limited), and every
other subscriber is untouched. Delivery per subscriber is in publish order.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import trio

from hubruntime.events import catalogue

log = logging.getLogger("hubruntime.events")


class Published:
    """An event as the bus delivers it: the event table plus its sequence number and UTC time.

    The ISO time text and the JSON encoding are made on first use and kept: the event log needs
    both, each plugin worker needs the JSON, and the hot path of ``publish`` needs neither.
    """

    __slots__ = ("seq", "wall", "event", "_time", "_json")

    def __init__(self, seq: int, wall: float, event: dict[str, Any]) -> None:
        self.seq = seq
        self.wall = wall
        self.event = event
        self._time: str | None = None
        self._json: bytes | None = None

    @property
    def name(self) -> str:
        return self.event["event"]

    @property
    def time(self) -> str:
        if self._time is None:
            self._time = _utc_text(self.wall)
        return self._time

    @property
    def json_bytes(self) -> bytes:
        if self._json is None:
            self._json = catalogue.to_json(self.event).encode("utf-8")
        return self._json

    def __repr__(self) -> str:
        return f"Published({self.seq}, {self.time}, {self.event!r})"


class Mailbox:
    """A bounded FIFO for one consumer in the trio thread; ``put`` never blocks."""

    def __init__(self, name: str, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError("mailbox size must be at least 1")
        self.name = name
        self.maxlen = maxlen
        self._items: deque[Any] = deque()
        self._wakeup = trio.Event()
        self.dropped = 0
        self.delivered = 0
        self._last_drop_log = 0.0
        self._drops_since_log = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        """Whether ``item`` (that very object) waits here: the plugin host asks it of a sticky
        event, to know if a new subscriber will get it anyway."""
        return any(x is item for x in self._items)

    def put(self, item: Any) -> None:
        if len(self._items) >= self.maxlen:
            self._items.popleft()
            self.dropped += 1
            self._drops_since_log += 1
            now = time.monotonic()
            if now - self._last_drop_log >= 5.0:
                log.warning(
                    "%s cannot keep up: dropped %d oldest event(s) (%d in all)",
                    self.name,
                    self._drops_since_log,
                    self.dropped,
                )
                self._last_drop_log = now
                self._drops_since_log = 0
        self._items.append(item)
        self._wakeup.set()

    def put_front(self, items: Iterable[Any]) -> None:
        """Give back items taken but not handled (a worker died mid-batch), oldest first."""
        self._items.extendleft(reversed(list(items)))
        while len(self._items) > self.maxlen:
            self._items.pop()
            self.dropped += 1
        if self._items:
            self._wakeup.set()

    def get_nowait_batch(self, max_items: int) -> list[Any]:
        items = self._items
        n = min(max_items, len(items))
        out = [items.popleft() for _ in range(n)]
        self.delivered += n
        return out

    async def get_batch(self, max_items: int) -> list[Any]:
        """Wait for at least one item; return up to ``max_items`` of them."""
        while not self._items:
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        return self.get_nowait_batch(max_items)

    def clear(self) -> None:
        self._items.clear()


class EventBus:
    """Validates, stamps and fans out events. Lives in the trio thread."""

    def __init__(self, *, first_seq: int = 1, queue_size: int = 10_000) -> None:
        self._next_seq = first_seq
        self.queue_size = queue_size
        self._subscribers: list[tuple[Mailbox, Callable[[Published], bool] | None]] = []
        self._sticky: dict[str, Published] = {}

    def subscribe(
        self,
        name: str,
        *,
        maxlen: int | None = None,
        accept: Callable[[Published], bool] | None = None,
    ) -> Mailbox:
        box = Mailbox(name, maxlen or self.queue_size)
        self._subscribers.append((box, accept))
        return box

    def attach(self, box: Mailbox, accept: Callable[[Published], bool] | None = None) -> None:
        """Deliver to a mailbox made elsewhere (a plugin's queue, shared with its timers)."""
        self._subscribers.append((box, accept))

    def unsubscribe(self, box: Mailbox) -> None:
        self._subscribers = [(b, a) for b, a in self._subscribers if b is not box]

    @property
    def subscriber_count(self) -> int:
        """Mailboxes attached now (tests check that a client's leaving frees its subscription)."""
        return len(self._subscribers)

    def publish(self, name: str, /, **fields: Any) -> Published:
        """Publish a catalogue event; raises ``EventValidationError`` on a bad one."""
        return self._deliver(catalogue.make_event(name, **fields))

    def publish_event(self, event: dict[str, Any]) -> Published:
        """Publish an already-built event table (camera notifications, API-created events)."""
        catalogue.validate(event)
        return self._deliver(event)

    def _deliver(self, event: dict[str, Any]) -> Published:
        item = Published(self._next_seq, time.time(), event)
        self._next_seq += 1
        for box, accept in self._subscribers:
            if accept is None or accept(item):
                box.put(item)
        return item

    def set_sticky(self, key: str, item: Published | None) -> None:
        """Keep ``item`` (an event already published) as a state a new subscriber is told at
        once, until replaced or cleared with None; ``key`` names the state ("network").

        Why: ``hub_disconnected_from_local_network`` describes a state, not a moment
        (``cameras-api.md``: "sent at once to a new subscriber while disconnected"). The bus only
        keeps it; the plugin host delivers it to each new ``cameras.subscribe``.
        """
        if item is None:
            self._sticky.pop(key, None)
        else:
            self._sticky[key] = item

    def sticky_events(self) -> list[Published]:
        """The sticky events now, in the order they were set."""
        return list(self._sticky.values())

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1


def _utc_text(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")
