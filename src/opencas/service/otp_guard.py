"""One-time passwords of services: each code once, and few wrong ones per service.

A service whose session sets ``one_time_password_shared_secret`` gets its configuration only
with a valid code (:mod:`opencas.crypto.otp`). The guard remembers, per service, the time step of
the last code it accepted, and refuses that code and every earlier one: a code is used once,
and an older code that is still within the clock window cannot be used after a newer one.
Refused codes are counted per service; after ``otp_refusals_per_service`` within
``otp_refusal_window`` seconds, the service's attestations with a code are refused
(``429 otp-rate-limited``) until the oldest refusal leaves the window. Refusals are kept
in this instance's memory. The step of the last accepted code is kept in memory too on SQLite (a
restarted CAS starts with none: a code accepted just before the restart could then be used once
more within its window, at most 90 seconds); on PostgreSQL it is also kept in the database, so a
code is used once in the whole cluster and across restarts.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from opencas.config.availability import SessionLimits
from opencas.crypto.otp import OTP_DIGITS, OTP_STEP, OTP_WINDOW, matching_step
from opencas.errors import AttestationRefused, RateLimitedError
from opencas.store.guards import PostgresGuards

MAX_TRACKED_SERVICES = 100_000
"""Services whose used codes and refusals are remembered at once; the least recent goes first."""


@dataclass
class _ServiceState:
    last_step: int | None = None
    refusals: deque[float] = field(default_factory=deque)


class OtpGuard:
    """Checks one-time passwords for services; thread-safe, bounded."""

    def __init__(
        self,
        limits: SessionLimits,
        clock: Callable[[], float] = time.time,
        capacity: int = MAX_TRACKED_SERVICES,
        shared: PostgresGuards | None = None,
    ) -> None:
        self._shared = shared
        self._refusals = limits.otp_refusals_per_service
        self._window = limits.otp_refusal_window
        self._clock = clock
        self._capacity = capacity
        self._lock = threading.Lock()
        self._services: OrderedDict[str, _ServiceState] = OrderedDict()

    def check(self, service: str, shared_secret: str, code: str | None) -> None:
        """Accept ``code`` for ``service`` (its config id), once; else refuse.

        Raises :class:`AttestationRefused` (check ``otp``) for a missing, malformed, wrong,
        expired or used code, and :class:`RateLimitedError` while the service has had too many
        refused codes. Messages never include the secret or the expected code.
        """
        if code is None:
            raise AttestationRefused(
                "otp",
                f"the service {service} requires a one-time password; give the current code "
                "of its authenticator (casctl run --otp CODE)",
            )
        with self._lock:
            now = self._clock()
            state = self._state(service)
            self._forget_old_refusals(state, now)
            if len(state.refusals) >= self._refusals:
                retry = state.refusals[0] + self._window - now
                raise RateLimitedError(
                    f"too many wrong one-time passwords for {service}; try again in "
                    f"{max(retry, 1):.0f} s",
                    retry_after=max(retry, 1.0),
                    code="otp-rate-limited",
                )
            step = (
                matching_step(shared_secret, code, now)
                if len(code) == OTP_DIGITS and code.isascii() and code.isdigit()
                else None
            )
            if step is None:
                state.refusals.append(now)
                raise AttestationRefused(
                    "otp",
                    f"the one-time password for {service} is wrong or expired (codes are "
                    f"{OTP_DIGITS} digits, valid {OTP_STEP} s, with {OTP_WINDOW} step of clock "
                    "skew either way)",
                )
            if state.last_step is not None and step <= state.last_step:
                state.refusals.append(now)
                _refuse_used(service)
            state.last_step = step
        # Outside the lock: a round trip to the database must not hold up other services.
        if self._shared is not None and not self._shared.advance_otp_step(service, step):
            with self._lock:
                self._state(service).refusals.append(now)
            _refuse_used(service)

    def _state(self, service: str) -> _ServiceState:
        state = self._services.pop(service, None) or _ServiceState()
        self._services[service] = state
        while len(self._services) > self._capacity:
            self._services.popitem(last=False)
        return state

    def _forget_old_refusals(self, state: _ServiceState, now: float) -> None:
        while state.refusals and state.refusals[0] <= now - self._window:
            state.refusals.popleft()


def _refuse_used(service: str) -> NoReturn:
    raise AttestationRefused(
        "otp",
        f"this one-time password for {service} was used already (or a newer one was); wait "
        "for the next code",
    )
