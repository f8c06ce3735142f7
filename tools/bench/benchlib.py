"""Helpers the benchmarks in tools/bench share: /proc readers, percentiles, the fake camera's
clip, py-spy recording and its summary.

Why one module: the benchmarks' CPU, memory and wake-up figures all rest on the same /proc
parsing (``utime + stime`` from ``/proc/<pid>/stat``, fields of ``/proc/<pid>/status``, the
machine's ``/proc/stat``). With one copy of it, a fix or a change of method reaches every
benchmark at once, and their figures stay comparable with each other.

The benchmarks are run as ``python tools/bench/X.py``, which puts this folder first on
``sys.path``: they import this as ``benchlib``. It imports only the standard library at the top
(``hubruntime`` only inside ``make_clip``), so the light child processes of ``relay.py`` stay
light.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def out(line: str = "") -> None:
    print(line, flush=True)


def goal(ok: bool) -> str:
    return "meets goal" if ok else "MISSES goal"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


# ------------------------------------------------------------------------------------------
# /proc


def proc_cpu(pid: int, which: str = "both") -> float | None:
    """utime + stime (or ``which`` = "user" / "system" alone) of ``pid`` (all its threads) in
    seconds; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user, system = int(fields[11]), int(fields[12])
    except (OSError, IndexError, ValueError):
        return None
    return {"both": user + system, "user": user, "system": system}[which] / CLK_TCK


def proc_status_kb(pid: int, key: str) -> int | None:
    """The number after ``key:`` in ``/proc/<pid>/status`` (kB for the Vm* keys); None if the
    process is gone or has no such line."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_rss_kb(pid: int) -> int | None:
    return proc_status_kb(pid, "VmRSS")


def proc_wakeups(pid: int) -> int | None:
    """Voluntary context switches of ``pid``'s main thread: each is a sleep (epoll_wait for
    trio, the GLib main loop for GStreamer's) followed by a wake-up."""
    return proc_status_kb(pid, "voluntary_ctxt_switches")


def proc_pss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return float(total - idle), float(total)


def children_of(ppid: int, comm_prefix: str | None = None) -> list[int]:
    """Live (non-zombie) children of ``ppid``, optionally only those whose name starts so."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        rest = stat.rsplit(")", 1)[1].split()
        if int(rest[1]) == ppid and rest[0] != "Z" and (
                comm_prefix is None or comm.startswith(comm_prefix)):
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ------------------------------------------------------------------------------------------
# the clip


def make_clip(overrides: dict[str, Any]) -> tuple[Path, float]:
    """The fake camera's default clip with ``overrides`` (e.g. a higher video bitrate),
    generated once into the fake camera's cache folder; returns its path and its file bitrate
    in Mbit/s."""
    from hubruntime.fakecam.clip import (
        CLIP_PARAMS,
        clip_command,
        clip_name,
        default_cache_dir,
        find_ffmpeg_exe,
    )

    params = dict(CLIP_PARAMS, **overrides)
    cache = default_cache_dir()
    target = cache / clip_name(params)
    if not (target.is_file() and target.stat().st_size > 0):
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".{target.stem}.{os.getpid()}.tmp.mp4"
        try:
            subprocess.run(clip_command(find_ffmpeg_exe(), tmp, params), check=True,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target, target.stat().st_size * 8 / float(params["seconds"]) / 1e6


# ------------------------------------------------------------------------------------------
# py-spy


def start_py_spy(pid: int, secs: float, output: Path) -> subprocess.Popen[bytes] | None:
    """``py-spy record`` of ``pid`` for ``secs`` (at least 1 s), 200 Hz, GIL-holding samples
    only, raw collapsed stacks into ``output``; None if py-spy is not on PATH."""
    exe = shutil.which("py-spy")
    if exe is None:
        return None
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(secs))),
           "--rate", "200", "--nonblocking", "--gil", "--format", "raw", "--output",
           str(output)]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


IDLE_LEAVES = ("get_events (_io_epoll.py)", "_epoll_wait (_io_epoll.py)")


def summarize_profile(path: Path, top: int,
                      inclusive_heading: str = "inclusive (function and what it calls):"
                      ) -> list[str]:
    """Self and inclusive shares of the samples in a py-spy raw (collapsed) file, ``top`` rows
    of each; samples whose leaf is trio's epoll wait are counted apart as idle."""
    selfc: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        c = int(count)
        frames = []
        for fr in stack.split(";"):
            # "func (path/file.py:line)" -> "func (file.py)"
            func, _, loc = fr.partition(" (")
            fname = loc.rsplit("/", 1)[-1].split(":", 1)[0].rstrip(")")
            frames.append(f"{func} ({fname})")
        if frames and frames[-1] in IDLE_LEAVES:
            idle += c
            continue
        total += c
        if frames:
            selfc[frames[-1]] += c
            for fr in set(frames):
                incl[fr] += c
    if not total:
        return ["(no samples)"]
    lines = [f"{total} samples holding the GIL (+{idle} in epoll_wait, left out); self time "
             "(leaf function):"]
    lines += [f"  {100 * c / total:5.1f} %  {f}" for f, c in selfc.most_common(top)]
    lines.append(inclusive_heading)
    keep = [(f, c) for f, c in incl.most_common() if not f.startswith("<module>")
            and not f.startswith("run (_run.py)")]
    lines += [f"  {100 * c / total:5.1f} %  {f}" for f, c in keep[:top]]
    return lines
