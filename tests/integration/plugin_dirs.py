"""Plugin folders as a plugin author lays them out (``config.json`` + ``scripts/*.lua``), written
by the integration tests that need a real Lua plugin in a real worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SUBSCRIBE = 'require("cameras").subscribe("scripts/handler")'
"""A startup script subscribing ``scripts/handler`` to every event."""


def make_plugin(root: Path, pid: str, scripts: dict[str, str], perms: list[str] | None = None,
                startup: str | None = "scripts/startup", teardown: str | None = None) -> Path:
    """``root/pid`` with a manifest granting ``perms`` (default: cameras, logging, storage,
    timer) and one ``scripts/<name>.lua`` per entry of ``scripts``."""
    folder = root / pid
    (folder / "scripts").mkdir(parents=True)
    manifest: dict[str, Any] = {"id": pid, "version": "1.0",
                                "permissions": perms or ["cameras", "logging", "storage", "timer"]}
    if startup:
        manifest["startup"] = startup
    if teardown:
        manifest["teardown"] = teardown
    (folder / "config.json").write_text(json.dumps(manifest))
    for name, src in scripts.items():
        (folder / "scripts" / f"{name}.lua").write_text(src)
    return folder


def subscriber_plugin(root: Path, pid: str, handler: str, perms: list[str]) -> Path:
    """A plugin whose startup subscribes ``handler`` to every event."""
    return make_plugin(root, pid, {"startup": SUBSCRIBE, "handler": handler}, perms)
