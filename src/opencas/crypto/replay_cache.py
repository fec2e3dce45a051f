"""The replay cache of request proofs (DESIGN.md §4): each ``jti`` accepted, per signing key.

A request proof verifies while ``now - MAX_PROOF_AGE <= iat <= now + MAX_FUTURE_SKEW``. Its ``jti``
must be remembered for exactly as long as the proof could still verify, that is until
``iat + MAX_PROOF_AGE``; so an entry lives at most ``MAX_PROOF_AGE + MAX_FUTURE_SKEW`` seconds.

Memory is bounded three ways, so that one caller cannot lock the others out:

- ``share``: the entries one identity (key hash) may hold. A caller that reaches it is refused
  (``429 proof-rate-limited``) until its own entries expire; nobody else is affected.
- ``identities``: how many identities are tracked at once. An identity stays tracked while it
  holds entries and for :data:`IDLE_IDENTITY_RETENTION` after its last entry expired, so that a
  caller seen before keeps its seniority across quiet periods.
- ``capacity``: the entries of all identities together. When it is reached, room is made by
  forgetting the *youngest* tracked identity (the one first seen last) that is younger than the
  caller; if the caller is the youngest, it is refused (``503 proof-replay-cache-full``). A
  forgotten identity's entries are summarised by one watermark: an untracked identity's proof
  issued at or before the newest forgotten ``iat`` is refused, so forgetting never lets a proof
  be replayed.

Seniority is the order in which identities were first tracked: a flood of new keys evicts its own
keys first and never an identity tracked before it. The residual risk is for newcomers: while the
tables are full of other identities, a key never seen before is refused (docs/security.md).
Everything here is pure: no I/O, and the caller passes the clock. Several instances of one CAS
share what they remember through :class:`SharedReplayCache`, whose caller passes the shared
memory in as a function.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, NoReturn

from opencas.errors import RequestProofError

MAX_PROOF_AGE: Final = 120
"""How many seconds before the server's time a proof's ``iat`` may be."""
MAX_FUTURE_SKEW: Final = 5
"""How many seconds after the server's time a proof's ``iat`` may be (a client clock ahead)."""
IDLE_IDENTITY_RETENTION: Final = 3600
"""How long an identity without entries stays tracked, keeping its seniority (seconds)."""

DEFAULT_CAPACITY: Final = 100_000
DEFAULT_SHARE: Final = 5_000
DEFAULT_IDENTITIES: Final = 10_000


@dataclass(eq=False)
class ProofRetryLater(RequestProofError):
    """A proof refused for now, not for what it is: ``retry_after`` seconds later it may pass.

    The JSON form carries ``retry_after``; the answer carries ``Retry-After``.
    """

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, details={"retry_after": retry_after})
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        """``Retry-After`` in whole seconds, at least 1."""
        return {"Retry-After": str(max(1, self.retry_after))}


class ProofRateLimited(ProofRetryLater, code="proof-rate-limited", http_status=429):
    """The signing key holds its whole share of the replay cache."""


class ReplayCacheFull(ProofRetryLater, code="proof-replay-cache-full", http_status=503):
    """No room can be made in the replay cache without forgetting a more senior key."""


@dataclass(eq=False)
class _Identity:
    seniority: int
    """Lower is older: the order in which identities were first tracked."""
    expiries: dict[str, int] = field(default_factory=dict)
    """``jti`` -> the last second at which its proof could still verify."""


class ReplayCache:
    """The ``jti`` values of accepted proofs, per identity, for as long as those proofs verify.

    See the module docstring for the bounds and who is refused when they are reached. Every
    method takes the current time; a clock that goes backwards is treated as standing still, so
    an entry is never forgotten early. Thread-safe.
    """

    def __init__(
        self,
        *,
        capacity: int = DEFAULT_CAPACITY,
        share: int = DEFAULT_SHARE,
        identities: int = DEFAULT_IDENTITIES,
        max_age: int = MAX_PROOF_AGE,
        max_future_skew: int = MAX_FUTURE_SKEW,
    ) -> None:
        if min(capacity, share, identities, max_age) <= 0 or max_future_skew < 0:
            raise ValueError("capacity, share, identities and max_age must be positive")
        if share > capacity:
            raise ValueError("an identity's share cannot exceed the capacity")
        self.capacity = capacity
        self.share = share
        self.identities = identities
        self.max_age = max_age
        self.max_future_skew = max_future_skew
        self._lock = threading.Lock()
        self._tracked: dict[str, _Identity] = {}
        self._idle: dict[str, int] = {}  # identity -> when its last entry expired, oldest first
        self._entries = 0
        self._deadlines: list[tuple[int, str, str]] = []  # (expiry, identity, jti)
        self._youngest: list[tuple[int, str]] = []  # (-seniority, identity) of holders
        self._seniority = itertools.count()
        self._forgotten_until = -math.inf  # newest iat of a forgotten identity's entries
        self._latest = -math.inf

    def __len__(self) -> int:
        """How many ``jti`` values are remembered, over all identities."""
        with self._lock:
            return self._entries

    def tracked_identities(self) -> int:
        """How many identities are tracked (holding entries or recently idle)."""
        with self._lock:
            return len(self._tracked)

    def remembers(self, identity: str, jti: str) -> bool:
        """Whether ``jti`` of ``identity`` is remembered (and a proof carrying it is refused)."""
        with self._lock:
            record = self._tracked.get(identity)
            return record is not None and jti in record.expiries

    def purge(self, now: float) -> int:
        """Forget every entry that expired before ``now``; return how many were forgotten."""
        with self._lock:
            return self._purge(self._advance(now))

    def check_time(self, iat: int, now: float) -> None:
        """Refuse a proof issued at ``iat`` that cannot verify at ``now`` (or at a later time seen).

        Raises :class:`RequestProofError` ``proof-expired`` for an ``iat`` more than ``max_age``
        seconds in the past and ``proof-not-yet-valid`` for one more than ``max_future_skew``
        seconds in the future.
        """
        with self._lock:
            latest = max(now, self._latest)
        if iat < latest - self.max_age:
            _refuse(
                "proof-expired",
                f"the request proof was issued at {iat}, more than {self.max_age} s before the "
                f"server's time {int(latest)}; check the client's clock",
            )
        if iat > now + self.max_future_skew:
            _refuse(
                "proof-not-yet-valid",
                f"the request proof was issued at {iat}, more than {self.max_future_skew} s "
                f"after the server's time {int(now)}; check the client's clock",
            )

    def remember(self, identity: str, jti: str, *, iat: int, now: float) -> None:
        """Record ``jti`` of a proof that ``identity`` issued at ``iat``, unless seen before.

        Raises :class:`RequestProofError`, recording nothing: ``proof-replayed`` (401) when the
        ``jti`` is remembered for this identity; ``proof-expired`` when ``iat`` is older than
        ``max_age`` at the latest time seen; ``proof-rate-limited`` (429) when the identity holds
        its ``share``; ``proof-replay-cache-full`` (503) when no room can be made without
        forgetting an identity at least as senior as this one.
        """
        expiry = iat + self.max_age
        with self._lock:
            now = self._advance(now)
            self._purge(now)
            if expiry < now:
                _refuse("proof-expired", "the request proof is too old; sign it with a fresh iat")
            record = self._tracked.get(identity)
            if record is None:
                self._check_admission(iat)
                record = _Identity(seniority=next(self._seniority))
            elif jti in record.expiries:
                _refuse(
                    "proof-replayed",
                    "this request proof was already used; sign every request with a fresh jti",
                )
            if len(record.expiries) >= self.share:
                self._refuse_share(record, now)
            if self._entries >= self.capacity:
                self._make_room_for(record)
            self._record(identity, record, jti, expiry)

    def _advance(self, now: float) -> float:
        self._latest = max(self._latest, now)
        return self._latest

    def _check_admission(self, iat: int) -> None:
        if iat <= self._forgotten_until:
            _full(
                "it had to forget the proofs of some keys, including any this key made before "
                f"{int(self._forgotten_until) + 1}; retry with a fresh proof in a few seconds",
                retry_after=1,
            )
        if len(self._tracked) >= self.identities:
            _full(
                f"it tracks {self.identities} signing keys, all used recently; retry later",
                retry_after=self.max_age,
            )

    def _record(self, identity: str, record: _Identity, jti: str, expiry: int) -> None:
        if not record.expiries:
            self._tracked[identity] = record
            self._idle.pop(identity, None)
            heapq.heappush(self._youngest, (-record.seniority, identity))
        record.expiries[jti] = expiry
        self._entries += 1
        heapq.heappush(self._deadlines, (expiry, identity, jti))
        self._compact()

    def _refuse_share(self, record: _Identity, now: float) -> NoReturn:
        wait = max(1, math.ceil(min(record.expiries.values()) - now) + 1)
        raise ProofRateLimited(
            f"this key made {self.share} signed requests in the last {self.max_age} s, the most "
            f"the server remembers for one key; retry in {wait} s",
            retry_after=wait,
        )

    def _make_room_for(self, record: _Identity) -> None:
        """Forget the youngest identity holding entries, if it is younger than ``record``."""
        while self._youngest:
            negative_seniority, identity = self._youngest[0]
            victim = self._tracked.get(identity)
            if victim is None or victim.seniority != -negative_seniority or not victim.expiries:
                heapq.heappop(self._youngest)  # stale: forgotten, or idle since it was pushed
                continue
            if victim.seniority <= record.seniority:
                break
            heapq.heappop(self._youngest)
            newest_iat = max(victim.expiries.values()) - self.max_age
            self._forgotten_until = max(self._forgotten_until, newest_iat)
            self._entries -= len(victim.expiries)
            del self._tracked[identity]
            return
        _full(
            f"it remembers {self.capacity} recent request proofs of keys at least as senior as "
            "this one; retry shortly",
            retry_after=1,
        )

    def _purge(self, now: float) -> int:
        purged = 0
        while self._deadlines and self._deadlines[0][0] < now:
            expiry, identity, jti = heapq.heappop(self._deadlines)
            record = self._tracked.get(identity)
            if record is None or record.expiries.get(jti) != expiry:
                continue  # its identity was forgotten to make room
            del record.expiries[jti]
            self._entries -= 1
            purged += 1
            if not record.expiries:
                self._idle[identity] = expiry
        while self._idle:
            identity, since = next(iter(self._idle.items()))
            if since + IDLE_IDENTITY_RETENTION >= now:
                break
            del self._idle[identity]
            del self._tracked[identity]
        return purged

    def _compact(self) -> None:
        # Forgotten identities leave deadlines behind, and identities that went idle leave
        # stale seniority entries: rebuild either heap once the stale part dominates it.
        if len(self._deadlines) > 2 * self._entries + 1024:
            self._deadlines = [
                (expiry, identity, jti)
                for expiry, identity, jti in self._deadlines
                if identity in self._tracked and self._tracked[identity].expiries.get(jti) == expiry
            ]
            heapq.heapify(self._deadlines)
        if len(self._youngest) > 2 * len(self._tracked) + 1024:
            self._youngest = [
                (-record.seniority, identity)
                for identity, record in self._tracked.items()
                if record.expiries
            ]
            heapq.heapify(self._youngest)


class SharedReplayCache(ReplayCache):
    """A :class:`ReplayCache` whose accepted ``jti`` values are also remembered by others.

    ``also_remember(identity, jti, expires_at)`` records the proof where every instance of the
    CAS sees it and says whether it was new there. A proof passes only when it is new both here
    (with every bound of :class:`ReplayCache`, which also bounds what this instance adds to the
    shared memory) and there: a proof replayed at another instance is refused.
    """

    def __init__(self, also_remember: Callable[[str, str, float], bool], **limits: int) -> None:
        super().__init__(**limits)
        self._also_remember = also_remember

    def remember(self, identity: str, jti: str, *, iat: int, now: float) -> None:
        """As :meth:`ReplayCache.remember`, and ``proof-replayed`` when another instance (or
        the shared memory after a restart) remembers the ``jti``."""
        super().remember(identity, jti, iat=iat, now=now)
        if not self._also_remember(identity, jti, float(iat + self.max_age)):
            _refuse(
                "proof-replayed",
                "this request proof was already used (at another instance of this CAS); sign "
                "every request with a fresh jti",
            )


def _full(reason: str, *, retry_after: int) -> NoReturn:
    raise ReplayCacheFull(
        f"the server cannot accept a request proof of this key right now: {reason}",
        retry_after=retry_after,
    )


def _refuse(code: str, message: str) -> NoReturn:
    raise RequestProofError(message, code=code)
