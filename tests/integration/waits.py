"""Waiting helpers shared by the integration tests: every wait has a deadline and says what it
waited for when it fails, so no test sleeps and hopes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import trio


async def until(cond: Callable[[], bool], timeout: float, what: str,
                show: Callable[[], Any] = lambda: "") -> float:
    """Poll ``cond`` until true; fail after ``timeout`` s. Returns the seconds it took."""
    t0 = trio.current_time()
    with trio.move_on_after(timeout) as scope:
        while not cond():
            await trio.sleep(0.01)
    if scope.cancelled_caught:
        pytest.fail(f"not within {timeout} s: {what} {show()}")
    return trio.current_time() - t0


async def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    """Run a real client (ffprobe, ffmpeg, gst-launch) to completion within ``timeout``."""
    with trio.fail_after(timeout):
        return await trio.run_process(cmd, capture_stdout=True, capture_stderr=True,
                                      check=False, stdin=subprocess.DEVNULL)
