"""The SSH reverse tunnel to the cloud relay, against a real OpenSSH server on 127.0.0.1.

The relay is a scratch sshd (tests/integration/sshd.py: own config, host key, client key,
known_hosts); the hub is real (fake camera → FFmpeg → the hub's RTSP server) where the test is
about what a remote viewer gets, and a plain event bus plus a small local TCP server elsewhere.
TunnelService is built by each test (hub.py does not start it yet). Every wait has a deadline;
retries are counted over fixed windows with a short backoff (0.1 s doubling to 1 s).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
import pytest
import trio
from rtsp_client import MiniClient
from sshd import Sshd, free_port, skip_reason
from waits import run, until

from hubruntime.config import ApiConfig, CloudConfig, HubConfig, RtspConfig
from hubruntime.events.bus import EventBus, Published
from hubruntime.fakecam import FakeCamera, default_capture
from hubruntime.hub import Hub
from hubruntime.proto.backoff import Backoff
from hubruntime.tunnels import TunnelService

FFPROBE = shutil.which("ffprobe")
SKIP = skip_reason()

pytestmark = [pytest.mark.integration, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]
needs_ffprobe = pytest.mark.skipif(FFPROBE is None, reason="ffprobe not on PATH")

SID = "cam1"
CONNECT_TIMEOUT = 2.0
UP_WITHIN = 10.0  # generous: two cores, and another test run may share them


def fast() -> Backoff:
    return Backoff(0.1, 1.0, reset_after=5.0)


@pytest.fixture(scope="session")
def capture():
    return trio.run(default_capture)


@pytest.fixture
async def relay(tmp_path):
    sshd = Sshd(tmp_path / "relay")
    await sshd.start()
    try:
        yield sshd
    finally:
        await sshd.stop()


def cloud(relay: Sshd | None, **over: Any) -> CloudConfig:
    base: dict[str, Any] = dict(
        host="127.0.0.1", port=relay.port if relay else free_port(), user="root",
        key_file=str(relay.client_key) if relay else "", remote_bind="127.0.0.1",
        known_hosts=str(relay.known_hosts) if relay else "", keepalive_secs=1.0,
        connect_timeout_secs=CONNECT_TIMEOUT)
    base.update(over)
    return CloudConfig(**base)


class Events:
    """Everything published on a bus, kept, with deadline-bounded waits."""

    def __init__(self, bus: EventBus) -> None:
        self.box = bus.subscribe("test", maxlen=100_000)
        self.all: list[Published] = []
        self._taken: set[int] = set()

    def _drain(self) -> None:
        self.all += self.box.get_nowait_batch(100_000)

    def named(self, name: str, sid: str | None = None) -> list[dict[str, Any]]:
        self._drain()
        return [p.event for p in self.all if p.name == name
                and (sid is None or p.event.get("streamId") == sid)]

    async def wait(self, name: str, timeout: float,
                   match: Callable[[dict[str, Any]], bool] = lambda e: True) -> dict[str, Any]:
        """The first event ``name`` matching and not returned before; fails after ``timeout``."""
        with trio.fail_after(timeout):
            while True:
                self._drain()
                for p in self.all:
                    if p.seq not in self._taken and p.name == name and match(p.event):
                        self._taken.add(p.seq)
                        return p.event
                self.all += await self.box.get_batch(100_000)

    async def wait_for(self, name: str, timeout: float, sid: str = SID) -> dict[str, Any]:
        return await self.wait(name, timeout, lambda e: e.get("streamId") == sid)


async def start_service(nursery: trio.Nursery, cfg: CloudConfig, bus: EventBus,
                        local_port: Callable[[], int | None]) -> TunnelService:
    svc = TunnelService(cfg, bus, local_port=local_port, backoff=fast())
    await nursery.start(svc.run)
    return svc


def go_live(bus: EventBus, sid: str = SID) -> None:
    """What LiveStreams publishes when a stream goes live (the tunnel follows the bus)."""
    bus.publish("live_rtsp_stream_started", streamId=sid, localRtspUrl=f"rtsp://hub:1/{sid}")


def stop_live(bus: EventBus, sid: str = SID) -> None:
    bus.publish("live_rtsp_stream_stopped", streamId=sid)


async def echo_server(nursery: trio.Nursery) -> tuple[int, list[int]]:
    """A local TCP echo server standing in for the RTSP server; (port, open connections)."""
    open_now = [0]

    async def echo(stream: trio.SocketStream) -> None:
        open_now[0] += 1
        try:
            async for data in stream:
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass
        finally:
            open_now[0] -= 1

    listeners = await nursery.start(trio.serve_tcp, echo, 0)
    return listeners[0].socket.getsockname()[1], open_now


async def echo_through(port: int, payload: bytes = b"ping\n", timeout: float = 5.0) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        with trio.fail_after(timeout):
            await stream.send_all(payload)
            got = b""
            while len(got) < len(payload):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                got += chunk
            return got
    finally:
        await stream.aclose()


def listening(port: int) -> bool:
    """Whether something accepts TCP on 127.0.0.1:port (checked from /proc, no connection)."""
    hexport = f"{port:04X}"
    for table in ("/proc/net/tcp",):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if local.endswith(f":{hexport}") and state == "0A":
                return True
    return False


# the full hub ----------------------------------------------------------------------------------

async def start_hub(tmp_path: Path, nursery: trio.Nursery, capture: Any,
                    cloud_config: CloudConfig | None = None) -> Hub:
    cam = FakeCamera(capture)
    await nursery.start(cam.serve)
    # the API on a port of its own: two hubs starting at once on the default 127.0.0.1:8080
    # (another test run) crashed the hub: hypercorn's listen() fails after our bind succeeded
    cfg = HubConfig(data_dir=tmp_path / "data", rtsp=RtspConfig(port=0, bind="127.0.0.1"),
                    advertise_host="127.0.0.1", api=ApiConfig(listen="127.0.0.1:0"),
                    cloud=cloud_config or CloudConfig())
    hub = Hub(cfg)
    await nursery.start(hub.run)
    assert hub.manager is not None and hub.live is not None
    await hub.manager.add(SID, "Camera", cam.url)
    return hub


async def hub_live(hub: Hub, events: Events) -> None:
    assert hub.live is not None
    await hub.live.create(SID)
    started = await events.wait_for("live_rtsp_stream_started", 15)
    assert started["localRtspUrl"] == hub.live.url(SID)
    live = hub.live
    await until(lambda: SID in live.fanouts and live.fanouts[SID].hub.gop is not None
                and bool(live.fanouts[SID].hub.gop.snapshot()), 10, "a keyframe in the GOP cache")


async def connect_from(source: str, url: str) -> MiniClient:
    """A MiniClient whose connection comes from ``source`` (another loopback address)."""
    port = int(url.split("/")[2].rpartition(":")[2])
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    with trio.fail_after(5):
        await sock.connect(("127.0.0.1", port))
    return MiniClient(trio.SocketStream(sock), url)


def video_packets(client: MiniClient) -> int:
    return len(client.rtp(0))


# (a) established, and a real viewer through the relay -----------------------------------------

@needs_ffprobe
async def test_established_and_viewers_through_the_relay(tmp_path, nursery, capture, relay):
    # the hub's own tunnel service, from its [cloud] config (as `hubruntime run` builds it)
    hub = await start_hub(tmp_path, nursery, capture, cloud(relay))
    assert hub.bus is not None and hub.live is not None and hub.tunnels is not None
    events = Events(hub.bus)
    live = hub.live
    svc = hub.tunnels
    await trio.sleep(0.5)
    assert (svc.state, svc.attempts) == ("idle", 0)  # no live stream: no connection wanted

    t0 = trio.current_time()
    await hub_live(hub, events)
    est = await events.wait_for("cloud_tunnel_established", UP_WITHIN)
    t_up = trio.current_time() - t0
    url = est["remoteRtspUrl"]
    assert svc.state == "up" and svc.remote_port is not None
    assert url == f"rtsp://127.0.0.1:{svc.remote_port}/{SID}"
    hub_port = live.port
    assert svc.remote_port != hub_port
    assert listening(svc.remote_port)
    # connection accepted by sshd with our key, one session
    assert relay.log_text().count("Accepted publickey for root") == 1

    # a real client through the relay's forwarded port
    t1 = time.monotonic()
    r = await run([FFPROBE, "-v", "error", "-rtsp_transport", "tcp", "-show_entries",
                   "stream=codec_name,width,height", "-of", "csv=p=0", url], 30)
    t_probe = time.monotonic() - t1
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["h264,640,360", "aac"], r.stdout.decode()

    # what the RTSP server answers through the tunnel names the relay's URL, never the hub's
    hub_addr = f"127.0.0.1:{hub_port}"
    c = await MiniClient.connect(url)
    d = await c.request("DESCRIBE")
    assert d.status == 200, d
    assert d.headers.get("Content-Base") == f"{url}/"
    answers = [repr(list(d.headers)), d.body.decode(errors="replace")]
    sdp = d.body.decode()
    lines = sdp.splitlines()
    controls = [ln.removeprefix("a=control:") for ln in lines if ln.startswith("a=control:")]
    assert controls and all(not ctl.startswith("rtsp://") or ctl.startswith(url)
                            for ctl in controls), controls
    play = await c.play()
    info = play.headers.get("RTP-Info") or ""
    urls = re.findall(r"url=([^;,]+)", info)
    assert urls and all(u.startswith(f"{url}/") for u in urls), info
    answers.append(repr(list(play.headers)))
    for text in answers:
        assert hub_addr not in text and f":{hub_port}/" not in text, text
    await c.collect(2.0)
    got = video_packets(c)
    assert got >= 25, got  # 2 s of 25 fps H.264, at least a packet a frame
    await c.aclose()
    # the SDP's connection address is "any", not the loopback the camera reader published from
    assert [ln for ln in lines if ln.startswith("c=")] == ["c=IN IP4 0.0.0.0"], sdp

    # SSH forwards TCP only: a viewer coming through the relay is refused RTP over UDP (which
    # would go to the bridge, on the hub itself, never to the remote viewer), at once, so its
    # client falls back to TCP instead of stalling; an offer list with TCP gets TCP.
    u = await connect_from("127.0.0.2", url)
    r = await u.request("SETUP", f"{url}/trackID=0",
                        [("Transport", "RTP/AVP;unicast;client_port=40000-40001")])
    assert r.status == 461, r
    r = await u.request("SETUP", f"{url}/trackID=0", [(
        "Transport",
        "RTP/AVP;unicast;client_port=40000-40001,RTP/AVP/TCP;unicast;interleaved=0-1")])
    assert r.status == 200 and "RTP/AVP/TCP" in (r.headers.get("Transport") or ""), r
    await u.aclose()
    # a local viewer (not bridged) still gets UDP
    local = await MiniClient.connect(live.url(SID))
    r = await local.request("SETUP", f"{live.url(SID)}/trackID=0",
                            [("Transport", "RTP/AVP;unicast;client_port=40000-40001")])
    assert r.status == 200 and "server_port=" in (r.headers.get("Transport") or ""), r
    await local.aclose()

    assert svc.forwarded_connections >= 2  # ffprobe's and ours
    await until(lambda: svc.active_forwards == 0, 10, "bridges closed after the viewers left",
                lambda: svc.active_forwards)
    await until(lambda: live.server.connections == 0, 10, "RTSP connections closed")
    # one tunnel event for the one stream, no rejection
    assert len(events.named("cloud_tunnel_established")) == 1
    assert events.named("cloud_tunnel_rejected") == []
    # the network watcher reports a new LAN address: the hub's callbacks re-establish the tunnel
    connects = svc.connects
    for callback in hub.on_address_change:
        callback("10.1.2.3")
    await until(lambda: svc.connects == connects + 1 and svc.state == "up", 10,
                "the tunnel re-established after the address change", lambda: svc.state)
    assert events.named("cloud_tunnel_rejected") == []
    print(f"\ntunnel up {t_up * 1000:.0f} ms after create_live_rtsp_stream (connect "
          f"{(svc.last_connect_secs or 0) * 1000:.0f} ms); ffprobe through the relay "
          f"{t_probe:.2f} s; {got} video packets in 2 s; {svc.bytes_to_relay} bytes to the relay")


async def test_bulk_data_through_the_forward(tmp_path, nursery, relay):
    """Both directions byte-exact at full speed through the bridge (bounded buffers), and the
    local side sees the remote side's end."""
    size = 32 * 1024 * 1024
    blob = os.urandom(1024 * 1024) * (size // (1024 * 1024))
    want = hashlib.sha256(blob).hexdigest()
    seen_eof = trio.Event()
    uploaded: list[str] = []

    async def local(stream: trio.SocketStream) -> None:
        first = await stream.receive_some(1)
        if first == b"D":  # download: send the blob, then close
            await stream.send_all(blob)
            await stream.aclose()
        elif first == b"U":  # upload: hash until EOF, answer the hash
            h = hashlib.sha256()
            while chunk := await stream.receive_some(65536):
                h.update(chunk)
            uploaded.append(h.hexdigest())
            seen_eof.set()
            await stream.send_all(h.hexdigest().encode())
            await stream.aclose()

    listeners = await nursery.start(trio.serve_tcp, local, 0)
    port = listeners[0].socket.getsockname()[1]
    bus = EventBus()
    svc = await start_service(nursery, cloud(relay), bus, lambda: port)
    go_live(bus)
    await until(lambda: svc.state == "up", UP_WITHIN, "tunnel up")
    assert svc.remote_port is not None

    stream = await trio.open_tcp_stream("127.0.0.1", svc.remote_port)
    t0 = time.monotonic()
    h = hashlib.sha256()
    n = 0
    with trio.fail_after(60):
        await stream.send_all(b"D")
        while chunk := await stream.receive_some(1 << 16):
            h.update(chunk)
            n += len(chunk)
    down = time.monotonic() - t0
    await stream.aclose()
    assert (n, h.hexdigest()) == (size, want)

    stream = await trio.open_tcp_stream("127.0.0.1", svc.remote_port)
    t0 = time.monotonic()
    with trio.fail_after(60):
        await stream.send_all(b"U" + blob)
        await stream.send_eof()  # the half-close must reach the local server
        with trio.fail_after(10):
            await seen_eof.wait()
        answer = b""
        while chunk := await stream.receive_some(1 << 16):
            answer += chunk
    up = time.monotonic() - t0
    await stream.aclose()
    assert uploaded == [want] and answer.decode() == want
    await until(lambda: svc.active_forwards == 0, 10, "bridges closed")
    print(f"\n32 MiB through the forward: relay→hub side {size / down / 1e6:.0f} MB/s "
          f"(download by the remote), hub side←relay {size / up / 1e6:.0f} MB/s (upload)")


# (b)-(d) the relay says no ---------------------------------------------------------------------

async def rejected_once(events: Events, bus: EventBus, svc: TunnelService, reason: str,
                        window: float, sids: tuple[str, ...] = (SID, "cam2")) -> dict[str, Any]:
    """Both live streams get one rejection with the reason's message, and retries go on with
    backoff for ``window`` s without another event; the first rejection."""
    first = await events.wait_for("cloud_tunnel_rejected", UP_WITHIN, sids[0])
    assert svc.last_reason == reason, (svc.last_reason, svc.last_error)
    assert first["errorMessage"] == svc.last_error
    attempts = svc.attempts
    await trio.sleep(window)
    assert svc.attempts > attempts, "no retry"
    for sid in sids:
        got = events.named("cloud_tunnel_rejected", sid)
        assert len(got) == 1, got
        assert got[0]["errorMessage"] == first["errorMessage"]
    assert events.named("cloud_tunnel_established") == []
    assert svc.connects == 0
    return first


def two_live(bus: EventBus) -> None:
    go_live(bus, SID)
    go_live(bus, "cam2")


async def test_forwarding_disabled_on_the_relay(tmp_path, nursery):
    relay = Sshd(tmp_path / "relay", allow_tcp_forwarding=False)
    await relay.start()
    try:
        bus = EventBus()
        events = Events(bus)
        svc = await start_service(nursery, cloud(relay), bus, lambda: 1)
        two_live(bus)
        first = await rejected_once(events, bus, svc, "forwarding_denied", 2.0)
        assert "denied the reverse forward" in first["errorMessage"]
        assert "127.0.0.1:" in first["errorMessage"]
        # the login itself worked: it is the forward that was refused
        assert relay.log_text().count("Accepted publickey for root") >= 2
        print(f"\nforwarding refused: {first['errorMessage']!r}; {svc.attempts} attempts")
    finally:
        await relay.stop()


async def test_wrong_client_key(tmp_path, nursery, relay):
    bus = EventBus()
    events = Events(bus)
    stranger = relay.other_client_key()
    svc = await start_service(nursery, cloud(relay, key_file=str(stranger)), bus, lambda: 1)
    two_live(bus)
    first = await rejected_once(events, bus, svc, "auth_failed", 2.0)
    assert f"refused key {stranger} for user 'root'" in first["errorMessage"]
    assert "PRIVATE" not in first["errorMessage"]
    assert stranger.read_text().splitlines()[1] not in first["errorMessage"]


@pytest.mark.parametrize("case", ["unknown", "changed", "missing"])
async def test_host_key_not_trusted(tmp_path, nursery, relay, case):
    bus = EventBus()
    events = Events(bus)
    path = tmp_path / f"known_hosts_{case}"
    if case == "unknown":
        relay.unknown_known_hosts(path)  # knows this key, but for another port only
    elif case == "changed":
        relay.changed_known_hosts(path)
    svc = await start_service(nursery, cloud(relay, known_hosts=str(path)), bus, lambda: 1)
    two_live(bus)
    reason = {"unknown": "unknown_host_key", "changed": "changed_host_key",
              "missing": "known_hosts_missing"}[case]
    first = await rejected_once(events, bus, svc, reason, 1.5)
    msg = first["errorMessage"]
    assert str(path) in msg
    fingerprint = relay.host_pub.split()[1]  # base64 public key; paramiko shows SHA256
    assert fingerprint not in msg  # a fingerprint, not the key
    if case != "missing":
        offered = paramiko.PKey.from_path(relay.host_key)  # what sshd presents
        assert offered.fingerprint in msg
        assert "Accepted publickey" not in relay.log_text()  # never logged in
    print(f"\n{case}: {msg!r}")


# (e) the relay crashes and comes back ----------------------------------------------------------

async def test_relay_killed_and_restarted(tmp_path, nursery, relay):
    port, open_now = await echo_server(nursery)
    bus = EventBus()
    events = Events(bus)
    remote_port = free_port()
    svc = await start_service(nursery, cloud(relay, remote_port=remote_port), bus, lambda: port)
    go_live(bus)
    est = await events.wait_for("cloud_tunnel_established", UP_WITHIN)
    url = f"rtsp://127.0.0.1:{remote_port}/{SID}"
    assert est["remoteRtspUrl"] == url
    assert await echo_through(remote_port) == b"ping\n"

    t0 = trio.current_time()
    await relay.kill_hard()  # master and session: the relay is gone
    rej = await events.wait_for("cloud_tunnel_rejected", 5)
    t_lost = trio.current_time() - t0
    assert svc.last_reason == "lost"
    assert t_lost < 1.0, t_lost  # the transport thread's end is seen at once
    assert rej["errorMessage"].startswith(f"connection to relay 127.0.0.1:{relay.port} lost")
    await trio.sleep(1.5)  # it retries meanwhile (refused), without new events
    assert svc.attempts >= 2 and svc.last_reason == "refused"
    assert len(events.named("cloud_tunnel_rejected")) == 1

    t1 = trio.current_time()
    await relay.start()  # same port, same keys
    est2 = await events.wait_for("cloud_tunnel_established", UP_WITHIN)
    t_back = trio.current_time() - t1
    assert est2["remoteRtspUrl"] == url
    assert await echo_through(remote_port, b"again\n") == b"again\n"
    names = [p.name for p in events.all if p.name.startswith("cloud_tunnel")]
    assert names == ["cloud_tunnel_established", "cloud_tunnel_rejected",
                     "cloud_tunnel_established"], names
    print(f"\nrelay SIGKILLed: lost reported after {t_lost * 1000:.0f} ms; restarted: tunnel "
          f"back after {t_back:.2f} s ({svc.attempts} attempts in all)")


async def test_relay_that_stops_answering_is_lost_by_keepalive(tmp_path, nursery, relay):
    """The relay's session process freezes (SIGSTOP): no FIN, no RST, the TCP connection looks
    fine. Keep-alives that want an answer notice; the tunnel comes back on a new session."""
    port, _ = await echo_server(nursery)
    bus = EventBus()
    events = Events(bus)
    svc = await start_service(nursery, cloud(relay, keepalive_secs=0.5), bus, lambda: port)
    go_live(bus)
    await events.wait_for("cloud_tunnel_established", UP_WITHIN)
    sessions = relay.session_pids()
    assert len(sessions) == 1, sessions
    t0 = trio.current_time()
    os.kill(sessions[0], signal.SIGSTOP)
    try:
        rej = await events.wait_for("cloud_tunnel_rejected", 10)
        t_lost = trio.current_time() - t0
        assert "no answer to a keep-alive within 2 s" in rej["errorMessage"], rej
        assert svc.failures >= 1 and svc.connects == 1
        est = await events.wait_for("cloud_tunnel_established", UP_WITHIN)
        assert await echo_through(int(est["remoteRtspUrl"].split(":")[2].split("/")[0])) \
            == b"ping\n"
    finally:
        os.kill(sessions[0], signal.SIGCONT)
    # keep-alive every 0.5 s, answer awaited up to 2 s (connect_timeout_secs)
    assert 1.5 <= t_lost < 5.0, t_lost
    print(f"\nfrozen relay session: lost after {t_lost:.2f} s, tunnel back on a new session")


# lifecycle: streams, restart, no host ------------------------------------------------------------

async def test_follows_live_streams_and_restart(tmp_path, nursery, relay):
    port, _ = await echo_server(nursery)
    bus = EventBus()
    events = Events(bus)
    remote_port = free_port()
    svc = await start_service(nursery, cloud(relay, remote_port=remote_port), bus, lambda: port)
    go_live(bus, SID)
    await events.wait_for("cloud_tunnel_established", UP_WITHIN)
    go_live(bus, "cam2")  # while up: told at once, the first is not told again
    est2 = await events.wait_for("cloud_tunnel_established", 2, "cam2")
    assert est2["remoteRtspUrl"] == f"rtsp://127.0.0.1:{remote_port}/cam2"
    go_live(bus, SID)  # create_live_rtsp_stream again on a live stream
    await trio.sleep(0.3)
    assert len(events.named("cloud_tunnel_established")) == 2
    assert (svc.attempts, svc.connects) == (1, 1)

    # the hub's address changed: the connection is dropped and made again at once
    t0 = trio.current_time()
    svc.restart("address changed")
    await until(lambda: svc.connects == 2 and svc.state == "up", 5, "reconnected")
    t_restart = trio.current_time() - t0
    assert relay.log_text().count("Accepted publickey for root") == 2
    assert await echo_through(remote_port) == b"ping\n"
    await trio.sleep(0.3)
    # same remote port, so the same URLs: plugins hear nothing
    assert len(events.named("cloud_tunnel_established")) == 2
    assert events.named("cloud_tunnel_rejected") == []
    await until(lambda: len(relay.session_pids()) == 1, 5, "the old session ended",
                relay.session_pids)

    # the last live stream ends: the connection closes, the port on the relay with it
    stop_live(bus, SID)
    await trio.sleep(0.3)
    assert svc.state == "up"
    stop_live(bus, "cam2")
    await until(lambda: svc.state == "idle", 5, "idle")
    await until(lambda: not relay.session_pids() and not listening(remote_port), 5,
                "relay session and port gone")
    svc.restart("address changed")  # nothing live: nothing to do
    await trio.sleep(0.5)
    assert (svc.attempts, svc.connects, svc.state) == (2, 2, "idle")
    # live again: a new connection and new events
    go_live(bus, "cam2")
    est = await events.wait_for("cloud_tunnel_established", UP_WITHIN, "cam2")
    assert est["remoteRtspUrl"].endswith(f":{remote_port}/cam2")
    print(f"\nrestart(): tunnel up again after {t_restart * 1000:.0f} ms")


async def test_no_host_means_no_tunnel_and_no_events(nursery):
    bus = EventBus()
    events = Events(bus)
    svc = await start_service(nursery, CloudConfig(), bus, lambda: 1)
    go_live(bus)
    svc.restart("address changed")
    await trio.sleep(0.5)
    assert (svc.state, svc.attempts) == ("disabled", 0)
    assert [p.name for p in (events.named("cloud_tunnel_established")
                             + events.named("cloud_tunnel_rejected"))] == []


# (f) bad input ---------------------------------------------------------------------------------

async def silent_server(nursery: trio.Nursery) -> tuple[int, list[int]]:
    """Accepts TCP and never says a word."""
    accepted = [0]

    async def hold(stream: trio.SocketStream) -> None:
        accepted[0] += 1
        async with stream:
            await trio.sleep_forever()

    listeners = await nursery.start(trio.serve_tcp, hold, 0)
    return listeners[0].socket.getsockname()[1], accepted


async def banner_then_close(nursery: trio.Nursery) -> tuple[int, list[int]]:
    """Says a valid SSH banner line, then hangs up."""
    accepted = [0]

    async def greet(stream: trio.SocketStream) -> None:
        accepted[0] += 1
        async with stream:
            await stream.send_all(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")

    listeners = await nursery.start(trio.serve_tcp, greet, 0)
    return listeners[0].socket.getsockname()[1], accepted


BAD = {
    # case: (reason, window s, most attempts in the window, words of the message)
    "silent": ("not_ssh", 6.0, 4, "sent no SSH banner within 2 s"),
    "banner_then_close": ("closed_during_handshake", 4.0, 12, "closed the connection during"),
    "key_missing": ("key_file_missing", 4.0, 12, "does not exist"),
    "key_0644": ("key_file_permissions", 4.0, 12, "(mode 0644)"),
    "refused": ("refused", 4.0, 12, "refused the connection"),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_peers_and_key_files(tmp_path, nursery, relay, case):
    reason, window, most, words = BAD[case]
    accepted = None
    if case == "silent":
        port, accepted = await silent_server(nursery)
        cfg = cloud(relay, port=port)
    elif case == "banner_then_close":
        port, accepted = await banner_then_close(nursery)
        cfg = cloud(relay, port=port)
    elif case == "key_missing":
        cfg = cloud(relay, key_file=str(tmp_path / "no-such-key"))
    elif case == "key_0644":
        loose = tmp_path / "loose_key"
        shutil.copy(relay.client_key, loose)
        loose.chmod(0o644)
        cfg = cloud(relay, key_file=str(loose))
    else:
        cfg = cloud(relay, port=free_port())
    bus = EventBus()
    events = Events(bus)
    svc = await start_service(nursery, cfg, bus, lambda: 1)
    t0 = trio.current_time()
    two_live(bus)
    first = await events.wait_for("cloud_tunnel_rejected", UP_WITHIN)
    t_first = trio.current_time() - t0
    assert svc.last_reason == reason, (svc.last_reason, svc.last_error)
    assert words in first["errorMessage"], first
    await trio.sleep_until(t0 + window)
    attempts = svc.attempts
    for sid in (SID, "cam2"):
        assert len(events.named("cloud_tunnel_rejected", sid)) == 1
    assert 2 <= attempts <= most, attempts  # retried, with backoff
    if accepted is not None:
        assert accepted[0] <= attempts
    if case == "silent":
        assert CONNECT_TIMEOUT - 0.1 <= t_first < CONNECT_TIMEOUT + 2.0, t_first
    else:
        assert t_first < 2.0, t_first
    if case.startswith("key"):
        assert "Connection from" not in relay.log_text()  # never dialled with a bad key
    print(f"\n{case}: {reason} after {t_first:.2f} s, {attempts} attempts in {window:g} s: "
          f"{first['errorMessage']!r}")


async def test_hub_keeps_serving_while_the_tunnel_fails(tmp_path, nursery, capture):
    """A relay that accepts and never speaks holds worker threads for seconds per attempt; the
    hub's RTSP server keeps serving a local viewer meanwhile."""
    hub = await start_hub(tmp_path, nursery, capture)
    assert hub.bus is not None and hub.live is not None
    live = hub.live
    events = Events(hub.bus)
    port, accepted = await silent_server(nursery)
    # a key that passes the checks, so that every attempt really reaches the silent peer
    key = tmp_path / "key"
    paramiko.ECDSAKey.generate().write_private_key_file(str(key))
    key.chmod(0o600)
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    cfg = cloud(None, port=port, key_file=str(key), known_hosts=str(kh))
    svc = await start_service(nursery, cfg, hub.bus, lambda: live.port)
    await hub_live(hub, events)
    viewer = await MiniClient.connect(live.url(SID))
    await viewer.play()
    t0 = trio.current_time()
    await viewer.collect(5.0)
    arrivals = [t for t, _, _ in viewer.frames if t >= t0 + 0.5]
    await viewer.aclose()
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert svc.last_reason == "not_ssh" and svc.attempts >= 2 and accepted[0] >= 2
    assert len(events.named("cloud_tunnel_rejected", SID)) == 1
    assert len(arrivals) > 100 and max(gaps) < 0.5, (len(arrivals), max(gaps))
    print(f"\nlocal viewer during {svc.attempts} silent-relay attempts: {len(arrivals)} packets, "
          f"longest gap {max(gaps) * 1000:.0f} ms")
