"""The network state machine and the rtnetlink codec, without a network."""

from __future__ import annotations

import socket
import struct

import pytest

from hubruntime.proto import rtnetlink as nl
from hubruntime.proto.netstate import (
    SCOPE_HOST,
    SCOPE_LINK,
    Address,
    AddressChanged,
    Connected,
    DefaultRoute,
    Disconnected,
    Interface,
    NetWatch,
    Snapshot,
    is_connected,
    lan_address,
)

LO = Interface("lo", 1, True, True, True, (Address("127.0.0.1", 8, SCOPE_HOST),))


def eth(*addrs: str, up: bool = True, running: bool = True, name: str = "eth0",
        index: int = 2) -> Interface:
    return Interface(name, index, up, running, False,
                     tuple(Address(a.split("/")[0], int(a.split("/")[1])) for a in addrs))


def snap(*ifaces: Interface, route: DefaultRoute | None = None) -> Snapshot:
    return Snapshot((LO, *ifaces), route)


# the rules -------------------------------------------------------------------------------
def test_connected_needs_up_running_non_loopback_with_a_lan_address():
    assert is_connected(snap(eth("192.168.1.5/24")))
    assert not is_connected(snap())  # loopback alone
    assert not is_connected(snap(eth("192.168.1.5/24", up=False, running=False)))
    assert not is_connected(snap(eth("192.168.1.5/24", running=False)))  # no carrier
    assert not is_connected(snap(eth()))  # link up, no address (DHCP pending)
    assert not is_connected(snap(eth("169.254.7.9/16")))  # DHCP failed: autoconf only
    link_scope = Interface("eth0", 2, True, True, False,
                           (Address("10.0.0.2", 24, SCOPE_LINK),))
    assert not is_connected(snap(link_scope))
    lo_plus = Interface("lo", 1, True, True, True, (Address("10.9.9.9", 32),))
    assert not is_connected(Snapshot((lo_plus,)))  # a global address on lo is not a LAN


def test_connected_without_a_default_route():
    s = snap(eth("10.213.1.2/24"))
    assert s.default_route is None and is_connected(s) and lan_address(s) == "10.213.1.2"


def test_address_prefers_the_default_route_interface_and_its_gateway_subnet():
    wifi = eth("192.168.0.7/24", name="wlan0", index=3)
    wired = eth("10.0.0.2/24", "172.16.0.2/24", name="eth0", index=2)
    assert lan_address(snap(wired, wifi)) == "10.0.0.2"  # no default route: first by index
    assert lan_address(snap(wired, wifi, route=DefaultRoute("wlan0", "192.168.0.1"))) == \
        "192.168.0.7"
    assert lan_address(snap(wired, wifi, route=DefaultRoute("eth0", "172.16.0.1"))) == \
        "172.16.0.2"
    assert lan_address(snap(wired, wifi, route=DefaultRoute("eth0", "172.16.0.1",
                                                            prefsrc="10.0.0.2"))) == "10.0.0.2"
    down = eth("192.168.0.7/24", name="wlan0", index=3, running=False)
    assert lan_address(snap(wired, down, route=DefaultRoute("wlan0", "192.168.0.1"))) == \
        "10.0.0.2"  # the default route's link is gone: another usable interface
    assert lan_address(snap(down)) is None


def test_primary_before_secondary():
    iface = Interface("eth0", 2, True, True, False,
                      (Address("10.0.0.9", 24, secondary=True), Address("10.0.0.2", 24)))
    assert lan_address(snap(iface)) == "10.0.0.2"


# the state machine -----------------------------------------------------------------------
def test_start_connected_reports_nothing_and_sets_the_baseline():
    w = NetWatch()
    assert w.update(snap(eth("10.0.0.2/24"))) == []
    assert w.connected is True and w.address == "10.0.0.2"
    assert w.update(snap(eth("10.0.0.2/24"))) == []  # identical: nothing


