"""The viewer side of the hub's RTSP server: ``rtsp://<hub>:5554/<streamId>`` (RFC 2326).

One task per connection reads requests; once a session plays, a writer task drains its
``ViewerQueue`` to the client, as interleaved frames on the same TCP connection or as UDP
datagrams to the client's ports. Sessions time out without activity; a connection that sends
no request at all is closed after ``first_request_timeout``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import trio

from hubruntime.proto import rtsp
from hubruntime.proto.digest import DigestAuth
from hubruntime.proto.rtp import RtpPacket
from hubruntime.rtsp.fanout import Fanout, Item, ViewerQueue, frame
from hubruntime.streams.hub import Publication

log = logging.getLogger("hubruntime.rtsp")

SERVER = "hubruntime"
PUBLIC = "OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, GET_PARAMETER, SET_PARAMETER"
SESSION_TIMEOUT = 60


@dataclass
class TrackSetup:
    media: int
    tcp: bool
    channels: tuple[int, int] | None = None  # interleaved
    client: tuple[str, int, int] | None = None  # UDP: host, rtp port, rtcp port
    rtp_sock: Any = None
    rtcp_sock: Any = None
    server_ports: tuple[int, int] | None = None
    rtp_raw: socket.socket | None = None  # the same sockets, for non-blocking direct sends
    rtcp_raw: socket.socket | None = None


@dataclass
class Session:
    id: str
    stream_id: str
    fanout: Fanout
    tracks: dict[int, TrackSetup] = field(default_factory=dict)
    queue: ViewerQueue | None = None
    playing: bool = False
    last_activity: float = 0.0
    writer: trio.CancelScope | None = None

    def close_udp(self) -> None:
        for t in self.tracks.values():
            for s in (t.rtp_sock, t.rtcp_sock):
                if s is not None:
                    s.close()


class ViewerServer:
    """Serves live streams to viewers. ``lookup(stream_id)`` gives the stream's Fanout when it
    is live (created by ``create_live_rtsp_stream``), else None."""

    def __init__(self, lookup: Callable[[str], Fanout | None], *,
                 auth: DigestAuth | None = None, first_request_timeout: float = 10.0,
                 session_timeout: float = SESSION_TIMEOUT, queue_packets: int = 4096) -> None:
        self.lookup = lookup
        self.auth = auth
        self.first_request_timeout = first_request_timeout
        # (host, port) of a connection that must play over TCP only: one bridged from the SSH
        # tunnel comes from the hub itself, and RTP over UDP would go to the hub's own loopback
        # instead of the remote viewer (who then stalls until its client falls back to TCP).
        self.tcp_only: Callable[[str, int], bool] = lambda host, port: False
        self.session_timeout = session_timeout
        self.queue_packets = queue_packets
        self.sessions: dict[str, Session] = {}
        self.connections = 0
        self.port: int | None = None
        self._kick: dict[str, list[trio.CancelScope]] = {}

    async def serve(self, host: str, port: int, *,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host or None)
        self.port = listeners[0].socket.getsockname()[1]
        log.info("RTSP server for viewers on %s:%d", host or "*", self.port)
        task_status.started(self.port)
        await trio.serve_listeners(self._connection, listeners)

    def kick_stream(self, stream_id: str) -> int:
        """End every connection watching ``stream_id`` (its live stream was deleted)."""
        scopes = self._kick.pop(stream_id, [])
        for scope in scopes:
            scope.cancel()
        return len(scopes)

    # one connection ----------------------------------------------------------------------
    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = _Conn(self, stream)
        try:
            await conn.run()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the viewer went away: its sessions end below
        except* Exception as group:  # one viewer must never take the server down
            log.error("viewer %s: connection failed", conn.peer, exc_info=group)
        finally:
            self.connections -= 1
            for sess in conn.sessions.values():
                self._end_session(sess)
            self._forget(conn.cancel)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def _forget(self, scope: trio.CancelScope) -> None:
        """A connection ended: ``kick_stream`` has nothing more to cancel for it (without this,
        every viewer connection a live stream ever had stayed listed until its deletion)."""
        for sid, scopes in list(self._kick.items()):
            if scope in scopes:
                scopes.remove(scope)
            if not scopes:
                del self._kick[sid]

    def _end_session(self, sess: Session) -> None:
        if sess.queue is not None:
            sess.fanout.detach(sess.queue)
            sess.queue.close()
        if sess.writer is not None:
            sess.writer.cancel()
        sess.close_udp()
        self.sessions.pop(sess.id, None)


def _split_url(uri: str) -> tuple[str, str, str]:
    """(base URL "rtsp://host:port", stream id, rest of the path)."""
    parts = urlsplit(uri)
    base = f"{parts.scheme or 'rtsp'}://{parts.netloc}" if parts.netloc else ""
    path = parts.path.lstrip("/")
    sid, _, rest = path.partition("/")
    return base, sid, rest


class _Conn:
    def __init__(self, server: ViewerServer, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.sessions: dict[str, Session] = {}
        self.lock = trio.Lock()
        self.peer = "?"
        self.peer_port = 0
        self.cancel = trio.CancelScope()
        self.last_rx = trio.current_time()
        self.nursery: trio.Nursery | None = None
        self.watching: str | None = None
        try:
            peer = stream.socket.getpeername()
            self.peer, self.peer_port = peer[0], peer[1]
        except OSError:
            pass

    async def send(self, data: bytes) -> None:
        async with self.lock:
            await self.stream.send_all(data)

    async def reply(self, req: rtsp.Request, status: int,
                    headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> None:
        hs = [("Server", SERVER)]
        hs.extend(headers or [])
        await self.send(rtsp.encode_response(status, req.cseq, hs, body))

    async def run(self) -> None:
        parser = rtsp.RtspParser()
        got_request = False
        with self.cancel:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._timeouts, lambda: got_request)
                try:
                    while True:
                        data = await self.stream.receive_some(65536)
                        if not data:
                            break
                        now = trio.current_time()
                        self.last_rx = now
                        for sess in self.sessions.values():
                            sess.last_activity = now
                        try:
                            items = parser.feed(data)
                        except rtsp.ProtocolError as exc:
                            log.info("viewer %s: %s", self.peer, exc)
                            await self.send(rtsp.encode_response(
                                exc.status, None, [("Server", SERVER), ("Connection", "close")]))
                            break
                        for item in items:
                            if isinstance(item, rtsp.Request):
                                got_request = True
                                if not await self._request(item):
                                    return
                finally:
                    nursery.cancel_scope.cancel()

    async def _timeouts(self, got_request: Callable[[], bool]) -> None:
        await trio.sleep(self.server.first_request_timeout)
        if not got_request():
            log.info("viewer %s sent no request in %.0f s: closing", self.peer,
                     self.server.first_request_timeout)
            self.cancel.cancel()
            return
        while True:
            await trio.sleep(min(5.0, self.server.session_timeout / 4))
            now = trio.current_time()
            for sess in list(self.sessions.values()):
                if now - sess.last_activity > self.server.session_timeout:
                    log.info("viewer %s: session %s timed out", self.peer, sess.id)
                    self.sessions.pop(sess.id, None)
                    self.server._end_session(sess)
            if not self.sessions and now - self.last_rx > self.server.session_timeout:
                # a connection that talked once but holds no session (OPTIONS, DESCRIBE, then
                # silence) would otherwise keep its socket and task for ever
                log.info("viewer %s idle without a session for %.0f s: closing", self.peer,
                         self.server.session_timeout)
                self.cancel.cancel()
                return

    # requests ----------------------------------------------------------------------------
    async def _request(self, req: rtsp.Request) -> bool:
        method = req.method
        if method == "OPTIONS":
            await self.reply(req, 200, [("Public", PUBLIC)])
            return True
        if method in ("ANNOUNCE", "RECORD"):
            await self.reply(req, 405, [("Allow", PUBLIC)])
            return True
        if method not in ("DESCRIBE", "SETUP", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER",
                          "SET_PARAMETER"):
            await self.reply(req, 501, [("Public", PUBLIC)])
            return True
        if not await self._authorized(req):
            return True
        sess = self._session_of(req)
        if method in ("GET_PARAMETER", "SET_PARAMETER"):
            if req.headers.get("Session") and sess is None:
                await self.reply(req, 454)
                return True
            await self.reply(req, 200, self._session_header(sess))
            return True
        if method == "DESCRIBE":
            return await self._describe(req)
        if method == "SETUP":
            return await self._setup(req, sess)
        if sess is None:
            await self.reply(req, 454)
            return True
        if method == "PLAY":
            return await self._play(req, sess)
        if method == "PAUSE":
            self._stop_playing(sess)
            await self.reply(req, 200, self._session_header(sess))
            return True
        # TEARDOWN
        await self.reply(req, 200, [("Connection", "close")] if len(self.sessions) <= 1 else [])
        self.sessions.pop(sess.id, None)
        self.server._end_session(sess)
        return bool(self.sessions)

    async def _authorized(self, req: rtsp.Request) -> bool:
        auth = self.server.auth
        if auth is None:
            return True
        now = trio.current_time()
        if auth.check(req.method, req.uri, req.headers.get("Authorization"), now):
            return True
        await self.reply(req, 401, [("WWW-Authenticate", v) for v in auth.challenge(now)])
        return False

    def _session_of(self, req: rtsp.Request) -> Session | None:
        value = req.headers.get("Session")
        if not value:
            return None
        return self.sessions.get(value.split(";")[0].strip())

    def _session_header(self, sess: Session | None) -> list[tuple[str, str]]:
        if sess is None:
            return []
        return [("Session", f"{sess.id};timeout={int(self.server.session_timeout)}")]

    def _live(self, stream_id: str) -> Fanout | None:
        return self.server.lookup(stream_id) if stream_id else None

    async def _published(self, req: rtsp.Request, sid: str) -> tuple[Fanout, Publication] | None:
        """The live stream ``sid`` and what its reader publishes now; else answer 404 (not live)
        or 503 (live, but its reader is between two connections) and None."""
        fanout = self._live(sid)
        if fanout is None:
            await self.reply(req, 404)
            return None
        pub = fanout.hub.publication
        if pub is None:
            await self.reply(req, 503, [("Retry-After", "2")])
            return None
        return fanout, pub

    async def _describe(self, req: rtsp.Request) -> bool:
        base, sid, _ = _split_url(req.uri)
        found = await self._published(req, sid)
        if found is None:
            return True
        pub = found[1]
        controls = [f"trackID={m.index}" for m in pub.sdp.media]
        body = pub.sdp.with_controls(controls, any_address=True).encode()
        await self.reply(req, 200, [("Content-Type", "application/sdp"),
                                    ("Content-Base", f"{base}/{sid}/")], body)
        return True

    async def _setup(self, req: rtsp.Request, sess: Session | None) -> bool:
        _, sid, rest = _split_url(req.uri)
        found = await self._published(req, sid)
        if found is None:
            return True
        fanout, pub = found
        media = None
        if rest.startswith("trackID="):
            try:
                index = int(rest[8:].rstrip("/"))
            except ValueError:
                index = -1
            if 0 <= index < len(pub.sdp.media):
                media = index
        elif not rest and len(pub.sdp.media) == 1:
            media = 0
        if media is None:
            await self.reply(req, 404)
            return True
        if sess is not None and sess.stream_id != sid:
            await self.reply(req, 459)
            return True
        if req.headers.get("Session") and sess is None:
            await self.reply(req, 454)
            return True
        try:
            offers = rtsp.parse_transport(req.headers.get("Transport") or "")
        except rtsp.ProtocolError as exc:
            await self.reply(req, exc.status)
            return True
        if sess is None:
            sess = Session(secrets.token_hex(8), sid, fanout,
                           last_activity=trio.current_time())
        track: TrackSetup | None = None
        answer: rtsp.Transport | None = None
        for offer in offers:
            if not offer.unicast or offer.mode not in ("play", ""):
                continue
            if offer.tcp:
                ch = offer.interleaved or (2 * media, 2 * media + 1)
                track = TrackSetup(media, True, channels=ch)
                answer = rtsp.Transport("RTP/AVP/TCP", interleaved=ch)
                break
            if offer.client_port is not None and not self.server.tcp_only(self.peer,
                                                                          self.peer_port):
                track = await self._udp_track(media, offer.client_port)
                if track is not None:
                    answer = rtsp.Transport("RTP/AVP", client_port=offer.client_port,
                                            server_port=track.server_ports)
                    break
        if track is None or answer is None:
            await self.reply(req, 461)
            return True
        old = sess.tracks.get(media)
        if old is not None:
            for s in (old.rtp_sock, old.rtcp_sock):
                if s is not None:
                    s.close()
        sess.tracks[media] = track
        self.sessions[sess.id] = sess
        self.server.sessions[sess.id] = sess
        if self.watching != sid:
            self.watching = sid
            self.server._kick.setdefault(sid, []).append(self.cancel)
        if not track.tcp and self.nursery is not None:
            self.nursery.start_soon(self._udp_rtcp, sess, track)
        await self.reply(req, 200, [("Transport", answer.encode()),
                                    *self._session_header(sess)])
        return True

    async def _udp_track(self, media: int, client_port: tuple[int, int]) -> TrackSetup | None:
        local = self.stream.socket.getsockname()[0]
        family = socket.AF_INET6 if ":" in local else socket.AF_INET
        for _ in range(20):
            # stdlib sockets wrapped for trio: the direct path sends on them without a task
            rtp_raw = socket.socket(family, socket.SOCK_DGRAM)
            rtp_raw.setblocking(False)
            rtp = trio.socket.from_stdlib_socket(rtp_raw)
            await rtp.bind((local, 0))
            port = rtp.getsockname()[1]
            if port % 2 == 0 and port < 65535:
                rtcp_raw = socket.socket(family, socket.SOCK_DGRAM)
                rtcp_raw.setblocking(False)
                rtcp = trio.socket.from_stdlib_socket(rtcp_raw)
                try:
                    await rtcp.bind((local, port + 1))
                except OSError:
                    rtp.close()
                    rtcp.close()
                    continue
                return TrackSetup(media, False, client=(self.peer, *client_port), rtp_sock=rtp,
                                  rtcp_sock=rtcp, server_ports=(port, port + 1),
                                  rtp_raw=rtp_raw, rtcp_raw=rtcp_raw)
            rtp.close()
        return None

    async def _udp_rtcp(self, sess: Session, track: TrackSetup) -> None:
        """Receiver reports from a UDP viewer keep its session alive."""
        sock = track.rtcp_sock
        try:
            while True:
                await sock.recv(2048)
                sess.last_activity = trio.current_time()
        except (OSError, trio.ClosedResourceError):
            return

    async def _play(self, req: rtsp.Request, sess: Session) -> bool:
        fanout = sess.fanout
        if self._live(sess.stream_id) is not fanout or not sess.tracks:
            await self.reply(req, 455 if not sess.tracks else 404)
            return True
        if not sess.playing:
            queue = ViewerQueue(set(sess.tracks), max_packets=self.server.queue_packets)
            queue.write_wire = self._wire_writer()
            queue.framer = self._framer(sess)
            if all(t.tcp and t.channels for t in sess.tracks.values()):
                queue.wire_layout = tuple(sorted(
                    (m, *t.channels) for m, t in sess.tracks.items() if t.channels))
            fanout.attach(queue)
            sess.queue = queue
            sess.playing = True
        queue = sess.queue
        assert queue is not None
        info = []
        base, sid, _ = _split_url(req.uri)
        firsts = queue.first_packets()
        for media in sorted(sess.tracks):
            pkt = firsts.get(media)
            entry = f"url={base}/{sess.stream_id}/trackID={media}"
            if pkt is not None:
                entry += f";seq={pkt.seq};rtptime={pkt.timestamp}"
            info.append(entry)
        await self.reply(req, 200, [*self._session_header(sess), ("Range", "npt=0.000-"),
                                    ("RTP-Info", ",".join(info))])
        if sess.writer is None and self.nursery is not None:
            scope = trio.CancelScope()
            sess.writer = scope
            self.nursery.start_soon(self._writer, sess, queue, scope)
        return True

    def _stop_playing(self, sess: Session) -> None:
        if sess.queue is not None:
            sess.fanout.detach(sess.queue)
            sess.queue.close()
            sess.queue = None
        if sess.writer is not None:
            sess.writer.cancel()
            sess.writer = None
        sess.playing = False

    def _wire_writer(self) -> Callable[[bytes], int]:
        """Non-blocking write of ready-framed bytes to this connection, from the publisher's
        task: the bytes written, or -1 when the connection is busy (lock held) or broken (the
        writer task then sends, or meets the error and ends the connection)."""
        fd = self.stream.socket.fileno()
        lock = self.lock

        def write(wire: bytes) -> int:
            if lock.locked():
                return -1
            try:
                return os.write(fd, wire)
            except BlockingIOError:
                return 0
            except OSError:
                return -1

        return write

    def _framer(self, sess: Session) -> Callable[[Iterable[Item]], tuple[bytes, int]]:
        """Turns ``sess``'s queued items into the bytes of its TCP connection (interleaved
        frames, and the unsent tail of an earlier write as is), for a direct write from the
        publisher's task or for the writer task; its UDP tracks' packets are sent on the way,
        without blocking (a full socket buffer loses the datagram, as the network would)."""
        tcp = {m: t.channels for m, t in sess.tracks.items() if t.tcp and t.channels}
        udp = {m: t for m, t in sess.tracks.items() if not t.tcp}

        def send_udp(pkt: RtpPacket) -> None:
            t = udp.get(pkt.track)
            if t is None or t.client is None:
                return
            host, rtp_port, rtcp_port = t.client
            sock = t.rtcp_raw if pkt.rtcp else t.rtp_raw
            if sock is not None:
                try:
                    sock.sendto(pkt.data, (host, rtcp_port if pkt.rtcp else rtp_port))
                except OSError:
                    pass

        def framer(items: Iterable[Item]) -> tuple[bytes, int]:
            return frame(items, tcp, send_udp if udp else None)

        return framer

    async def _writer(self, sess: Session, queue: ViewerQueue, scope: trio.CancelScope) -> None:
        framer = self._framer(sess)
        with scope:
            try:
                while True:
                    items = await queue.take(256)
                    if not items:
                        return
                    wire, n = framer(items)
                    queue.sent += n
                    if wire:
                        with trio.move_on_after(10) as stuck:
                            await self.send(wire)
                        if stuck.cancelled_caught:
                            log.info("viewer %s: stuck for 10 s, dropped", self.peer)
                            self.cancel.cancel()
                            return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.cancel.cancel()
