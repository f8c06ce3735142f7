"""The hub's internal publish endpoint (trio), RFC 2326 over TCP: where packets come in.

Each camera's FFmpeg reader publishes (ANNOUNCE, SETUP mode=record over TCP interleaved,
RECORD) to ``rtsp://127.0.0.1:<internal port>/publish/<streamId>/<secret>``. Only loopback peers
are accepted, and the secret is minted per reader start (``streams/publish.py``), so a stale
reader (or anything else on the machine) cannot publish into a stream. This session is the one
caller of the stream's ``StreamHub.publish_started``/``receive``/``publish_stopped``: every
interleaved frame goes there with its arrival time and is parsed there, once. The viewer side
(PLAY) is ``viewer.py``, on its own port.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from hubruntime.proto import rtsp
from hubruntime.proto.sdp import SdpError, SessionDescription, media_for_control, parse_sdp
from hubruntime.streams.publish import PublishRegistry, PublishSlot

log = logging.getLogger("hubruntime.rtsp")

SERVER_NAME = "hubruntime"
PUBLISH_PREFIX = "/publish/"


def _path_of(uri: str) -> str:
    """The path of an absolute RTSP URL (or the URI itself if it is already a path)."""
    if "://" in uri:
        rest = uri.split("://", 1)[1]
        slash = rest.find("/")
        path = rest[slash:] if slash >= 0 else "/"
    else:
        path = uri
    return path.split("?", 1)[0]


@dataclass
class PublishConnection:
    """One publisher connection's state (ANNOUNCE → SETUP… → RECORD)."""

    stream: trio.SocketStream
    peer: str
    slot: PublishSlot | None = None
    sdp: SessionDescription | None = None
    sdp_text: str = ""
    session_id: str = ""
    channels: dict[int, tuple[int, bool]] = field(default_factory=dict)  # channel → media, rtcp
    recording: bool = False
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)

    def kick(self) -> None:
        self.cancel.cancel()