def test_start_disconnected_is_reported_once():
    w = NetWatch()
    assert w.update(snap(eth("10.0.0.2/24", up=False))) == [Disconnected()]
    assert w.update(snap(eth("10.0.0.2/24", up=False))) == []
    assert w.connected is False and w.address is None


def test_down_up_is_one_transition_each_without_flapping():
    w = NetWatch()
    up, down = snap(eth("10.0.0.2/24")), snap(eth("10.0.0.2/24", running=False))
    w.update(up)
    assert w.update(down) == [Disconnected()]
    assert [w.update(down) for _ in range(3)] == [[], [], []]
    assert w.update(up) == [Connected("10.0.0.2")]  # same address: no address change
    assert w.update(up) == []
    assert w.last_address == "10.0.0.2"


def test_address_replace_is_one_change():
    w = NetWatch()
    w.update(snap(eth("10.213.1.2/24")))
    assert w.update(snap(eth("10.213.1.2/24", "10.213.2.2/24"))) == []  # old one still first
    assert w.update(snap(eth("10.213.2.2/24"))) == [AddressChanged("10.213.1.2", "10.213.2.2")]
    assert w.update(snap(eth("10.213.2.2/24"))) == []


def test_reconnect_with_another_address_reports_both():
    w = NetWatch()
    w.update(snap(eth("10.0.0.2/24")))
    assert w.update(snap(eth())) == [Disconnected()]  # the address went away
    assert w.address is None and w.last_address == "10.0.0.2"
    assert w.update(snap(eth("10.0.0.3/24"))) == [Connected("10.0.0.3"),
                                                  AddressChanged("10.0.0.2", "10.0.0.3")]


def test_start_disconnected_then_first_address_is_a_change_from_none():
    w = NetWatch()
    w.update(snap(eth()))
    assert w.update(snap(eth("10.0.0.2/24"))) == [Connected("10.0.0.2"),
                                                  AddressChanged(None, "10.0.0.2")]


def test_default_route_moves_to_another_interface():
    w = NetWatch()
    a, b = eth("10.0.0.2/24", name="eth0", index=2), eth("192.168.0.7/24", name="wlan0", index=3)
    w.update(snap(a, b, route=DefaultRoute("eth0", "10.0.0.1")))
    assert w.update(snap(a, b, route=DefaultRoute("wlan0", "192.168.0.1"))) == [
        AddressChanged("10.0.0.2", "192.168.0.7")]


def test_describe_is_one_readable_line():
    s = snap(eth("10.0.0.2/24"), eth(name="wlan0", index=3, up=True, running=False),
             route=DefaultRoute("eth0", "10.0.0.1"))
    assert s.describe() == ("eth0 up 10.0.0.2/24; wlan0 no-link -; "
                            "default via 10.0.0.1 dev eth0")


# the rtnetlink codec ---------------------------------------------------------------------
def attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def msg(kind: int, body: bytes, seq: int = 1, flags: int = nl.NLM_F_MULTI) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body
    return raw + b"\0" * (-len(raw) % 4)


def link_msg(index: int, name: str, flags: int) -> bytes:
    return msg(nl.RTM_NEWLINK, struct.pack("=BxHiII", 0, 1, index, flags, 0)
               + attr(nl.IFLA_IFNAME, name.encode() + b"\0"))


def addr_msg(index: int, ip: str, prefix: int, scope: int = 0, flags: int = 0) -> bytes:
    return msg(nl.RTM_NEWADDR, struct.pack("=BBBBI", socket.AF_INET, prefix, flags, scope, index)
               + attr(nl.IFA_ADDRESS, socket.inet_aton(ip))
               + attr(nl.IFA_LOCAL, socket.inet_aton(ip)))


