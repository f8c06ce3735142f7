"""HTTP API benchmark: event listing and creation rates, OSC long-poll wake-up latency.

Run as ``python tools/bench/api.py [--quick]``. It prints figures, it asserts nothing.

The server runs in a child process (this file with ``--child``), the clients in this one, so the
two do not share a trio thread (on 2 cores each gets one). The clients are raw trio TCP streams
speaking hand-written HTTP/1.1 with keep-alive: an httpx client costs several times more CPU per
request than the server does, and would measure itself.

1. Listing: ``GET /api/v2/storage/events/?limit=20`` (and ``limit=100`` with ``include_meta``)
   against an event log of ``--events`` rows, with 1 and 16 concurrent keep-alive clients.
2. Creation: ``POST /api/v2/storage/events/`` (a camera notification with meta) with 1 and 16
   concurrent clients; each created event goes through the bus and the SQLite event log.
3. Long-poll wake-up: 1,000 held ``POST /osc/checkForUpdates``; the child is told to change the
   state; per response, the time from just before the change was requested to the complete
   response at the client. Several rounds, p50/p99/max of each.
4. Peer baseline, same machine, same clients: a bare hypercorn ASGI app (no auth, no routing, no
   store) answering a fixed JSON body, and a bare long-poll (one ``trio.Event`` per round) — the
   floor hypercorn itself sets, so the figures above can be read as "ours = floor + our share".

Bounded: every loop has a request count and a time limit, every wait a deadline; the child is
ended (stdin closed, then killed) and waited for.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from benchlib import out, proc_cpu
from benchlib import percentile as pct

TOKEN = "bench-token"
AUTH = f"Authorization: Acc {TOKEN}\r\n"


# ==========================================================================================
# child: the server


def child(mode: str, data_dir: str, events: int) -> None:
    """Serve (``hub``: the real ApiService; ``bare``: the hypercorn floor), print the port, and
    change the state once per line read on stdin; exit at EOF."""
    if mode == "hub":
        trio.run(_child_hub, data_dir, events)
    else:
        trio.run(_child_bare)


async def _child_hub(data_dir: str, events: int) -> None:
    from hubruntime.api.service import ApiService
    from hubruntime.config import ApiConfig, ApiToken
    from hubruntime.events import catalogue
    from hubruntime.events.bus import EventBus
    from hubruntime.events.eventlog import run_event_log
    from hubruntime.store import Store
    from hubruntime.streams.manager import StreamManager

    store = Store(Path(data_dir) / "hub.sqlite3")
    bus = EventBus()
    manager = StreamManager(store)
    await manager.add("cam1", "Bench camera", "rtsp://192.0.2.1/s1")
    service = ApiService(ApiConfig("127.0.0.1:0", (ApiToken(TOKEN),)), store, bus, manager)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_event_log, store, bus, 1_000_000)
        for i in range(events):
            bus.publish_event(catalogue.from_notification(
                "api", "memory_low", {"meta": {"i": str(i)}}, stream_id="cam1"))
            if i % 1000 == 999:
                await trio.sleep(0)
        with trio.fail_after(120):
            while await trio.to_thread.run_sync(store.last_event_seq) < events:
                await trio.sleep(0.05)
        await nursery.start(service.run)
        print(service.port, flush=True)
        await _changes(lambda n: bus.publish("camera_packet_delay", streamId="cam1",
                                             gapSecs=float(n)))
        nursery.cancel_scope.cancel()
    store.close()


async def _child_bare() -> None:
    """A minimal ASGI app under the same hypercorn config: fixed JSON; a long-poll that waits
    on one shared event; no auth, routing, validation or store."""
    import socket

    from hypercorn.config import Config
    from hypercorn.trio import serve

    box = {"event": trio.Event(), "fp": 0}
    body = b'{"ok":true}'

    async def app(scope, receive, send):  # noqa: ANN001
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/osc/checkForUpdates":
            await box["event"].wait()
            payload = json.dumps({"stateFingerprint": str(box["fp"]),
                                  "throttleTimeout": 0}).encode()
        else:
            payload = body
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json; charset=utf-8"),
            (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.backlog = 2048
    config.accesslog = None
    config.errorlog = None
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, app, config)
        print(port, flush=True)

        def change(n: int) -> None:
            box["fp"] = n
            box["event"].set()
            box["event"] = trio.Event()

        await _changes(change)
        nursery.cancel_scope.cancel()


async def _changes(change) -> None:  # noqa: ANN001
    stdin = trio.lowlevel.FdStream(os.dup(0))
    n = 0
    while chunk := await stdin.receive_some(1024):
        for _ in range(chunk.count(b"\n")):
            n += 1
            change(n)


class Child:
    def __init__(self, mode: str, data_dir: str, events: int) -> None:
        self.args = [sys.executable, str(Path(__file__).resolve()), "--child", mode,
                     "--events", str(events), "--dir", data_dir]
        self.proc: trio.Process | None = None
        self.port = 0

    async def start(self) -> None:
        self.proc = await trio.lowlevel.open_process(self.args, stdin=subprocess.PIPE,
                                                     stdout=subprocess.PIPE)
        buf = b""
        with trio.fail_after(180):
            while b"\n" not in buf:
                chunk = await self.proc.stdout.receive_some(100)
                if not chunk:
                    raise RuntimeError("server child exited early")
                buf += chunk
        self.port = int(buf.split()[0])

    async def change(self) -> None:
        assert self.proc is not None
        await self.proc.stdin.send_all(b"x\n")

    def cpu_secs(self) -> float:
        assert self.proc is not None
        cpu = proc_cpu(self.proc.pid)
        if cpu is None:
            raise RuntimeError(f"server child {self.proc.pid} is gone")
        return cpu

    async def stop(self) -> None:
        if self.proc is None:
            return
        with trio.CancelScope(shield=True):
            await self.proc.stdin.aclose()
            with trio.move_on_after(10):
                await self.proc.wait()
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()


# ==========================================================================================
# clients


async def read_response(stream: trio.SocketStream, buf: bytearray) -> tuple[int, bytes]:
    """One response off a keep-alive stream; ``buf`` carries bytes read past it. A response
    saying ``Connection: close`` comes back with a negative status (the caller reconnects)."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end])
            i = head.lower().find(b"content-length:")
            length = int(head[i + 15:].split(b"\r\n", 1)[0]) if i >= 0 else 0
            total = end + 4 + length
            while len(buf) < total:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise EOFError("closed inside a body")
                buf += chunk
            body = bytes(buf[end + 4:total])
            del buf[:total]
            status = int(head.split(b" ", 2)[1])
            return (-status if b"\r\nconnection: close" in head.lower() else status), body
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise EOFError("closed before a response")
        buf += chunk


