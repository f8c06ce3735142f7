"""The TomTom Bandit backchannel, sans-I/O: JSON-object stream splitting and the status document.

Why a scanner of our own (protocols.md §3.2): the camera pushes JSON objects over a bare TCP
stream. The official clients disagree on the framing (iOS reads up to each newline, Android joins
lines until they parse), so the only safe reading is the one that needs no delimiter at all: track
brace depth outside strings (honouring escapes), cut the stream where a top-level object closes,
and let whitespace and newlines between objects be. Objects may arrive split across reads, several
in one read, or back to back without a newline.

What :class:`ObjectSplitter` refuses, each with a :class:`ProtocolError` (a ``ValueError``):

* a top-level object larger than the bound (default 1 MiB), with or without its closing brace:
  :class:`ObjectTooLargeError`. A camera that sends an endless object would otherwise make the
  hub buffer without limit.
* a non-whitespace byte outside an object: :class:`GarbageError`. We do *not* skip ahead to the
  next ``{``: once the stream carries something that is not an object we cannot know where the
  next object starts (a ``{`` inside a string looks like one), so guessing could deliver a
  fabricated notification. The caller drops the connection; a new connection starts on an object
  boundary.
* a balanced object that is not valid JSON (or not UTF-8, or nested deeper than the bound):
  :class:`InvalidObjectError`, whose message names a short excerpt.

After a ``ProtocolError`` the splitter is *broken*: every later ``feed`` raises the same error,
because the position in the stream is lost. Make a new splitter for the new connection.

Linear time: every byte is scanned once (a regular expression jumps to the next byte that
matters: a brace, a bracket, a quote or a backslash), consumed bytes are dropped once per
``feed``, and scanning never goes past the bound, so a 100 MB object fed in 64 KiB chunks is
refused after about 1 MiB of work.

UTF-8 is handled on bytes: a multi-byte sequence never contains an ASCII byte, so a character
split across two reads cannot confuse the scanner, and an object is decoded only once it is whole.

The module also reads the status document (``GET /api/<version>/status``, protocols.md §3.1) for
``backchannel_port``, and walks one decoded object's top-level keys as notifications
(:func:`notifications`). Turning those into catalogue events is the caller's job
(``hubruntime.sources.backchannel``): DESIGN.md §2 keeps ``proto`` free of imports of ours.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_OBJECT_BYTES",
    "GarbageError",
    "InvalidObjectError",
    "ObjectSplitter",
    "ObjectTooLargeError",
    "ProtocolError",
    "SHUTDOWN_FLAGS",
    "StatusError",
    "notifications",
    "parse_status",
]

DEFAULT_MAX_OBJECT_BYTES = 1 << 20
"""1 MiB: a Bandit notification is a few hundred bytes; ``recording_stopped`` lists videos, and
even a thousand of them fit."""

DEFAULT_MAX_DEPTH = 32
"""Nesting of objects and arrays within one notification. Real ones nest three deep; the bound
keeps the JSON decoder, the catalogue's checks and the Lua conversion (64 levels) far from their
recursion limits."""

_EXCERPT = 40


class ProtocolError(ValueError):
    """The byte stream cannot be read as backchannel notifications; drop the connection."""


class ObjectTooLargeError(ProtocolError):
    """A top-level object grew past the splitter's bound."""


class GarbageError(ProtocolError):
    """Something other than whitespace between objects."""


class InvalidObjectError(ProtocolError):
    """A balanced ``{...}`` that does not decode to a JSON object within the limits."""


class StatusError(ValueError):
    """The status document does not give a usable ``backchannel_port``."""


# Outside strings: the bytes that change the nesting or enter a string.
_STRUCTURE = re.compile(rb'[{}\[\]"]')
# Inside strings: the bytes that end the string or escape the next one.
_IN_STRING = re.compile(rb'["\\]')
_WHITESPACE = re.compile(rb"[ \t\r\n]*")

_OPEN = frozenset(b"{[")
_QUOTE = ord('"')
_BACKSLASH = ord("\\")


def _excerpt(data: bytes | bytearray, start: int = 0, width: int = _EXCERPT) -> str:
    """A short, printable piece of ``data`` for an error message."""
    piece = bytes(data[start : start + width])
    more = "..." if len(data) > start + width else ""
    return f"{piece!r}{more}"


def _reject_constant(name: str) -> Any:
    # json accepts NaN/Infinity by default; they are not JSON and no consumer can carry them.
    raise ValueError(f"{name} is not a JSON value")


