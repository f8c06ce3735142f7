"""A minimal RTSP client for tests and benchmarks: play over TCP interleaved, record arrivals.

Written on our sans-I/O parser; the real clients (FFmpeg, GStreamer) are what the tests trust,
this one is for what they cannot show (per-packet arrival times, a client that stops reading).
"""

from __future__ import annotations

import trio

from hubruntime.proto.rtp import is_rtcp, parse_rtp_header
from hubruntime.proto.rtsp import Frame, Request, Response, RtspParser, encode_request


class MiniClient:
    """Just enough RTSP to play over TCP and record when each interleaved frame arrives."""

    def __init__(self, stream: trio.SocketStream, url: str) -> None:
        self.stream = stream
        self.url = url
        self.parser = RtspParser()
        self.cseq = 0
        self.items: list[Request | Response | Frame] = []
        self.frames: list[tuple[float, int, bytes]] = []  # (arrival, channel, payload)
        self.session: str | None = None
        self.eof = False

    @classmethod
    async def connect(cls, url: str) -> MiniClient:
        host, _, port = url.split("/")[2].rpartition(":")
        with trio.fail_after(5):
            return cls(await trio.open_tcp_stream(host, int(port)), url)

    async def _receive(self) -> None:
        data = await self.stream.receive_some(1 << 16)
        if not data:
            self.eof = True
            return
        now = trio.current_time()
        for item in self.parser.feed(data):
            if isinstance(item, Frame):
                self.frames.append((now, item.channel, item.payload))
            else:
                self.items.append(item)

    async def request(self, method: str, uri: str | None = None,
                      headers: list[tuple[str, str]] | None = None) -> Response:
        self.cseq += 1
        hdrs = list(headers or [])
        if self.session and method != "DESCRIBE":
            hdrs.append(("Session", self.session))
        with trio.fail_after(5):
            await self.stream.send_all(encode_request(method, uri or self.url, self.cseq, hdrs))
        return await self.response()

    async def response(self) -> Response:
        with trio.fail_after(5):
            while True:
                for i, item in enumerate(self.items):
                    if isinstance(item, Response):
                        del self.items[i]
                        return item
                assert not self.eof, "connection closed before a response"
                await self._receive()

    async def play(self, tracks: int = 2) -> Response:
        assert (await self.request("DESCRIBE")).status == 200
        for i in range(tracks):
            r = await self.request("SETUP", f"{self.url}/trackID={i}",
                                   [("Transport", f"RTP/AVP/TCP;unicast;interleaved={2 * i}-"
                                                  f"{2 * i + 1}")])
            assert r.status == 200, r
            self.session = (r.headers.get("Session") or "").split(";")[0]
        r = await self.request("PLAY", headers=[("Range", "npt=0.000-")])
        assert r.status == 200
        return r

    async def collect(self, seconds: float) -> None:
        """Receive for ``seconds`` of wall time (or until EOF)."""
        with trio.move_on_after(seconds):
            while not self.eof:
                await self._receive()

    async def until_eof(self, timeout: float) -> None:
        with trio.fail_after(timeout):
            while not self.eof:
                await self._receive()

    def rtp(self, channel: int, since: float = 0.0) -> list[tuple[float, int, int]]:
        """(arrival, seq, timestamp) of the RTP packets on ``channel`` arrived after ``since``."""
        out = []
        for t, ch, payload in self.frames:
            if ch == channel and t >= since and not is_rtcp(payload):
                h = parse_rtp_header(payload)
                assert h is not None
                out.append((t, h.seq, h.timestamp))
        return out

    async def aclose(self) -> None:
        await self.stream.aclose()
