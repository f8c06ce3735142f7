"""Retry delays (stream readers, camera event sources, tunnels): exponential with jitter, reset
after a healthy run. Pure (time passed in), so it lives with the sans-I/O code.

Why jitter: after a power cut every camera of a house comes back at once; without it every
reader would retry in lockstep. Why a reset only after a healthy minute: a camera that accepts the
connection and drops it a second later must still back off, not reconnect in a tight loop.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial: float = 0.5, maximum: float = 30.0, reset_after: float = 60.0,
                 rng: random.Random | None = None, *, jitter: bool = True) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self.reset_after = reset_after
        self._next = initial
        self._rng = rng or random.Random()
        self.jitter = jitter  # False: exact delays, for schedulers tested without randomness
        self.failures = 0

    def next_delay(self, healthy_secs: float = 0.0) -> float:
        """The delay before the next attempt; ``healthy_secs`` is how long the last one ran well.

        The delay is drawn in [base/2, base] ("equal jitter"), and the base doubles each time.
        """
        if healthy_secs >= self.reset_after:
            self._next = self.initial
            self.failures = 0
        base = self._next
        self._next = min(self._next * 2, self.maximum)
        self.failures += 1
        if not self.jitter:
            return base
        return base / 2 + self._rng.random() * base / 2
