"""The composition root: opens the store, builds the services, and owns the one nursery tree.

Only this module (and ``cli.py``) imports everything; each service gets what it needs passed in.
Later parts (ingest, the RTSP server, tunnels, client APIs) start here, under the same nursery,
so stopping the hub stops each of them exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from hubruntime.api.backchannel_server import BackchannelServer
from hubruntime.api.service import ApiService
from hubruntime.config import HubConfig
from hubruntime.events.bus import EventBus
from hubruntime.events.eventlog import run_event_log
from hubruntime.lua.manifest import ManifestError, Plugin, discover, load_plugin
from hubruntime.lua.modules.cameras import CamerasModule
from hubruntime.lua.modules.storage import StorageModule
from hubruntime.lua.plugins import PluginHost
from hubruntime.netwatch import NetworkWatcher
from hubruntime.proto.digest import DigestAuth
from hubruntime.rtsp.live import LiveStreams
from hubruntime.rtsp.server import RtspServer
from hubruntime.sources.backchannel import BackchannelClient
from hubruntime.sources.osc import OscClient
from hubruntime.store import Store
from hubruntime.streams.manager import StreamManager
from hubruntime.streams.publish import PublishRegistry
from hubruntime.streams.supervisor import IngestService

if TYPE_CHECKING:
    from hubruntime.tunnels import TunnelService

log = logging.getLogger("hubruntime.hub")


def load_plugins(dirs: tuple[Path, ...]) -> list[Plugin]:
    """Every plugin folder under ``dirs``; a broken one is logged and skipped, never fatal."""
    plugins = []
    for folder in discover(dirs):
        try:
            plugin = load_plugin(folder)
        except ManifestError as exc:
            log.error("plugin skipped: %s", exc)
            continue
        for warning in plugin.warnings:
            log.warning("%s", warning)
        plugins.append(plugin)
    return plugins


def _loopback_for(bind: str) -> str:
    """Where the tunnel's bridges reach the RTSP server bound to ``bind``."""
    if bind in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bind == "::":
        return "::1"
    return bind


async def _start_optional(nursery: trio.Nursery, what: str, fn: Any) -> bool:
    """Start a client-facing listener; one that cannot bind (a port in use) is logged and left
    out, and the hub goes on serving its streams and plugins."""
    try:
        await nursery.start(fn)
    except OSError as exc:
        log.error("%s not started: %s", what, exc)
        return False
    return True


class Hub:
    """One hub process. ``run`` serves until cancelled."""

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.store: Store | None = None
        self.bus: EventBus | None = None
        self.manager: StreamManager | None = None
        self.plugins: PluginHost | None = None
        self.rtsp: RtspServer | None = None
        self.ingest: IngestService | None = None
        self.live: LiveStreams | None = None
        self.backchannel_server: BackchannelServer | None = None
        self.api: ApiService | None = None
        self.sources: list[BackchannelClient | OscClient] = []
        self.netwatch: NetworkWatcher | None = None
        self.tunnels: TunnelService | None = None
        # Called with the new LAN address when it changes (the network watcher keeps this very
        # list). Without advertise_host, run() adds the live streams' URL update; the tunnel
        # service's restart goes here as well.
        self.on_address_change: list[Callable[[str], None]] = []

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        store = await trio.to_thread.run_sync(Store, cfg.db_path)
        self.store = store
        try:
            first_seq = await trio.to_thread.run_sync(store.last_event_seq) + 1
            self.bus = bus = EventBus(first_seq=first_seq,
                                      queue_size=cfg.events.subscriber_queue_size)
            self.manager = manager = StreamManager(store)
            registry = PublishRegistry()
            self.rtsp = RtspServer(registry)
            self.ingest = ingest = IngestService(manager, bus, self.rtsp.publish_url, registry,
                                                 cfg.health)
            # the advertised host, else the network watcher's LAN address once it has read it
            self.live = live = LiveStreams(manager, bus, ingest.hub,
                                           host=cfg.advertise_host or "127.0.0.1",
                                           port=cfg.rtsp.port, bind=cfg.rtsp.bind)
            if cfg.rtsp.user and cfg.rtsp.password:
                live.server.auth = DigestAuth("hubruntime", {cfg.rtsp.user: cfg.rtsp.password})
            handlers = {**CamerasModule(manager).handlers(), **StorageModule(store).handlers(),
                        **live.handlers()}
            if not cfg.advertise_host:  # an advertised host is fixed: nothing to follow
                self.on_address_change.append(live.address_changed)
            tunnels = None
            if cfg.cloud.host:
                # imported only with a relay configured: paramiko and its cryptography cost a
                # hub ~18 MB of RSS that a hub without remote viewing should not pay
                from hubruntime.tunnels import TunnelService

                self.tunnels = tunnels = TunnelService(
                    cfg.cloud, bus, local_port=lambda: live.server.port,
                    local_host=_loopback_for(cfg.rtsp.bind))
                live.server.tcp_only = tunnels.is_bridge
                self.on_address_change.append(
                    lambda addr: tunnels.restart(f"the hub's address is now {addr}"))
            else:
                log.info("no [cloud] host configured: no tunnel for remote viewing")
            self.netwatch = NetworkWatcher(bus, poll_secs=cfg.network.poll_secs,
                                           on_address_change=self.on_address_change)
            self.plugins = PluginHost(cfg.lua, bus, handlers)
            plugins = load_plugins(cfg.plugin_dirs)
            streams = await manager.list()
            log.info("hub starting: data %s, %d stream(s), %d plugin(s)", cfg.data_dir,
                     len(streams), len(plugins))
            async with trio.open_nursery() as nursery:
                await nursery.start(run_event_log, store, bus, cfg.events.log_max_rows)
                # before the plugins: starting disconnected is published (and sticky) before any
                # startup script subscribes
                await nursery.start(self.netwatch.run)
                if not cfg.advertise_host and self.netwatch.address not in (None, live.host):
                    # disconnected at start: 127.0.0.1 until an address comes (AddressChanged)
                    live.address_changed(self.netwatch.address)
                await nursery.start(self.rtsp.serve_publish, cfg.rtsp.internal_port)
                await nursery.start(ingest.run)
                await nursery.start(manager.watch_store)  # streams added by the CLI meanwhile
                await nursery.start(live.run)
                if tunnels is not None:  # before plugins: it follows live streams' events
                    await nursery.start(tunnels.run)
                await nursery.start(self.plugins.run, plugins)
                self.backchannel_server = BackchannelServer(bus, cfg.backchannel_server.listen)
                await _start_optional(nursery, "backchannel server", self.backchannel_server.run)
                bcs = self.backchannel_server
                self.api = ApiService(cfg.api, store, bus, manager,
                                      backchannel_port=lambda: bcs.port)
                self.api.state.set_network(self.netwatch.connected)
                await nursery.start(self.api.run)  # logs and leaves out a port in use
                self.sources = [BackchannelClient(src, bus) for src in cfg.backchannel]
                self.sources += [OscClient(src, bus) for src in cfg.osc]
                for source in self.sources:
                    await nursery.start(source.run)
                log.info("hub ready")
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(store.close)
            log.info("hub stopped")
