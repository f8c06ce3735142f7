"""Child process for test_store_crash: write to a Store in a loop until killed.

Usage: ``python _store_writer.py DB_PATH``. After each write method *returns* (i.e. has committed),
one line describing it goes to stdout and is flushed:

    C stream <stream_id>
    C storage <key> <value_json>      (plugin "crash", value JSON without spaces)
    C events <first_seq> <last_seq>   (one batch of BATCH events, one transaction)
    C counter <n>                     (plugin "crash", key "counter" overwritten with n)

The writes are strictly sequential, so at any moment at most one committed write is not yet
reported; the parent's assertions rely on that. The loop is bounded (count and time) so a child
whose parent vanished without killing it still ends; a vanished parent also closes the pipe,
which ends the child with BrokenPipeError on the next line.
"""

from __future__ import annotations

import json
import sys
import time

from hubruntime.store import Store, StreamRecord

BATCH = 5
MAX_WRITES = 1_000_000
MAX_SECONDS = 60.0


def main(db_path: str) -> None:
    store = Store(db_path)
    out = sys.stdout
    deadline = time.monotonic() + MAX_SECONDS
    next_seq = 1
    counter = 0
    for i in range(MAX_WRITES):
        if time.monotonic() > deadline:
            break
        kind = i % 4
        if kind == 0:
            sid = f"s{i}"
            store.add_stream(StreamRecord(sid, f"stream {i}", f"rtsp://cam/{i}", "crash test"))
            line = f"C stream {sid}"
        elif kind == 1:
            value = json.dumps({"i": i, "s": "x" * (i % 50)}, separators=(",", ":"))
            store.storage_set("crash", f"k{i}", value)
            line = f"C storage k{i} {value}"
        elif kind == 2:
            first, last = next_seq, next_seq + BATCH - 1
            store.append_events(
                (
                    seq,
                    "2024-01-01T00:00:00Z",
                    "crash.test",
                    f"s{i}",
                    json.dumps({"seq": seq, "i": i}),
                )
                for seq in range(first, last + 1)
            )
            next_seq = last + 1
            line = f"C events {first} {last}"
        else:
            counter += 1
            store.storage_set("crash", "counter", str(counter))
            line = f"C counter {counter}"
        out.write(line + "\n")
        out.flush()
    store.close()


if __name__ == "__main__":
    main(sys.argv[1])
