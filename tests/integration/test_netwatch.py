"""The network watcher against a real kernel: a network namespace this test makes, with a veth
pair (one end inside, one outside), addresses in 10.213.0.0/16.

- ``python -m hubruntime.netwatch --print`` inside the namespace, with polling every 30 s so
  only rtnetlink notifications can explain a prompt answer: admin down, carrier loss (the outside
  end down), up again, an address replaced; its whole transcript is checked, and how fast each
  change was noticed.
- a whole ``hubruntime run`` inside the namespace, with a fake camera there and Lua plugins
  logging every event as JSON: the live stream's URL follows the address; subscribers made
  while disconnected (in the same plugin from a timer, and in another plugin) get
  ``hub_disconnected_from_local_network`` at once, the existing subscriber no second copy.

Needs root (``ip netns add``); skipped with the reason otherwise. Everything started is stopped
and the namespace and links are deleted, whatever happens.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from plugin_dirs import make_plugin

from hubruntime.netwatch import read_ioctl_snapshot, read_netlink_snapshot
from hubruntime.proto.netstate import lan_address

ROOT = Path(__file__).resolve().parents[2]
DISC = "hub_disconnected_from_local_network"
CONN = "hub_connected_to_local_network"
CAM = "netcam1"

pytestmark = pytest.mark.integration


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


@dataclass
class Netns:
    name: str
    dev: str  # the end inside
    peer: str  # the end outside
    subnet: int  # 10.213.<subnet>.0/24 at start
    children: list[trio.Process] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"10.213.{self.subnet}.2"

    def run(self, *args: str) -> None:
        ip("-n", self.name, *args)


@pytest.fixture
def netns() -> Iterator[Netns]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a network namespace and a veth pair")
    tag = secrets.token_hex(3)
    ns = Netns(f"hubtest-{tag}", f"hbt{tag}i", f"hbt{tag}o", random.randint(1, 120))
    r = ip("netns", "add", ns.name, check=False)
    if r.returncode != 0:
        pytest.skip(f"'ip netns add' failed here: {r.stderr.strip()}")
    try:
        ip("link", "add", ns.peer, "type", "veth", "peer", "name", ns.dev, "netns", ns.name)
        ip("link", "set", ns.peer, "up")
        ns.run("link", "set", "lo", "up")
        ns.run("link", "set", ns.dev, "up")
        ns.run("addr", "add", f"{ns.address}/24", "dev", ns.dev)
        ns.run("route", "add", "default", "via", f"10.213.{ns.subnet}.1")
        yield ns
    finally:
        for child in ns.children:  # normally already stopped by the test
            if child.poll() is None:
                child.kill()
        pids = ip("netns", "pids", ns.name, check=False).stdout.split()
        for pid in pids:  # only what this test started can live in its fresh namespace
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        ip("netns", "del", ns.name, check=False)
        ip("link", "del", ns.peer, check=False)  # gone with the namespace, unless it failed


class Child:
    """A process started in the namespace; its output lines kept with the time each arrived."""

    def __init__(self, proc: trio.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.out: list[tuple[float, str]] = []
        self.err: list[tuple[float, str]] = []
        self._changed = trio.Event()

    @classmethod
    async def start(cls, ns: Netns, nursery: trio.Nursery, name: str, *argv: str) -> Child:
        proc = await trio.lowlevel.open_process(
            ["ip", "netns", "exec", ns.name, sys.executable, *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        ns.children.append(proc)
        child = cls(proc, name)
        assert proc.stdout is not None and proc.stderr is not None
        nursery.start_soon(child._pump, proc.stdout, child.out)
        nursery.start_soon(child._pump, proc.stderr, child.err)
        return child

    async def _pump(self, stream: trio.abc.ReceiveStream, sink: list[tuple[float, str]]) -> None:
        buf = b""
        while True:
            try:
                data = await stream.receive_some(1 << 16)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            now = time.monotonic()
            sink.extend((now, line.decode("utf-8", "replace")) for line in lines)
            self._changed.set()
            self._changed = trio.Event()
        self._changed.set()

    async def wait_for(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        with trio.move_on_after(timeout):
            while True:
                result = check()
                if result:
                    return result
                if self.proc.poll() is not None:
                    break
                await self._changed.wait()
        tail = "\n".join(line for _, line in self.err[-30:])
        raise AssertionError(f"{self.name}: no {what} within {timeout} s "
                             f"(exit {self.proc.poll()}); stderr tail:\n{tail}")

    async def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(timeout):
            return await self.proc.wait()
        self.proc.kill()
        await self.proc.wait()
        raise AssertionError(f"{self.name} did not stop within {timeout} s of SIGTERM")


# the watcher alone ------------------------------------------------------------------------
def test_netlink_snapshot_matches_ip_addr() -> None:
    """Our rtnetlink dump agrees with iproute2 on this host (outside any namespace)."""
    shown = json.loads(subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True,
                                      text=True, check=True).stdout)
    expected = {(i["ifname"], a["local"], a["prefixlen"]) for i in shown
                for a in i.get("addr_info", ())}
    snap = read_netlink_snapshot()
    got = {(i.name, a.address, a.prefixlen) for i in snap.interfaces for a in i.addresses}
    assert got == expected
    flags = {i["ifname"]: ("UP" in i["flags"]) for i in shown}
    assert all(i.up == flags[i.name] for i in snap.interfaces if i.name in flags)
    route = json.loads(subprocess.run(["ip", "-j", "-4", "route", "show", "default"],
                                      capture_output=True, text=True, check=True).stdout)
    assert snap.default_interface == (route[0]["dev"] if route else None)
    if route and lan_address(snap) is not None:
        usable = snap.interface(route[0]["dev"])
        assert usable is not None and lan_address(snap) in {a.address for a in usable.addresses}
    # the fallback (ioctl: flags and primary address per interface) sees the same links
    fallback = read_ioctl_snapshot()
    assert {(i.name, i.up, i.running) for i in fallback.interfaces} == {
        (i.name, i.up, i.running) for i in snap.interfaces}
    assert fallback.default_interface == snap.default_interface


async def test_link_down_up_carrier_and_address_replace_in_a_namespace(netns: Netns) -> None:
    ns = netns
    new_subnet = ns.subnet + 100
    async with trio.open_nursery() as nursery:
        w = await Child.start(ns, nursery, "netwatch", "-m", "hubruntime.netwatch", "--print",
                              "--poll-secs", "30")
        try:
            events: list[dict[str, Any]] = []

            def lines() -> list[dict[str, Any]]:
                events[:] = [json.loads(line) for _, line in w.out if line.strip()]
                return events

            async def change(*args: str, expect: int, what: str) -> float:
                """Run ``ip -n NS args``; seconds until the ``expect``-th line arrived."""
                before = time.monotonic()
                ns.run(*args)
                await w.wait_for(lambda: len(lines()) >= expect, 10.0, what)
                return w.out[expect - 1][0] - before

            await w.wait_for(lambda: lines(), 30.0, "ready line")
            timings = {
                "admin down": await change("link", "set", ns.dev, "down", expect=2,
                                           what="disconnected on admin down"),
                "admin up": await change("link", "set", ns.dev, "up", expect=3,
                                         what="connected on admin up"),
            }
            before = time.monotonic()
            ip("link", "set", ns.peer, "down")  # the cable pulled at the other end
            await w.wait_for(lambda: len(lines()) >= 4, 10.0, "disconnected on carrier loss")
            timings["carrier loss"] = w.out[3][0] - before
            before = time.monotonic()
            ip("link", "set", ns.peer, "up")
            await w.wait_for(lambda: len(lines()) >= 5, 10.0, "connected on carrier")
            timings["carrier back"] = w.out[4][0] - before
            ns.run("addr", "add", f"10.213.{new_subnet}.2/24", "dev", ns.dev)
            timings["address replace"] = await change(
                "addr", "del", f"{ns.address}/24", "dev", ns.dev, expect=6,
                what="address change")
        finally:
            rc = await w.stop()
    old, new = ns.address, f"10.213.{new_subnet}.2"
    for e in events:
        e.pop("t")
    assert events == [
        {"ready": True, "connected": True, "address": old},
        {"event": DISC, "address": None},
        {"event": CONN, "address": old},
        {"event": DISC, "address": None},
        {"event": CONN, "address": old},
        {"addressChanged": new},
    ]  # and nothing else: each change once, the address replace not a disconnection
    assert rc == 0
    print("\nnetwatch: change noticed after " +
          ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()))
    # polling is every 30 s: these come from rtnetlink notifications (+100 ms debounce);
    # carrier changes pass through the kernel's linkwatch, which may hold them up to ~1 s
    assert timings["admin down"] < 1.5 and timings["carrier loss"] < 2.5
    assert all(v < 3.0 for v in timings.values())


# a whole hub ------------------------------------------------------------------------------
def plugin(root: Path, pid: str, scripts: dict[str, str]) -> None:
    make_plugin(root, pid, scripts, ["cameras", "logging", "json", "timer"])


def log_events(tag: str) -> str:
    return (f'local params = ...\n'
            f'require("logging").info("EV {tag} " .. require("json").encode(params))\n')


def make_plugins(root: Path, camera_url: str) -> None:
    # test.netlog: subscriber a from startup (it sees the live stream start); on the first
    # disconnection it arms a timer that subscribes b, then adds the stream test.other waits for
    plugin(root, "test.netlog", {
        "startup": f"""
            local cameras = require("cameras")
            cameras.subscribe("scripts/a")
            cameras.add_camera_stream("{CAM}", "Net test camera", "{camera_url}", "netwatch")
            cameras.create_live_rtsp_stream("{CAM}")
        """,
        "a": log_events("a") + """
            if params.event == "hub_disconnected_from_local_network" and not armed then
              armed = true
              require("timer").set_timeout(100, "scripts/late")
            end
        """,
        "late": """
            require("cameras").subscribe("scripts/b")
            require("logging").info("SUBSCRIBED b")
            require("cameras").add_camera_stream("nettrigger", "Trigger", "rtsp://127.0.0.1:9/x")
        """,
        "b": log_events("b"),
    })
    # test.other: no subscriber until the trigger stream exists (added while disconnected)
    plugin(root, "test.other", {
        "startup": 'require("timer").set_interval(100, "scripts/poll")',
        "poll": """
            local args = ...
            if require("cameras").get_camera_stream("nettrigger") then
              require("timer").cancel(args.timerId)
              require("cameras").subscribe("scripts/c")
              require("logging").info("SUBSCRIBED c")
            end
        """,
        "c": log_events("c"),
    })


EV_LINE = re.compile(r"\[(test\.\w+)\] \S+: EV (\w) (\{.*\})$")
INTERESTING = {DISC, CONN, "live_rtsp_stream_started", "live_rtsp_stream_updated",
               "live_rtsp_stream_stopped"}


async def test_whole_hub_follows_the_network_and_tells_late_subscribers(
        netns: Netns, tmp_path: Path) -> None:
    ns = netns
    new_subnet = ns.subnet + 100
    plugins = tmp_path / "plugins"
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\nlog_level = "INFO"\n'
                   '[api]\nlisten = "127.0.0.1:0"\n')  # no advertise_host: follow the address
    async with trio.open_nursery() as nursery:
        cam = await Child.start(ns, nursery, "fakecam", "-m", "hubruntime", "fakecam",
                                "--port", "8554")
        hub: Child | None = None
        try:
            await cam.wait_for(lambda: cam.out, 180.0, "camera URL")  # may make the clip
            url = cam.out[0][1].strip()
            assert url == "rtsp://127.0.0.1:8554/cam"
            make_plugins(plugins, url)
            hub = await Child.start(ns, nursery, "hub", "-m", "hubruntime", "run",
                                    "--config", str(cfg), "--plugins", str(plugins))

            def seen(tag: str) -> list[tuple[float, dict[str, Any]]]:
                out = []
                assert hub is not None
                for t, line in hub.err:
                    m = EV_LINE.search(line)
                    if m and m.group(2) == tag:
                        event = json.loads(m.group(3))
                        if event["event"] in INTERESTING:
                            out.append((t, event))
                return out

            def names(tag: str) -> list[str]:
                return [e["event"] for _, e in seen(tag)]

            await hub.wait_for(lambda: "live_rtsp_stream_started" in names("a"), 60.0,
                               "live stream started")
            before = time.monotonic()
            ns.run("link", "set", ns.dev, "down")
            await hub.wait_for(lambda: DISC in names("a"), 10.0, "disconnected (a)")
            noticed = seen("a")[1][0] - before
            await hub.wait_for(lambda: DISC in names("b"), 15.0, "disconnected (b, late)")
            await hub.wait_for(lambda: DISC in names("c"), 15.0, "disconnected (c, late)")
            ns.run("link", "set", ns.dev, "up")
            for tag in "abc":
                await hub.wait_for(lambda t=tag: CONN in names(t), 10.0, f"connected ({tag})")
            ns.run("addr", "add", f"10.213.{new_subnet}.2/24", "dev", ns.dev)
            ns.run("addr", "del", f"{ns.address}/24", "dev", ns.dev)
            for tag in "abc":
                await hub.wait_for(lambda t=tag: "live_rtsp_stream_updated" in names(t), 10.0,
                                   f"live stream updated ({tag})")
        finally:
            rc_hub = await hub.stop() if hub is not None else 0
            rc_cam = await cam.stop()
    old = f"rtsp://{ns.address}:5554/{CAM}"
    new = f"rtsp://10.213.{new_subnet}.2:5554/{CAM}"
    network = [{"event": DISC}, {"event": CONN},
               {"event": "live_rtsp_stream_updated", "streamId": CAM, "localRtspUrl": new}]
    assert [e for _, e in seen("a")] == [
        {"event": "live_rtsp_stream_started", "streamId": CAM, "localRtspUrl": old}, *network]
    assert [e for _, e in seen("b")] == network  # told at once, from the timer's subscription
    assert [e for _, e in seen("c")] == network  # another plugin, no subscriber before
    texts = [line for _, line in hub.err]
    assert sum("SUBSCRIBED b" in t for t in texts) == 1
    assert sum("SUBSCRIBED c" in t for t in texts) == 1
    assert (rc_hub, rc_cam) == (0, 0)
    print(f"\nhub: link down reached plugin a after {noticed * 1000:.0f} ms")
    assert noticed < 3.0