async def load(port: int, request: bytes, clients: int, max_requests: int,
               max_secs: float) -> tuple[int, float, list[float], int]:
    """``clients`` keep-alive connections sending ``request`` back to back until
    ``max_requests`` in all or ``max_secs``; returns (done, elapsed, latencies, non-2xx)."""
    done = 0
    errors = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + max_secs

    async def one() -> None:
        nonlocal done, errors
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buf = bytearray()
        try:
            while done < max_requests and time.perf_counter() < deadline:
                done += 1
                t0 = time.perf_counter()
                await stream.send_all(request)
                status, _ = await read_response(stream, buf)
                latencies.append(time.perf_counter() - t0)
                if status < 0:  # hypercorn's keep-alive limit (1,000 requests): reconnect
                    await stream.aclose()
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    buf.clear()
                if not 200 <= abs(status) < 300:
                    errors += 1
        finally:
            await stream.aclose()

    t0 = time.perf_counter()
    with trio.fail_after(max_secs + 30):
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(one)
    return done, time.perf_counter() - t0, latencies, errors


def http(method: str, path: str, body: bytes | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\n{AUTH}"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


async def long_poll_round(child: Child, waiters: int) -> list[float]:
    """``waiters`` held checkForUpdates, then one change; seconds from the change request to
    each complete response."""
    port = child.port
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(http("POST", "/osc/state", b"{}"))
        _, body = await read_response(stream, bytearray())
    finally:
        await stream.aclose()
    fp = json.loads(body).get("fingerprint", "0") if body.startswith(b"{\"f") else "0"
    request = http("POST", "/osc/checkForUpdates",
                   json.dumps({"stateFingerprint": fp, "waitTimeout": 60}).encode())
    arrived: list[float] = []
    sent = 0

    async def one() -> None:
        nonlocal sent
        s = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            await s.send_all(request)
            sent += 1
            await read_response(s, bytearray())
            arrived.append(time.perf_counter())
        finally:
            await s.aclose()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(waiters):
                nursery.start_soon(one)
            while sent < waiters:
                await trio.sleep(0.01)
            await trio.sleep(0.5 + waiters / 2000)  # the server parses and parks them
            t0 = time.perf_counter()
            await child.change()
    return sorted(t - t0 for t in arrived)


# ==========================================================================================
# main


async def bench(args: argparse.Namespace) -> None:
    quick = args.quick
    events = 2_000 if quick else 10_000
    max_secs = 2.0 if quick else 5.0
    max_requests = 2_000 if quick else 20_000
    rounds = 2 if quick else 5
    waiters = 1000
    out(f"hubruntime HTTP API benchmark ({os.cpu_count()} CPUs, python "
        f"{sys.version.split()[0]}); event log {events} rows; loops bounded by "
        f"{max_requests} requests / {max_secs:.0f} s")
    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        hub = Child("hub", tmp, events)
        await hub.start()
        try:
            out("\n== ours (ApiService)")
            listing = http("GET", "/api/v2/storage/events/?limit=20")
            listing_meta = http("GET", "/api/v2/storage/events/?limit=100&include_meta=true"
                                "&order_by=time&offset=500")
            create = http("POST", "/api/v2/storage/events/", json.dumps(
                {"camid": "cam1", "name": "memory_low", "meta": {"who": "bench"}}).encode())
            status = http("GET", "/api/1/status")
            for label, request in (("status", status), ("list limit=20", listing),
                                   ("list limit=100 meta", listing_meta),
                                   ("create event", create)):
                for clients in (1, 16):
                    cpu0 = hub.cpu_secs()
                    done, elapsed, lat, errors = await load(hub.port, request, clients,
                                                            max_requests, max_secs)
                    cpu = hub.cpu_secs() - cpu0
                    out(f"{label:<22} {clients:>2} clients: {done / elapsed:7.0f} req/s, "
                        f"p50 {pct(lat, 50) * 1000:6.2f} ms, p99 {pct(lat, 99) * 1000:6.2f} ms, "
                        f"server CPU {cpu / max(done, 1) * 1e6:5.0f} µs/req"
                        + (f", {errors} errors" if errors else ""))
            out(f"\nlong-poll wake-up, {waiters} held checkForUpdates, change → each response:")
            for i in range(rounds):
                lat = await long_poll_round(hub, waiters)
                out(f"  round {i + 1}: {len(lat)} answered, p50 {pct(lat, 50) * 1000:6.1f} ms, "
                    f"p99 {pct(lat, 99) * 1000:6.1f} ms, max {lat[-1] * 1000:6.1f} ms")
        finally:
            await hub.stop()

        out("\n== peer baseline: bare hypercorn ASGI app (fixed JSON, one shared event)")
        bare = Child("bare", tmp, 0)
        await bare.start()
        try:
            fixed = http("GET", "/x")
            for clients in (1, 16):
                cpu0 = bare.cpu_secs()
                done, elapsed, lat, errors = await load(bare.port, fixed, clients,
                                                        max_requests, max_secs)
                cpu = bare.cpu_secs() - cpu0
                out(f"{'fixed JSON':<22} {clients:>2} clients: {done / elapsed:7.0f} req/s, "
                    f"p50 {pct(lat, 50) * 1000:6.2f} ms, p99 {pct(lat, 99) * 1000:6.2f} ms, "
                    f"server CPU {cpu / max(done, 1) * 1e6:5.0f} µs/req")
            out(f"\nbare long-poll wake-up, {waiters} held:")
            for i in range(rounds):
                lat = await long_poll_round(bare, waiters)
                out(f"  round {i + 1}: {len(lat)} answered, p50 {pct(lat, 50) * 1000:6.1f} ms, "
                    f"p99 {pct(lat, 99) * 1000:6.1f} ms, max {lat[-1] * 1000:6.1f} ms")
        finally:
            await bare.stop()
    out("\n(figures from one run on a shared machine: sizes, not promises)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smaller, shorter run")
    parser.add_argument("--child", choices=("hub", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--events", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dir, args.events)
    else:
        trio.run(bench, args)


if __name__ == "__main__":
    main()
