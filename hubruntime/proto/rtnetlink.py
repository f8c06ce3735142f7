"""rtnetlink (NETLINK_ROUTE) messages, sans-I/O: dump requests out, links/addresses/routes in.

Why rtnetlink rather than sysfs and ioctls: one socket gives every IPv4 address of every interface
with the kernel's own scope and primary/secondary flag (SIOCGIFADDR gives one address per
interface, no scope), the default route with its gateway and preferred source, and the link
flags, all from the network namespace the socket was created in (sysfs shows the namespace it was
*mounted* in). The same socket family, bound to multicast groups, tells the watcher when any of
it changes. Only the few fields the network watcher needs are decoded; the rest is skipped.

Layouts (``linux/netlink.h``, ``linux/rtnetlink.h``, ``linux/if_addr.h``), host byte order:
``nlmsghdr`` = len u32, type u16, flags u16, seq u32, pid u32; ``ifinfomsg`` = family u8, pad,
type u16, index i32, flags u32, change u32; ``ifaddrmsg`` = family, prefixlen, flags, scope u8,
index u32; ``rtmsg`` = family, dst_len, src_len, tos, table, protocol, scope, type u8, flags u32;
attributes ``rtattr`` = len u16, type u16, payload, each padded to 4 bytes.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from hubruntime.proto.netstate import Address, DefaultRoute, Interface, Snapshot

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
WATCH_GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE
"""What the network watcher listens to: link flags, IPv4 addresses, IPv4 routes."""

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40

IFLA_IFNAME = 3
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_FLAGS = 8
IFA_F_SECONDARY = 0x01
RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_MULTIPATH, RTA_TABLE = 4, 5, 6, 7, 9, 15
RTN_UNICAST = 1
RT_TABLE_MAIN = 254

RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254

NLMSGHDR = struct.Struct("=IHHII")
IFINFOMSG = struct.Struct("=BxHiII")
IFADDRMSG = struct.Struct("=BBBBI")
RTMSG = struct.Struct("=BBBBBBBBI")
RTATTR = struct.Struct("=HH")
RTNEXTHOP = struct.Struct("=HBBi")


class NetlinkError(OSError):
    """The kernel answered a request with an error (``errno`` set), or sent something broken."""


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    flags: int


@dataclass(frozen=True)
class IfAddr:
    index: int
    address: str
    prefixlen: int
    scope: int
    flags: int


@dataclass(frozen=True)
class Route:
    """An IPv4 route of the main table (only what choosing the default route needs)."""

    dst_len: int
    oif: int | None
    gateway: str | None
    prefsrc: str | None
    metric: int
    table: int
    type: int


def dump_request(msg_type: int, seq: int) -> bytes:
    """A dump request for every link (RTM_GETLINK) or every IPv4 address/route."""
    if msg_type == RTM_GETLINK:
        body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    elif msg_type == RTM_GETADDR:
        body = IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)
    elif msg_type == RTM_GETROUTE:
        body = RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
    else:
        raise ValueError(f"no dump request for message type {msg_type}")
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP,
                         seq, 0) + body


def _align(n: int) -> int:
    return (n + 3) & ~3


def messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload) for each netlink message in one datagram."""
    pos = 0
    while pos + NLMSGHDR.size <= len(data):
        length, msg_type, flags, seq, _pid = NLMSGHDR.unpack_from(data, pos)
        if length < NLMSGHDR.size or pos + length > len(data):
            raise NetlinkError(f"netlink message of length {length} does not fit its datagram")
        yield msg_type, flags, seq, data[pos + NLMSGHDR.size : pos + length]
        pos += _align(length)


def attributes(payload: bytes, offset: int) -> dict[int, bytes]:
    """Attribute type → payload, from ``offset`` on (the first one of a type wins)."""
    out: dict[int, bytes] = {}
    pos = offset
    while pos + RTATTR.size <= len(payload):
        length, kind = RTATTR.unpack_from(payload, pos)
        if length < RTATTR.size or pos + length > len(payload):
            break
        out.setdefault(kind & 0x3FFF, payload[pos + RTATTR.size : pos + length])
        pos += _align(length)
    return out


