"""Store round trips on real SQLite files: every method, migrations, WAL, threads."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import trio

from hubruntime.store import (
    MIGRATIONS,
    DuplicateStreamError,
    SchemaTooNewError,
    Store,
    StreamRecord,
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "hub.db"


@pytest.fixture
def store(db_path: Path):
    s = Store(db_path)
    yield s
    s.close()


def _event(seq: int, name: str = "stream.up", stream_id: str | None = "cam1"):
    payload = {"name": name, "seq": seq, "stream_id": stream_id, "extra": [1, "two"]}
    return (seq, f"2024-01-01T00:00:{seq % 60:02d}Z", name, stream_id, json.dumps(payload))


# -- opening, pragmas, migrations ---------------------------------------------------------------


def test_open_creates_parent_dirs_and_migrates(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "hub.db"
    with Store(str(path)) as s:
        assert s.path == path
        assert path.exists()
        assert s.schema_version() == len(MIGRATIONS)
        assert s.integrity_check() == "ok"


def test_migration_from_empty_file_sets_version(db_path: Path) -> None:
    db_path.touch()
    assert db_path.stat().st_size == 0
    with Store(db_path) as s:
        assert s.schema_version() == len(MIGRATIONS)
    conn = sqlite3.connect(db_path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        versions = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    finally:
        conn.close()
    assert {"streams", "plugin_storage", "event_log", "schema_version"} <= tables
    assert {"event_log_name_seq", "event_log_stream_seq"} <= indexes
    assert versions == [(v,) for v in range(1, len(MIGRATIONS) + 1)]


def test_reopen_does_not_rerun_migrations(db_path: Path) -> None:
    with Store(db_path) as s:
        s.add_stream(StreamRecord("cam1", "Cam", "rtsp://x/1"))

    def version_rows() -> list[tuple[int, float]]:
        conn = sqlite3.connect(db_path)
        try:
            return conn.execute("SELECT version, applied_at FROM schema_version").fetchall()
        finally:
            conn.close()

    before = version_rows()
    for _ in range(2):
        with Store(db_path) as s:
            assert s.schema_version() == len(MIGRATIONS)
            assert [r.stream_id for r in s.list_streams()] == ["cam1"]
    # Same rows, same applied_at: nothing was applied again (migration 1 would also fail on
    # CREATE TABLE of an existing table).
    assert version_rows() == before


def test_failed_migration_rolls_back_entirely(db_path: Path) -> None:
    # A pre-existing event_log makes migration 1 fail at its third statement, after it has
    # created streams and plugin_storage; none of that may survive.
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE event_log (x)")
    conn.commit()
    conn.close()
    with pytest.raises(sqlite3.OperationalError, match="event_log"):
        Store(db_path)
    conn = sqlite3.connect(db_path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert tables == {"event_log"}


def test_newer_schema_is_refused(db_path: Path) -> None:
    Store(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute("INSERT INTO schema_version VALUES (?, 0)", (len(MIGRATIONS) + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(SchemaTooNewError, match=str(len(MIGRATIONS) + 1)):
        Store(db_path)


def test_pragmas(store: Store) -> None:
    conn = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_wal_mode_is_persistent_in_file(db_path: Path) -> None:
    Store(db_path).close()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_close_is_idempotent_and_later_calls_fail(db_path: Path) -> None:
    s = Store(db_path)
    s.close()
    s.close()
    with pytest.raises(sqlite3.ProgrammingError):
        s.list_streams()


# -- streams ------------------------------------------------------------------------------------


def test_stream_round_trip(store: Store) -> None:
    before = time.time()
    stored = store.add_stream(StreamRecord("cam1", "Front door", "rtsp://10.0.0.5/s", "porch"))
    assert before <= stored.created_at <= time.time()
    assert stored == StreamRecord(
        "cam1", "Front door", "rtsp://10.0.0.5/s", "porch", stored.created_at
    )
    assert store.get_stream("cam1") == stored
    assert store.get_stream("nope") is None

    explicit = store.add_stream(StreamRecord("cam0", "Back", "rtsp://b", created_at=5.0))
    assert explicit.created_at == 5.0
    assert store.list_streams() == [explicit, stored]  # ordered by created_at

    assert store.remove_stream("cam1") is True
    assert store.remove_stream("cam1") is False
    assert store.get_stream("cam1") is None
    assert store.list_streams() == [explicit]


def test_list_streams_ties_ordered_by_id(store: Store) -> None:
    for sid in ["c", "a", "b"]:
        store.add_stream(StreamRecord(sid, sid, "rtsp://x", created_at=1.0))
    assert [r.stream_id for r in store.list_streams()] == ["a", "b", "c"]


def test_duplicate_stream_raises_with_id(store: Store) -> None:
    first = store.add_stream(StreamRecord("garage-cam", "Garage", "rtsp://g"))
    with pytest.raises(DuplicateStreamError, match="garage-cam") as info:
        store.add_stream(StreamRecord("garage-cam", "Other", "rtsp://other"))
    assert info.value.stream_id == "garage-cam"
    assert store.get_stream("garage-cam") == first  # unchanged


def test_not_null_violation_is_not_reported_as_duplicate(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError) as info:
        store.add_stream(StreamRecord("cam1", None, "rtsp://x"))  # type: ignore[arg-type]
    assert not isinstance(info.value, DuplicateStreamError)
    assert store.list_streams() == []


# -- plugin storage -----------------------------------------------------------------------------


def test_storage_round_trip(store: Store) -> None:
    assert store.storage_get("p1", "k") is None
    assert store.storage_keys("p1") == []
    store.storage_set("p1", "k", '{"a": 1}')
    store.storage_set("p1", "b", "[1, 2]")
    store.storage_set("p2", "k", '"other plugin"')
    assert store.storage_get("p1", "k") == '{"a": 1}'
    store.storage_set("p1", "k", "42")  # overwrite
    assert store.storage_get("p1", "k") == "42"
    assert store.storage_keys("p1") == ["b", "k"]
    assert store.storage_keys("p2") == ["k"]
    assert store.storage_delete("p1", "k") is True
    assert store.storage_delete("p1", "k") is False
    assert store.storage_get("p1", "k") is None
    assert store.storage_get("p2", "k") == '"other plugin"'


# -- event log ----------------------------------------------------------------------------------


def test_events_round_trip(store: Store) -> None:
    assert store.last_event_seq() == 0
    assert store.list_events() == []
    store.append_events([_event(1), _event(2, "stream.down", None)])
    assert store.last_event_seq() == 2
    events = store.list_events()
    assert events == [
        {
            "seq": 1,
            "time": "2024-01-01T00:00:01Z",
            "name": "stream.up",
            "stream_id": "cam1",
            "payload": {"name": "stream.up", "seq": 1, "stream_id": "cam1", "extra": [1, "two"]},
        },
        {
            "seq": 2,
            "time": "2024-01-01T00:00:02Z",
            "name": "stream.down",
            "stream_id": None,
            "payload": {"name": "stream.down", "seq": 2, "stream_id": None, "extra": [1, "two"]},
        },
    ]
    assert store.count_events() == 2


def test_append_events_ignores_existing_seq(store: Store) -> None:
    store.append_events([_event(1, "first")])
    store.append_events(iter([_event(1, "retry"), _event(2)]))  # any iterable
    assert [(e["seq"], e["name"]) for e in store.list_events()] == [(1, "first"), (2, "stream.up")]


def test_append_events_batch_is_atomic(store: Store) -> None:
    bad = (3, "t", None, None, "{}")  # name NOT NULL
    with pytest.raises(sqlite3.IntegrityError):
        store.append_events([_event(1), _event(2), bad])  # type: ignore[list-item]
    assert store.count_events() == 0


def test_list_events_filters_and_paging(store: Store) -> None:
    rows = []
    for seq in range(1, 31):
        name = ["a", "b", "c"][seq % 3]
        sid = None if seq % 5 == 0 else f"cam{seq % 2}"
        rows.append(_event(seq, name, sid))
    store.append_events(rows)

    def seqs(**kw) -> list[int]:
        return [e["seq"] for e in store.list_events(**kw)]

    assert seqs(limit=1000) == list(range(1, 31))
    assert seqs() == list(range(1, 31))  # default limit 100
    assert seqs(limit=5) == [1, 2, 3, 4, 5]
    assert seqs(limit=0) == []
    assert seqs(after_seq=25) == [26, 27, 28, 29, 30]
    assert seqs(after_seq=10, before_seq=14) == [11, 12, 13]
    assert seqs(newest_first=True, limit=3) == [30, 29, 28]
    assert seqs(newest_first=True, before_seq=28, limit=3) == [27, 26, 25]
    assert seqs(newest_first=True, after_seq=27) == [30, 29, 28]

    assert seqs(names=["a"]) == [s for s in range(1, 31) if s % 3 == 0]
    assert seqs(names=("a", "c")) == [s for s in range(1, 31) if s % 3 != 1]
    assert seqs(names=[]) == []
    assert seqs(stream_id="cam1") == [s for s in range(1, 31) if s % 2 and s % 5]
    assert seqs(names=["b"], stream_id="cam0", newest_first=True, limit=2) == [28, 22]

    assert store.count_events() == 30
    assert store.count_events(names=["a"]) == 10
    assert store.count_events(names=[]) == 0
    cam0 = [s for s in range(1, 31) if s % 2 == 0 and s % 5]
    assert store.count_events(stream_id="cam0") == len(cam0) == 12
    assert store.count_events(names=["b"], stream_id="cam0") == 4  # 4, 16, 22, 28

    # Forward paging by after_seq visits every event exactly once.
    seen, after = [], 0
    while page := store.list_events(after_seq=after, limit=7):
        seen += [e["seq"] for e in page]
        after = page[-1]["seq"]
    assert seen == list(range(1, 31))
    # Backward paging by before_seq likewise.
    seen, before = [], None
    while page := store.list_events(before_seq=before, limit=7, newest_first=True):
        seen += [e["seq"] for e in page]
        before = page[-1]["seq"]
    assert seen == list(range(30, 0, -1))

    with pytest.raises(ValueError):
        store.list_events(limit=-1)


def test_prune_keeps_newest(store: Store) -> None:
    assert store.prune_events(10) == 0
    store.append_events(_event(s) for s in range(1, 26))
    assert store.prune_events(100) == 0
    assert store.prune_events(10) == 15
    assert [e["seq"] for e in store.list_events()] == list(range(16, 26))
    assert store.last_event_seq() == 25
    assert store.prune_events(10) == 0
    assert store.prune_events(1) == 9
    assert [e["seq"] for e in store.list_events()] == [25]
    assert store.prune_events(0) == 1
    assert store.count_events() == 0
    with pytest.raises(ValueError):
        store.prune_events(-1)


# -- durability across reopen -------------------------------------------------------------------


def test_data_survives_close_and_reopen(db_path: Path) -> None:
    with Store(db_path) as s:
        rec = s.add_stream(StreamRecord("cam1", "Cam", "rtsp://x", "d"))
        s.storage_set("p", "k", '{"v": true}')
        s.append_events([_event(1), _event(2)])
    with Store(db_path) as s:
        assert s.list_streams() == [rec]
        assert s.storage_get("p", "k") == '{"v": true}'
        assert s.last_event_seq() == 2
        assert [e["seq"] for e in s.list_events()] == [1, 2]
        assert s.integrity_check() == "ok"


def test_committed_rows_visible_to_other_connection_before_close(db_path: Path) -> None:
    # Each write method commits on return, so another reader sees it while we are still open.
    with Store(db_path) as s:
        s.storage_set("p", "k", "1")
        other = sqlite3.connect(db_path)
        try:
            row = other.execute("SELECT value FROM plugin_storage").fetchone()
        finally:
            other.close()
    assert row == ("1",)


# -- threads ------------------------------------------------------------------------------------

THREADS = 4
WRITES = 200


def test_concurrent_threads_lose_nothing(store: Store) -> None:
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for i in range(WRITES):
                match i % 3:
                    case 0:
                        store.append_events([_event(t * 10_000 + i, f"t{t}")])
                    case 1:
                        store.storage_set(f"plugin{t}", f"k{i:03d}", str(i))
                    case 2:
                        store.add_stream(StreamRecord(f"s{t}-{i}", "n", "rtsp://x"))
                store.list_events(limit=5, newest_first=True)  # interleave reads
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads)
    assert errors == []

    per = {k: len([i for i in range(WRITES) if i % 3 == k]) for k in range(3)}
    assert store.count_events() == THREADS * per[0]
    for t in range(THREADS):
        assert store.count_events(names=[f"t{t}"]) == per[0]
        assert store.storage_keys(f"plugin{t}") == [
            f"k{i:03d}" for i in range(WRITES) if i % 3 == 1
        ]
    assert len(store.list_streams()) == THREADS * per[2]
    assert store.integrity_check() == "ok"


async def test_usable_from_trio_worker_threads(store: Store) -> None:
    async def writer(t: int) -> None:
        for i in range(50):
            await trio.to_thread.run_sync(store.storage_set, "p", f"{t}-{i}", str(i))

    async with trio.open_nursery() as nursery:
        for t in range(4):
            nursery.start_soon(writer, t)
    keys = await trio.to_thread.run_sync(store.storage_keys, "p")
    assert len(keys) == 200
