"""Enclave nonces: minted without state, checked by their MAC and expiry, used once.

A nonce is 32 bytes, sent as 64 lowercase hex digits: the moment it expires (milliseconds, big
endian), 8 random bytes, and the first 16 bytes of an HMAC-SHA256 over both under a key only
CAS instances hold. Issuing one stores nothing, so ``POST /v1/enclave/nonce`` and the next
nonce handed out with an answer cost neither memory nor a database round trip, and nobody can
fill the CAS's memory by asking for nonces. Only a nonce that is *used* is remembered, until it
expires, so that it attests once: in this instance's memory, and with the guards of a
PostgreSQL store also in the database, so that it is used once in the whole cluster. Someone
without the key cannot make a nonce that verifies, nor move its expiry.

On PostgreSQL the key is derived from the database key (``PostgresGuards.nonce_mac``), so a
nonce from one instance is accepted by every other; it changes with a database key rollover,
and a nonce issued before one is refused afterwards (the workload asks for a new one). On
SQLite the key is made at random when the CAS starts, and a nonce does not outlive a restart.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import secrets
import struct
import threading
import time
from collections.abc import Callable
from typing import Final

from opencas.errors import AttestationRefused, RateLimitedError
from opencas.store.guards import PostgresGuards

NONCE_BYTES: Final = 32
NONCE_LIFETIME: Final = 60.0
"""Seconds a nonce is valid from its issue."""
MAX_USED_NONCES: Final = 100_000
"""The most nonces one instance remembers as used at once (each for at most one lifetime)."""

_TAG_BYTES: Final = 16
_RANDOM_BYTES: Final = NONCE_BYTES - 8 - _TAG_BYTES
_TAG_CONTEXT: Final = b"opencas enclave nonce\0"


def local_nonce_mac() -> Callable[[bytes], bytes]:
    """A MAC under a key made at random now: the nonces of one instance, on SQLite."""
    key = secrets.token_bytes(32)
    return lambda message: hmac.digest(key, message, hashlib.sha256)


class NonceStore:
    """Issues nonces valid for ``lifetime`` seconds and uses each up once; thread-safe.

    With ``shared`` (the guards of a PostgreSQL store) the MAC key is the cluster's and a
    nonce is used once across every instance on the database; its expiry is then the wall
    clock (``wall_clock``), which every instance reads alike, else ``clock``. This instance
    remembers at most ``capacity`` used nonces, so it adds at most that many rows within one
    lifetime to the shared table.
    """

    def __init__(
        self,
        lifetime: float = NONCE_LIFETIME,
        capacity: int = MAX_USED_NONCES,
        clock: Callable[[], float] = time.monotonic,
        shared: PostgresGuards | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.lifetime = lifetime
        self._capacity = capacity
        self._shared = shared
        self._clock = clock if shared is None else wall_clock
        self._mac = local_nonce_mac() if shared is None else shared.nonce_mac
        self._lock = threading.Lock()
        self._used: set[bytes] = set()
        self._expiries: list[tuple[float, bytes]] = []

    def issue(self) -> str:
        """A fresh nonce, valid for the store's lifetime from now; stores nothing."""
        stamp = struct.pack(">Q", max(0, round((self._clock() + self.lifetime) * 1000)))
        body = stamp + secrets.token_bytes(_RANDOM_BYTES)
        return (body + self._tag(body)).hex()

    def consume(self, nonce: str) -> None:
        """Use ``nonce`` up; :class:`AttestationRefused` (check ``nonce``) for one this CAS did
        not issue, used already or expired.

        Raises :class:`RateLimitedError` (``nonce-store-full``) when this instance remembers as
        many used nonces as its capacity already. With shared guards it is a database round
        trip, and raises :class:`opencas.errors.StoreError` when the database refuses.
        """
        raw = _raw(nonce)
        now = self._clock()
        expiry = None if raw is None else self._valid_until(raw)
        if raw is None or expiry is None or expiry < now:
            raise _refused()
        with self._lock:
            self._forget_expired(now)
            if raw in self._used:
                raise _refused()
            if len(self._used) >= self._capacity:
                raise RateLimitedError(
                    "too many workloads are attesting at once; retry shortly",
                    retry_after=1.0,
                    code="nonce-store-full",
                )
            self._used.add(raw)
            heapq.heappush(self._expiries, (expiry, raw))
        # Marked here first: a second use at this instance is refused without the database.
        if self._shared is not None and not self._shared.use_nonce(raw.hex(), expiry):
            raise _refused()

    def _tag(self, body: bytes) -> bytes:
        return self._mac(_TAG_CONTEXT + body)[:_TAG_BYTES]

    def _valid_until(self, raw: bytes) -> float | None:
        """The expiry ``raw`` names when its MAC verifies, else None."""
        body, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
        if not hmac.compare_digest(self._tag(body), tag):
            return None
        (millis,) = struct.unpack(">Q", body[:8])
        return float(millis) / 1000

    def _forget_expired(self, now: float) -> None:
        # An expired nonce is refused by its expiry already: remembering it is no longer needed.
        while self._expiries and self._expiries[0][0] < now:
            _, raw = heapq.heappop(self._expiries)
            self._used.discard(raw)


def _raw(nonce: str) -> bytes | None:
    if len(nonce) != 2 * NONCE_BYTES:
        return None
    try:
        raw = bytes.fromhex(nonce)
    except ValueError:
        return None
    return raw if len(raw) == NONCE_BYTES else None


def _refused() -> AttestationRefused:
    return AttestationRefused(
        "nonce", "the nonce is unknown, used already, or expired; ask for a new one"
    )
