"""The camera stream registry: the store's ``streams`` table plus each stream's live state.

Validation lives here so that the CLI, the Lua ``cameras`` module and the HTTP API refuse the
same things with the same words. The camera URL is stored as given (reading needs the password)
and never leaves this module unredacted: ``info`` gives the redacted form.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trio

from hubruntime.redact import redact
from hubruntime.store import DuplicateStreamError, Store, StreamRecord

log = logging.getLogger("hubruntime.streams")

STREAM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
STATES = ("connecting", "streaming", "delayed", "unreachable", "restarting", "stopped")


class StreamError(ValueError):
    """A refused registry operation; the message names the argument and the reason."""


def validate_stream_id(stream_id: Any) -> str:
    if not isinstance(stream_id, str) or not STREAM_ID_RE.match(stream_id):
        raise StreamError(
            f"streamId must be 1-128 letters, digits, '.', '_' or '-' "
            f"(starting with a letter or digit), got {stream_id!r}"
        )
    return stream_id


def validate_rtsp_url(url: Any) -> str:
    if not isinstance(url, str) or not url:
        raise StreamError(f"rtspUrl must be a non-empty string, got {type(url).__name__}")
    if any(c.isspace() for c in url):
        raise StreamError(f"rtspUrl must not contain white space: {redact(url)}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise StreamError(f"rtspUrl is not a valid URL ({exc}): {redact(url)}") from None
    if parts.scheme.lower() not in ("rtsp", "rtsps"):
        raise StreamError(
            f"rtspUrl must start with rtsp:// or rtsps://, got scheme '{parts.scheme}': "
            f"{redact(url)}"
        )
    if not parts.hostname:
        raise StreamError(f"rtspUrl has no host: {redact(url)}")
    if port is not None and not 0 < port < 65536:
        raise StreamError(f"rtspUrl port must be 1-65535: {redact(url)}")
    return url


@dataclass
class StreamState:
    """What the hub knows of a stream now (not persisted)."""

    state: str = "connecting"
    live_url: str | None = None


class StreamManager:
    """Registry operations for the trio thread; SQLite calls run in a worker thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._state: dict[str, StreamState] = {}
        self.on_added: list[Callable[[StreamRecord], Any]] = []
        self.on_removed: list[Callable[[str], Any]] = []
        self._known: set[str] = set()  # ids this process has announced through on_added
        self._busy: set[str] = set()  # ids being added or removed by this process right now

    async def add(
        self, stream_id: Any, name: Any, rtsp_url: Any, description: Any = None
    ) -> StreamRecord:
        validate_stream_id(stream_id)
        if not isinstance(name, str) or not name.strip():
            raise StreamError(f"streamName must be a non-empty string, got {name!r}")
        validate_rtsp_url(rtsp_url)
        if description is None:
            description = ""
        if not isinstance(description, str):
            raise StreamError(f"description must be a string, got {type(description).__name__}")
        self._busy.add(stream_id)
        try:
            rec = await trio.to_thread.run_sync(
                self.store.add_stream, StreamRecord(stream_id, name, rtsp_url, description)
            )
        except DuplicateStreamError:
            raise StreamError(f"stream '{stream_id}' already exists") from None
        finally:
            self._busy.discard(stream_id)
        self._known.add(stream_id)
        self._state[stream_id] = StreamState()
        log.info("stream %s added (%s)", stream_id, redact(rtsp_url))
        for cb in self.on_added:
            cb(rec)
        return rec

    async def remove(self, stream_id: Any) -> None:
        validate_stream_id(stream_id)
        self._busy.add(stream_id)
        try:
            if not await trio.to_thread.run_sync(self.store.remove_stream, stream_id):
                raise StreamError(f"no stream '{stream_id}'")
        finally:
            self._busy.discard(stream_id)
        self._known.discard(stream_id)
        self._state.pop(stream_id, None)
        log.info("stream %s removed", stream_id)
        for cb in self.on_removed:
            cb(stream_id)

    async def watch_store(self, interval: float = 2.0, *,
                          task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Notice streams added or removed by another process (``hubruntime streams add`` while
        the hub runs) and announce them like our own, so reading starts without a restart.

        Polling a one-table SELECT every ``interval`` seconds costs nothing measurable; SQLite
        has no cross-process change notification.
        """
        self._known |= {r.stream_id for r in await self.list()}
        task_status.started()
        while True:
            await trio.sleep(interval)
            records = await self.list()
            ids = {r.stream_id for r in records}
            for rec in records:
                if rec.stream_id not in self._known and rec.stream_id not in self._busy:
                    self._known.add(rec.stream_id)
                    self._state[rec.stream_id] = StreamState()
                    log.info("stream %s added by another process (%s)", rec.stream_id,
                             redact(rec.rtsp_url))
                    for cb in self.on_added:
                        cb(rec)
            for stream_id in sorted(self._known - ids - self._busy):
                self._known.discard(stream_id)
                self._state.pop(stream_id, None)
                log.info("stream %s removed by another process", stream_id)
                for cb in self.on_removed:
                    cb(stream_id)

    async def get(self, stream_id: str) -> StreamRecord | None:
        return await trio.to_thread.run_sync(self.store.get_stream, stream_id)

    async def list(self) -> list[StreamRecord]:
        return await trio.to_thread.run_sync(self.store.list_streams)

    def state(self, stream_id: str) -> StreamState:
        return self._state.setdefault(stream_id, StreamState())

    def set_state(self, stream_id: str, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"unknown stream state {state!r}")
        self.state(stream_id).state = state

    def info(self, rec: StreamRecord) -> dict[str, Any]:
        """The table a plugin or an API client sees: never the camera URL's credentials."""
        st = self.state(rec.stream_id)
        out: dict[str, Any] = {
            "streamId": rec.stream_id,
            "streamName": rec.name,
            "description": rec.description,
            "rtspUrl": redact(rec.rtsp_url),
            "state": st.state,
            "live": st.live_url is not None,
        }
        if st.live_url:
            out["localRtspUrl"] = st.live_url
        return out