class ObjectSplitter:
    """Bytes in, complete top-level JSON objects (dicts) out; see the module docstring.

    ``feed(data)`` buffers ``data`` at once and returns an iterator over the objects it completes,
    in stream order; a :class:`ProtocolError` is raised by the iterator at the point in the stream
    where the problem is, after every object before it was yielded. Bytes fed but not iterated
    over are scanned by the next ``feed``'s iterator (nothing is lost, but consume the iterator
    to keep the buffer bounded).
    """

    def __init__(
        self,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        if max_object_bytes < 2:
            raise ValueError("max_object_bytes must be at least 2 (the size of {})")
        if max_depth < 1:
            raise ValueError("max_depth must be at least 1")
        self.max_object_bytes = max_object_bytes
        self.max_depth = max_depth
        self._buf = bytearray()
        self._pos = 0  # next byte to scan
        self._start = -1  # start of the object being scanned, -1 between objects
        self._depth = 0
        self._in_string = False
        self._error: ProtocolError | None = None
        self.objects = 0  # complete objects decoded so far (for diagnostics and tests)

    # -- state seen by callers ----------------------------------------------------------------
    @property
    def buffered(self) -> int:
        """Bytes held: the unfinished object plus anything not scanned yet."""
        return len(self._buf)

    @property
    def in_object(self) -> bool:
        """True between an object's ``{`` and its closing ``}`` (mid-notification)."""
        return self._start >= 0

    @property
    def error(self) -> ProtocolError | None:
        """The error that broke this splitter, if any."""
        return self._error

    # -- feeding ------------------------------------------------------------------------------
    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[dict[str, Any]]:
        """Add ``data``; iterate over the result for the objects it completes."""
        if self._error is None and data:
            self._buf += data
        return self._drain()

    def _fail(self, error: ProtocolError) -> ProtocolError:
        self._error = error
        self._buf = bytearray()  # release the memory: the stream is dead anyway
        return error

    def _drain(self) -> Iterator[dict[str, Any]]:
        if self._error is not None:
            raise self._error
        try:
            while True:
                obj = self._next_object()
                if obj is None:
                    return
                yield obj
        finally:
            self._compact()

    def _compact(self) -> None:
        """Drop bytes already consumed (once per feed: linear overall)."""
        if self._error is not None:
            return
        cut = self._start if self._start >= 0 else self._pos
        if cut > 0:
            del self._buf[:cut]
            self._pos -= cut
            if self._start >= 0:
                self._start = 0

    def _next_object(self) -> dict[str, Any] | None:
        buf = self._buf
        if self._start < 0:
            pos = _WHITESPACE.match(buf, self._pos).end()  # type: ignore[union-attr]
            self._pos = pos
            if pos >= len(buf):
                return None
            if buf[pos] != ord("{"):
                raise self._fail(
                    GarbageError(
                        f"backchannel: expected a JSON object, got {_excerpt(buf, pos)} "
                        "(not a notification; the stream is out of step)"
                    )
                )
            self._start = pos
            self._pos = pos + 1
            self._depth = 1
            self._in_string = False
        end = self._scan()
        if end is None:
            return None
        start = self._start
        self._start = -1
        self._pos = end
        return self._decode(bytes(buf[start:end]))

    def _scan(self) -> int | None:
        """Advance through the current object; return the end offset once it closes."""
        buf = self._buf
        start = self._start
        # Never look past the bound: an endless object costs at most max_object_bytes of work.
        limit = min(len(buf), start + self.max_object_bytes)
        pos = self._pos
        depth = self._depth
        in_string = self._in_string
        try:
            while pos < limit:
                if in_string:
                    m = _IN_STRING.search(buf, pos, limit)
                    if m is None:
                        pos = limit
                        break
                    i = m.start()
                    if buf[i] == _BACKSLASH:
                        if i + 1 >= limit:
                            pos = i  # rescan the backslash once its escaped byte is here
                            break
                        pos = i + 2
                    else:
                        in_string = False
                        pos = i + 1
                    continue
                m = _STRUCTURE.search(buf, pos, limit)
                if m is None:
                    pos = limit
                    break
                i = m.start()
                pos = i + 1
                c = buf[i]
                if c == _QUOTE:
                    in_string = True
                elif c in _OPEN:
                    depth += 1
                    if depth > self.max_depth:
                        raise self._fail(
                            InvalidObjectError(
                                f"backchannel: object nested deeper than {self.max_depth} "
                                f"levels: {_excerpt(buf, start)}"
                            )
                        )
                else:
                    depth -= 1
                    if depth == 0:
                        return pos
        finally:
            self._pos = pos
            self._depth = depth
            self._in_string = in_string
        if len(buf) - start >= self.max_object_bytes:
            raise self._fail(
                ObjectTooLargeError(
                    f"backchannel: JSON object exceeds {self.max_object_bytes} bytes without "
                    f"its closing brace (starts {_excerpt(buf, start)})"
                )
            )
        return None

    def _decode(self, raw: bytes) -> dict[str, Any]:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._fail(
                InvalidObjectError(
                    f"backchannel: object is not UTF-8 ({exc.reason} at byte {exc.start}): "
                    f"{_excerpt(raw, max(0, exc.start - _EXCERPT // 2))}"
                )
            ) from None
        try:
            obj = json.loads(text, parse_constant=_reject_constant)
        except json.JSONDecodeError as exc:
            at = max(0, exc.pos - _EXCERPT // 2)
            raise self._fail(
                InvalidObjectError(
                    f"backchannel: invalid JSON ({exc.msg} at char {exc.pos}) near "
                    f"{text[at : at + _EXCERPT]!r}"
                )
            ) from None
        except (ValueError, RecursionError) as exc:  # NaN, 5000-digit integers, ...
            raise self._fail(
                InvalidObjectError(
                    f"backchannel: invalid JSON ({_short(str(exc), 80)}): {_excerpt(raw)}"
                )
            ) from None
        if not isinstance(obj, dict):  # cannot happen for a balanced {...}; kept as a guard
            raise self._fail(InvalidObjectError(f"backchannel: not an object: {_excerpt(raw)}"))
        self.objects += 1
        return obj


# --------------------------------------------------------------------------------------------
# Notifications in one object

SHUTDOWN_FLAGS: tuple[str, ...] = ("battery_critical", "user_initiated", "overtemperature_shutdown")
"""The flags of ``shutting_down``. The Android SDK reads them *beside* the ``shutting_down`` key
rather than inside its value (protocols.md §3.3), so the wire nesting is unknown; we look in both
places."""


def notifications(obj: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The ``(name, payload)`` notifications of one decoded object, in key order.

    Every top-level key is a notification (the iOS client's reading; the Android parser also
    meets two in one object). One exception: when the object holds ``shutting_down``, top-level
    boolean :data:`SHUTDOWN_FLAGS` beside it are folded into its payload (a flag is true when
    either place says so) instead of being notifications of their own.
    """
    if "shutting_down" not in obj:
        return list(obj.items())
    siblings = {
        k: v for k, v in obj.items() if k in SHUTDOWN_FLAGS and isinstance(v, bool)
    }
    out: list[tuple[str, Any]] = []
    for key, value in obj.items():
        if key in siblings:
            continue
        if key == "shutting_down" and siblings:
            if value is None:
                value = {}
            if isinstance(value, Mapping):
                merged = dict(value)
                for flag, flag_value in siblings.items():
                    inner = merged.get(flag)
                    merged[flag] = (flag_value or inner) if isinstance(inner, bool) else flag_value
                value = merged
            else:  # an odd payload: keep it, and keep the flags as their own keys
                out.extend(siblings.items())
        out.append((key, value))
    return out


# --------------------------------------------------------------------------------------------
# The status document

_PORT_KEY = "backchannelport"


def _is_port_key(key: object) -> bool:
    return isinstance(key, str) and key.replace("_", "").replace("-", "").lower() == _PORT_KEY


def _port_value(where: str, value: Any) -> int:
    if isinstance(value, bool):
        raise StatusError(f"status: {where} must be a port number, got {value!r}")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise StatusError(f"status: {where} must be a port number, got {_short(repr(value))}")
    if not 1 <= value <= 65535:
        raise StatusError(f"status: {where} must be a port number (1-65535), got {value}")
    return value


def _short(text: str, limit: int = _EXCERPT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_status(document: bytes | str | Mapping[str, Any]) -> int:
    """The ``backchannel_port`` of a status document (raw body or decoded object).

    protocols.md §3.1 documents one flat object with ``backchannel_port`` (an int). Tolerated as
    well, since firmware and the SDK models disagree on spellings elsewhere (``recoding_secs``):
    the key in any case with or without ``_``/``-`` (``backchannelPort``, ``BACKCHANNEL-PORT``),
    the document wrapped one level down (``{"status": {...}}``), and the port as a decimal string.
    A flat key wins over a wrapped one. Raises :class:`StatusError` with a clear message when the
    body is not a JSON object, the port is absent, ambiguous, or not a port number.
    """
    if isinstance(document, bytes | bytearray | str):
        try:
            document = json.loads(document, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise StatusError(f"status: not JSON ({exc})") from None
    if not isinstance(document, Mapping):
        raise StatusError(f"status: expected a JSON object, got {type(document).__name__}")
    flat = [(k, v) for k, v in document.items() if _is_port_key(k)]
    if not flat:
        flat = [
            (f"{outer}.{k}", v)
            for outer, inner in document.items()
            if isinstance(inner, Mapping)
            for k, v in inner.items()
            if _is_port_key(k)
        ]
    if not flat:
        keys = ", ".join(sorted(str(k) for k in document)[:12]) or "none"
        raise StatusError(f"status: no backchannel_port (keys: {keys})")
    ports = {_port_value(str(k), v) for k, v in flat}
    if len(ports) > 1:
        raise StatusError(
            "status: conflicting backchannel ports: "
            + ", ".join(f"{k}={v!r}" for k, v in flat)
        )
    return ports.pop()