def route_msg(oif: int, gateway: str | None, dst_len: int = 0, metric: int = 0,
              table: int = nl.RT_TABLE_MAIN) -> bytes:
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, dst_len, 0, 0, min(table, 255), 3, 0,
                       nl.RTN_UNICAST, 0)
    body += attr(nl.RTA_TABLE, struct.pack("=I", table)) + attr(nl.RTA_OIF, struct.pack("=I", oif))
    if gateway:
        body += attr(nl.RTA_GATEWAY, socket.inet_aton(gateway))
    if metric:
        body += attr(nl.RTA_PRIORITY, struct.pack("=I", metric))
    return msg(nl.RTM_NEWROUTE, body)


def test_dump_request_layout():
    raw = nl.dump_request(nl.RTM_GETADDR, 7)
    assert struct.unpack_from("=IHHII", raw) == (24, nl.RTM_GETADDR,
                                                nl.NLM_F_REQUEST | nl.NLM_F_DUMP, 7, 0)
    assert raw[16] == socket.AF_INET
    with pytest.raises(ValueError):
        nl.dump_request(99, 1)


def test_parse_a_dump_into_a_snapshot():
    data = (link_msg(1, "lo", nl.IFF_UP | nl.IFF_RUNNING | nl.IFF_LOOPBACK)
            + link_msg(2, "veth0", nl.IFF_UP | nl.IFF_RUNNING)
            + link_msg(3, "wlan0", nl.IFF_UP))
    links = [nl.parse_link(p) for _, _, _, p in nl.messages(data)]
    addrs = [nl.parse_addr(p) for _, _, _, p in nl.messages(
        addr_msg(1, "127.0.0.1", 8, nl.RT_SCOPE_HOST) + addr_msg(2, "10.213.4.2", 24)
        + addr_msg(2, "10.213.4.3", 24, flags=nl.IFA_F_SECONDARY))]
    routes = [nl.parse_route(p) for _, _, _, p in nl.messages(
        route_msg(2, None, dst_len=24) + route_msg(3, "192.168.0.1", metric=600)
        + route_msg(2, "10.213.4.1", metric=100) + route_msg(3, "1.1.1.1", table=200))]
    s = nl.snapshot([x for x in links if x], [x for x in addrs if x], [x for x in routes if x])
    assert [i.name for i in s.interfaces] == ["lo", "veth0", "wlan0"]
    veth = s.interface("veth0")
    assert veth is not None and veth.usable
    assert veth.addresses == (Address("10.213.4.2", 24), Address("10.213.4.3", 24, 0, True))
    assert s.interface("wlan0") == Interface("wlan0", 3, True, False, False, ())
    assert s.default_route == DefaultRoute("veth0", "10.213.4.1", None, 100)  # lowest metric
    assert lan_address(s) == "10.213.4.2"


def test_messages_and_errors():
    done = msg(nl.NLMSG_DONE, struct.pack("=i", 0))
    err = msg(nl.NLMSG_ERROR, struct.pack("=i", -1) + b"\0" * 16, flags=0)
    parsed = list(nl.messages(done + err))
    assert [m[0] for m in parsed] == [nl.NLMSG_DONE, nl.NLMSG_ERROR]
    assert nl.error_code(parsed[1][3]) == 1
    with pytest.raises(nl.NetlinkError):
        list(nl.messages(struct.pack("=IHHII", 400, 3, 0, 0, 0)))  # longer than the datagram
    assert nl.parse_addr(b"\x0a" + b"\0" * 7) is None  # IPv6: not ours
    assert nl.parse_link(b"short") is None


def test_multipath_default_route_uses_its_first_hop():
    hop_attrs = attr(nl.RTA_GATEWAY, socket.inet_aton("10.0.0.1"))
    hop = struct.pack("=HBBi", 8 + len(hop_attrs), 0, 0, 5) + hop_attrs
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, nl.RT_TABLE_MAIN, 3, 0,
                       nl.RTN_UNICAST, 0) + attr(nl.RTA_MULTIPATH, hop)
    route = nl.parse_route(body)
    assert route is not None and (route.oif, route.gateway) == (5, "10.0.0.1")
