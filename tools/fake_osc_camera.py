#!/usr/bin/env python3
"""A fake Open Spherical Camera: ``/osc/info``, ``/osc/state``, ``/osc/checkForUpdates``.

Why: no public camera-side code holds a checkForUpdates request (protocols.md §1.8), real
cameras answer at once, and the hub's OSC client must behave with both. This serves either
behaviour over real HTTP on 127.0.0.1 (hypercorn's trio worker, a tiny ASGI app), lets a test
change the state, make it fail, and count what it received.

Modes:

* ``longpoll``: true long polling. An unchanged fingerprint with ``waitTimeout`` is held until
  the state changes or the wait runs out (capped by ``max_hold``); ``throttleTimeout: 0``.
* ``immediate``: answers at once with ``throttleTimeout`` (default 0), like THETA and the
  emulators, i.e. the camera a client must not hammer.

Error modes (:meth:`FakeOscCamera.set_error`, ``/osc/*`` only): ``osc`` answers 503 with the §1.7
error body (``serverError``), ``http500`` a bare 500 with a text body, ``badjson`` 200 with a
truncated JSON body. ``None`` ends it.

In process (tests)::

    cam = FakeOscCamera(mode="longpoll")
    base_url = await nursery.start(cam.serve)
    cam.update({"batteryLevel": 0.5, "_gone": None})   # None removes a key

As a program: ``python tools/fake_osc_camera.py --port 0 --mode longpoll`` prints its base URL
as the first line of output, then serves until interrupted. Control it over HTTP:
``POST /control/set`` with a JSON object (the same as :meth:`update`), ``POST /control/bump``
(new fingerprint, same state), ``POST /control/error`` with ``{"mode": "osc" | "http500" |
"badjson" | null}``, ``GET /control/stats`` (request counts).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import trio

# Work from a checkout that is not installed too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypercorn.config import Config  # noqa: E402
from hypercorn.trio import serve as hypercorn_serve  # noqa: E402

from hubruntime.proto import osc  # noqa: E402
from hubruntime.proto.digest import DigestAuth  # noqa: E402

log = logging.getLogger("tools.fake_osc_camera")

MODES = ("longpoll", "immediate")
ERROR_MODES = ("osc", "http500", "badjson")

DEFAULT_STATE: dict[str, Any] = {
    "batteryLevel": 0.8,
    "storageUri": "http://127.0.0.1/storage/1",
    "_captureStatus": "idle",
}

Scope = dict[str, Any]


class FakeOscCamera:
    """The fake camera; one instance serves one port.

    ``throttle`` is the ``throttleTimeout`` of immediate mode; ``max_hold`` caps a long-poll hold
    whatever the client's ``waitTimeout``; ``auth=(user, password)`` requires Digest auth on the
    ``/osc/*`` endpoints (the ``/control`` ones stay open). The fingerprint is a counter
    (``FIG_0001``), as on Ricoh THETA, so :meth:`bump` can move it without a state change.

    What it saw: :attr:`requests` (path → count, every request), :attr:`poll_times`
    (``trio.current_time()`` of each checkForUpdates received), :attr:`xsrf_missing` (requests
    to ``/osc/*`` without ``X-XSRF-Protected: 1``), :attr:`unauthorized` (401s answered),
    :attr:`holding` (long polls being held right now).
    """

    def __init__(self, *, mode: str = "longpoll", state: dict[str, Any] | None = None,
                 throttle: int = 0, max_hold: float = 60.0,
                 auth: tuple[str, str] | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self.state: dict[str, Any] = dict(DEFAULT_STATE if state is None else state)
        self.throttle = throttle
        self.max_hold = max_hold
        self.host = host
        self.port = port
        self.base_url: str | None = None
        self.error: str | None = None
        self.requests: collections.Counter[str] = collections.Counter()
        self.poll_times: list[float] = []
        self.xsrf_missing = 0
        self.unauthorized = 0
        self.holding = 0
        self._counter = 1
        self._changed = trio.Event()
        self._auth = (DigestAuth("fake-osc-camera", {auth[0]: auth[1]})
                      if auth is not None else None)
        self._booted = time.monotonic()

    # -- control ---------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        return f"FIG_{self._counter:04d}"

    def update(self, changes: dict[str, Any]) -> str:
        """Merge ``changes`` into the state (a None value removes the key); wake held polls.
        Returns the new fingerprint (unchanged if nothing actually changed)."""
        new = dict(self.state)
        for key, value in changes.items():
            if value is None:
                new.pop(key, None)
            else:
                new[key] = value
        if new != self.state:
            self.state = new
            self._moved()
        return self.fingerprint

    def bump(self) -> str:
        """A new fingerprint with the same state (counter fingerprints can do that)."""
        self._moved()
        return self.fingerprint

    def set_error(self, mode: str | None) -> None:
        if mode is not None and mode not in ERROR_MODES:
            raise ValueError(f"error mode must be one of {', '.join(ERROR_MODES)} or None")
        self.error = mode

    def polls_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.poll_times if start <= t <= end)

    def stats(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "polls": len(self.poll_times),
                "xsrfMissing": self.xsrf_missing, "unauthorized": self.unauthorized,
                "holding": self.holding,
                "fingerprint": self.fingerprint, "error": self.error}

    def _moved(self) -> None:
        self._counter += 1
        self._changed.set()
        self._changed = trio.Event()

    # -- serving ---------------------------------------------------------------------------

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started(base_url)`` once listening."""
        cfg = Config()
        cfg.bind = [f"{self.host}:{self.port}"]
        cfg.errorlog = log
        cfg.accesslog = None
        cfg.graceful_timeout = 0.5
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(functools.partial(hypercorn_serve, self.app, cfg,
                                                          mode="asgi"))
            self.base_url = binds[0]
            self.port = int(self.base_url.rsplit(":", 1)[1])
            task_status.started(self.base_url)

    async def app(self, scope: Scope, receive: Any, send: Any) -> None:
        """The ASGI application."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        self.requests[path] += 1
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if path.startswith("/control/"):
            status, reply = self._control(method, path, body)
            await _send_json(send, status, reply)
            return
        if path == "/osc/checkForUpdates":
            self.poll_times.append(trio.current_time())
        if headers.get("x-xsrf-protected") != "1":
            self.xsrf_missing += 1
        if self._auth is not None:
            now = time.monotonic()
            if self._auth.check(method, path, headers.get("authorization"), now) is None:
                self.unauthorized += 1
                await _send(send, 401, b"", [("WWW-Authenticate", v)
                                             for v in self._auth.challenge(now)])
                return
        if self.error is not None and path.startswith("/osc/"):
            await self._send_error(send, path)
            return
        status, reply = await self._osc(method, path, body)
        await _send_json(send, status, reply)

    async def _osc(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if path == "/osc/info" and method == "GET":
            return 200, self._info()
        if path == "/osc/state" and method == "POST":
            return 200, osc.state_reply(self.fingerprint, self.state)
        if path == "/osc/checkForUpdates" and method == "POST":
            try:
                payload = json.loads(body) if body.strip() else None
            except ValueError:
                payload = None
            try:
                fp, wait = osc.parse_check_for_updates_request(payload)
            except osc.OscRequestError as exc:
                return exc.status, exc.body()
            if self.mode == "immediate":
                return 200, osc.check_for_updates_reply(self.fingerprint, self.throttle)
            if fp == self.fingerprint and wait:
                self.holding += 1
                try:
                    with trio.move_on_after(min(wait, self.max_hold)):
                        while fp == self.fingerprint:
                            await self._changed.wait()
                finally:
                    self.holding -= 1
            return 200, osc.check_for_updates_reply(self.fingerprint, 0)
        name = "camera." + path.rsplit("/", 1)[-1]
        return 400, osc.error_body(name, osc.UNKNOWN_COMMAND, f"{method} {path} is not served")

    def _info(self) -> dict[str, Any]:
        return {
            "manufacturer": "hubruntime", "model": f"fake OSC camera ({self.mode})",
            "serialNumber": "FAKE0001", "firmwareVersion": "1.0",
            "supportUrl": "https://example.invalid/support", "gps": False, "gyro": False,
            "uptime": int(time.monotonic() - self._booted),
            "api": ["/osc/info", "/osc/state", "/osc/checkForUpdates"],
            "endpoints": {"httpPort": self.port, "httpUpdatesPort": self.port},
            "apiLevel": [2],
        }

    async def _send_error(self, send: Any, path: str) -> None:
        if self.error == "osc":
            name = {"/osc/info": osc.NAME_INFO, "/osc/state": osc.NAME_STATE,
                    "/osc/checkForUpdates": osc.NAME_CHECK_FOR_UPDATES}.get(path, "camera")
            await _send_json(send, 503, osc.error_body(name, osc.SERVER_ERROR,
                                                       "the fake camera is told to fail"))
        elif self.error == "http500":
            await _send(send, 500, b"Internal Server Error",
                        [("Content-Type", "text/plain")])
        else:
            await _send(send, 200, b'{"stateFingerprint": "FIG_', list(osc.RESPONSE_HEADERS))

    def _control(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        try:
            payload = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            return 400, {"error": f"body is not JSON: {exc}"}
        try:
            if path == "/control/set" and method == "POST" and isinstance(payload, dict):
                return 200, {"fingerprint": self.update(payload)}
            if path == "/control/bump" and method == "POST":
                return 200, {"fingerprint": self.bump()}
            if path == "/control/error" and method == "POST" and isinstance(payload, dict):
                self.set_error(payload.get("mode"))
                return 200, {"error": self.error}
            if path == "/control/stats" and method == "GET":
                return 200, self.stats()
        except ValueError as exc:
            return 400, {"error": str(exc)}
        return 404, {"error": f"no control {method} {path}"}


async def _send(send: Any, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Any, status: int, obj: Any) -> None:
    await _send(send, status, osc.encode(obj), list(osc.RESPONSE_HEADERS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--mode", choices=MODES, default="longpoll")
    parser.add_argument("--throttle", type=int, default=0,
                        help="throttleTimeout answered in immediate mode")
    parser.add_argument("--max-hold", type=float, default=60.0,
                        help="longest long-poll hold, whatever waitTimeout asks")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="require Digest auth")
    args = parser.parse_args(argv)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    if auth is not None and len(auth) != 2:
        parser.error("--auth needs USER:PASSWORD")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    camera = FakeOscCamera(mode=args.mode, throttle=args.throttle, max_hold=args.max_hold,
                           auth=auth, port=args.port)  # type: ignore[arg-type]

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            base_url = await nursery.start(camera.serve)
            print(base_url, flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
