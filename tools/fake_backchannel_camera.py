#!/usr/bin/env python3
"""A fake TomTom Bandit camera: the status endpoint and the TCP backchannel (protocols.md §3).

``python tools/fake_backchannel_camera.py --port 0 [--chunk 1] [--no-newlines] [--garbage]``
prints its status URL (``http://127.0.0.1:<port>/api/2/status``) as the first line of output, then
serves until interrupted:

* ``GET /api/<version>/status`` answers a status document carrying the backchannel port under the
  spelling chosen by ``--port-key``: ``flat`` (``backchannel_port``, as documented), ``camel``
  (``backchannelPort``), ``nested`` (``{"status": {"backchannel_port": ...}}``) or ``string``
  (the port as a decimal string). ``--status-errors N`` answers 500 to the first N requests.
* Each backchannel connection receives :data:`DEFAULT_STREAM`, every notification of
  protocols.md §3.3 (the page's three example frames byte for byte among them), written
  ``--chunk`` bytes at a time (0: one write per notification), each followed by a newline unless
  ``--no-newlines``. Then the connection stays open and carries whatever ``push`` sends.
* Faults: ``--garbage`` (non-JSON bytes after the first notification), ``--huge`` (after the first
  notification, an object that never closes, written until the client hangs up),
  ``--close-after N`` (close the connection after N notifications).

Tests import this file (it is not a package) and run :class:`FakeBandit` in-process, or run the
file as a subprocess.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

import trio

EXAMPLE_FRAMES: tuple[bytes, ...] = (
    b'{"recording_started":{"recording_active":true}}',
    b'{"memory_low":{"available_bytes":104857600}}',
    '{"recording_stopped":[{"id":"…-100-000-0001","size_bytes":123,"length_secs":9.5,'
    '"mode":"normal"}]}'.encode(),
)
"""protocols.md §3.3 "Illustrative frames", verbatim (the id's ``…`` is U+2026, three bytes of
UTF-8: a character a small chunk size splits)."""

VIDEO_ID = "1236a33a-5375-4549-836b-d4ed00289586-100-000-0001"  # protocols.md §3.4

CATALOGUE_NOTIFICATIONS: tuple[dict[str, Any], ...] = (
    {"recording_started": {"recording_active": True}},
    {"recording_stopped": [{
        "id": VIDEO_ID, "created": "2016-05-04T10:11:12Z", "size_bytes": 52428800,
        "length_secs": 42.5, "nr_highlights": 2, "path": "/100TTCAM/MOVI0001.MP4",
        "mode": "slow_motion", "aspect_ratio": "16:9", "resolution": "1080p",
        "framerate_fps": 60, "is_valid": True,
    }]},
    {"tag_created": {
        "id": "a1b2c3d4-0000-4000-8000-000000000001", "offset_secs": 12.5,
        "highlight_offset_secs": -3.0, "highlight_length_secs": 6.0, "tag_button": True,
    }},
    {"tag_created": {
        "id": "a1b2c3d4-0000-4000-8000-000000000002", "offset_secs": 30.25,
        "highlight_offset_secs": -5.0, "highlight_length_secs": 10.0, "max_speed_mps": 17.5,
        "delivered_offset_secs": -4.0, "delivered_length_secs": 8.0,
    }},
    {"photo_captured": [
        {"id": "IMG-0001", "path": "/100TTCAM/PHOT0001.JPG", "created": "2016-05-04T10:12:00Z",
         "lat_deg": 52.3759, "lon_deg": 4.8975, "mode": "burst", "resolution": "16MP",
         "aspect_ratio": "4:3", "is_valid": True},
        {"id": "IMG-0002", "path": "/100TTCAM/PHOT0002.JPG", "created": "2016-05-04T10:12:01Z",
         "lat_deg": 52.3760, "lon_deg": 4.8976, "mode": "burst", "resolution": "16MP",
         "aspect_ratio": "4:3", "is_valid": False},
    ]},
    {"memory_low": {"available_bytes": 1073741824}},
    {"memory_error": {}},
    {"wifi_stopped": {"wifi_active": False}},
    {"transcoding_progress": {"progress_pct": 42}},
    {"viewfinder_started": {"viewfinder_active": True}},
    {"viewfinder_stopped": {"viewfinder_active": False}},
    # shutting_down: flags nested in the payload, and beside the key (the Android SDK's reading).
    {"shutting_down": {"battery_critical": True}},
    {"shutting_down": {}, "user_initiated": True, "overtemperature_shutdown": False},
)
"""One of each notification of protocols.md §3.3, with the payload fields the research names."""

EDGE_NOTIFICATIONS: tuple[dict[str, Any], ...] = (
    # Braces, brackets, quotes, backslashes and multi-byte characters inside strings.
    {"tag_created": {"id": 'x}{"]\\[ é€😀', "max_heartrate_bpm": 172, "tag_remote": True}},
    # Two notifications in one object (the Android parser meets this case).
    {"transcoding_progress": {"progress_pct": 100}, "memory_low": {"available_bytes": 7}},
)


def encode(obj: dict[str, Any]) -> bytes:
    """Compact JSON, UTF-8 on the wire (not \\u escapes), as a camera sends it."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


