"""The event log writer: a bus subscriber that appends every event to SQLite in batches.

Batches because one transaction per event would cap the hub at a few thousand events/s on a slow
disk; the mailbox absorbs bursts, and the log is pruned to ``log_max_rows`` now and then.
"""

from __future__ import annotations

import logging

import trio

from hubruntime.events.bus import EventBus, Published
from hubruntime.store import Store

log = logging.getLogger("hubruntime.events")

BATCH = 1000
PRUNE_EVERY = 5000


async def run_event_log(store: Store, bus: EventBus, max_rows: int, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    box = bus.subscribe("event log", maxlen=100_000)
    since_prune = 0
    task_status.started()
    try:
        while True:
            items: list[Published] = await box.get_batch(BATCH)
            rows = [(p.seq, p.time, p.name, p.event.get("streamId"), p.json_bytes.decode())
                    for p in items]
            try:
                await trio.to_thread.run_sync(store.append_events, rows)
            except Exception:
                log.exception("event log: %d event(s) could not be written", len(rows))
            since_prune += len(rows)
            if since_prune >= PRUNE_EVERY:
                since_prune = 0
                await trio.to_thread.run_sync(store.prune_events, max_rows)
    finally:
        bus.unsubscribe(box)
        # write what is still queued, so a clean stop loses nothing
        rest = box.get_nowait_batch(len(box))
        if rest:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(store.append_events, [
                    (p.seq, p.time, p.name, p.event.get("streamId"), p.json_bytes.decode())
                    for p in rest])
