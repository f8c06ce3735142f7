"""The hub's LAN address, for the URLs it advertises (``rtsp://<hub-ip>:5554/<id>``).

Read from the kernel's tables (the default route's interface, then its IPv4 address with
SIOCGIFADDR), so finding it sends no packet anywhere. Without a default route (an isolated
test box) the first non-loopback interface with an address is used, and 127.0.0.1 as a last
resort. ``advertise_host`` in the config overrides all of it.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

SIOCGIFADDR = 0x8915


def default_route_interface(route_table: str | None = None) -> str | None:
    """The interface of the IPv4 default route, from /proc/net/route."""
    try:
        text = route_table if route_table is not None else Path("/proc/net/route").read_text()
    except OSError:
        return None
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "00000000" and int(parts[3], 16) & 0x2:
            return parts[0]
    return None


def interface_ipv4(name: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            raw = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(raw[20:24])


def lan_address(advertise_host: str | None = None) -> str:
    if advertise_host:
        return advertise_host
    iface = default_route_interface()
    if iface:
        addr = interface_ipv4(iface)
        if addr:
            return addr
    for _, name in socket.if_nameindex():
        addr = interface_ipv4(name)
        if addr and not ipaddress.ip_address(addr).is_loopback:
            return addr
    return "127.0.0.1"
