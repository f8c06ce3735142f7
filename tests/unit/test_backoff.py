import random

import pytest

from hubruntime.proto.backoff import Backoff


def test_doubles_with_jitter_up_to_the_cap():
    b = Backoff(0.5, 30.0, 60.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(12)]
    bases = [min(0.5 * 2**i, 30.0) for i in range(12)]
    for d, base in zip(delays, bases, strict=True):
        assert base / 2 <= d <= base
    assert max(delays) <= 30.0


def test_resets_only_after_a_healthy_minute():
    b = Backoff(0.5, 30.0, 60.0, rng=random.Random(2))
    for _ in range(6):
        b.next_delay(healthy_secs=5)
    assert b.next_delay(healthy_secs=59) >= 16 / 2
    assert b.next_delay(healthy_secs=61) <= 0.5


def test_sixty_seconds_of_refusal_is_a_bounded_number_of_attempts():
    b = Backoff(0.5, 30.0, 60.0, rng=random.Random(3))
    t, attempts = 0.0, 0
    while t < 60:
        t += b.next_delay() + 0.4  # a refused connection takes ~0.4 s to fail
        attempts += 1
    assert attempts <= 10


def test_rejects_bad_parameters():
    with pytest.raises(ValueError):
        Backoff(0, 1)