class RtspServer:
    """Serves the internal publish endpoint; ``serve_publish`` listens on loopback."""

    def __init__(self, registry: PublishRegistry, *, clock: Callable[[], float] | None = None
                 ) -> None:
        self.registry = registry
        self.clock = clock or trio.current_time
        self.publish_port: int | None = None
        self.rejected = 0
        self.batch_secs = 0.04

    async def serve_publish(self, port: int = 0, *, task_status: Any = trio.TASK_STATUS_IGNORED
                            ) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        self.publish_port = listeners[0].socket.getsockname()[1]
        log.info("internal publish endpoint on 127.0.0.1:%d", self.publish_port)
        task_status.started(self.publish_port)
        await trio.serve_listeners(self._handle_publisher, listeners)

    def publish_url(self, stream_id: str, secret: str) -> str:
        return f"rtsp://127.0.0.1:{self.publish_port}{PUBLISH_PREFIX}{stream_id}/{secret}"

    async def _handle_publisher(self, stream: trio.SocketStream) -> None:
        try:
            host = stream.socket.getpeername()[0]
        except OSError:
            return
        conn = PublishConnection(stream, host)
        if not ipaddress.ip_address(host).is_loopback:
            self.rejected += 1
            await stream.aclose()
            return
        parser = rtsp.RtspParser()
        try:
            with conn.cancel:
                while True:
                    slot = conn.slot
                    if (conn.recording and slot is not None and not slot.hub.viewers
                            and self.batch_secs > 0):
                        # Nobody watches live: read on a shared time grid, several packets per
                        # wake-up, instead of one wake-up per packet (measured: 1.1 → 0.4-0.7 % of a
                        # core per 2 Mbit/s stream). Arrival times move by at most batch_secs,
                        # far below the 1 s gap threshold. With viewers, latency wins.
                        q = self.batch_secs
                        await trio.sleep_until(math.ceil(trio.current_time() / q) * q)
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    now = self.clock()
                    try:
                        items = parser.feed(data)
                    except rtsp.ProtocolError as exc:
                        log.warning("publisher %s: %s", conn.peer, exc)
                        await self._send(conn, rtsp.encode_response(exc.status, None))
                        break
                    for item in items:
                        if isinstance(item, rtsp.Frame):
                            route = conn.channels.get(item.channel)
                            if conn.recording and route is not None and conn.slot is not None:
                                conn.slot.hub.receive(route[0], route[1], item.payload, now)
                        elif isinstance(item, rtsp.Request):
                            keep = await self._on_request(conn, item)
                            if not keep:
                                return
                    if conn.slot is not None:
                        conn.slot.hub.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if conn.slot is not None and conn.slot.connection is conn:
                conn.slot.connection = None
                conn.slot.hub.publish_stopped("kicked" if conn.cancel.cancel_called
                                              else "closed")
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _send(self, conn: PublishConnection, data: bytes) -> None:
        await conn.stream.send_all(data)

    async def _reply(self, conn: PublishConnection, req: rtsp.Request, status: int,
                     headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> None:
        hs = [("Server", SERVER_NAME)]
        if conn.session_id and status < 300:
            hs.append(("Session", f"{conn.session_id};timeout=60"))
        hs.extend(headers or [])
        await self._send(conn, rtsp.encode_response(status, req.cseq, hs, body))

    async def _on_request(self, conn: PublishConnection, req: rtsp.Request) -> bool:
        """Answer one request; False ends the connection."""
        method = req.method
        if method == "OPTIONS":
            await self._reply(conn, req, 200, [("Public", "OPTIONS, ANNOUNCE, SETUP, RECORD, "
                                                          "TEARDOWN, GET_PARAMETER")])
            return True
        if method in ("GET_PARAMETER", "SET_PARAMETER"):
            await self._reply(conn, req, 200)
            return True
        if method == "ANNOUNCE":
            return await self._announce(conn, req)
        if method == "SETUP":
            return await self._setup(conn, req)
        if method == "RECORD":
            if conn.slot is None or conn.sdp is None or not conn.channels:
                await self._reply(conn, req, 455)
                return True
            if req.headers.get("Session", "").split(";")[0] != conn.session_id:
                await self._reply(conn, req, 454)
                return True
            if conn.slot.connection is not None and conn.slot.connection is not conn:
                conn.slot.connection.kick()  # a newer reader replaces the old one
            conn.slot.connection = conn
            conn.recording = True
            conn.slot.hub.publish_started(conn.sdp_text, conn.sdp, self.clock())
            await self._reply(conn, req, 200)
            return True
        if method == "TEARDOWN":
            await self._reply(conn, req, 200)
            return False
        if method in ("DESCRIBE", "PLAY", "PAUSE"):
            await self._reply(conn, req, 405, [("Allow", "OPTIONS, ANNOUNCE, SETUP, RECORD, "
                                                         "TEARDOWN")])
            return True
        await self._reply(conn, req, 501)
        return True

    def _resolve(self, uri: str) -> tuple[str, str, str] | None:
        """``/publish/<id>/<secret>[/<control>]`` → (id, secret, control)."""
        path = _path_of(uri)
        if not path.startswith(PUBLISH_PREFIX):
            return None
        parts = path[len(PUBLISH_PREFIX):].split("/", 2)
        if len(parts) < 2:
            return None
        return parts[0], parts[1], parts[2] if len(parts) > 2 else ""

    async def _announce(self, conn: PublishConnection, req: rtsp.Request) -> bool:
        target = self._resolve(req.uri)
        slot = self.registry.check(target[0], target[1]) if target else None
        if slot is None:
            self.rejected += 1
            log.warning("publisher %s: ANNOUNCE for an unknown stream or with a wrong secret",
                        conn.peer)
            await self._reply(conn, req, 403)
            return False
        ctype = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/sdp":
            await self._reply(conn, req, 415)
            return False
        try:
            text = req.body.decode("utf-8")
            sdp = parse_sdp(text)
        except (UnicodeDecodeError, SdpError) as exc:
            log.warning("stream %s: publisher sent a bad SDP: %s", slot.hub.stream_id, exc)
            await self._reply(conn, req, 400)
            return False
        conn.slot, conn.sdp, conn.sdp_text = slot, sdp, text
        await self._reply(conn, req, 200)
        return True

    async def _setup(self, conn: PublishConnection, req: rtsp.Request) -> bool:
        if conn.sdp is None or conn.slot is None:
            await self._reply(conn, req, 455)
            return True
        target = self._resolve(req.uri)
        media = media_for_control(conn.sdp, target[2]) if target and target[2] else None
        if media is None:
            await self._reply(conn, req, 404)
            return True
        try:
            transports = rtsp.parse_transport(req.headers.get("Transport") or "")
        except rtsp.ProtocolError as exc:
            await self._reply(conn, req, exc.status)
            return True
        chosen = next((t for t in transports if t.tcp and t.interleaved), None)
        if chosen is None:
            await self._reply(conn, req, 461)
            return True
        assert chosen.interleaved is not None
        rtp_ch, rtcp_ch = chosen.interleaved
        conn.channels[rtp_ch] = (media.index, False)
        conn.channels[rtcp_ch] = (media.index, True)
        if not conn.session_id:
            conn.session_id = secrets.token_hex(8)
        await self._reply(conn, req, 200, [("Transport", chosen.encode())])
        return True
