"""Plugin folders: ``config.json`` validated, ``scripts/*.lua`` read.

A bad manifest names the file and the field, because a plugin author fixes it from that line
alone. Unknown fields are kept and ignored (plugins written for the Ezlo shape carry more).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubruntime.lua.runtime import HUB_MODULES

ID_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$")
SCRIPT_RE = re.compile(r"^[A-Za-z0-9_./-]+$")


class ManifestError(ValueError):
    """A plugin folder that cannot be loaded; the message starts with the file (and field)."""


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin folder: its manifest and the source of every script."""

    id: str
    version: str
    path: Path
    permissions: tuple[str, ...]
    scripts: dict[str, str] = field(repr=False)  # "scripts/<name>" -> source
    startup: str | None = None  # full address
    teardown: str | None = None
    execution_policy: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)
    warnings: tuple[str, ...] = ()

    def address(self, name: str) -> str:
        return f"HUB:{self.id}/{name}"


def _script_name(plugin_id: str, value: str) -> str | None:
    """``scripts/x``, ``x`` or ``HUB:<id>/scripts/x`` → ``scripts/x``; None if foreign."""
    prefix = f"HUB:{plugin_id}/"
    if value.startswith(prefix):
        value = value[len(prefix):]
    elif value.startswith("HUB:"):
        return None
    if value.endswith(".lua"):
        value = value[:-4]
    if not value.startswith("scripts/"):
        value = "scripts/" + value
    return value


def load_plugin(folder: str | Path) -> Plugin:
    folder = Path(folder)
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise ManifestError(f"{cfg}: missing (a plugin folder needs config.json)")
    try:
        raw = json.loads(cfg.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{cfg}: not UTF-8 text ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{cfg}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}"
        ) from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{cfg}: must hold a JSON object")

    def bad(name: str, why: str) -> ManifestError:
        return ManifestError(f"{cfg}: field '{name}': {why}")

    pid = raw.get("id")
    if not isinstance(pid, str) or not ID_RE.match(pid):
        raise bad("id", f"must be a string '<prefix>.<name>' (letters, digits, _ -), got {pid!r}")
    version = raw.get("version")
    if not isinstance(version, str) or not version:
        raise bad("version", f"must be a non-empty string, got {version!r}")
    perms = raw.get("permissions", [])
    if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
        raise bad("permissions", "must be a list of module names")
    warnings = []
    unknown = [p for p in perms if p not in HUB_MODULES]
    if unknown:
        warnings.append(f"{cfg}: field 'permissions': unknown module(s) {', '.join(unknown)} "
                        f"grant nothing here (known: {', '.join(HUB_MODULES)})")
    for name in ("meta", ):
        if name in raw and not isinstance(raw[name], dict):
            raise bad(name, "must be an object")
    policy = raw.get("executionPolicy")
    if policy is not None and not isinstance(policy, str):
        raise bad("executionPolicy", "must be a string")
    if folder.name != pid:
        warnings.append(f"{folder}: folder name differs from the plugin id '{pid}'")

    scripts_dir = folder / "scripts"
    scripts: dict[str, str] = {}
    if scripts_dir.is_dir():
        for path in sorted(scripts_dir.rglob("*.lua")):
            rel = path.relative_to(folder).with_suffix("").as_posix()
            if not SCRIPT_RE.match(rel):
                raise ManifestError(f"{path}: script file name must use letters, digits, _ . / -")
            try:
                scripts[rel] = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise ManifestError(f"{path}: not UTF-8 text ({exc})") from exc

    def script_field(name: str) -> str | None:
        value = raw.get(name)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise bad(name, f"must be a script address string, got {value!r}")
        rel = _script_name(pid, value)
        if rel is None:
            raise bad(name, f"'{value}' is another plugin's script")
        if rel not in scripts:
            raise bad(name, f"no script {folder / (rel + '.lua')}")
        return f"HUB:{pid}/{rel}"

    return Plugin(
        id=pid,
        version=version,
        path=folder,
        permissions=tuple(perms),
        scripts=scripts,
        startup=script_field("startup"),
        teardown=script_field("teardown"),
        execution_policy=policy,
        manifest=raw,
        warnings=tuple(warnings),
    )


def discover(dirs: tuple[Path, ...]) -> list[Path]:
    """Plugin folders under each dir (a dir that is itself a plugin counts as one)."""
    found: list[Path] = []
    for d in dirs:
        d = Path(d)
        if (d / "config.json").is_file():
            found.append(d)
        elif d.is_dir():
            found.extend(sorted(p for p in d.iterdir() if (p / "config.json").is_file()))
    return found
