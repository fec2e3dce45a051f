"""Waits between tries of something that may work a moment later: a lock another process holds,
a CAS that refused a connection. No I/O and no clock, so the pure core may use it."""

from __future__ import annotations

import random
from collections.abc import Iterator


def backoff_delays(first: float, longest: float) -> Iterator[float]:
    """Seconds to wait between two tries: ``first``, doubling up to ``longest``, then that."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, longest)


def jittered(delays: Iterator[float], draw: random.Random | None = None) -> Iterator[float]:
    """Each of ``delays`` drawn anew between half of it and all of it, so that clients refused
    at the same moment (a burst over a connection limit) do not all come back together."""
    uniform = (draw or random.SystemRandom()).uniform
    for delay in delays:
        yield uniform(delay / 2, delay)
