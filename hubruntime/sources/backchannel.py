"""The TomTom Bandit backchannel client: camera notifications onto the event bus.

One :class:`BackchannelClient` per configured camera (``[[backchannel]]``). It reads the camera's
status document for ``backchannel_port`` (protocols.md §3.1), connects to that port on the status
URL's host (the client connects, the camera pushes, the client never writes: §3.2), splits the
byte stream into objects (:class:`hubruntime.proto.backchannel.ObjectSplitter`) and publishes
every notification as a catalogue event (DESIGN.md §6: the camera's own name, ``source``
``"backchannel"``, the configured ``streamId``).

Why it never gives up and never storms: a camera on Wi-Fi comes and goes. Any end of the
connection (EOF, reset, garbage, an endless object, a status error) closes it and reconnects after
an exponential, jittered delay (:class:`hubruntime.proto.backoff.Backoff`) that resets only
after the connection stayed up for a healthy while, so a camera that accepts and drops at once
still backs off. A bad notification (a payload that contradicts the catalogue, a hub event's
name) is logged (rate-limited) and skipped; the connection goes on, because the framing is fine.

The status URL may carry credentials; it is logged only through :func:`hubruntime.redact.redact`.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from hubruntime.config import BackchannelSource
from hubruntime.events import catalogue
from hubruntime.events.bus import EventBus
from hubruntime.proto.backchannel import (
    DEFAULT_MAX_OBJECT_BYTES,
    ObjectSplitter,
    ProtocolError,
    StatusError,
    notifications,
    parse_status,
)
from hubruntime.proto.backoff import Backoff
from hubruntime.redact import redact

__all__ = ["SOURCE", "BackchannelClient", "NotificationError", "events_from_object"]

log = logging.getLogger("hubruntime.sources")

SOURCE = "backchannel"
"""The ``source`` field of every event this client publishes."""

MAX_STATUS_BYTES = 64 << 10
"""A status document is a few hundred bytes; refuse to buffer a runaway one."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
"""What a notification name may look like. Names become event names (Lua values, JSON keys, the
event log's type column); an unknown but well-formed name is accepted (cameras add
notifications), an empty or binary one is not."""


# --------------------------------------------------------------------------------------------
# Pure mapping: one decoded object → events


@dataclass(frozen=True)
class NotificationError:
    """A notification that was skipped: its name (possibly shortened) and why."""

    name: str
    message: str


