"""The hub's network watcher: link up/down and LAN address changes, as events and callbacks.

Reads a ``Snapshot`` of the kernel's interfaces (rtnetlink dumps: links, IPv4 addresses, IPv4
routes; ``proto/rtnetlink.py`` says why not sysfs) and feeds it to ``NetWatch``
(``proto/netstate.py``, where the connected and address rules are written down). It reads:
- at once (after a 100 ms debounce) when the kernel multicasts a link, IPv4 address or IPv4
  route change on a NETLINK_ROUTE socket: so a cable pulled is known in about 0.1 s, and an
  address replaced (new added, old deleted) is one change, not a disconnection;
- every ``poll_secs`` anyway: a missed notification (a full socket buffer) costs at most that.

On the transitions it publishes ``hub_disconnected_from_local_network`` (kept as the bus's sticky
``network`` event while disconnected, so each new plugin subscriber is told at once) and
``hub_connected_to_local_network`` (which clears it), and calls each ``on_address_change``
callback with the new LAN address. At start the state is read once before ``task_status.started``:
starting disconnected publishes the disconnected event, starting connected publishes nothing.

``python -m hubruntime.netwatch --print`` runs the watcher alone and prints one JSON line per
event (a debugging aid, and how the namespace tests observe it).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from hubruntime.events.bus import EventBus
from hubruntime.proto import rtnetlink as nl
from hubruntime.proto.netstate import (
    SCOPE_HOST,
    SCOPE_LINK,
    SCOPE_UNIVERSE,
    Address,
    AddressChanged,
    Connected,
    DefaultRoute,
    Disconnected,
    Interface,
    NetWatch,
    Snapshot,
)

log = logging.getLogger("hubruntime.netwatch")


def default_route_interface(route_table: str | None = None) -> str | None:
    """The interface of the IPv4 default route, from /proc/net/route (the ioctl fallback's
    only way to it; rtnetlink dumps carry the routes themselves)."""
    try:
        text = route_table if route_table is not None else Path("/proc/net/route").read_text()
    except OSError:
        return None
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "00000000" and int(parts[3], 16) & 0x2:
            return parts[0]
    return None

DEBOUNCE_SECS = 0.1
STICKY_KEY = "network"
_DUMPS = (nl.RTM_GETLINK, nl.RTM_GETADDR, nl.RTM_GETROUTE)


def read_netlink_snapshot() -> Snapshot:
    """Dump links, IPv4 addresses and IPv4 routes over a fresh NETLINK_ROUTE socket.

    Blocking, but the kernel builds a dump's answer from its own tables as it is read: it
    never waits on the network, so the trio thread may call this (a few hundred microseconds).
    A dump interrupted by a concurrent change (NLM_F_DUMP_INTR) is read again.
    """
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(2.0)
        sock.bind((0, 0))
        for _attempt in range(3):
            results: list[list[Any]] = []
            interrupted = False
            for seq, msg_type in enumerate(_DUMPS, 1):
                items, intr = _dump(sock, msg_type, seq)
                results.append(items)
                interrupted |= intr
            if not interrupted:
                break
    links, addrs, routes = results
    return nl.snapshot(links, addrs, routes)


def _dump(sock: socket.socket, msg_type: int, seq: int) -> tuple[list[Any], bool]:
    parse = {nl.RTM_GETLINK: nl.parse_link, nl.RTM_GETADDR: nl.parse_addr,
             nl.RTM_GETROUTE: nl.parse_route}[msg_type]
    sock.send(nl.dump_request(msg_type, seq))
    out: list[Any] = []
    interrupted = False
    while True:
        data = sock.recv(1 << 17)
        for kind, flags, mseq, payload in nl.messages(data):
            if mseq != seq:
                continue  # an answer to an earlier request that timed out
            if flags & nl.NLM_F_DUMP_INTR:
                interrupted = True
            if kind == nl.NLMSG_DONE:
                return out, interrupted
            if kind == nl.NLMSG_ERROR:
                code = nl.error_code(payload)
                if code:
                    raise nl.NetlinkError(code, f"rtnetlink dump: {os.strerror(code)}")
                return out, interrupted
            item = parse(payload)
            if item is not None:
                out.append(item)


SIOCGIFFLAGS = 0x8913
SIOCGIFADDR = 0x8915
SIOCGIFNETMASK = 0x891B


def read_ioctl_snapshot() -> Snapshot:
    """The fallback when rtnetlink cannot be opened: each interface's flags and its primary
    address by ioctl (no secondary addresses, scope guessed from the address), the default
    route's interface from /proc/net/route."""
    interfaces = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for index, name in socket.if_nameindex():
            req = struct.pack("256s", name.encode()[:15])
            try:
                flags = struct.unpack_from("H", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req), 16)[0]
            except OSError:
                continue
            addresses: tuple[Address, ...] = ()
            try:
                addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)[20:24])
                mask = socket.inet_ntoa(fcntl.ioctl(s.fileno(), SIOCGIFNETMASK, req)[20:24])
                prefix = bin(int.from_bytes(socket.inet_aton(mask), "big")).count("1")
                scope = (SCOPE_HOST if addr.startswith("127.") else
                         SCOPE_LINK if addr.startswith("169.254.") else SCOPE_UNIVERSE)
                addresses = (Address(addr, prefix, scope),)
            except OSError:
                pass
            interfaces.append(Interface(name, index, bool(flags & nl.IFF_UP),
                                        bool(flags & nl.IFF_RUNNING),
                                        bool(flags & nl.IFF_LOOPBACK), addresses))
    default = default_route_interface()
    return Snapshot(tuple(interfaces), DefaultRoute(default) if default else None)


