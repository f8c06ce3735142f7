"""One client of the fake camera: its RTSP conversation and its paced RTP sender.

Why each client has its own sender task: a slow or stuck viewer must never hold up the others,
so nothing is shared on the way out but the immutable :class:`~hubruntime.fakecam.pacing.Schedule`
and the camera's fault state, which the sender reads whenever it wakes. A client that cannot take
data for ``send_timeout`` seconds is dropped.

Only RTP/AVP/TCP interleaved is offered: a SETUP asking for UDP gets 461, after which FFmpeg
retries over TCP by itself (and asks for TCP at once with ``-rtsp_transport tcp``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import trio

from hubruntime.fakecam.pacing import NEVER, Interval, TrackOut, cut
from hubruntime.proto.rtsp import (
    ProtocolError,
    Request,
    RtspParser,
    Transport,
    encode_frame,
    encode_response,
    parse_transport,
)

if TYPE_CHECKING:
    from hubruntime.fakecam.server import FakeCamera

log = logging.getLogger("hubruntime.fakecam")

PUBLIC = "OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, GET_PARAMETER, SET_PARAMETER"
SESSION_TIMEOUT = 60  # advertised; over TCP the connection itself tells us the client is gone
REPORT_INTERVAL = 1.0  # seconds between RTCP sender reports per track


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    close: bool = False


class ClientSession:
    """One RTSP connection (and its single session, as is usual over TCP)."""

    def __init__(self, camera: FakeCamera, stream: trio.SocketStream, peer: str) -> None:
        self.camera = camera
        self.stream = stream
        self.peer = peer
        self.session_id: str | None = None
        self.tracks: dict[int, TrackOut] = {}
        self.playing = False
        self.pause = NEVER  # wall-time span in which this client gets nothing
        self._content_base = camera.url + "/"
        self._v0 = 0.0  # camera clock position at this client's first PLAY
        self._t0 = 0.0  # wall time of this client's first PLAY
        self._scope = trio.CancelScope()
        self._sender_scope: trio.CancelScope | None = None
        self._write_lock = trio.Lock()
        self._wake = trio.Event()

    # lifecycle ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve this connection until the client leaves, breaks it, or is dropped."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    await self._ending_on_error(self._serve_requests, nursery)
                    nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(self.stream)

    async def _ending_on_error(self, task: Callable[..., Awaitable[None]], *args: object) -> None:
        """Run a task of this session; a broken connection ends the session, quietly (a viewer
        going away is ordinary), and without an exception group reaching the camera."""
        try:
            await task(*args)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("client %s: connection ended: %s", self.peer, exc)
            self._scope.cancel()

    def close(self) -> None:
        """End this client now (the ``drop`` fault, or too slow): its connection is closed."""
        self._scope.cancel()

    def poke(self) -> None:
        """The fault state changed: make the sender re-plan at once."""
        self._wake.set()
        self._wake = trio.Event()

    # requests ----------------------------------------------------------------------------------
    async def _serve_requests(self, nursery: trio.Nursery) -> None:
        parser = RtspParser()
        while True:
            data = await self.stream.receive_some(1 << 16)
            if not data:
                return
            try:
                items = parser.feed(data)
            except ProtocolError as exc:
                log.info("client %s: %s: answering %d and closing", self.peer, exc, exc.status)
                await self._write(encode_response(exc.status, None, [("Connection", "close")]))
                return
            for item in items:
                if not isinstance(item, Request):
                    continue  # RTCP receiver reports on the interleaved channels, stray replies
                self.camera.stats.requests += 1
                try:
                    reply = self._handle(item)
                except ProtocolError as exc:
                    reply = Reply(exc.status, close=exc.status == 400)
                if reply.close:
                    reply.headers.append(("Connection", "close"))
                headers = [("Server", "hubruntime-fakecam"), *reply.headers]
                await self._write(encode_response(reply.status, item.cseq, headers, reply.body))
                if reply.close:
                    return
                if item.method == "PLAY" and reply.status == 200:
                    self._start_sender(nursery)

    def _handle(self, req: Request) -> Reply:
        cam = self.camera
        method = req.method
        if method not in PUBLIC.split(", "):
            return Reply(501)
        if method == "OPTIONS":  # answered without credentials, as most cameras do
            return Reply(200, [("Public", PUBLIC)])
        target = self._target(req.uri)
        if target is None:
            return Reply(404)
        if not self._authorized(req):
            return Reply(401, [("WWW-Authenticate", 'Basic realm="fakecam"')])
        session = (req.headers.get("Session") or "").split(";")[0].strip() or None
        if session is not None and session != self.session_id:
            return Reply(454)
        if method == "DESCRIBE":
            if req.uri.startswith("rtsp://"):
                self._content_base = req.uri.split("?")[0].rstrip("/") + "/"
            return Reply(200, [("Content-Type", "application/sdp"),
                               ("Content-Base", self._content_base)], cam.sdp_text.encode())
        if method == "SETUP":
            return self._setup(req, target)
        if method in ("GET_PARAMETER", "SET_PARAMETER"):  # keep-alives
            return Reply(200, self._session_header())
        if session is None:
            return Reply(454)
        if method == "PLAY":
            return self._play()
        if method == "PAUSE":
            if self.playing:
                self.playing = False
                self.pause = Interval(trio.current_time(), math.inf)
                self.poke()
            return Reply(200, self._session_header())
        # TEARDOWN: the session ends, the connection may carry a new one
        self._stop_sender()
        self.tracks.clear()
        self.session_id = None
        return Reply(200)

    def _target(self, uri: str) -> int | None:
        """-1 for the camera itself, a media index for one of its tracks, None for elsewhere."""
        path = urlsplit(uri).path if "://" in uri else uri.split("?")[0]
        mount = "/" + self.camera.path
        path = path.rstrip("/")
        if path == mount:
            return -1
        head, _, tail = path.rpartition("/")
        if head == mount and tail.startswith("trackID="):
            index = tail[len("trackID="):]
            if index.isdigit() and int(index) < len(self.camera.capture.kinds):
                return int(index)
        return None

    def _authorized(self, req: Request) -> bool:
        expected = self.camera.credentials
        if expected is None:
            return True
        scheme, _, value = (req.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode(
                "utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        ok_user = hmac.compare_digest(user.encode(), expected[0].encode())
        ok_password = hmac.compare_digest(password.encode(), expected[1].encode())
        return ok_user and ok_password

    def _session_header(self) -> list[tuple[str, str]]:
        if self.session_id is None:
            return []
        return [("Session", f"{self.session_id};timeout={SESSION_TIMEOUT}")]

    def _setup(self, req: Request, target: int) -> Reply:
        if target < 0:
            return Reply(459)  # aggregate SETUP: the client must set up each track
        offers = parse_transport(req.headers.get("Transport") or "")  # 461 if none is RTP
        tcp = next((t for t in offers if t.tcp and t.unicast), None)
        if tcp is None:
            return Reply(461)
        channel = tcp.interleaved[0] if tcp.interleaved else 2 * target
        old = self.tracks.get(target)
        if old is None:
            clock = self.camera.capture.clock_rates[target]
            old = TrackOut(target, channel, _rand32(), _rand32() & 0xFFFF, _rand32(), clock)
            self.tracks[target] = old
        old.channel = channel
        if self.session_id is None:
            self.session_id = os.urandom(8).hex()
        answer = Transport("RTP/AVP/TCP", unicast=True, interleaved=(channel, channel + 1),
                           ssrc=f"{old.ssrc:08X}")
        return Reply(200, [("Transport", answer.encode()), *self._session_header()])

    def _play(self) -> Reply:
        if not self.tracks:
            return Reply(455)
        cam = self.camera
        now = trio.current_time()
        if self._sender_scope is None:  # first PLAY of this session: the clip starts over
            self._v0 = cam.clock.position(now)
            self._t0 = now
            self.pause = NEVER
        elif not self.playing:  # after PAUSE: live, so it goes on where the clock is now
            self.pause = cut(self.pause, now)
        self.playing = True
        position = cam.clock.position(now) - self._v0
        infos = []
        for media, track in sorted(self.tracks.items()):
            ticks = cam.schedule.ticks_at(media, position)
            infos.append(f"url={self._content_base}trackID={media};seq={track.seq};"
                         f"rtptime={track.timestamp(ticks, cam.skew_seconds)}")
        self.poke()
        return Reply(200, [*self._session_header(), ("Range", f"npt={position:.3f}-"),
                           ("RTP-Info", ",".join(infos))])

    # sending -----------------------------------------------------------------------------------
    def _start_sender(self, nursery: trio.Nursery) -> None:
        if self._sender_scope is None:
            self._sender_scope = trio.CancelScope()
            nursery.start_soon(self._sender, self._sender_scope)

    def _stop_sender(self) -> None:
        if self._sender_scope is not None:
            self._sender_scope.cancel()
        self._sender_scope = None
        self.playing = False

    async def _sender(self, scope: trio.CancelScope) -> None:
        with scope:
            await self._ending_on_error(self._send_loop)

    async def _write(self, data: bytes) -> None:
        """Send ``data``, or drop this client if it cannot take it within ``send_timeout``."""
        with trio.move_on_after(self.camera.send_timeout) as timer:
            async with self._write_lock:
                await self.stream.send_all(data)
        if timer.cancelled_caught:
            log.warning("client %s took no data for %.1f s: dropping it", self.peer,
                        self.camera.send_timeout)
            self.camera.stats.dropped_slow += 1
            self.close()
            await trio.lowlevel.checkpoint()  # raises Cancelled: the session ends here

    async def _send_loop(self) -> None:
        cam = self.camera
        schedule = cam.schedule
        n = 0  # the next entry of the schedule
        while True:
            wake = self._wake
            now = trio.current_time()
            clock = cam.clock
            position = clock.position(now) - self._v0
            batch = bytearray()
            while True:
                entry = schedule.entry(n)
                if entry.position > position:
                    break
                due = clock.time_at(self._v0 + entry.position)
                gap = self._gap_at(due)
                if gap is not None:
                    # The whole stream is stalled or paused around ``due``: skip, in one step,
                    # everything due until the gap ends (or until now).
                    skip_to = clock.position(min(gap.end, now)) - self._v0
                    n = max(n + 1, schedule.index_at(skip_to))
                    continue
                n += 1
                track = self.tracks.get(entry.media)
                if track is None or due in cam.stall_track[entry.media]:
                    continue
                packet = track.rewrite(entry.data, track.timestamp(entry.ticks, cam.skew_seconds))
                batch += encode_frame(track.channel, packet)
                cam.stats.packets_sent[entry.media] += 1
            if batch:
                self._add_reports(batch, now)
                cam.stats.bytes_sent += len(batch)
                await self._write(bytes(batch))
                continue
            entry = schedule.entry(n)
            due = clock.time_at(self._v0 + entry.position)
            gap = self._gap_at(due)
            with trio.move_on_at(due if gap is None else max(due, gap.end)):
                await wake.wait()

    def _gap_at(self, t: float) -> Interval | None:
        """The stall or pause that blocks every track at wall time ``t``, if any."""
        for gap in (self.camera.stall_all, self.pause):
            if t in gap:
                return gap
        return None

    def _add_reports(self, batch: bytearray, now: float) -> None:
        """RTCP sender reports, once a second per track.

        They map the RTP clock to wall time as a camera's *capture* clock would: position
        ``now - t0`` is what is live now. So a slow camera's packets carry timestamps that fall
        further and further behind the reports, as packets held up on the way would. (Mapping
        the reports to the slowed position instead would be self-consistent, and FFmpeg, which
        derives its output timestamps from the reports, would then re-time a slow stream to
        wall time and hide the lag from the hub.)
        """
        cam = self.camera
        live = now - self._t0
        for media, track in self.tracks.items():
            if track.packets and now - track.last_report >= REPORT_INTERVAL \
                    and now not in cam.stall_track[media]:
                ts = track.timestamp(cam.schedule.ticks_at(media, live), cam.skew_seconds)
                batch += encode_frame(track.channel + 1, track.sender_report(time.time(), ts))
                track.last_report = now


def _rand32() -> int:
    return int.from_bytes(os.urandom(4), "big")
