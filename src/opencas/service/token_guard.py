"""Back-off for the one-time provisioning token, so that it cannot be guessed online.

The first ``free_attempts`` wrong tokens cost nothing; every wrong token after that closes the
endpoint for a period that doubles each time (up to ``max_delay``). A right token is still
refused while the endpoint is closed: the attacker must not learn anything by racing it. On
PostgreSQL the count and the closing live in the database, so every instance of the cluster
counts the same wrong tokens and closes together.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from opencas.errors import RateLimitedError
from opencas.store.guards import PostgresGuards

#: The name of the provisioning token's back-off among the shared guards.
BACKOFF_NAME = "provisioning-token"
FREE_ATTEMPTS = 10
BASE_DELAY = 1.0
MAX_DELAY = 3600.0


class TokenGuard:
    """Counts wrong provisioning tokens and closes the endpoint for a growing period."""

    def __init__(
        self,
        free_attempts: int = FREE_ATTEMPTS,
        base_delay: float = BASE_DELAY,
        max_delay: float = MAX_DELAY,
        clock: Callable[[], float] = time.monotonic,
        shared: PostgresGuards | None = None,
    ) -> None:
        self._shared = shared
        self._free_attempts = free_attempts
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._closed_until = 0.0

    @property
    def failures(self) -> int:
        """Wrong tokens seen so far (by the whole cluster, with shared guards)."""
        if self._shared is not None:
            return self._shared.failures(BACKOFF_NAME)
        return self._failures

    def check_open(self) -> None:
        """Raise :class:`RateLimitedError` while the endpoint is closed."""
        if self._shared is not None:
            remaining = self._shared.closed_until(BACKOFF_NAME) - time.time()
        else:
            with self._lock:
                remaining = self._closed_until - self._clock()
        if remaining > 0:
            raise RateLimitedError(
                f"too many wrong provisioning tokens; try again in {remaining:.0f} s",
                retry_after=remaining,
                code="provisioning-backoff",
            )

    def record_failure(self) -> float:
        """Count one wrong token; returns how long the endpoint is now closed (0 if it is not)."""
        if self._shared is not None:
            return self._shared.count_failure(BACKOFF_NAME, self._delay_for)[1]
        with self._lock:
            self._failures += 1
            delay = self._delay_for(self._failures)
            if delay > 0:
                self._closed_until = self._clock() + delay
            return delay

    def _delay_for(self, failures: int) -> float:
        """How long the endpoint closes after the ``failures``-th wrong token."""
        excess = failures - self._free_attempts
        if excess <= 0:
            return 0.0
        return min(self._max_delay, self._base_delay * 2.0 ** min(excess - 1, 32))
