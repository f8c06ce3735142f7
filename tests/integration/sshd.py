"""A scratch OpenSSH server on 127.0.0.1: the real cloud relay for the tunnel tests.

Never the system service: each instance has its own directory with its config, host key, client
key pair, ``authorized_keys``, ``known_hosts``, pid file and log, and listens on a free loopback
port. It needs root (sshd's privilege separation) and ``/usr/sbin/sshd``; :func:`skip_reason`
says why the tests cannot run otherwise (CI runs as root with openssh-server installed).

Stopping ends the process this module started and the processes it forked (sshd runs one child
per connection, in a session of its own, which survives its parent: without that, a "stopped"
relay would keep serving the tunnel). Nothing else is signalled.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import trio

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen")
START_SECS = 10.0


def skip_reason() -> str | None:
    """Why a real sshd cannot be run here, or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "the scratch sshd needs root (privilege separation); CI runs the tests as root"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} not installed (Debian: openssh-server)"
    if SSH_KEYGEN is None:
        return "ssh-keygen not on PATH (Debian: openssh-client)"
    return None


def free_port() -> int:
    """A loopback TCP port nobody listens on now (another process may take it later: tests
    that need a port to stay free bind it themselves)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, kind: str = "ed25519") -> str:
    """Make a key pair without passphrase at ``path`` (mode 0600); its public line."""
    assert SSH_KEYGEN is not None
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    subprocess.run([SSH_KEYGEN, "-q", "-t", kind, "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL, timeout=30)
    path.chmod(0o600)
    return path.with_name(path.name + ".pub").read_text().strip()


@functools.cache
def _supported(option: str) -> bool:
    """Whether this sshd knows a config keyword (``PerSourcePenalties`` is OpenSSH 9.8+)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "k"
        keygen(key)
        cfg = Path(tmp) / "c"
        cfg.write_text(f"HostKey {key}\n{option}\n")
        r = subprocess.run([SSHD, "-t", "-f", str(cfg)], capture_output=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        return r.returncode == 0


def _children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc), deepest last."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        fields = stat.rpartition(")")[2].split()
        parents[int(entry)] = int(fields[1])
    out: list[int] = []
    todo = [pid]
    while todo:
        cur = todo.pop()
        kids = [p for p, pp in parents.items() if pp == cur]
        out += kids
        todo += kids
    return out


class Sshd:
    """One scratch sshd. ``await start()``, then ``port``, ``client_key``, ``known_hosts``."""

    def __init__(self, root: Path, *, allow_tcp_forwarding: bool = True,
                 port: int | None = None) -> None:
        self.dir = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.allow_tcp_forwarding = allow_tcp_forwarding
        self.host_key = root / "ssh_host_ed25519_key"
        self.host_pub = keygen(self.host_key)
        self.client_key = root / "client_ed25519"
        self.client_pub = keygen(self.client_key)
        self.authorized_keys = root / "authorized_keys"
        self.authorized_keys.write_text(self.client_pub + "\n")
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text(self.known_hosts_line() + "\n")
        self.config = root / "sshd_config"
        self.pid_file = root / "sshd.pid"
        self.log = root / "sshd.log"
        self.proc: trio.Process | None = None
        self._log_file = None
        self.starts = 0

    # keys and known_hosts -------------------------------------------------------------------
    @property
    def host_pattern(self) -> str:
        """How known_hosts names this server (OpenSSH and paramiko: ``[host]:port`` off 22)."""
        return f"[127.0.0.1]:{self.port}"

    def known_hosts_line(self, public_line: str | None = None, pattern: str | None = None) -> str:
        kind, b64 = (public_line or self.host_pub).split()[:2]
        return f"{pattern or self.host_pattern} {kind} {b64}"

    def write_known_hosts(self, path: Path, *lines: str) -> Path:
        path.write_text("".join(line + "\n" for line in lines))
        return path

    def changed_known_hosts(self, path: Path) -> Path:
        """known_hosts with another key for this server (as if the relay's key changed)."""
        other = keygen(self.dir / f"other_host_{path.stem}")
        return self.write_known_hosts(path, self.known_hosts_line(other))

    def unknown_known_hosts(self, path: Path) -> Path:
        """known_hosts that knows this very key, but for another port only."""
        return self.write_known_hosts(
            path, self.known_hosts_line(pattern=f"[127.0.0.1]:{self.port + 1}"))

    def other_client_key(self, name: str = "stranger_ed25519") -> Path:
        """A client key the server does not know."""
        path = self.dir / name
        keygen(path)
        return path

    # the process ----------------------------------------------------------------------------
    def write_config(self) -> None:
        lines = [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "StrictModes no",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            f"AllowTcpForwarding {'yes' if self.allow_tcp_forwarding else 'no'}",
            "GatewayPorts no",
            "LogLevel VERBOSE",
        ]
        if _supported("PerSourcePenalties no"):
            # OpenSSH 9.8+ would refuse a source after failed logins: the tests fail on purpose
            lines.append("PerSourcePenalties no")
        self.config.write_text("\n".join(lines) + "\n")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    async def start(self, timeout: float = START_SECS) -> None:
        """Start sshd and wait (bounded) until it says it listens on our port. sshd prints
        that line after ``listen()``, so the port accepts from then on; it is read from the log
        rather than probed with a connection because tests read the log, and a probe would
        show up there as a client ("Connection from ...")."""
        assert self.proc is None or self.proc.returncode is not None, "already running"
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.starts += 1
        mark = f"Server listening on 127.0.0.1 port {self.port}."
        before = self.log_text().count(mark)
        self._log_file = self.log.open("ab")
        self.proc = await trio.lowlevel.open_process(
            [SSHD, "-D", "-e", "-f", str(self.config)], stdin=subprocess.DEVNULL,
            stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)
        with trio.move_on_after(timeout) as waited:
            while self.log_text().count(mark) <= before:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"sshd exited ({self.proc.returncode}):\n"
                                       f"{self.log_text()[-2000:]}")
                await trio.sleep(0.02)
        if waited.cancelled_caught:
            await self.stop()
            raise RuntimeError(f"sshd not listening within {timeout} s:\n{self.log_text()[-2000:]}")

    def session_pids(self) -> list[int]:
        """The per-connection children of the running sshd."""
        if self.proc is None or self.proc.returncode is not None:
            return []
        return _children(self.proc.pid)

    async def kill_hard(self) -> None:
        """The relay crashes: SIGKILL sshd and every process it forked, at once."""
        await self._end(signal.SIGKILL, grace=0.0)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; children included."""
        await self._end(signal.SIGTERM, grace=3.0)

    async def _end(self, sig: int, grace: float) -> None:
        proc = self.proc
        if proc is None:
            return
        kids = _children(proc.pid) if proc.returncode is None else []
        for pid in [proc.pid, *kids] if proc.returncode is None else kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        with trio.CancelScope(shield=True):
            with trio.move_on_after(grace):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            # the children are not ours to reap (they setsid): see them gone, bounded
            for final in (False, True):
                deadline = time.monotonic() + max(grace, 1.0)
                while any(_alive(p) for p in kids) and time.monotonic() < deadline:
                    await trio.sleep(0.02)
                if final:
                    break
                for pid in kids:
                    if _alive(pid):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie does not count: it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
