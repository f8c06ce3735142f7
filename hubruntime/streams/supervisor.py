"""Per-stream supervision: one FFmpeg reader at a time, its health events, its restarts.

A ``StreamSupervisor`` owns exactly its reader process and its monitor timer task; cancelling it
(the stream was removed, the hub stops) kills the reader and reaps it. FFmpeg neither exits nor
complains on a stall, so every watchdog is on the packets the reader publishes: the stream's
``StreamHub`` feeds them to the health monitor and reports its events here, where they become
bus events, state changes and restarts. Any exit of the reader is "closed", and why is read
from its exit status and stderr afterwards.

``IngestService`` keeps one supervisor per registered stream, following the registry. Nothing
here knows the RTSP server: it gets the publish URL maker passed in by ``hub.py``.
"""

from __future__ import annotations

import logging
import subprocess
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from hubruntime.config import HealthConfig
from hubruntime.events.bus import EventBus
from hubruntime.media.ffmpeg import classify_failure, reader_command
from hubruntime.proto.backoff import Backoff
from hubruntime.redact import redact
from hubruntime.store import StreamRecord
from hubruntime.streams.health import HealthEvent
from hubruntime.streams.hub import Publication, StreamHub
from hubruntime.streams.manager import StreamManager
from hubruntime.streams.publish import PublishRegistry

log = logging.getLogger("hubruntime.ingest")

READER_TIMEOUT_SECS = 5.0
STDERR_LINES = 40
STOP_WAIT_SECS = 2.0

PublishUrl = Callable[[str, str], str]
"""``publish_url(stream_id, secret)``: where a reader publishes (the RTSP server's endpoint)."""


class StreamSupervisor:
    def __init__(self, rec: StreamRecord, hub: StreamHub, *, bus: EventBus,
                 manager: StreamManager, publish_url: PublishUrl, registry: PublishRegistry,
                 health: HealthConfig) -> None:
        self.rec = rec
        self.sid = rec.stream_id
        self.hub = hub
        self.bus = bus
        self.manager = manager
        self.publish_url = publish_url
        self.registry = registry
        self.health = health
        self.published_at: float | None = None
        self.restart_reason: str | None = None
        self.readers_started = 0
        self.pid: int | None = None
        self._restart = trio.Event()
        self._monitor_changed = trio.Event()

    # the publication (a lifecycle-only sink of the StreamHub) ------------------------------
    def on_start(self, pub: Publication) -> None:
        self.published_at = pub.started_at
        self._set_state("streaming")
        self._wake_monitor()

    def on_packet(self, pkt: Any) -> None:  # registered with packets=False: never called
        pass

    def on_flush(self) -> None:
        pass

    def on_stop(self, reason: str) -> None:
        self._wake_monitor()

    def _recovered(self) -> None:
        if self._state() == "delayed":
            self._set_state("streaming")

    def _emit(self, events: list[HealthEvent]) -> None:
        for ev in events:
            self.bus.publish(ev.name, streamId=self.sid, **ev.fields)
            log.info("stream %s: %s %s", self.sid, ev.name, ev.fields)
            if ev.name == "camera_packet_delay":
                self._set_state("delayed")
            elif ev.name == "camera_accumulated_delay":
                self.restart_reason = "accumulated_delay"
                self._restart.set()

    def _wake_monitor(self) -> None:
        self._monitor_changed.set()
        self._monitor_changed = trio.Event()

    async def _poll_monitor(self) -> None:
        """Run the monitor's timers: gaps are detected while they last, not when they end."""
        while True:
            monitor = self.hub.monitor
            deadline = monitor.next_deadline() if monitor is not None else None
            if deadline is None:
                with trio.move_on_after(0.25):
                    await self._monitor_changed.wait()
                continue
            await trio.sleep_until(deadline)
            if self.hub.monitor is monitor:
                self.hub.poll_health(trio.current_time())

    # state -------------------------------------------------------------------------------
    def _state(self) -> str:
        return self.manager.state(self.sid).state

    def _set_state(self, state: str) -> None:
        self.manager.set_state(self.sid, state)

    # the reader --------------------------------------------------------------------------
    async def run(self) -> None:
        self.registry.open(self.hub)
        self.hub.on_health = self._emit
        self.hub.on_recovered = self._recovered
        self.hub.add_sink(self, packets=False)
        backoff = Backoff(self.health.backoff_initial_secs, self.health.backoff_max_secs,
                          self.health.backoff_reset_after_secs)
        closes = 0
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._poll_monitor)
                while True:
                    self._set_state("connecting" if self.readers_started == 0 else "restarting")
                    outcome, reason, message, healthy = await self._one_reader()
                    if outcome == "restart":
                        delay = self.health.backoff_initial_secs
                    else:
                        if outcome == "unreachable":
                            closes = 0
                            self._set_state("unreachable")
                            self.bus.publish("camera_unreachable", streamId=self.sid,
                                             reason=reason, errorMessage=message)
                            log.warning("stream %s unreachable (%s): %s", self.sid, reason,
                                        message)
                        else:
                            closes += 1
                            self._set_state("restarting")
                            self.bus.publish("camera_stream_closed", streamId=self.sid,
                                             attempt=closes)
                            log.warning("stream %s closed (%s), restart #%d", self.sid,
                                        message or reason, closes)
                        delay = backoff.next_delay(healthy)
                        if healthy >= self.health.backoff_reset_after_secs:
                            closes = min(closes, 1)
                    await trio.sleep(delay)
        finally:
            self.hub.remove_sink(self)
            self.registry.close(self.sid)

    async def _one_reader(self) -> tuple[str, str, str, float]:
        """Run one reader to its end: (outcome, reason, message, healthy seconds)."""
        secret = self.registry.new_secret(self.sid)
        cmd = reader_command(self.rec.rtsp_url, self.publish_url(self.sid, secret),
                             timeout_secs=READER_TIMEOUT_SECS)
        self.published_at = None
        self.restart_reason = None
        self._restart = trio.Event()
        tail: deque[str] = deque(maxlen=STDERR_LINES)
        self.readers_started += 1
        started = trio.current_time()
        proc = await trio.lowlevel.open_process(cmd, stdin=subprocess.DEVNULL,
                                                stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE,
                                                # Ctrl-C in a terminal is for the hub alone
                                                start_new_session=True)
        self.pid = proc.pid
        log.info("stream %s: reader started (pid %d) for %s", self.sid, proc.pid,
                 redact(self.rec.rtsp_url))
        try:
            async with trio.open_nursery() as nursery:
                stderr_done = trio.Event()
                nursery.start_soon(self._read_stderr, proc, tail, stderr_done)
                nursery.start_soon(self._restart_on_request, proc)
                await proc.wait()
                with trio.move_on_after(1.0):
                    await stderr_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
                # the publishing session owns "stopped": end it and wait for it to say so
                self.registry.kick(self.sid)
                with trio.move_on_after(STOP_WAIT_SECS):
                    await self.hub.wait_stopped()
                self.pid = None
        now = trio.current_time()
        healthy = now - self.published_at if self.published_at is not None else 0.0
        stderr = redact("\n".join(tail))
        if self.restart_reason is not None:
            return "restart", self.restart_reason, "", healthy
        reason, message = classify_failure(proc.returncode, stderr)
        if self.published_at is None:
            if reason == "closed":
                reason = "timeout" if now - started >= READER_TIMEOUT_SECS else "protocol"
                message = message or f"reader exited with status {proc.returncode} " \
                                     "before any packet"
            return "unreachable", reason, message, 0.0
        return "closed", reason, message, healthy

    async def _read_stderr(self, proc: trio.Process, tail: deque[str], done: trio.Event) -> None:
        assert proc.stderr is not None
        buf = b""
        try:
            async for chunk in proc.stderr:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    text = line.decode("utf-8", "replace").strip()
                    if text:
                        tail.append(text)
                if len(buf) > 8192:
                    buf = buf[-8192:]
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            if buf.strip():
                tail.append(buf.decode("utf-8", "replace").strip())
            done.set()

    async def _restart_on_request(self, proc: trio.Process) -> None:
        await self._restart.wait()
        log.info("stream %s: restarting its reader (%s)", self.sid, self.restart_reason)
        proc.kill()