def error_code(payload: bytes) -> int:
    """The (positive) errno of an NLMSG_ERROR payload; 0 is an acknowledgement."""
    if len(payload) < 4:
        raise NetlinkError("truncated netlink error message")
    (code,) = struct.unpack_from("=i", payload, 0)
    return -code


def parse_link(payload: bytes) -> Link | None:
    if len(payload) < IFINFOMSG.size:
        return None
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(payload, 0)
    name = attributes(payload, IFINFOMSG.size).get(IFLA_IFNAME, b"").split(b"\0", 1)[0]
    return Link(index, name.decode("utf-8", "replace"), flags)


def parse_addr(payload: bytes) -> IfAddr | None:
    """An IPv4 address; other families give None. IFA_LOCAL is the interface's own address
    (IFA_ADDRESS is the peer's on a point-to-point link)."""
    if len(payload) < IFADDRMSG.size:
        return None
    family, prefixlen, flags, scope, index = IFADDRMSG.unpack_from(payload, 0)
    if family != socket.AF_INET:
        return None
    attrs = attributes(payload, IFADDRMSG.size)
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if raw is None or len(raw) != 4:
        return None
    if IFA_FLAGS in attrs and len(attrs[IFA_FLAGS]) == 4:
        (flags,) = struct.unpack("=I", attrs[IFA_FLAGS])  # the 32-bit flags supersede the 8
    return IfAddr(index, socket.inet_ntoa(raw), prefixlen, scope, flags)


def parse_route(payload: bytes) -> Route | None:
    if len(payload) < RTMSG.size:
        return None
    family, dst_len, _src, _tos, table, _proto, _scope, rtype, _flags = RTMSG.unpack_from(
        payload, 0)
    if family != socket.AF_INET:
        return None
    attrs = attributes(payload, RTMSG.size)
    if RTA_TABLE in attrs and len(attrs[RTA_TABLE]) == 4:
        (table,) = struct.unpack("=I", attrs[RTA_TABLE])
    oif = _u32(attrs.get(RTA_OIF))
    gateway = _ip(attrs.get(RTA_GATEWAY))
    multipath = attrs.get(RTA_MULTIPATH)
    if oif is None and multipath and len(multipath) >= RTNEXTHOP.size:
        # a multipath route: the first next hop stands for it
        length, _flags, _hops, ifindex = RTNEXTHOP.unpack_from(multipath, 0)
        oif = ifindex
        gateway = _ip(attributes(multipath[:length], RTNEXTHOP.size).get(RTA_GATEWAY))
    metric = _u32(attrs.get(RTA_PRIORITY)) or 0
    return Route(dst_len, oif, gateway, _ip(attrs.get(RTA_PREFSRC)), metric, table, rtype)


def _u32(raw: bytes | None) -> int | None:
    if raw is None or len(raw) != 4:
        return None
    return int(struct.unpack("=I", raw)[0])


def _ip(raw: bytes | None) -> str | None:
    return socket.inet_ntoa(raw) if raw is not None and len(raw) == 4 else None


def default_route(routes: list[Route]) -> Route | None:
    """The IPv4 default route the kernel would use: main table, unicast, lowest metric."""
    candidates = [r for r in routes if r.dst_len == 0 and r.table == RT_TABLE_MAIN
                  and r.type == RTN_UNICAST and r.oif is not None]
    return min(candidates, key=lambda r: r.metric) if candidates else None


def snapshot(links: list[Link], addrs: list[IfAddr], routes: list[Route]) -> Snapshot:
    """The three dumps as one ``Snapshot`` (interfaces by index, addresses in kernel order)."""
    by_index: dict[int, list[Address]] = {}
    for a in addrs:
        by_index.setdefault(a.index, []).append(
            Address(a.address, a.prefixlen, a.scope, bool(a.flags & IFA_F_SECONDARY)))
    names = {link.index: link.name for link in links}
    interfaces = tuple(
        Interface(link.name, link.index, bool(link.flags & IFF_UP),
                  bool(link.flags & IFF_RUNNING), bool(link.flags & IFF_LOOPBACK),
                  tuple(by_index.get(link.index, ())))
        for link in sorted(links, key=lambda link: link.index))
    route = default_route(routes)
    default = None
    if route is not None and route.oif in names:
        default = DefaultRoute(names[route.oif], route.gateway, route.prefsrc, route.metric)
    return Snapshot(interfaces, default)
