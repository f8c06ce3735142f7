"""``hubruntime fakecam`` (also ``tools/fakecam``, ``python -m hubruntime.fakecam.cli``).

Prints the URL it serves as the first line of stdout (then ``control: 127.0.0.1:<port>`` with
``--control``), so a script can start it and read one line to know where the camera is; logs go
to stderr. Runs until SIGINT/SIGTERM and then exits 0. Exit 1 if the clip cannot be made or the
port cannot be bound; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import trio

from hubruntime.fakecam.clip import ClipError, capture_packets, default_cache_dir, ensure_clip
from hubruntime.fakecam.control import (
    Command,
    CommandError,
    apply_command,
    parse_command,
    serve_control,
)
from hubruntime.fakecam.server import FakeCamera

log = logging.getLogger("hubruntime.fakecam")


def parse_fault(text: str) -> tuple[float, Command]:
    """``"5:stall 2"`` → ``(5.0, Command("stall", 2.0))``: a fault at 5 s after start."""
    at, sep, command = text.partition(":")
    if not sep:
        raise CommandError(f"{text!r}: expected AT:COMMAND, e.g. '5:stall 2'")
    try:
        seconds = float(at)
    except ValueError:
        raise CommandError(f"{text!r}: {at!r} is not a number of seconds") from None
    if not 0 <= seconds < float("inf"):
        raise CommandError(f"{text!r}: AT must be >= 0 seconds")
    return seconds, parse_command(command)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``fakecam`` options, for this module's parser and ``hubruntime fakecam``'s."""
    p.add_argument("--port", type=int, default=8554, help="RTSP port (default 8554; 0: any)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--path", default="cam", help="mount path (default: cam)")
    p.add_argument("--clip", type=Path, metavar="FILE",
                   help="clip to serve (default: a generated 10 s testsrc2 + tone clip)")
    p.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help=f"where the generated clip is kept (default {default_cache_dir()})")
    p.add_argument("--control", type=int, metavar="PORT",
                   help="serve the control channel on 127.0.0.1:PORT (0: any free port)")
    p.add_argument("--fault", action="append", default=[], metavar="AT:COMMAND",
                   help="run a control command AT seconds after start, e.g. '5:stall 2' "
                        "(repeatable)")
    p.add_argument("--user", help="require Basic authentication with this user (needs --password)")
    p.add_argument("--password", help="password for --user")
    p.add_argument("--log-level", default="INFO", help="stderr log level (default INFO)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hubruntime fakecam",
        description="A fake IP camera: a recorded clip served over RTSP/TCP at real-time pace, "
                    "looping, with faults injected on command.")
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the camera from parsed arguments (see :func:`add_arguments`); the exit code."""
    if (args.user is None) != (args.password is None):
        print("hubruntime fakecam: give --user and --password together", file=sys.stderr)
        return 2
    try:
        faults = sorted((parse_fault(f) for f in args.fault), key=lambda item: item[0])
    except CommandError as exc:
        print(f"hubruntime fakecam: --fault {exc}", file=sys.stderr)
        return 2
    from hubruntime.logsetup import setup_logging

    setup_logging(args.log_level)
    return trio.run(_main, args, faults)


async def _main(args: argparse.Namespace, faults: list[tuple[float, Command]]) -> int:
    # Signals are caught from the very start, so a SIGTERM during clip generation still ends
    # the process cleanly (exit 0) and kills FFmpeg.
    exit_code = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info("%s received: stopping", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            try:
                await _start(args, faults, nursery)
            except ClipError as exc:
                print(f"hubruntime fakecam: {exc}", file=sys.stderr)
                exit_code = 1
            except OSError as exc:
                print(f"hubruntime fakecam: cannot listen: {exc}", file=sys.stderr)
                exit_code = 1
            if exit_code:
                nursery.cancel_scope.cancel()
    return exit_code


async def _start(args: argparse.Namespace, faults: list[tuple[float, Command]],
                 nursery: trio.Nursery) -> None:
    """Make the clip, start the camera (and control channel, and scheduled faults) in
    ``nursery``, and print where they listen."""
    clip = await ensure_clip(args.clip, args.cache_dir or default_cache_dir())
    capture = await capture_packets(clip)
    camera = FakeCamera(capture, host=args.host, port=args.port, path=args.path,
                        user=args.user, password=args.password)
    url = await nursery.start(camera.serve)
    print(url, flush=True)
    if args.control is not None:
        port = await nursery.start(serve_control, camera, "127.0.0.1", args.control)
        print(f"control: 127.0.0.1:{port}", flush=True)
    nursery.start_soon(_scheduled_faults, camera, faults)


async def _scheduled_faults(camera: FakeCamera, faults: list[tuple[float, Command]]) -> None:
    start = trio.current_time()
    for at, command in faults:
        await trio.sleep_until(start + at)
        try:
            log.info("fault at %gs: %s: ok %s", at, command, apply_command(camera, command))
        except CommandError as exc:
            log.error("fault at %gs: %s: %s", at, command, exc)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``hubruntime fakecam [options]``; returns the exit code."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
