"""RTSP 1.0 (RFC 2326) messages and interleaved frames, sans-I/O.

``RtspParser.feed(bytes)`` returns the complete ``Request``/``Response``/``Frame`` items received
so far; ``encode_*`` make bytes. Trio tasks in ``rtsp/`` and ``tools/fakecam`` do the I/O.

Why our own parser and not aiortsp's (a departure from DESIGN §8, noted in the issue): aiortsp's
parser raises ``AssertionError``/``ValueError`` on a malformed request line with no status to
answer, accepts only a fixed method list, and re-copies its buffer for every interleaved frame.
Here a malformed request becomes a ``ProtocolError`` carrying the RTSP status to answer (400,
413, 505…), an unknown method parses (the server answers 501), and frames are cut from one
buffer by offset.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 1 << 20
MAX_REQUEST_LINE = 8192  # bytes of the start line, its line end excluded
MAX_HEADERS = 100  # header lines after the start line, continuation lines included
_MAX_LENGTH_DIGITS = 12  # longer Content-Length values are too large whatever they say
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

REASONS = {
    200: "OK", 301: "Moved Permanently", 302: "Moved Temporarily", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    406: "Not Acceptable", 408: "Request Timeout", 412: "Precondition Failed",
    413: "Request Entity Too Large", 414: "Request-URI Too Large",
    415: "Unsupported Media Type", 453: "Not Enough Bandwidth", 454: "Session Not Found",
    455: "Method Not Valid in This State", 459: "Aggregate Operation Not Allowed",
    461: "Unsupported Transport", 500: "Internal Server Error", 501: "Not Implemented",
    503: "Service Unavailable", 505: "RTSP Version Not Supported",
}


class ProtocolError(ValueError):
    """The peer broke the protocol. ``status`` is what a server answers before closing."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Headers:
    """Case-insensitive, order-keeping header list (names keep the peer's spelling)."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = list(items)

    def get(self, name: str, default: str | None = None) -> str | None:
        lname = name.lower()
        for k, v in self._items:
            if k.lower() == lname:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self._items if k.lower() == lname]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._items)

    def set(self, name: str, value: str) -> None:
        lname = name.lower()
        self._items = [(k, v) for k, v in self._items if k.lower() != lname]
        self._items.append((name, value))

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass
class Request:
    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "RTSP/1.0"

    @property
    def cseq(self) -> str | None:
        return self.headers.get("CSeq")


@dataclass
class Response:
    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "RTSP/1.0"

    @property
    def cseq(self) -> str | None:
        return self.headers.get("CSeq")


@dataclass(slots=True)
class Frame:
    """An interleaved binary frame: ``$``, channel, 16-bit length, payload (RFC 2326 §10.12)."""

    channel: int
    payload: bytes


Item = Request | Response | Frame


class RtspParser:
    """Incremental parser for one direction of an RTSP connection.

    Requests, responses and interleaved frames may come in any order and split anywhere.
    """

    def __init__(self, *, max_header: int = MAX_HEADER_BYTES, max_body: int = MAX_BODY_BYTES,
                 max_line: int = MAX_REQUEST_LINE, max_headers: int = MAX_HEADERS) -> None:
        self._buf = bytearray()
        self._max_header = max_header
        self._max_body = max_body
        self._max_line = max_line
        self._max_headers = max_headers
        self._pending: Request | Response | None = None
        self._body_len = 0

    def feed(self, data: bytes) -> list[Item]:
        """Add received bytes; return the items they complete, in order.

        Raises ``ProtocolError`` on a malformed or oversized message, as soon as the bytes show
        it: a peer cannot make us buffer more than the limits (start line, header block, body,
        one interleaved frame) before we answer and close. Items completed earlier in the same
        call are lost with the error; the connection is over anyway.
        """
        buf = self._buf
        buf += data
        out: list[Item] = []
        pos = 0
        n = len(buf)
        while pos < n:
            if self._pending is not None:
                if n - pos < self._body_len:
                    break
                msg = self._pending
                msg.body = bytes(buf[pos:pos + self._body_len])
                pos += self._body_len
                self._pending = None
                out.append(msg)
                continue
            first = buf[pos]
            if first == 0x24:  # '$'
                if n - pos < 4:
                    break
                size = (buf[pos + 2] << 8) | buf[pos + 3]
                if n - pos - 4 < size:
                    break
                out.append(Frame(buf[pos + 1], bytes(buf[pos + 4:pos + 4 + size])))
                pos += 4 + size
                continue
            if first in (0x0D, 0x0A):  # stray line ends between messages are allowed
                pos += 1
                continue
            self._check_start_line(buf, pos, n)
            end = buf.find(b"\r\n\r\n", pos)
            alt = buf.find(b"\n\n", pos)
            if end < 0 and alt < 0:
                # +3: the bytes so far may end with all but the last byte of "\r\n\r\n", and a
                # header that fits must not fail just because it arrived split there.
                if n - pos > self._max_header + 3:
                    raise ProtocolError("message header too large", 413)
                break
            if end < 0 or (0 <= alt < end):
                head_end, skip = alt, 2
            else:
                head_end, skip = end, 4
            if head_end - pos > self._max_header:
                raise ProtocolError("message header too large", 413)
            msg = self._parse_head(bytes(buf[pos:head_end]))
            pos = head_end + skip
            length_text = msg.headers.get("Content-Length")
            length = 0
            if length_text is not None:
                digits = length_text.strip()
                # isascii: str.isdigit() also accepts digits int() refuses, such as "²"
                if not (digits.isascii() and digits.isdigit()):
                    raise ProtocolError(f"bad Content-Length {length_text[:40]!r}")
                if len(digits.lstrip("0")) > _MAX_LENGTH_DIGITS:  # and int() refuses 4300+
                    raise ProtocolError("body too large", 413)
                length = int(digits)
                if length > self._max_body:
                    raise ProtocolError(f"body of {length} bytes is too large", 413)
            if length:
                self._pending = msg
                self._body_len = length
            else:
                out.append(msg)
        if pos:
            del buf[:pos]
        return out

    def _check_start_line(self, buf: bytearray, pos: int, n: int) -> None:
        """414 as soon as the start line is known to be too long, complete or not.

        Checked before waiting for the end of the header block, so that a start line with no
        line end costs us ``max_line`` bytes, not ``max_header``.
        """
        limit = self._max_line
        lf = buf.find(b"\n", pos, min(n, pos + limit + 2))
        if lf < 0:
            length = min(n, pos + limit + 2) - pos
            if length and buf[pos + length - 1] == 0x0D:
                length -= 1  # may be the CR of a CRLF still on its way
        else:
            length = lf - pos
            if length and buf[lf - 1] == 0x0D:
                length -= 1
        if length > limit:
            raise ProtocolError(f"start line longer than {limit} bytes", 414)

    def _parse_head(self, head: bytes) -> Request | Response:
        lines = head.replace(b"\r\n", b"\n").split(b"\n")
        if len(lines) - 1 > self._max_headers:
            raise ProtocolError(f"too many headers (over {self._max_headers})")
        start = lines[0]
        try:
            text = start.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("start line is not UTF-8") from None
        parts = text.split(" ", 2)
        if len(parts) != 3:
            raise ProtocolError(f"malformed start line {text[:80]!r}")
        headers = Headers()
        for raw in lines[1:]:
            if not raw:
                continue
            if raw[:1] in (b" ", b"\t") and headers._items:
                name, value = headers._items.pop()
                headers._items.append((name, value + " " + raw.strip().decode("utf-8",
                                                                               "replace")))
                continue
            name, sep, value = raw.partition(b":")
            if not sep or not _TOKEN.match(name.strip()):
                raise ProtocolError(f"malformed header line {raw[:80]!r}")
            headers._items.append((name.strip().decode("ascii"),
                                   value.strip().decode("utf-8", "replace")))
        if parts[0].startswith("RTSP/"):
            version, status, reason = parts
            if not (status.isascii() and status.isdigit()) or len(status) != 3:
                raise ProtocolError(f"malformed status line {text[:80]!r}")
            return Response(int(status), reason, headers, version=version)
        method, uri, version = parts
        if not _TOKEN.match(method.encode()):
            raise ProtocolError(f"malformed method {method[:40]!r}")
        if version != "RTSP/1.0":
            raise ProtocolError(f"unsupported version {version[:20]!r}", 505)
        return Request(method, uri, headers, version=version)


def _head(start: str, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    lines = [start]
    lines.extend(f"{k}: {v}" for k, v in headers)
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def encode_response(status: int, cseq: str | None, headers: Iterable[tuple[str, str]] = (),
                    body: bytes = b"", reason: str | None = None) -> bytes:
    items = [("CSeq", cseq)] if cseq is not None else []
    items.extend(headers)
    return _head(f"RTSP/1.0 {status} {reason or REASONS.get(status, 'Unknown')}", items, body)


def encode_request(method: str, uri: str, cseq: int, headers: Iterable[tuple[str, str]] = (),
                   body: bytes = b"") -> bytes:
    return _head(f"{method} {uri} RTSP/1.0", [("CSeq", str(cseq)), *headers], body)


def frame_header(channel: int, length: int) -> bytes:
    """The 4 bytes before an interleaved payload (RFC 2326 §10.12): ``$``, channel, length."""
    if length > 0xFFFF:
        raise ValueError("interleaved payload over 65535 bytes")
    return bytes((0x24, channel, length >> 8, length & 0xFF))


def encode_frame(channel: int, payload: bytes) -> bytes:
    return frame_header(channel, len(payload)) + payload


@dataclass(frozen=True)
class Transport:
    """One alternative of a Transport header (RFC 2326 §12.39), the parts we use."""

    protocol: str  # "RTP/AVP" (UDP) or "RTP/AVP/TCP"
    unicast: bool = True
    interleaved: tuple[int, int] | None = None
    client_port: tuple[int, int] | None = None
    server_port: tuple[int, int] | None = None
    mode: str = "play"
    ssrc: str | None = None

    @property
    def tcp(self) -> bool:
        return self.protocol.upper().endswith("/TCP")

    def encode(self) -> str:
        parts = [self.protocol, "unicast" if self.unicast else "multicast"]
        if self.interleaved is not None:
            parts.append(f"interleaved={self.interleaved[0]}-{self.interleaved[1]}")
        if self.client_port is not None:
            parts.append(f"client_port={self.client_port[0]}-{self.client_port[1]}")
        if self.server_port is not None:
            parts.append(f"server_port={self.server_port[0]}-{self.server_port[1]}")
        if self.mode != "play":
            parts.append(f"mode={self.mode}")
        if self.ssrc:
            parts.append(f"ssrc={self.ssrc}")
        return ";".join(parts)


def _pair(value: str) -> tuple[int, int]:
    a, _, b = value.partition("-")
    lo = int(a)
    hi = int(b) if b else lo + 1
    if not (0 <= lo <= 65535 and 0 <= hi <= 65535):
        raise ValueError(value)
    return lo, hi


def parse_transport(value: str) -> list[Transport]:
    """All alternatives of a Transport header; ProtocolError (461) if none is usable."""
    out = []
    for alt in value.split(","):
        params = [p.strip() for p in alt.split(";") if p.strip()]
        if not params:
            continue
        proto = params[0]
        if not proto.upper().startswith("RTP/AVP"):
            continue
        kw: dict[str, object] = {"protocol": proto}
        try:
            for p in params[1:]:
                key, _, val = p.partition("=")
                key = key.strip().lower()
                if key == "unicast":
                    kw["unicast"] = True
                elif key == "multicast":
                    kw["unicast"] = False
                elif key == "interleaved":
                    kw["interleaved"] = _pair(val)
                elif key == "client_port":
                    kw["client_port"] = _pair(val)
                elif key == "server_port":
                    kw["server_port"] = _pair(val)
                elif key == "mode":
                    kw["mode"] = val.strip('"').lower()
                elif key == "ssrc":
                    kw["ssrc"] = val
        except ValueError:
            raise ProtocolError(f"malformed Transport {alt.strip()[:80]!r}", 461) from None
        out.append(Transport(**kw))  # type: ignore[arg-type]
    if not out:
        raise ProtocolError(f"no usable transport in {value[:80]!r}", 461)
    return out
