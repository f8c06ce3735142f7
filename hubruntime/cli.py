"""``hubruntime``: the command line. Flags here are interfaces people script against: keep them."""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import tempfile
from pathlib import Path

import trio

from hubruntime.config import ConfigError, HubConfig, load_config
from hubruntime.logsetup import setup_logging
from hubruntime.redact import redact

log = logging.getLogger("hubruntime.cli")


def _config(args: argparse.Namespace) -> HubConfig:
    return load_config(
        getattr(args, "config", None),
        data_dir=getattr(args, "data_dir", None),
        plugin_dirs=tuple(getattr(args, "plugins", None) or ()),
        rtsp_port=getattr(args, "rtsp_port", None),
    )


# hubruntime run ----------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from hubruntime.hub import Hub

    cfg = _config(args)
    setup_logging(cfg.log_level, cfg.log_file)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
            await nursery.start(Hub(cfg).run)

    trio.run(main)
    return 0


async def _stop_on_signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s received: stopping", signal.Signals(signum).name)
            scope.cancel()
            return


# hubruntime streams ------------------------------------------------------------------------
def cmd_streams(args: argparse.Namespace) -> int:
    from hubruntime.store import Store
    from hubruntime.streams.manager import StreamError, StreamManager

    cfg = _config(args)
    setup_logging("WARNING")

    async def main() -> int:
        store = Store(cfg.db_path)
        try:
            manager = StreamManager(store)
            if args.action == "add":
                await manager.add(args.stream_id, args.name, args.rtsp_url, args.description)
                print(f"added {args.stream_id}")
            elif args.action == "remove":
                await manager.remove(args.stream_id)
                print(f"removed {args.stream_id}")
            elif args.action == "list":
                for rec in await manager.list():
                    print(f"{rec.stream_id}\t{rec.name}\t{redact(rec.rtsp_url)}\t{rec.description}")
            elif args.action == "info":
                rec = await manager.get(args.stream_id)
                if rec is None:
                    raise StreamError(f"no stream '{args.stream_id}'")
                info = manager.info(rec)
                info.pop("state")
                info.pop("live")
                print(json.dumps(info, indent=2, ensure_ascii=False))
            return 0
        except StreamError as exc:
            print(f"hubruntime streams {args.action}: {exc}", file=sys.stderr)
            return 1
        finally:
            store.close()

    return trio.run(main)


# hubruntime plugin check -------------------------------------------------------------------
_REQUIRE = re.compile(r"""require\s*\(?\s*["']([A-Za-z0-9_.:/-]+)["']""")


def check_plugin(folder: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) for a plugin folder: manifest, then every script compiled."""
    from hubruntime.lua.manifest import ManifestError, load_plugin
    from hubruntime.lua.runtime import HUB_MODULES, LuaSandbox, ScriptError

    try:
        plugin = load_plugin(folder)
    except ManifestError as exc:
        return [str(exc)], []
    errors: list[str] = []
    warnings = list(plugin.warnings)
    sandbox = LuaSandbox(plugin.id, plugin.permissions, lambda *a: (False, "check"),
                         lambda *a: None)
    prefix = f"HUB:{plugin.id}/"
    for name, source in plugin.scripts.items():
        path = folder / f"{name}.lua"
        try:
            sandbox.compile(name, source)
        except ScriptError as exc:
            errors.append(str(exc).replace(prefix + name, str(path), 1))
        for lineno, line in enumerate(source.splitlines(), 1):
            for module in _REQUIRE.findall(line):
                if module in HUB_MODULES and module not in plugin.permissions:
                    warnings.append(f"{path}:{lineno}: require('{module}') is not granted by "
                                    "\"permissions\" in config.json: it will fail at run time")
    if not plugin.scripts:
        warnings.append(f"{folder / 'scripts'}: no .lua scripts")
    return errors, warnings


def cmd_plugin_check(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    errors, warnings = check_plugin(folder)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        print(f"{folder}: {len(errors)} error(s)", file=sys.stderr)
        return 1
    print(f"{folder}: ok")
    return 0


# hubruntime plugin run ---------------------------------------------------------------------
def cmd_plugin_run(args: argparse.Namespace) -> int:
    from hubruntime.lua.devrun import run_plugin_with_events

    setup_logging("WARNING")
    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="hubrt-"))
    cfg = load_config(args.config, data_dir=data_dir)
    return trio.run(run_plugin_with_events, cfg, Path(args.dir), Path(args.events),
                    args.linger)


# hubruntime demo / fakecam ---------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from hubruntime.demo import run_demo

    setup_logging("INFO")
    return trio.run(run_demo, args.data_dir, args.duration)


def cmd_fakecam(args: argparse.Namespace) -> int:
    from hubruntime.fakecam.cli import run

    return run(args)


# parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hubruntime", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, config: bool = True) -> None:
        if config:
            sp.add_argument("--config", type=Path, help="TOML config file")
        sp.add_argument("--data-dir", type=Path, help="state folder (database, storage)")

    run = sub.add_parser("run", help="run the hub")
    common(run)
    run.add_argument("--plugins", type=Path, action="append", metavar="DIR",
                     help="a plugin folder, or a folder of plugin folders (repeatable)")
    run.add_argument("--rtsp-port", type=int, metavar="PORT",
                     help="port of the hub's RTSP server for viewers (default 5554)")
    run.set_defaults(func=cmd_run)

    streams = sub.add_parser("streams", help="the camera stream registry")
    ssub = streams.add_subparsers(dest="action", required=True)
    add = ssub.add_parser("add", help="register a camera stream")
    add.add_argument("stream_id", metavar="STREAM_ID")
    add.add_argument("name", metavar="NAME")
    add.add_argument("rtsp_url", metavar="RTSP_URL")
    add.add_argument("--description", default="", metavar="TEXT")
    for name, help_ in (("list", "list streams"), ("remove", "delete a stream"),
                        ("info", "show a stream")):
        sp = ssub.add_parser(name, help=help_)
        if name != "list":
            sp.add_argument("stream_id", metavar="STREAM_ID")
        common(sp)
    common(add)
    streams.set_defaults(func=cmd_streams)

    demo = sub.add_parser("demo", help="fake camera + hub + example plugin printing events")
    demo.add_argument("--data-dir", type=Path, help="state folder (default: a new temp folder)")
    demo.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                      help="stop after this long (default: run until Ctrl-C)")
    demo.set_defaults(func=cmd_demo)

    from hubruntime.fakecam.cli import add_arguments as fakecam_arguments

    fake = sub.add_parser("fakecam", help="serve a clip over RTSP with injectable faults")
    fakecam_arguments(fake)
    fake.set_defaults(func=cmd_fakecam)

    plugin = sub.add_parser("plugin", help="plugin author tools")
    psub = plugin.add_subparsers(dest="action", required=True)
    check = psub.add_parser("check", help="validate config.json and compile every script")
    check.add_argument("dir", metavar="DIR")
    check.set_defaults(func=cmd_plugin_check)
    prun = psub.add_parser("run", help="feed recorded events (JSON lines) into a plugin")
    prun.add_argument("dir", metavar="DIR")
    prun.add_argument("--events", required=True, metavar="FILE.jsonl")
    prun.add_argument("--linger", type=float, default=0.0, metavar="SECONDS",
                      help="keep running this long after the last event (for timers)")
    common(prun)
    prun.set_defaults(func=cmd_plugin_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"hubruntime: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