def _short(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def events_from_object(
    obj: Mapping[str, Any], *, stream_id: str | None = None, source: str = SOURCE
) -> tuple[list[dict[str, Any]], list[NotificationError]]:
    """The events of one backchannel object, and the notifications that had to be skipped.

    Every top-level key is a notification (``proto.backchannel.notifications``: ``shutting_down``'s
    flags are looked for beside it too) made into an event by
    :func:`hubruntime.events.catalogue.from_notification`. A notification whose payload
    contradicts its declaration, that uses a hub event's name, has a malformed name, or holds text
    that cannot be UTF-8 (a lone surrogate escape) is returned as a :class:`NotificationError`;
    nothing is raised, so one bad notification never costs the others or the connection.

    Pure (no I/O): lives here rather than in ``proto`` only because it needs the catalogue, and
    ``proto`` imports nothing of ours (DESIGN.md §2).
    """
    events: list[dict[str, Any]] = []
    errors: list[NotificationError] = []
    for name, payload in notifications(obj):
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            errors.append(NotificationError(_short(repr(name)), "not a notification name"))
            continue
        try:
            event = catalogue.from_notification(source, name, payload, stream_id=stream_id)
            # Every consumer sends the event as UTF-8 JSON (plugins, event log, backchannel
            # server); text that cannot be encoded must stop here, not in each of them.
            catalogue.to_json(event).encode("utf-8")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            errors.append(NotificationError(name, str(exc)))
            continue
        events.append(event)
    return events, errors


# --------------------------------------------------------------------------------------------
# The client


class _Throttle:
    """At most one log line per ``every`` seconds; counts what it held back."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._last = -float("inf")
        self.suppressed = 0

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            return True
        self.suppressed += 1
        return False


def _set_keepalive(stream: trio.SocketStream) -> None:
    """The camera may stay silent for hours; TCP keepalive notices when it is gone for good."""
    sock = stream.socket
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            opt = getattr(socket, name, None)
            if opt is not None:
                sock.setsockopt(socket.IPPROTO_TCP, opt, value)
    except OSError:  # best effort: not every platform has every option
        pass


class _ConnectionEnded(Exception):
    """The camera closed the backchannel (EOF)."""


class BackchannelClient:
    """Reads one camera's backchannel and publishes its notifications; reconnects forever.

    Counters for tests and diagnostics: ``connects`` (TCP connections made), ``events``
    (published), ``errors`` (notifications skipped), ``failures`` (connection attempts or
    connections that ended, for whatever reason), ``last_error`` (why the last one ended) and
    ``connected``.
    """

    def __init__(
        self,
        source: BackchannelSource,
        bus: EventBus,
        *,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        reset_after: float = 60.0,
        timeout: float = 10.0,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
        read_size: int = 65536,
        backoff: Backoff | None = None,
    ) -> None:
        url = httpx.URL(source.status_url)  # raises httpx.InvalidURL for a malformed one
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(
                f"backchannel {source.stream_id}: status_url must be an http(s) URL with a host, "
                f"got {redact(source.status_url)!r}"
            )
        self.source = source
        self.bus = bus
        self.host = url.host
        # Credentials travel as an auth header, not in the URL: httpx logs the URL of every
        # request, and a library's log line must not depend on our handler's redaction.
        self._status_url = url.copy_with(username=None, password=None)
        self._auth = httpx.BasicAuth(url.username, url.password) if url.userinfo else None
        self.timeout = timeout
        self.max_object_bytes = max_object_bytes
        self.read_size = read_size
        self.backoff = backoff or Backoff(initial_backoff, max_backoff, reset_after)
        self._where = f"backchannel {source.stream_id} ({redact(source.status_url)})"
        self._throttle = _Throttle(1.0)
        self.connects = 0
        self.events = 0
        self.errors = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_delay = 0.0
        self.connected = False

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, read, reconnect, until cancelled. ``started`` at once: a camera that is off
        must not hold up the hub's start."""
        task_status.started()
        async with httpx.AsyncClient(
            timeout=self.timeout,
            trust_env=False,  # a proxy from the environment has no business on the camera's LAN
            follow_redirects=False,
        ) as http:
            while True:
                connected_at: float | None = None
                try:
                    port = await self._fetch_port(http)
                    with trio.fail_after(self.timeout):
                        stream = await trio.open_tcp_stream(self.host, port)
                    connected_at = trio.current_time()
                    self.connects += 1
                    self.connected = True
                    log.info("%s: connected to port %d", self._where, port)
                    async with stream:
                        _set_keepalive(stream)
                        await self._read(stream)
                except _ConnectionEnded:
                    reason = "the camera closed the connection"
                except ProtocolError as exc:
                    reason = str(exc)
                except StatusError as exc:
                    reason = str(exc)
                except trio.TooSlowError:
                    reason = f"no connection within {self.timeout:g} s"
                except httpx.HTTPError as exc:
                    reason = f"status request failed: {type(exc).__name__}: {exc}"
                except (OSError, trio.BrokenResourceError) as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                except Exception as exc:  # a bug of ours: log it, back off, harm nothing else
                    log.error("%s: client failed", self._where, exc_info=True)
                    reason = f"internal error: {type(exc).__name__}: {exc}"
                finally:
                    self.connected = False
                healthy = 0.0 if connected_at is None else trio.current_time() - connected_at
                self.failures += 1
                self.last_error = reason = redact(reason)
                delay = self.last_delay = self.backoff.next_delay(healthy)
                log.warning(
                    "%s: %s; reconnecting in %.1f s (failure %d in a row)",
                    self._where, reason, delay, self.backoff.failures,
                )
                await trio.sleep(delay)

    async def _fetch_port(self, http: httpx.AsyncClient) -> int:
        async with http.stream(
            "GET", self._status_url, headers={"Accept": "application/json"}, auth=self._auth
        ) as response:
            if response.status_code != 200:
                raise StatusError(f"status: HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_STATUS_BYTES:
                    raise StatusError(f"status: document over {MAX_STATUS_BYTES} bytes")
        return parse_status(bytes(body))

    async def _read(self, stream: trio.SocketStream) -> None:
        splitter = ObjectSplitter(self.max_object_bytes)
        while True:
            data = await stream.receive_some(self.read_size)
            if not data:
                if splitter.in_object:
                    raise ProtocolError(
                        f"backchannel: connection closed inside an object "
                        f"({splitter.buffered} bytes unfinished)"
                    )
                raise _ConnectionEnded
            for obj in splitter.feed(data):
                self._publish(obj)

    def _publish(self, obj: Mapping[str, Any]) -> None:
        events, errors = events_from_object(obj, stream_id=self.source.stream_id)
        for event in events:
            try:
                self.bus.publish_event(event)
            except (ValueError, KeyError) as exc:  # validated already; a guard, not a path
                errors.append(NotificationError(str(event.get("event")), str(exc)))
                continue
            self.events += 1
        for error in errors:
            self.errors += 1
            if self._throttle.ready():
                held = self._throttle.suppressed
                self._throttle.suppressed = 0
                log.warning(
                    "%s: skipped notification %s: %s%s",
                    self._where, error.name, redact(error.message),
                    f" ({held} more skipped since the last report)" if held else "",
                )
