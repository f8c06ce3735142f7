"""``hubruntime plugin run``: the plugin author's test loop.

Recorded event tables (one JSON object per line) go through the real bus into the plugin's real
worker, with the real ``cameras``/``storage``/``timer`` functions on a scratch data folder; every
call the plugin makes and every line it logs is printed, so the author sees exactly what the hub
would do. A malformed line is reported with its line number and the rest still runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import trio

from hubruntime.config import HubConfig
from hubruntime.events.bus import EventBus
from hubruntime.events.catalogue import EventValidationError, UnknownEventError
from hubruntime.lua.manifest import ManifestError, load_plugin
from hubruntime.lua.modules.args import ApiError, CallContext, Handler
from hubruntime.lua.modules.cameras import CamerasModule
from hubruntime.lua.modules.storage import StorageModule
from hubruntime.lua.plugins import PluginHost
from hubruntime.redact import redact
from hubruntime.store import Store
from hubruntime.streams.manager import StreamManager


def _show(args: list[Any]) -> str:
    return redact(", ".join(json.dumps(a, ensure_ascii=False) for a in args))


def _printing(name: str, handler: Handler) -> Handler:
    async def call(ctx: CallContext, args: list[Any]) -> Any:
        try:
            result = await handler(ctx, args)
        except ApiError as exc:
            print(f"call  {ctx.where}: {name}({_show(args)}) -> error: {redact(str(exc))}",
                  flush=True)
            raise
        shown = "" if result is None else " -> " + redact(json.dumps(result, ensure_ascii=False))
        print(f"call  {ctx.where}: {name}({_show(args)}){shown}", flush=True)
        return result

    return call


async def run_plugin_with_events(cfg: HubConfig, folder: Path, events_path: Path,
                                 linger: float = 0.0) -> int:
    try:
        plugin = load_plugin(folder)
    except ManifestError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        lines = events_path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        print(f"{events_path}: {exc.strerror}", file=sys.stderr)
        return 1
    store = await trio.to_thread.run_sync(Store, cfg.db_path)
    bus = EventBus(first_seq=1)
    manager = StreamManager(store)
    handlers = {**CamerasModule(manager).handlers(), **StorageModule(store).handlers()}
    host = PluginHost(cfg.lua, bus, {})
    host.handlers = {name: _printing(name, h) for name, h in {**host.handlers,
                                                               **handlers}.items()}
    host.log_listeners.append(
        lambda pid, level, where, text: print(f"log   {where}: [{level}] {text}", flush=True))
    bad = 0
    published = 0
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(host.run, [plugin])
            runner = host.runners[plugin.id]
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                    if not isinstance(event, dict):
                        raise ValueError("a line must hold one JSON object (an event table)")
                    if "event" not in event:
                        raise ValueError("the object has no 'event' field")
                    bus.publish_event(event)
                    published += 1
                    print(f"event {events_path.name}:{lineno}: {event['event']}", flush=True)
                except json.JSONDecodeError as exc:
                    bad += 1
                    print(f"{events_path}:{lineno}: invalid JSON: {exc.msg} at column "
                          f"{exc.colno}", file=sys.stderr, flush=True)
                except (ValueError, EventValidationError, UnknownEventError) as exc:
                    bad += 1
                    msg = exc.args[0] if isinstance(exc, KeyError) else exc
                    print(f"{events_path}:{lineno}: {msg}", file=sys.stderr, flush=True)
                await runner.drained(cfg.lua.wall_budget_secs * 3 + 5)
            if linger > 0:
                await trio.sleep(linger)
                await runner.drained(cfg.lua.wall_budget_secs * 3 + 5)
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(store.close)
    stats = runner.stats
    print(f"done: {published} event(s) published, {bad} bad line(s), {stats.delivered} item(s) "
          f"run, {stats.failed} failed, {stats.restarts} worker restart(s)", flush=True)
    return 1 if bad or stats.failed or stats.startup_errors else 0
