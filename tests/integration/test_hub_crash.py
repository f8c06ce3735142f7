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
