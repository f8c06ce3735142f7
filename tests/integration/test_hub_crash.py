"""A real ``hubruntime run`` killed with SIGKILL in the middle of writes reopens intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hubruntime.store import Store

PLUGIN = {
    "startup": """
        local timer = require("timer")
        timer.set_interval(10, "scripts/write")
    """,
    "write": """
        local storage = require("storage")
        n = (n or storage.get_number("n") or 0) + 1
        storage.set_number("n", n)
        storage.set_string("key" .. n, "value" .. n)
        require("logging").info("committed " .. n)
    """,
}


def test_sigkill_mid_writes_keeps_every_committed_row(tmp_path: Path) -> None:
    plugin = tmp_path / "plugins" / "test.writer"
    (plugin / "scripts").mkdir(parents=True)
    (plugin / "config.json").write_text(json.dumps({
        "id": "test.writer", "version": "1", "permissions": ["storage", "timer", "logging"],
        "startup": "scripts/startup"}))
    for name, src in PLUGIN.items():
        (plugin / "scripts" / f"{name}.lua").write_text(src)
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubruntime", "run", "--data-dir", str(data),
         "--plugins", str(plugin)],
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    committed = 0
    deadline = time.monotonic() + 30
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "committed " in line:
                committed = int(line.rsplit("committed ", 1)[1])
                if committed >= 60:
                    break
            assert time.monotonic() < deadline, "hub did not commit 60 writes in 30 s"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert committed >= 60
    with Store(data / "hub.sqlite3") as store:
        assert store.integrity_check() == "ok"
        n = json.loads(store.storage_get("test.writer", "n"))["v"]
        assert n >= committed  # every write the plugin saw committed is there
        for i in range(1, committed + 1):
            assert json.loads(store.storage_get("test.writer", f"key{i}"))["v"] == f"value{i}"


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.update(int(x) for x in text)
    return out


def test_workers_die_with_a_sigkilled_hub(tmp_path: Path) -> None:
    """A worker stuck in a C function must not outlive its hub."""
    plugin = tmp_path / "plugins" / "test.stuck"
    (plugin / "scripts").mkdir(parents=True)
    (plugin / "config.json").write_text(json.dumps({
        "id": "test.stuck", "version": "1", "permissions": ["logging", "timer"],
        "startup": "scripts/startup"}))
    (plugin / "scripts" / "startup.lua").write_text(
        'require("timer").set_timeout(10, "scripts/stuck")\n'
        'require("logging").info("ready")\n')
    (plugin / "scripts" / "stuck.lua").write_text(
        'require("logging").info("stuck now")\n'
        'string.find(string.rep("a", 50000), ".-.-.-b")\n')
    cfg = tmp_path / "hub.toml"
    cfg.write_text("[lua]\nwall_budget_secs = 60.0\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubruntime", "run", "--config", str(cfg), "--data-dir",
         str(tmp_path / "data"), "--plugins", str(plugin)],
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 30
        assert proc.stderr is not None
        for line in proc.stderr:
            if "stuck now" in line:
                break
            assert time.monotonic() < deadline
        workers = _children(proc.pid)
        assert workers, "no worker process found"
        os.kill(proc.pid, signal.SIGKILL)  # the hub only, not its process group
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{w}").exists() and "Z" not in _state(w) for w in workers):
            assert time.monotonic() < deadline, "a worker outlived its hub"
            time.sleep(0.05)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"
