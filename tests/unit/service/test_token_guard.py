"""The provisioning token back-off, with a clock the test controls."""

from __future__ import annotations

import pytest

from opencas.errors import RateLimitedError
from opencas.service.token_guard import TokenGuard


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_first_ten_wrong_tokens_cost_nothing() -> None:
    guard = TokenGuard(clock=Clock())
    for _ in range(10):
        assert guard.record_failure() == 0.0
        guard.check_open()


def test_back_off_doubles_and_is_capped() -> None:
    clock = Clock()
    guard = TokenGuard(free_attempts=10, base_delay=1.0, max_delay=8.0, clock=clock)
    for _ in range(10):
        guard.record_failure()
    delays = [guard.record_failure() for _ in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    with pytest.raises(RateLimitedError) as closed:
        guard.check_open()
    assert closed.value.code == "provisioning-backoff"
    assert closed.value.retry_after == pytest.approx(8.0)
    clock.now += 7.9
    with pytest.raises(RateLimitedError):
        guard.check_open()
    clock.now += 0.2
    guard.check_open()
