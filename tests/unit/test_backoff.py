"""Waits between tries: growing to a bound, and drawn anew for each client."""

from __future__ import annotations

import random

from opencas.backoff import backoff_delays, jittered


def test_waits_grow_to_a_bound() -> None:
    delays = backoff_delays(0.1, 1.0)
    assert [round(next(delays), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_a_jittered_wait_lies_between_half_the_wait_and_all_of_it() -> None:
    waits = jittered(backoff_delays(0.1, 1.0), random.Random(7))
    drawn = [next(waits) for _ in range(200)]
    bounds = [0.1, 0.2, 0.4, 0.8] + [1.0] * 196
    assert all(bound / 2 <= wait <= bound for wait, bound in zip(drawn, bounds, strict=True))


def test_two_clients_refused_together_do_not_come_back_together() -> None:
    first = jittered(backoff_delays(1.0, 1.0), random.Random(1))
    second = jittered(backoff_delays(1.0, 1.0), random.Random(2))
    assert [next(first) for _ in range(5)] != [next(second) for _ in range(5)]
