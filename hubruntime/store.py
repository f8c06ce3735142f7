"""The hub's persistent store: one SQLite file holding streams, plugin storage and the event log.

Why SQLite in WAL mode with ``synchronous=NORMAL``: every write method commits its own
transaction, and in WAL mode a committed transaction has been written to the ``-wal`` file before
``COMMIT`` returns. The hub process can therefore be killed at any instant (SIGKILL, OOM killer,
a crash in a native library) and every call that returned is still there when the file is
reopened. ``NORMAL`` skips the fsync on each commit, so only an *operating-system* crash or power
loss can lose the last few committed transactions; even then the database stays consistent
(it rolls back to an earlier commit, it never tears). That trade is what makes appending events
cheap enough to do on every event.

Why one connection behind a lock: trio calls the store through ``trio.to_thread.run_sync``, so
calls arrive from arbitrary worker threads. A single connection opened with
``check_same_thread=False`` and a ``threading.Lock`` around every method serialises them; the hub
writes little enough that a connection pool would only add ways to hit ``SQLITE_BUSY``.

The schema is versioned: :data:`MIGRATIONS` is a list of SQL scripts, applied in order, each in a
transaction together with the row recording it in ``schema_version``. A later change appends a
script; it never edits an applied one, because hubs in the field have already run it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MIGRATIONS",
    "DuplicateEventTypeError",
    "DuplicateStreamError",
    "EventTypeRecord",
    "SchemaTooNewError",
    "Store",
    "StreamRecord",
]

#: Migration ``n`` (1-based) is ``MIGRATIONS[n - 1]``. Append only: never edit or reorder, since
#: the version number stored in existing databases refers to positions in this list.
MIGRATIONS: list[str] = [
    # 1: streams, per-plugin key/value storage, event log.
    """
    CREATE TABLE streams (
        stream_id   TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        rtsp_url    TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        created_at  REAL NOT NULL
    );
    CREATE TABLE plugin_storage (
        plugin_id TEXT,
        key       TEXT,
        value     TEXT NOT NULL, -- JSON, encoded and decoded by the caller
        PRIMARY KEY (plugin_id, key)
    );
    CREATE TABLE event_log (
        seq       INTEGER PRIMARY KEY,
        time      TEXT NOT NULL, -- ISO 8601, UTC
        name      TEXT NOT NULL,
        stream_id TEXT,
        payload   TEXT NOT NULL  -- JSON of the whole event table
    );
    CREATE INDEX event_log_name_seq ON event_log (name, seq);
    CREATE INDEX event_log_stream_seq ON event_log (stream_id, seq);
    """,
    # 2: event types per camera (HTTP API, protocols.md §2.2) and each event's own time.
    # ``event_types`` holds the custom types created through the API (custom = 1) and the saved
    # settings of built-in types (custom = 0; a built-in type without a row has the defaults).
    # Rows go with their stream (ON DELETE CASCADE): a re-added stream id starts afresh.
    # ``event_time`` is when the event happened: the client-given time of an event created
    # through the API (source 'api', normalised to the same ISO text as ``time`` by the API),
    # otherwise the time the hub logged it. A VIRTUAL generated column, so the event log writer
    # keeps inserting the same five columns, and the index lets listings order and filter by it.
    """
    CREATE TABLE event_types (
        stream_id        TEXT NOT NULL REFERENCES streams (stream_id) ON DELETE CASCADE,
        name             TEXT NOT NULL,
        custom           INTEGER NOT NULL,
        notify           INTEGER NOT NULL,
        receive          INTEGER NOT NULL,
        generate_images  INTEGER NOT NULL,
        can_be_triggered INTEGER NOT NULL,
        created_at       REAL NOT NULL,
        PRIMARY KEY (stream_id, name)
    );
    ALTER TABLE event_log ADD COLUMN event_time TEXT GENERATED ALWAYS AS (
        CASE WHEN json_extract(payload, '$.source') = 'api'
             THEN COALESCE(json_extract(payload, '$.time'), time)
             ELSE time END
    ) VIRTUAL;
    CREATE INDEX event_log_event_time ON event_log (event_time, seq);
    """,
]

#: How long a statement waits for another connection's lock (e.g. ``hubruntime`` CLI tools
#: opening the same file) before failing with ``database is locked``.
BUSY_TIMEOUT_MS = 5_000


@dataclass(frozen=True)
class EventTypeRecord:
    """Settings of one event type of one camera (table ``event_types``).

    ``custom`` types were created through the HTTP API; a non-custom row only records changed
    settings of a built-in type. The flags are the VXG event-processing settings
    (protocols.md §2.2); ``can_be_triggered`` is only ever true for custom types, since a built-in
    type is triggerable exactly when the hub has a trigger for it.
    """

    stream_id: str
    name: str
    custom: bool
    notify: bool = False
    receive: bool = True
    generate_images: bool = False
    can_be_triggered: bool = False
    created_at: float = 0.0


class DuplicateEventTypeError(Exception):
    """An event type with this name already exists for this stream."""

    def __init__(self, stream_id: str, name: str) -> None:
        super().__init__(f"event type {name!r} already exists for stream {stream_id!r}")
        self.stream_id = stream_id
        self.name = name


@dataclass(frozen=True)
class StreamRecord:
    """A configured camera stream, as persisted.

    ``created_at`` of 0 means "not set yet": :meth:`Store.add_stream` stamps it, so callers do not
    have to agree on a clock.
    """

    stream_id: str
    name: str
    rtsp_url: str
    description: str = ""
    created_at: float = 0.0


class DuplicateStreamError(Exception):
    """A stream with this id already exists; the id is in the message and in :attr:`stream_id`."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(f"stream {stream_id!r} already exists")
        self.stream_id = stream_id