class KernelReader:
    """rtnetlink dumps, or the ioctl fallback for good once rtnetlink is refused."""

    def __init__(self) -> None:
        self.fallback = False

    def __call__(self) -> Snapshot:
        if not self.fallback:
            try:
                return read_netlink_snapshot()
            except OSError as exc:
                if exc.errno not in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EPERM,
                                     errno.EACCES):
                    raise
                log.warning("rtnetlink unavailable (%s): reading interfaces by ioctl", exc)
                self.fallback = True
        return read_ioctl_snapshot()


class NetworkWatcher:
    """Watches the hub's network; see the module docstring.

    ``on_address_change`` is kept as given (not copied), so a callback appended to that list
    later (the hub's, for a service built after the watcher) is called too.
    """

    def __init__(self, bus: EventBus, *, poll_secs: float = 1.0,
                 on_address_change: list[Callable[[str], None]] | None = None,
                 read_snapshot: Callable[[], Snapshot] | None = None) -> None:
        self.bus = bus
        self.poll_secs = poll_secs
        self.on_address_change = on_address_change if on_address_change is not None else []
        self.read_snapshot = read_snapshot or KernelReader()
        self.state = NetWatch()
        self.reads = 0
        self._kick = trio.Event()
        self._read_error_logged = False

    @property
    def connected(self) -> bool:
        return bool(self.state.connected)

    @property
    def address(self) -> str | None:
        """The LAN address now; None while disconnected."""
        return self.state.address

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        sock = self._open_notifications()
        try:
            self.check()
            task_status.started()
            async with trio.open_nursery() as nursery:
                if sock is not None:
                    nursery.start_soon(self._listen, sock)
                while True:
                    with trio.move_on_after(self.poll_secs):
                        await self._kick.wait()
                    if self._kick.is_set():
                        await trio.sleep(DEBOUNCE_SECS)  # let a burst of changes settle
                    self._kick = trio.Event()
                    self.check()
        finally:
            if sock is not None:
                sock.close()

    def _open_notifications(self) -> trio.socket.SocketType | None:
        try:
            raw = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        except OSError as exc:
            log.warning("no rtnetlink notifications (%s): polling every %.1f s only", exc,
                        self.poll_secs)
            return None
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            raw.bind((0, nl.WATCH_GROUPS))
        except OSError as exc:
            raw.close()
            log.warning("no rtnetlink notifications (%s): polling every %.1f s only", exc,
                        self.poll_secs)
            return None
        raw.setblocking(False)
        return trio.socket.from_stdlib_socket(raw)

    async def _listen(self, sock: trio.socket.SocketType) -> None:
        """Any notification means "read again": the messages themselves are not decoded, the
        snapshot is the truth. An overrun (ENOBUFS) means the same."""
        while True:
            try:
                await sock.recv(1 << 16)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    log.warning("rtnetlink notifications ended (%s): polling only", exc)
                    return
            self._kick.set()

    def check(self) -> None:
        """Read a snapshot now and act on what changed (also called by tests)."""
        try:
            snapshot = self.read_snapshot()
        except OSError as exc:
            if not self._read_error_logged:
                log.error("cannot read the network interfaces: %s", exc)
                self._read_error_logged = True
            return
        self._read_error_logged = False
        self.reads += 1
        first = self.state.connected is None
        transitions = self.state.update(snapshot)
        if first:
            log.info("network %s, LAN address %s (%s)",
                     "connected" if self.state.connected else "disconnected",
                     self.state.address or "none", snapshot.describe())
        for change in transitions:
            if isinstance(change, Disconnected):
                log.warning("hub disconnected from the local network (%s)", snapshot.describe())
                self.bus.set_sticky(STICKY_KEY,
                                    self.bus.publish("hub_disconnected_from_local_network"))
            elif isinstance(change, Connected):
                log.info("hub connected to the local network, address %s (%s)",
                         change.address, snapshot.describe())
                self.bus.set_sticky(STICKY_KEY, None)
                self.bus.publish("hub_connected_to_local_network")
            elif isinstance(change, AddressChanged):
                log.info("LAN address changed: %s -> %s", change.old or "none", change.new)
                for callback in list(self.on_address_change):
                    try:
                        callback(change.new)
                    except Exception:  # one broken listener must not stop the others
                        log.exception("address change callback %r failed", callback)


# python -m hubruntime.netwatch --print -----------------------------------------------------
async def _print_events(poll_secs: float) -> None:
    bus = EventBus()
    box = bus.subscribe("print")

    def emit(record: dict[str, Any]) -> None:
        record["t"] = round(time.time(), 3)
        print(json.dumps(record), flush=True)

    async def stop_on_signal(scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                scope.cancel()
                return

    watcher = NetworkWatcher(bus, poll_secs=poll_secs,
                             on_address_change=[lambda a: emit({"addressChanged": a})])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signal, nursery.cancel_scope)
        await nursery.start(watcher.run)
        emit({"ready": True, "connected": watcher.connected, "address": watcher.address})
        while True:
            for item in await box.get_batch(100):
                emit({**item.event, "address": watcher.address})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hubruntime.netwatch",
                                description="Print the hub's network events as JSON lines.")
    p.add_argument("--print", action="store_true", required=True,
                   help="print one JSON line per event (the only mode)")
    p.add_argument("--poll-secs", type=float, default=1.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trio.run(_print_events, args.poll_secs)  # until SIGINT or SIGTERM
    return 0


if __name__ == "__main__":
    sys.exit(main())
