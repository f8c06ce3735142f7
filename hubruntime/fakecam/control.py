"""The fake camera's control channel: one command per line over TCP on 127.0.0.1.

Why a text protocol: a test in another process, a shell (``echo 'stall 2' | nc 127.0.0.1 PORT``)
or the demo can all inject faults without a client library. Every line gets exactly one answer
line, ``ok <what>`` or ``error <why>``, so a caller can wait for the fault to be in effect.

    stall SECONDS        no packets on any track for SECONDS, then on at the live position
    stall-video SECONDS  the same for the video track only; audio goes on
    slow FACTOR          pace at FACTOR x real time from now (0 < FACTOR <= 100)
    skew SECONDS         RTP timestamps offset by SECONDS x clock rate from now (a clock jump)
    drop                 close every client connection now
    refuse               stop accepting connections until restore
    restore              clear every fault
    status               counters and faults as one line of JSON

Parsing (:func:`parse_command`) is pure; :func:`apply_command` and :func:`serve_control` do the
rest.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from hubruntime.fakecam.server import FakeCamera

log = logging.getLogger("hubruntime.fakecam")

MAX_LINE = 1024
MAX_STALL = 3600.0  # seconds; longer is surely a typo (and would skip an hour of packets)
MAX_SKEW = 86400.0
MAX_SLOW = 100.0

# each command and the name of its one numeric argument (None: it takes none)
COMMANDS: dict[str, str | None] = {
    "stall": "SECONDS",
    "stall-video": "SECONDS",
    "slow": "FACTOR",
    "skew": "SECONDS",
    "drop": None,
    "refuse": None,
    "restore": None,
    "status": None,
}


class CommandError(ValueError):
    """A command line that cannot be run; the message is what ``error`` answers."""


@dataclass(frozen=True)
class Command:
    name: str  # one of COMMANDS
    value: float | None = None  # its number, for the commands that take one

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name} {self.value:g}"


def parse_command(line: str) -> Command:
    """``"stall 2"`` → ``Command("stall", 2.0)``; :class:`CommandError` says what is wrong."""
    words = line.strip().split()
    if not words:
        raise CommandError("empty command")
    name, args = words[0].lower(), words[1:]
    if name not in COMMANDS:
        raise CommandError(f"unknown command {words[0][:40]!r} (known: {', '.join(COMMANDS)})")
    arg = COMMANDS[name]
    if arg is None:
        if args:
            raise CommandError(f"{name} takes no argument")
        return Command(name)
    if len(args) != 1:
        raise CommandError(f"usage: {name} {arg}")
    try:
        value = float(args[0])
    except ValueError:
        raise CommandError(f"{name}: {args[0][:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise CommandError(f"{name}: {arg} must be a finite number")
    if name in ("stall", "stall-video") and not 0 < value <= MAX_STALL:
        raise CommandError(f"{name}: {arg} must be > 0 and <= {MAX_STALL:g}")
    if name == "slow" and not 0 < value <= MAX_SLOW:
        raise CommandError(f"slow: FACTOR must be > 0 and <= {MAX_SLOW:g} (1 is real time)")
    if name == "skew" and abs(value) > MAX_SKEW:
        raise CommandError(f"skew: SECONDS must be within ±{MAX_SKEW:g}")
    return Command(name, value)


def apply_command(camera: FakeCamera, command: Command) -> str:
    """Run ``command`` on ``camera``; returns the text after ``ok``. Raises CommandError."""
    name, value = command.name, command.value
    try:
        if name == "status":
            return json.dumps(camera.status(), separators=(",", ":"))
        if name == "drop":
            return f"drop {camera.drop()} client(s)"
        if name == "refuse":
            camera.refuse()
        elif name == "restore":
            camera.restore()
        else:
            assert value is not None
            {"stall": camera.stall, "stall-video": camera.stall_video, "slow": camera.slow,
             "skew": camera.skew}[name](value)
    except (ValueError, OSError) as exc:  # e.g. no video track; the port taken while refusing
        raise CommandError(str(exc)) from None
    return str(command)


def answer(camera: FakeCamera, line: str) -> str:
    """The answer line (without newline) for one command line."""
    try:
        return "ok " + apply_command(camera, parse_command(line))
    except CommandError as exc:
        return f"error {exc}"


async def serve_control(camera: FakeCamera, host: str = "127.0.0.1", port: int = 0, *,
                        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Accept control connections until cancelled; ``task_status.started(port)``."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners[0].socket.getsockname()[1])

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await _control_connection(camera, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(handler, listeners)


async def _control_connection(camera: FakeCamera, stream: trio.SocketStream) -> None:
    buffer = b""
    while True:
        data = await stream.receive_some(4096)
        if not data:
            return
        buffer += data
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            reply = answer(camera, line)
            log.info("control: %s -> %s", line, reply if len(reply) < 80 else reply[:77] + "...")
            await stream.send_all(reply.encode() + b"\n")
        if len(buffer) > MAX_LINE:
            await stream.send_all(f"error line longer than {MAX_LINE} bytes\n".encode())
            return
