"""SIGKILL a process mid-write and check that every write it reported as committed survived.

This is the property the store's durability docstring promises (WAL + synchronous=NORMAL keeps
committed transactions across a process crash). The child (``_store_writer.py``) prints a line
after each committed write; the parent kills it while it is still writing, reopens the file and
compares. Bounded: at most COMMITS lines or COLLECT_SECONDS of collecting, then the kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from hubruntime.store import Store

REPO_ROOT = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("_store_writer.py")
BATCH = 5  # must match _store_writer.BATCH
COMMITS = 300
COLLECT_SECONDS = 10.0
TOTAL_SECONDS = 30.0


def _complete_lines(buf: bytearray) -> list[str]:
    """Pop the complete lines off ``buf``; a trailing partial line (cut by the kill) stays."""
    end = buf.rfind(b"\n")
    if end < 0:
        return []
    lines = buf[:end].decode().split("\n")
    del buf[: end + 1]
    return lines


async def test_committed_writes_survive_sigkill(tmp_path: Path) -> None:
    db_path = tmp_path / "data" / "hub.db"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    stderr_path = tmp_path / "writer.stderr"

    lines: list[str] = []
    buf = bytearray()
    with trio.fail_after(TOTAL_SECONDS), stderr_path.open("wb") as stderr:
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(WRITER), str(db_path)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
        try:
            assert proc.stdout is not None
            eof = False
            with trio.move_on_after(COLLECT_SECONDS):
                while len(lines) < COMMITS:
                    chunk = await proc.stdout.receive_some(65536)
                    if not chunk:
                        eof = True
                        break
                    buf += chunk
                    lines += _complete_lines(buf)
            assert not eof, f"writer exited early: {stderr_path.read_text()}"
            proc.kill()  # SIGKILL: no atexit, no close(), no checkpoint
            await proc.wait()
            # Lines the child wrote before dying describe committed writes too.
            while chunk := await proc.stdout.receive_some(65536):
                buf += chunk
            lines += _complete_lines(buf)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == -signal.SIGKILL, stderr_path.read_text()
    assert lines, f"writer reported no commit within {COLLECT_SECONDS}s: {stderr_path.read_text()}"

    streams: set[str] = set()
    storage: dict[str, str] = {}
    last_seq = 0
    counter = 0
    for line in lines:
        tag, kind, *rest = line.split(" ")
        assert tag == "C", line
        if kind == "stream":
            streams.add(rest[0])
        elif kind == "storage":
            storage[rest[0]] = rest[1]
        elif kind == "events":
            first, last = int(rest[0]), int(rest[1])
            assert first == last_seq + 1 and last == first + BATCH - 1, line
            last_seq = last
        elif kind == "counter":
            counter = int(rest[0])
        else:
            raise AssertionError(f"unknown line {line!r}")

    store = await trio.to_thread.run_sync(Store, db_path)
    try:
        assert store.integrity_check() == "ok"

        # Every reported write is there...
        stored_streams = {r.stream_id for r in store.list_streams()}
        assert streams <= stored_streams
        stored_keys = set(store.storage_keys("crash")) - {"counter"}
        assert set(storage) <= stored_keys
        for key, value in storage.items():
            assert store.storage_get("crash", key) == value
        stored_seqs = [e["seq"] for e in store.list_events(limit=1_000_000)]
        # ...each event batch is all-or-nothing and in order...
        assert stored_seqs == list(range(1, len(stored_seqs) + 1))
        assert len(stored_seqs) % BATCH == 0
        assert len(stored_seqs) >= last_seq
        for e in store.list_events(after_seq=last_seq - BATCH, limit=BATCH):
            assert e["payload"]["seq"] == e["seq"]
        stored_counter = int(store.storage_get("crash", "counter") or "0")
        assert stored_counter in (counter, counter + 1)

        # ...and at most one write committed without being reported (the child writes strictly
        # one after another, so only the write in flight at the kill can be unreported).
        unreported = (
            len(stored_streams - streams)
            + len(stored_keys - set(storage))
            + (len(stored_seqs) - last_seq) // BATCH
            + (stored_counter - counter)
        )
        assert unreported <= 1, unreported
    finally:
        store.close()