class IngestService:
    """One supervisor per registered stream; follows additions and removals."""

    def __init__(self, manager: StreamManager, bus: EventBus, publish_url: PublishUrl,
                 registry: PublishRegistry, health: HealthConfig) -> None:
        self.manager = manager
        self.bus = bus
        self.publish_url = publish_url
        self.registry = registry
        self.health = health
        self.hubs: dict[str, StreamHub] = {}
        self.supervisors: dict[str, StreamSupervisor] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.manager.on_added.append(self.start_stream)
            self.manager.on_removed.append(self.stop_stream)
            try:
                for rec in await self.manager.list():
                    self.start_stream(rec)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self.manager.on_added.remove(self.start_stream)
                self.manager.on_removed.remove(self.stop_stream)

    def start_stream(self, rec: StreamRecord) -> None:
        if self._nursery is None or rec.stream_id in self._scopes:
            return
        hub = self.hub(rec.stream_id)
        sup = StreamSupervisor(rec, hub, bus=self.bus, manager=self.manager,
                               publish_url=self.publish_url, registry=self.registry,
                               health=self.health)
        scope = trio.CancelScope()
        self._scopes[rec.stream_id] = scope
        self.supervisors[rec.stream_id] = sup
        self._nursery.start_soon(self._supervise, rec.stream_id, sup, scope)

    async def _supervise(self, sid: str, sup: StreamSupervisor, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await sup.run()
        finally:
            if self._scopes.get(sid) is scope:
                del self._scopes[sid]
                self.supervisors.pop(sid, None)
                self.hubs.pop(sid, None)

    def hub(self, stream_id: str) -> StreamHub:
        """The stream's hub, made on first use: a sink may register before its reader runs."""
        hub = self.hubs.get(stream_id)
        if hub is None:
            hub = self.hubs[stream_id] = StreamHub(
                stream_id, packet_delay_secs=self.health.packet_delay_secs,
                accumulated_delay_secs=self.health.accumulated_delay_secs)
        return hub

    def stop_stream(self, stream_id: str) -> None:
        scope = self._scopes.get(stream_id)
        if scope is not None:
            scope.cancel()
