"""The hub's network state, sans-I/O: snapshots of the interfaces in, transitions out.

A ``Snapshot`` is what the kernel says at one instant (interfaces with their flags and IPv4
addresses, the default route). ``NetWatch`` is fed successive snapshots and says what changed,
once per change: ``Connected``, ``Disconnected``, ``AddressChanged``. The trio side
(``hubruntime/netwatch.py``) reads snapshots and acts on the transitions; everything that decides
lives here, so every rule is tested without a network.

Connected rule: some interface that is not loopback, is administratively up (IFF_UP) and has its
link running (IFF_RUNNING: carrier, and for Wi-Fi an association; the kernel sets it only for
operstate UP or UNKNOWN) holds a LAN address. A LAN address is an IPv4 address of global scope
(the kernel's own scope: 127/8 is host scope, a link-scope address is one the system asked to be
link-only) that is not 127/8 and not 169.254/16 (what an interface gets when DHCP failed: the hub
is then not on the LAN in any useful sense, and peers cannot be expected to route to it).

Why a default route is not required: taking a link down flushes its routes, and bringing it up
restores only the subnet route, not the default route (DHCP or the admin adds that back, maybe
never on an isolated LAN of cameras). A hub on a LAN without internet access is still connected
to the local network, which is what the events mean.

LAN address rule (the host in ``rtsp://<hub-ip>:5554/<id>``): on the default route's interface,
if that interface is usable, the route's preferred source, else its address in the gateway's
subnet, else its first primary address (what SIOCGIFADDR gives); with no usable
default route, the first primary LAN address of the first usable interface (by index). It is a
pure function of the snapshot, so identical snapshots never produce a change.

Start-up rule: the first snapshot sets the baseline. If the hub starts disconnected, that is
reported (``Disconnected``) so the hub publishes it and new plugin subscribers learn it; if it
starts connected, nothing is reported (the link did not "come up", and silence means connected,
since ``hub_disconnected_from_local_network`` is the event a subscriber is always told at once).
The first address is the baseline, not a change.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

SCOPE_UNIVERSE = 0
SCOPE_LINK = 253
SCOPE_HOST = 254

_LINK_LOCAL = ipaddress.IPv4Network("169.254.0.0/16")


@dataclass(frozen=True)
class Address:
    """One IPv4 address of an interface. ``scope`` is the kernel's (0 global, 253 link,
    254 host); ``secondary`` marks an extra address in a subnet the interface already has."""

    address: str
    prefixlen: int = 32
    scope: int = SCOPE_UNIVERSE
    secondary: bool = False

    @property
    def is_lan(self) -> bool:
        """Global scope, not loopback, not link-local 169.254/16 (see the module docstring)."""
        if self.scope != SCOPE_UNIVERSE:
            return False
        try:
            ip = ipaddress.IPv4Address(self.address)
        except ValueError:
            return False
        return not (ip.is_loopback or ip in _LINK_LOCAL or ip.is_unspecified or ip.is_multicast)

    def contains(self, other: str) -> bool:
        """Whether ``other`` is in this address's subnet."""
        try:
            net = ipaddress.IPv4Network(f"{self.address}/{self.prefixlen}", strict=False)
            return ipaddress.IPv4Address(other) in net
        except ValueError:
            return False


@dataclass(frozen=True)
class Interface:
    name: str
    index: int = 0
    up: bool = False  # IFF_UP: administratively up
    running: bool = False  # IFF_RUNNING: link (carrier/association) up
    loopback: bool = False
    addresses: tuple[Address, ...] = ()

    @property
    def usable(self) -> bool:
        return self.up and self.running and not self.loopback

    def lan_addresses(self) -> list[Address]:
        """LAN addresses, primaries first (kernel order kept within each group)."""
        good = [a for a in self.addresses if a.is_lan]
        return [a for a in good if not a.secondary] + [a for a in good if a.secondary]


@dataclass(frozen=True)
class DefaultRoute:
    interface: str
    gateway: str | None = None
    prefsrc: str | None = None
    metric: int = 0


@dataclass(frozen=True)
class Snapshot:
    """The hub's network at one instant. Equal snapshots mean nothing changed."""

    interfaces: tuple[Interface, ...] = ()
    default_route: DefaultRoute | None = None

    @property
    def default_interface(self) -> str | None:
        return self.default_route.interface if self.default_route else None

    def interface(self, name: str) -> Interface | None:
        for iface in self.interfaces:
            if iface.name == name:
                return iface
        return None

    def describe(self) -> str:
        """One line for the log: each non-loopback interface, its state and addresses."""
        parts = []
        for iface in self.interfaces:
            if iface.loopback:
                continue
            state = "up" if iface.usable else ("no-link" if iface.up else "down")
            addrs = ",".join(f"{a.address}/{a.prefixlen}" for a in iface.addresses) or "-"
            parts.append(f"{iface.name} {state} {addrs}")
        route = self.default_route
        parts.append(f"default via {route.gateway or '-'} dev {route.interface}" if route
                     else "no default route")
        return "; ".join(parts)


def is_connected(snapshot: Snapshot) -> bool:
    return any(iface.usable and iface.lan_addresses() for iface in snapshot.interfaces)


def lan_address(snapshot: Snapshot) -> str | None:
    """The address the hub advertises, or None when it is not connected (module docstring)."""
    route = snapshot.default_route
    if route is not None:
        iface = snapshot.interface(route.interface)
        if iface is not None and iface.usable:
            addrs = iface.lan_addresses()
            if addrs:
                if route.prefsrc and any(a.address == route.prefsrc for a in addrs):
                    return route.prefsrc
                if route.gateway:
                    for a in addrs:
                        if a.contains(route.gateway):
                            return a.address
                return addrs[0].address
    for iface in sorted(snapshot.interfaces, key=lambda i: i.index):
        if iface.usable:
            addrs = iface.lan_addresses()
            if addrs:
                return addrs[0].address
    return None


@dataclass(frozen=True)
class Connected:
    address: str | None


@dataclass(frozen=True)
class Disconnected:
    pass


@dataclass(frozen=True)
class AddressChanged:
    """The LAN address became ``new`` (``old``: the one before, None if there was none yet).
    Not emitted on a disconnection: the last address stays advertised until a new one exists."""

    old: str | None
    new: str


Transition = Connected | Disconnected | AddressChanged


@dataclass
class NetWatch:
    """Fed snapshots, returns transitions; each transition exactly once (see the rules above)."""

    connected: bool | None = None  # None until the first snapshot
    address: str | None = None  # the LAN address now; None while disconnected
    last_address: str | None = None  # the last LAN address reported (kept while disconnected)
    last: Snapshot | None = field(default=None, repr=False)

    def update(self, snapshot: Snapshot) -> list[Transition]:
        self.last = snapshot
        now = is_connected(snapshot)
        addr = lan_address(snapshot) if now else None
        if self.connected is None:  # the baseline
            self.connected, self.address, self.last_address = now, addr, addr
            return [] if now else [Disconnected()]
        out: list[Transition] = []
        if self.connected and not now:
            out.append(Disconnected())
        elif now and not self.connected:
            out.append(Connected(addr))
        self.connected, self.address = now, addr
        if addr is not None and addr != self.last_address:
            out.append(AddressChanged(self.last_address, addr))
            self.last_address = addr
        return out
