"""The fake camera: an RTSP server (RFC 2326) on loopback serving a recorded clip at real-time
pace, looping for ever, with faults injected on command.

Why it exists: the hub's watchdogs (DESIGN §3) must be tested against a camera that stalls,
falls behind, jumps its clock, drops connections and refuses them, on demand and at a known
moment; no real camera or stock server does that. It is in-process trio code so that tests can
start many cameras in milliseconds and call the fault methods directly; ``control.py`` and
``cli.py`` expose the same faults to other processes.

Faults apply to every client and are all expressed in wall time, like a live camera's: a stall
skips the frames of its duration (no catch-up burst afterwards), a slow camera's RTP timestamps
keep media time so its lag grows, a clock jump offsets the timestamps only.
"""

from __future__ import annotations

import logging
import math
import socket
from dataclasses import asdict, dataclass, field

import trio

from hubruntime.fakecam.clip import Capture
from hubruntime.fakecam.pacing import NEVER, Interval, MediaClock, Schedule, cut, extend
from hubruntime.fakecam.session import ClientSession
from hubruntime.proto.sdp import parse_sdp

log = logging.getLogger("hubruntime.fakecam")


@dataclass
class Stats:
    """Counters for tests and ``status``."""

    connections: int = 0  # accepted since start
    active_clients: int = 0
    requests: int = 0
    packets_sent: list[int] = field(default_factory=list)  # per media index
    bytes_sent: int = 0
    dropped_slow: int = 0  # clients dropped because they took no data for send_timeout
    dropped_by_command: int = 0  # clients closed by ``drop``