DEFAULT_STREAM: tuple[bytes, ...] = (
    EXAMPLE_FRAMES + tuple(encode(n) for n in CATALOGUE_NOTIFICATIONS + EDGE_NOTIFICATIONS)
)
"""What each backchannel connection receives first, in order."""

GARBAGE = b"HTTP/1.1 200 OK\r\n\r\nnot json at all"
HUGE_HEAD = b'{"huge":"'
PORT_KEYS = ("flat", "camel", "nested", "string")


@dataclass
class Stats:
    status_requests: int = 0
    connections: int = 0
    open_connections: int = 0
    notifications_sent: int = 0
    bytes_sent: int = 0
    pushed: list[bytes] = field(default_factory=list)


class FakeBandit:
    """The fake camera; ``await nursery.start(cam.run)`` returns its status URL."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        http_port: int = 0,
        backchannel_port: int = 0,
        notifications: tuple[bytes, ...] | list[bytes] = DEFAULT_STREAM,
        chunk: int = 0,
        newlines: bool = True,
        garbage: bool = False,
        huge: bool = False,
        close_after: int | None = None,
        port_key: str = "flat",
        api_version: int = 2,
        status_errors: int = 0,
    ) -> None:
        if port_key not in PORT_KEYS:
            raise ValueError(f"port_key must be one of {', '.join(PORT_KEYS)}")
        self.host = host
        self.http_port = http_port
        self.backchannel_port = backchannel_port
        self.notifications = tuple(notifications)
        self.chunk = chunk
        self.newlines = newlines
        self.garbage = garbage
        self.huge = huge
        self.close_after = close_after
        self.port_key = port_key
        self.api_version = api_version
        self.status_errors = status_errors
        self.stats = Stats()
        self._pushed = trio.Event()
        self._connections: set[trio.CancelScope] = set()

    # -- what tests and the CLI use ----------------------------------------------------------
    @property
    def status_url(self) -> str:
        return f"http://{self.host}:{self.http_port}/api/{self.api_version}/status"

    def push(self, frame: bytes) -> None:
        """Send ``frame`` (one notification, encoded) on every open backchannel connection."""
        self.stats.pushed.append(frame)
        self._pushed.set()
        self._pushed = trio.Event()

    def drop_connections(self) -> None:
        """Close every open backchannel connection (the camera rebooted, Wi-Fi dropped)."""
        for scope in list(self._connections):
            scope.cancel()

    def status_document(self) -> dict[str, Any]:
        port: Any = self.backchannel_port
        doc: dict[str, Any] = {
            "recording_active": False, "recording_secs": 0, "battery_level_pct": 87,
            "battery_charging": False, "gnss_fix": False, "gnss_strength_pct": 0,
            "heart_rate_sensor_connected": False, "cadence_sensor_connected": False,
            "preview_active": False, "viewfinder_active": False,
            "viewfinder_streaming_port": 4001, "memory_free_bytes": 8_000_000_000,
            "remaining_time_secs": 3600, "remaining_photos": 2000,
        }
        if self.port_key == "flat":
            doc["backchannel_port"] = port
        elif self.port_key == "camel":
            doc["backchannelPort"] = port
        elif self.port_key == "string":
            doc["backchannel_port"] = str(port)
        else:
            return {"status": {**doc, "backchannel_port": port}}
        return doc

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        http = await trio.open_tcp_listeners(self.http_port, host=self.host)
        back = await trio.open_tcp_listeners(self.backchannel_port, host=self.host)
        self.http_port = http[0].socket.getsockname()[1]
        self.backchannel_port = back[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve_http, http)
            await nursery.start(trio.serve_listeners, self._serve_backchannel, back)
            task_status.started(self.status_url)

    # -- HTTP ---------------------------------------------------------------------------------
    async def _serve_http(self, stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            with trio.move_on_after(10):
                while b"\r\n\r\n" not in head and len(head) < 16384:
                    data = await _receive(stream)
                    if not data:
                        return
                    head += data
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split(" ")
            path = parts[1].split("?", 1)[0] if len(parts) == 3 else ""
            if len(parts) != 3 or parts[0] != "GET":
                status, body = "405 Method Not Allowed", b""
            elif path != f"/api/{self.api_version}/status":
                status, body = "404 Not Found", b""
            else:
                self.stats.status_requests += 1
                if self.stats.status_requests <= self.status_errors:
                    status, body = "500 Internal Server Error", b""
                else:
                    status, body = "200 OK", json.dumps(self.status_document()).encode()
            response = (
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode() + body
            try:
                await stream.send_all(response)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    # -- backchannel --------------------------------------------------------------------------
    async def _serve_backchannel(self, stream: trio.SocketStream) -> None:
        self.stats.connections += 1
        self.stats.open_connections += 1
        try:
            async with stream, trio.open_nursery() as nursery:
                self._connections.add(nursery.cancel_scope)
                # The client never writes; its EOF means it left.
                nursery.start_soon(_watch_eof, stream, nursery.cancel_scope)
                await self._send_stream(stream)
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client hung up mid-write
        finally:
            self._connections.discard(nursery.cancel_scope)
            self.stats.open_connections -= 1

    async def _send(self, stream: trio.SocketStream, data: bytes) -> None:
        step = self.chunk or len(data)
        for i in range(0, len(data), step):
            await stream.send_all(data[i : i + step])
            self.stats.bytes_sent += min(step, len(data) - i)

    async def _send_frame(self, stream: trio.SocketStream, frame: bytes) -> None:
        await self._send(stream, frame + (b"\n" if self.newlines else b""))
        self.stats.notifications_sent += 1

    async def _send_stream(self, stream: trio.SocketStream) -> None:
        frames = self.notifications
        if self.garbage or self.huge:
            frames = frames[:1]
        for n, frame in enumerate(frames):
            if self.close_after is not None and n >= self.close_after:
                return
            await self._send_frame(stream, frame)
        if self.garbage:
            await self._send(stream, GARBAGE)
        if self.huge:
            await self._send(stream, HUGE_HEAD)
            filler = b"x" * 65536
            while True:  # until the client hangs up (send_all then raises)
                await self._send(stream, filler)
        seen = len(self.stats.pushed)
        while True:
            while seen < len(self.stats.pushed):
                await self._send_frame(stream, self.stats.pushed[seen])
                seen += 1
            await self._pushed.wait()


async def _receive(stream: trio.SocketStream) -> bytes:
    try:
        return await stream.receive_some(4096)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return b""


async def _watch_eof(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    while await _receive(stream):
        pass
    scope.cancel()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="HTTP status port (0: a free one)")
    p.add_argument("--backchannel-port", type=int, default=0, help="(0: a free one)")
    p.add_argument("--chunk", type=int, default=0, help="bytes per write (0: per notification)")
    p.add_argument("--newlines", action=argparse.BooleanOptionalAction, default=True,
                   help="end each notification with a newline")
    p.add_argument("--garbage", action="store_true", help="send non-JSON after one notification")
    p.add_argument("--huge", action="store_true", help="send an object that never closes")
    p.add_argument("--close-after", type=int, default=None, metavar="N",
                   help="close each connection after N notifications")
    p.add_argument("--port-key", choices=PORT_KEYS, default="flat",
                   help="how the status document spells backchannel_port")
    p.add_argument("--api-version", type=int, default=2)
    p.add_argument("--status-errors", type=int, default=0, metavar="N",
                   help="answer 500 to the first N status requests")
    args = p.parse_args(argv)
    if args.chunk < 0:
        p.error("--chunk must be >= 0")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    cam = FakeBandit(
        host=args.host, http_port=args.port, backchannel_port=args.backchannel_port,
        chunk=args.chunk, newlines=args.newlines, garbage=args.garbage, huge=args.huge,
        close_after=args.close_after, port_key=args.port_key, api_version=args.api_version,
        status_errors=args.status_errors,
    )

    async def serve() -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                url = await nursery.start(cam.run)
                print(url, flush=True)
                print(f"backchannel: {cam.host}:{cam.backchannel_port}", file=sys.stderr,
                      flush=True)
                async for _ in signals:  # SIGTERM: stop cleanly, exit 0
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(serve)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
