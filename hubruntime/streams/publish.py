"""Which streams may be published into the hub, and with which secret.

Owned by the stream supervisors (one slot per running stream, a fresh secret per reader start),
checked by the RTSP server's publish endpoint: a stale reader, or anything else on the machine,
cannot publish into a stream. It lives in ``streams/`` because the supervisors own it; the
server gets it passed in by ``hub.py`` and sees only this small interface.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Protocol

from hubruntime.streams.hub import StreamHub


class Kickable(Protocol):
    """A publishing connection, as far as the registry needs one: it can be ended."""

    def kick(self) -> None: ...


@dataclass
class PublishSlot:
    """A stream open for publishing: its hub, the current reader's secret and connection."""

    hub: StreamHub
    secret: str = ""
    connection: Kickable | None = None


class PublishRegistry:
    def __init__(self) -> None:
        self._slots: dict[str, PublishSlot] = {}

    def open(self, hub: StreamHub) -> PublishSlot:
        slot = self._slots.get(hub.stream_id)
        if slot is None or slot.hub is not hub:
            slot = self._slots[hub.stream_id] = PublishSlot(hub)
        return slot

    def new_secret(self, stream_id: str) -> str:
        """Mint the secret of the next reader; the previous reader's secret stops working."""
        slot = self._slots[stream_id]
        slot.secret = secrets.token_urlsafe(18)
        return slot.secret

    def close(self, stream_id: str) -> None:
        slot = self._slots.pop(stream_id, None)
        if slot and slot.connection:
            slot.connection.kick()

    def kick(self, stream_id: str) -> None:
        """Drop the current publisher's connection (its reader is being replaced)."""
        slot = self._slots.get(stream_id)
        if slot and slot.connection:
            slot.connection.kick()

    def check(self, stream_id: str, secret: str) -> PublishSlot | None:
        slot = self._slots.get(stream_id)
        if slot is None or not slot.secret:
            return None
        if not hmac.compare_digest(slot.secret.encode(), secret.encode()):
            return None
        return slot