class FakeCamera:
    """A camera at ``rtsp://host:port/path`` serving ``capture``; run it with :meth:`serve`.

    Fault methods (:meth:`stall`, :meth:`slow`…) are synchronous and take effect at once; call
    them from the trio thread while :meth:`serve` runs.
    """

    def __init__(self, capture: Capture, host: str = "127.0.0.1", port: int = 0,
                 path: str = "cam", user: str | None = None, password: str | None = None,
                 *, send_timeout: float = 5.0) -> None:
        if (user is None) != (password is None):
            raise ValueError("give both user and password, or neither")
        self.capture = capture
        self.schedule = Schedule(capture)
        self.host = host
        self.path = path.strip("/")
        self.credentials = None if user is None else (user, password or "")
        self.send_timeout = send_timeout
        controls = [f"trackID={i}" for i in range(len(capture.kinds))]
        self.sdp_text = parse_sdp(capture.sdp).with_controls(controls)
        self.stats = Stats(packets_sent=[0] * len(capture.kinds))
        # fault state, read by every client's sender whenever it wakes
        self.stall_all: Interval = NEVER
        self.stall_track: list[Interval] = [NEVER] * len(capture.kinds)
        self.skew_seconds = 0.0
        self.refusing = False
        self._port = port
        self._clock: MediaClock | None = None
        self._nursery: trio.Nursery | None = None
        self._listener: trio.SocketListener | None = None
        self._sessions: set[ClientSession] = set()

    # serving -----------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``rtsp://host:port/path``, without credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"rtsp://{host}:{self._port}/{self.path}"

    @property
    def clock(self) -> MediaClock:
        if self._clock is None:
            raise RuntimeError("the fake camera is not serving")
        return self._clock

    @property
    def playing_clients(self) -> int:
        return sum(1 for s in self._sessions if s.playing)

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Listen and serve until cancelled; ``task_status.started(url)`` once listening."""
        if self._nursery is not None:
            raise RuntimeError("this fake camera is already serving")
        listener = self._bind()  # before the nursery, so a busy port raises a plain OSError
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._clock = MediaClock(trio.current_time())
                self._listener = listener
                nursery.start_soon(self._accept_loop, listener)
                log.info("fake camera serving %s (%d tracks, %.2f s loop)", self.url,
                         len(self.capture.kinds), self.capture.duration)
                task_status.started(self.url)
                await trio.sleep_forever()
        finally:
            self._close_listener()
            self._nursery = None

    def _listen(self) -> None:
        """Listen again (after ``refuse``), at once: a connection made right after ``restore``
        returns must succeed."""
        assert self._nursery is not None
        self._listener = self._bind()
        self._nursery.start_soon(self._accept_loop, self._listener)

    def _bind(self) -> trio.SocketListener:
        """A listening socket on host:port, made synchronously (the first one picks the port
        when it is 0; later ones take the same port again)."""
        family, kind, proto, _, addr = socket.getaddrinfo(
            self.host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        return trio.SocketListener(trio.socket.from_stdlib_socket(sock))

    def _close_listener(self) -> None:
        if self._listener is not None:
            # Closing the socket (not just cancelling accept) makes new connections fail with
            # ECONNREFUSED at once; the accept loop wakes with ClosedResourceError.
            self._listener.socket.close()
            self._listener = None

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        assert self._nursery is not None
        try:
            while True:
                try:
                    stream = await listener.accept()
                except trio.ClosedResourceError:
                    return
                except OSError as exc:  # e.g. out of file descriptors: try again soon
                    log.warning("fake camera: accept failed: %s", exc)
                    await trio.sleep(0.1)
                    continue
                self.stats.connections += 1
                self._nursery.start_soon(self._client, stream)
        finally:
            listener.socket.close()

    async def _client(self, stream: trio.SocketStream) -> None:
        try:
            host, port = stream.socket.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = "?"
        session = ClientSession(self, stream, peer)
        self._sessions.add(session)
        self.stats.active_clients += 1
        log.info("client %s connected", peer)
        try:
            await session.run()
        finally:
            self._sessions.discard(session)
            self.stats.active_clients -= 1
            log.info("client %s gone", peer)

    def changed(self) -> None:
        """Wake every sender so it re-plans with the new fault state."""
        for session in self._sessions:
            session.poke()

    # faults ------------------------------------------------------------------------------------
    def stall(self, seconds: float) -> None:
        """No packets on any track for ``seconds``; then on at the live position, no burst."""
        _check_positive("stall", seconds)
        now = trio.current_time()
        self.stall_all = extend(self.stall_all, now, seconds)
        self.changed()

    def stall_video(self, seconds: float) -> None:
        """Like :meth:`stall` for the video track(s) only; audio goes on."""
        _check_positive("stall-video", seconds)
        videos = [i for i, kind in enumerate(self.capture.kinds) if kind == "video"]
        if not videos:
            raise ValueError("stall-video: the clip has no video track")
        now = trio.current_time()
        for i in videos:
            self.stall_track[i] = extend(self.stall_track[i], now, seconds)
        self.changed()

    def slow(self, factor: float) -> None:
        """Produce media at ``factor`` × real time from now (0.8: 0.2 s more lag per second)."""
        _check_positive("slow", factor)
        self.clock.set_speed(trio.current_time(), factor)
        self.changed()

    def drop(self) -> int:
        """Close every client connection now; returns how many were closed."""
        sessions = list(self._sessions)
        for session in sessions:
            session.close()
        self.stats.dropped_by_command += len(sessions)
        return len(sessions)

    def refuse(self) -> None:
        """Stop listening (connections are refused) until :meth:`restore`; clients stay."""
        self._close_listener()
        self.refusing = True

    def restore(self) -> None:
        """Clear every fault: stalls end, normal pace, no clock offset, listening again."""
        now = trio.current_time()
        self.stall_all = cut(self.stall_all, now)
        self.stall_track = [cut(s, now) for s in self.stall_track]
        if self.clock.speed != 1.0:
            self.clock.set_speed(now, 1.0)
        self.skew_seconds = 0.0
        if self._listener is None and self._nursery is not None:
            self._listen()  # same port: SO_REUSEADDR
        self.refusing = False
        self.changed()

    def skew(self, seconds: float) -> None:
        """From now on RTP timestamps are offset by ``seconds`` × clock rate (a clock jump)."""
        if not math.isfinite(seconds):
            raise ValueError(f"skew: SECONDS must be a finite number, not {seconds!r}")
        self.skew_seconds = float(seconds)

    # counters ----------------------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        """Counters and the current faults, JSON-ready."""
        now = trio.current_time() if self._clock is not None else 0.0
        stats = asdict(self.stats)
        stats.update(
            url=self.url,
            tracks=list(self.capture.kinds),
            playing_clients=self.playing_clients,
            faults={
                "stall": round(max(0.0, self.stall_all.end - now), 3)
                if now in self.stall_all else 0.0,
                "stall_video": round(max((s.end - now for s in self.stall_track if now in s),
                                         default=0.0), 3),
                "speed": self._clock.speed if self._clock is not None else 1.0,
                "skew": self.skew_seconds,
                "refusing": self.refusing,
            },
        )
        return stats


def _check_positive(what: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{what}: needs a positive number, not {value!r}")