class SchemaTooNewError(RuntimeError):
    """The file was migrated by a newer hubruntime than this one.

    Refusing to open it is safer than guessing: an older hub writing to a newer schema could
    violate constraints the newer code relies on.
    """


def _split_statements(script: str) -> list[str]:
    """Split a migration script into single statements.

    ``sqlite3.Connection.executescript`` would be simpler, but it commits any open transaction
    first, which would make a migration non-atomic. ``sqlite3.complete_statement`` understands
    string literals, comments and trigger bodies, so a ``;`` inside them does not split.
    """
    statements: list[str] = []
    start = 0
    for i, ch in enumerate(script):
        if ch == ";" and sqlite3.complete_statement(script[start : i + 1]):
            statements.append(script[start : i + 1].strip())
            start = i + 1
    tail = script[start:].strip()
    if tail:
        statements.append(tail)
    return statements


class Store:
    """Thread-safe access to the hub's SQLite database at :attr:`path`.

    Every method takes the instance lock, so the store may be shared by all of trio's worker
    threads. Write methods commit before returning; see the module docstring for what that
    guarantees across crashes.
    """

    path: Path

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open (creating if needed) the database at ``path`` and bring its schema up to date."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: the sqlite3 module must not open transactions behind our back;
        # write methods issue BEGIN IMMEDIATE themselves and use ``with conn:`` to end them.
        self._conn = sqlite3.connect(
            self.path,
            check_same_thread=False,
            isolation_level=None,
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
        try:
            self._configure()
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    # -- lifecycle -----------------------------------------------------------------------------

    def _configure(self) -> None:
        """Set the per-connection pragmas the durability argument in the module docstring needs."""
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            # E.g. some network filesystems. Fail loudly rather than silently run with other
            # durability and concurrency properties than documented.
            raise sqlite3.OperationalError(f"{self.path}: cannot enable WAL (journal_mode={mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")

    def _migrate(self) -> None:
        """Apply the migrations this file has not seen yet, each atomically with its version row.

        The version is read *inside* the write transaction, so two processes opening a fresh file
        at once cannot both apply migration 1: the second waits on the lock, then sees version 1.
        """
        conn = self._conn
        with self._lock:
            for version, script in enumerate(MIGRATIONS, start=1):
                with conn:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute(
                        "CREATE TABLE IF NOT EXISTS schema_version ("
                        " version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
                    )
                    current = self._read_version()
                    if current > len(MIGRATIONS):
                        raise SchemaTooNewError(
                            f"{self.path}: schema version {current} is newer than this "
                            f"hubruntime supports ({len(MIGRATIONS)})"
                        )
                    if current >= version:
                        continue
                    for statement in _split_statements(script):
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                        (version, time.time()),
                    )

    def _read_version(self) -> int:
        row = self._conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the connection; idempotent. The last close also checkpoints the WAL file."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def schema_version(self) -> int:
        """Number of migrations applied to this file (equals ``len(MIGRATIONS)`` once open)."""
        with self._lock:
            return self._read_version()

    def integrity_check(self) -> str:
        """Result of ``PRAGMA integrity_check``: ``'ok'``, or the problems found, one per line."""
        with self._lock:
            rows = self._conn.execute("PRAGMA integrity_check").fetchall()
        return "\n".join(str(r[0]) for r in rows)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One locked write transaction: committed on normal exit, rolled back on an exception.

        ``BEGIN IMMEDIATE`` takes SQLite's write lock up front, so a second process holding the
        file makes us wait (``busy_timeout``) instead of failing mid-transaction on upgrade.
        """
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            yield self._conn

    # -- streams -------------------------------------------------------------------------------

    def add_stream(self, rec: StreamRecord) -> StreamRecord:
        """Insert ``rec`` and return it as stored (``created_at`` stamped if it was 0).

        Raises :class:`DuplicateStreamError` if the id is taken; the existing row is untouched.
        """
        if not rec.created_at:
            rec = dataclasses.replace(rec, created_at=time.time())
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO streams (stream_id, name, rtsp_url, description, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (rec.stream_id, rec.name, rec.rtsp_url, rec.description, rec.created_at),
                )
        except sqlite3.IntegrityError as exc:
            # Only the primary key means "duplicate"; NOT NULL violations stay IntegrityError.
            if exc.sqlite_errorname == "SQLITE_CONSTRAINT_PRIMARYKEY":
                raise DuplicateStreamError(rec.stream_id) from exc
            raise
        return rec

    def remove_stream(self, stream_id: str) -> bool:
        """Delete a stream; ``False`` if there was none with this id."""
        with self._write() as conn:
            cur = conn.execute("DELETE FROM streams WHERE stream_id = ?", (stream_id,))
            return cur.rowcount > 0

    def get_stream(self, stream_id: str) -> StreamRecord | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT stream_id, name, rtsp_url, description, created_at"
                " FROM streams WHERE stream_id = ?",
                (stream_id,),
            ).fetchone()
        return None if row is None else StreamRecord(*row)

    def list_streams(self) -> list[StreamRecord]:
        """All streams, oldest first, so the UI order is stable and matches insertion."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT stream_id, name, rtsp_url, description, created_at"
                " FROM streams ORDER BY created_at, stream_id"
            ).fetchall()
        return [StreamRecord(*row) for row in rows]

    # -- plugin storage ------------------------------------------------------------------------

    def storage_get(self, plugin_id: str, key: str) -> str | None:
        """The JSON text stored under ``key`` for ``plugin_id``, or ``None``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT value FROM plugin_storage WHERE plugin_id = ? AND key = ?",
                (plugin_id, key),
            ).fetchone()
        return None if row is None else str(row[0])

    def storage_set(self, plugin_id: str, key: str, value_json: str) -> None:
        """Create or replace a value. The text is stored as given: the caller owns the encoding,
        which keeps the store ignorant of Lua/JSON conversion rules."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO plugin_storage (plugin_id, key, value) VALUES (?, ?, ?)"
                " ON CONFLICT (plugin_id, key) DO UPDATE SET value = excluded.value",
                (plugin_id, key, value_json),
            )

    def storage_delete(self, plugin_id: str, key: str) -> bool:
        """Delete a value; ``False`` if the key did not exist."""
        with self._write() as conn:
            cur = conn.execute(
                "DELETE FROM plugin_storage WHERE plugin_id = ? AND key = ?", (plugin_id, key)
            )
            return cur.rowcount > 0

    def storage_keys(self, plugin_id: str) -> list[str]:
        """Keys of one plugin, sorted, so listings are deterministic."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT key FROM plugin_storage WHERE plugin_id = ? ORDER BY key", (plugin_id,)
            ).fetchall()
        return [str(r[0]) for r in rows]

    # -- event log -----------------------------------------------------------------------------

    def append_events(self, rows: Iterable[tuple[int, str, str, str | None, str]]) -> None:
        """Append ``(seq, time, name, stream_id, payload_json)`` rows in one transaction.

        A batch is all-or-nothing, and one commit per batch rather than per event keeps the fsync
        and lock cost flat under event bursts. A seq that is already stored is skipped, so a
        retried batch (e.g. after a failure reported late) is harmless and keeps the first row.
        This is ``ON CONFLICT (seq) DO NOTHING`` rather than ``INSERT OR IGNORE``: ``OR IGNORE``
        would also silently drop rows that violate NOT NULL, hiding caller bugs as lost events.
        """
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO event_log (seq, time, name, stream_id, payload)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (seq) DO NOTHING",
                rows,
            )

    def last_event_seq(self) -> int:
        """Highest stored seq, 0 when the log is empty; the event bus resumes numbering after it.

        Note that pruning never removes the newest row unless ``prune_events(0)`` is called, so
        this only goes back to 0 if the whole log is deliberately cleared.
        """
        with self._lock:
            row = self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM event_log").fetchone()
        return int(row[0])

    @staticmethod
    def _event_filter(
        names: Sequence[str] | None, stream_id: str | None
    ) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if names is not None:
            names = list(names)
            if names:
                clauses.append(f"name IN ({', '.join('?' * len(names))})")
                params.extend(names)
            else:
                clauses.append("0")  # an empty name list matches nothing, not everything
        if stream_id is not None:
            clauses.append("stream_id = ?")
            params.append(stream_id)
        return clauses, params

    def list_events(
        self,
        *,
        after_seq: int = 0,
        before_seq: int | None = None,
        limit: int = 100,
        names: Sequence[str] | None = None,
        stream_id: str | None = None,
        newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """Events with ``after_seq < seq < before_seq``, filtered, at most ``limit`` of them.

        Paging is by seq rather than OFFSET so pages stay correct while events are appended and
        pruned: forwards, pass the last seq seen as ``after_seq``; backwards with
        ``newest_first=True``, pass it as ``before_seq``. Each dict has ``seq``, ``time``,
        ``name``, ``stream_id`` and ``payload`` (decoded JSON).
        """
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        clauses, params = self._event_filter(names, stream_id)
        clauses.insert(0, "seq > ?")
        params.insert(0, after_seq)
        if before_seq is not None:
            clauses.append("seq < ?")
            params.append(before_seq)
        order = "DESC" if newest_first else "ASC"
        sql = (
            "SELECT seq, time, name, stream_id, payload FROM event_log"
            f" WHERE {' AND '.join(clauses)} ORDER BY seq {order} LIMIT ?"
        )
        params.append(limit)
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [
            {
                "seq": seq,
                "time": time_,
                "name": name,
                "stream_id": sid,
                "payload": json.loads(payload),
            }
            for seq, time_, name, sid, payload in rows
        ]

    def count_events(
        self, *, names: Sequence[str] | None = None, stream_id: str | None = None
    ) -> int:
        """Number of stored events matching the same filters as :meth:`list_events`."""
        clauses, params = self._event_filter(names, stream_id)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            row = self._conn.execute(f"SELECT COUNT(*) FROM event_log{where}", params).fetchone()
        return int(row[0])

    def prune_events(self, max_rows: int) -> int:
        """Delete the oldest events so at most ``max_rows`` remain; return how many were deleted.

        Bounded by row count rather than age so the file size is bounded whatever the event rate.
        """
        if max_rows < 0:
            raise ValueError(f"max_rows must be >= 0, not {max_rows}")
        with self._write() as conn:
            if max_rows == 0:
                cur = conn.execute("DELETE FROM event_log")
            else:
                # The newest seq that has to go is the (max_rows + 1)-th newest; NULL if none.
                cur = conn.execute(
                    "DELETE FROM event_log WHERE seq <= (SELECT seq FROM event_log"
                    " ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (max_rows,),
                )
            return cur.rowcount

    # -- event types (HTTP API) ----------------------------------------------------------------

    _EVENT_TYPE_COLUMNS = (
        "stream_id, name, custom, notify, receive, generate_images, can_be_triggered, created_at"
    )

    @staticmethod
    def _event_type(row: Sequence[Any]) -> EventTypeRecord:
        sid, name, custom, notify, receive, images, trig, created = row
        return EventTypeRecord(sid, name, bool(custom), bool(notify), bool(receive),
                               bool(images), bool(trig), created)

    def list_event_types(self, stream_id: str) -> list[EventTypeRecord]:
        """The stored rows of one stream (custom types and changed built-ins), oldest first."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {self._EVENT_TYPE_COLUMNS} FROM event_types WHERE stream_id = ?"
                " ORDER BY created_at, name",
                (stream_id,),
            ).fetchall()
        return [self._event_type(r) for r in rows]

    def get_event_type(self, stream_id: str, name: str) -> EventTypeRecord | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {self._EVENT_TYPE_COLUMNS} FROM event_types"
                " WHERE stream_id = ? AND name = ?",
                (stream_id, name),
            ).fetchone()
        return None if row is None else self._event_type(row)

    def add_event_type(self, rec: EventTypeRecord) -> EventTypeRecord:
        """Insert a new row (``created_at`` stamped if 0); DuplicateEventTypeError if taken.

        A stream id that is not in ``streams`` raises ``sqlite3.IntegrityError`` (foreign key).
        """
        if not rec.created_at:
            rec = dataclasses.replace(rec, created_at=time.time())
        try:
            with self._write() as conn:
                conn.execute(
                    f"INSERT INTO event_types ({self._EVENT_TYPE_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    dataclasses.astuple(rec),
                )
        except sqlite3.IntegrityError as exc:
            if exc.sqlite_errorname == "SQLITE_CONSTRAINT_PRIMARYKEY":
                raise DuplicateEventTypeError(rec.stream_id, rec.name) from exc
            raise
        return rec

    def save_event_type(self, rec: EventTypeRecord) -> EventTypeRecord:
        """Create or replace the row of ``(stream_id, name)``; the first ``created_at`` stays."""
        if not rec.created_at:
            rec = dataclasses.replace(rec, created_at=time.time())
        with self._write() as conn:
            conn.execute(
                f"INSERT INTO event_types ({self._EVENT_TYPE_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (stream_id, name) DO UPDATE SET"
                " custom = excluded.custom, notify = excluded.notify,"
                " receive = excluded.receive, generate_images = excluded.generate_images,"
                " can_be_triggered = excluded.can_be_triggered",
                dataclasses.astuple(rec),
            )
            row = conn.execute(
                f"SELECT {self._EVENT_TYPE_COLUMNS} FROM event_types"
                " WHERE stream_id = ? AND name = ?",
                (rec.stream_id, rec.name),
            ).fetchone()
        return self._event_type(row)

    # -- event log queries (HTTP API) ----------------------------------------------------------

    def query_events(
        self,
        *,
        names: Sequence[str] | None = None,
        stream_id: str | None = None,
        start: str | None = None,
        end: str | None = None,
        max_seq: int | None = None,
        newest_first: bool = True,
        offset: int = 0,
        limit: int = 20,
    ) -> tuple[int, list[dict[str, Any]], int]:
        """``(total, page, last_seq)``: how many events match, the ``limit`` of them after
        ``offset``, and the highest seq logged at that moment (what to pass as ``max_seq`` to
        page on through the same result set).

        Ordered by ``event_time`` (then seq), the order an API client asks for; ``start`` and
        ``end`` bound ``event_time`` inclusively and must be ISO text in the log's own form
        (``YYYY-MM-DDTHH:MM:SS.mmmZ``) so that text order is time order. ``max_seq`` pins the
        result to events logged so far: a client paging with the same ``max_seq`` is not shifted
        by events appended meanwhile. Count, page and last seq come from one locked read, so they
        agree.
        Each dict is :meth:`list_events`' plus ``event_time``.
        """
        if limit < 0 or offset < 0:
            raise ValueError(f"limit and offset must be >= 0, not {limit}, {offset}")
        clauses, params = self._event_filter(names, stream_id)
        if start is not None:
            clauses.append("event_time >= ?")
            params.append(start)
        if end is not None:
            clauses.append("event_time <= ?")
            params.append(end)
        if max_seq is not None:
            clauses.append("seq <= ?")
            params.append(max_seq)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "DESC" if newest_first else "ASC"
        sql = (
            "SELECT seq, time, name, stream_id, payload, event_time FROM event_log"
            f"{where} ORDER BY event_time {order}, seq {order} LIMIT ? OFFSET ?"
        )
        with self._lock:
            total = int(self._conn.execute(
                f"SELECT COUNT(*) FROM event_log{where}", params).fetchone()[0])
            rows = self._conn.execute(sql, [*params, limit, offset]).fetchall() if limit else []
            last = int(self._conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM event_log").fetchone()[0])
        return total, [
            {
                "seq": seq,
                "time": time_,
                "name": name,
                "stream_id": sid,
                "payload": json.loads(payload),
                "event_time": event_time,
            }
            for seq, time_, name, sid, payload, event_time in rows
        ], last

    def get_event(self, seq: int) -> dict[str, Any] | None:
        """One logged event by seq, as :meth:`query_events` gives it, or ``None``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT seq, time, name, stream_id, payload, event_time FROM event_log"
                " WHERE seq = ?",
                (seq,),
            ).fetchone()
        if row is None:
            return None
        seq_, time_, name, sid, payload, event_time = row
        return {"seq": seq_, "time": time_, "name": name, "stream_id": sid,
                "payload": json.loads(payload), "event_time": event_time}
