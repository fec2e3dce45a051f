"""The guards' state that every CAS instance on one PostgreSQL database shares.

Used nonces, the request-proof replay cache, the provisioning-token back-off, the session upload
rate and used one-time-password steps must hold for the cluster, not for one instance: a nonce
issued by one instance is used once at any of them, and a proof accepted by one is refused when
replayed at another. On PostgreSQL they live in tables of their own (migration 2); on SQLite,
where only one instance can run, they stay in the instance's memory.

Each check is one statement, atomic on its own (``INSERT ... ON CONFLICT``), so the hot path
costs one round trip. These rows are not records: they are not encrypted, not in the commit
state and not in the report; they live for seconds to minutes. A nonce itself carries its expiry
and a MAC under a key derived from the database master key (:mod:`opencas.service.nonces`), so
issuing one writes nothing and nobody without the key can make one; a row of ``guard_nonces``
says that a nonce was used. What someone with write access to the database can do is *delete*
rows: make the cluster forget a used nonce, a proof or a back-off before its time
(docs/security.md).

Expired rows are deleted by the instance that next touches the guards after
:data:`PURGE_INTERVAL` seconds, so the tables hold at most what the instances admitted within
one lifetime; each instance bounds what it admits in memory (the callers' own limits).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

import psycopg
from psycopg_pool import ConnectionPool

from opencas.crypto.envelope import derive_key

PURGE_INTERVAL: Final = 10.0
"""Seconds between two deletions of expired rows by one instance."""

#: Migration 2 of :mod:`opencas.store.postgres`: the guards' tables.
GUARD_TABLES: Final[tuple[str, ...]] = (
    # A used nonce's row; ``tag`` is from the time rows were issued nonces, and is empty now.
    "CREATE TABLE guard_nonces (id BYTEA NOT NULL PRIMARY KEY, "
    "expires_at DOUBLE PRECISION NOT NULL, tag BYTEA NOT NULL)",
    "CREATE INDEX guard_nonces_expiry ON guard_nonces (expires_at)",
    "CREATE TABLE guard_proofs (id BYTEA NOT NULL PRIMARY KEY, "
    "expires_at DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX guard_proofs_expiry ON guard_proofs (expires_at)",
    "CREATE TABLE guard_backoff (name TEXT NOT NULL PRIMARY KEY, failures BIGINT NOT NULL, "
    "closed_until DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE guard_uploads (identity TEXT NOT NULL PRIMARY KEY, "
    "tat DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX guard_uploads_tat ON guard_uploads (tat)",
    "CREATE TABLE guard_otp_steps (service BYTEA NOT NULL PRIMARY KEY, step BIGINT NOT NULL, "
    "used_at DOUBLE PRECISION NOT NULL)",
)

# A used one-time-password step only matters while its code can still verify (seconds); a day
# keeps it far past that and bounds the table by the services attested in one day.
_OTP_STEP_RETENTION: Final = 86_400.0

# The upload bucket as a theoretical arrival time (GCRA): the bucket is full once ``tat`` is in
# the past, and one more upload fits while ``tat`` after it is at most ``burst / rate`` ahead.
_TAKE_UPLOAD = (
    "INSERT INTO guard_uploads AS b (identity, tat) VALUES (%(identity)s, %(now)s + %(step)s) "
    "ON CONFLICT (identity) DO UPDATE SET tat = greatest(b.tat, %(now)s) + %(step)s "
    "WHERE greatest(b.tat, %(now)s) + %(step)s - %(now)s <= %(window)s "
    "RETURNING tat"
)


class PostgresGuards:
    """The guards' rows in one PostgreSQL database, over the store's connection pool.

    Every method is one atomic statement (two for a counted back-off failure) on a pooled
    connection; thread-safe. Errors are the store's: :class:`opencas.errors.StoreError`, or
    :class:`opencas.errors.DatabaseUnavailable` when the database cannot be reached.
    """

    def __init__(
        self,
        pool: ConnectionPool[psycopg.Connection[Any]],
        dmk: bytes,
        failing: Callable[[str], Any],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self.use_key(dmk)
        self._failing = failing
        self._clock = clock
        self._lock = threading.Lock()
        self._next_purge = 0.0

    def __repr__(self) -> str:
        return "<PostgresGuards>"

    def use_key(self, dmk: bytes) -> None:
        """Key the rows and nonces from now on by ``dmk`` (the database key was rolled over)."""
        self._key = derive_key(dmk, "store/guards")
        self._nonce_key = derive_key(dmk, "store/guards/nonces")

    def _id(self, kind: bytes, *parts: str) -> bytes:
        message = kind + b"".join(b"\0" + part.encode("utf-8") for part in parts)
        return hmac.digest(self._key, message, hashlib.sha256)

    def _run(self, action: str, sql: str, parameters: Sequence[object] | dict[str, object]) -> Any:
        """Run one statement (after a due purge) and return its first row, or ``None``."""
        with self._failing(action), self._pool.connection() as conn:
            self._purge_if_due(conn)
            cursor = conn.execute(sql, parameters)
            return cursor.fetchone() if cursor.description is not None else None

    def _purge_if_due(self, conn: psycopg.Connection[Any]) -> None:
        now = self._clock()
        with self._lock:
            if now < self._next_purge:
                return
            self._next_purge = now + PURGE_INTERVAL
        for statement in _purges():
            conn.execute(statement, {"now": now, "otp": now - _OTP_STEP_RETENTION})

    def purge(self) -> None:
        """Delete every expired row now (instances also do it every :data:`PURGE_INTERVAL`)."""
        with self._lock:
            self._next_purge = 0.0
        self._run("deleting expired guard rows", "SELECT 1", ())

    def nonce_mac(self, message: bytes) -> bytes:
        """HMAC-SHA256 of ``message`` under the cluster's nonce key (from the database key), so
        that a nonce one instance issued verifies at every other."""
        return hmac.digest(self._nonce_key, message, hashlib.sha256)

    def use_nonce(self, nonce: str, expires_at: float) -> bool:
        """Remember ``nonce`` as used until ``expires_at``; False when an instance (this one
        included) used it already.

        The caller checked the nonce's MAC and expiry; this makes its use single in the cluster.
        """
        row = self._run(
            "using a nonce",
            "INSERT INTO guard_nonces (id, expires_at, tag) VALUES (%s, %s, '') "
            "ON CONFLICT (id) DO NOTHING RETURNING 1",
            (self._id(b"used-nonce", nonce), expires_at),
        )
        return row is not None

    def add_proof(self, identity: str, jti: str, expires_at: float) -> bool:
        """Remember the proof ``jti`` of ``identity`` until ``expires_at``; False when another
        instance (or this one) remembers it already."""
        row = self._run(
            "remembering a request proof",
            "INSERT INTO guard_proofs (id, expires_at) VALUES (%s, %s) "
            "ON CONFLICT (id) DO NOTHING RETURNING 1",
            (self._id(b"proof", identity, jti), expires_at),
        )
        return row is not None

    def closed_until(self, name: str) -> float:
        """Until when (the wall clock) the back-off ``name`` keeps its endpoint closed."""
        row = self._run(
            "reading a back-off",
            "SELECT closed_until FROM guard_backoff WHERE name = %s",
            (name,),
        )
        return 0.0 if row is None else float(row[0])

    def count_failure(self, name: str, delay_for: Callable[[int], float]) -> tuple[int, float]:
        """Count one failure of back-off ``name``; close it for ``delay_for(failures)`` seconds.

        Returns the failures counted so far (by every instance) and the delay. The count and
        the closing are one transaction, so concurrent failures at two instances are both
        counted.
        """
        with (
            self._failing("counting a back-off failure"),
            self._pool.connection() as conn,
            conn.transaction(),
        ):
            row = conn.execute(
                "INSERT INTO guard_backoff AS g (name, failures, closed_until) "
                "VALUES (%s, 1, 0) ON CONFLICT (name) DO UPDATE "
                "SET failures = g.failures + 1 RETURNING failures",
                (name,),
            ).fetchone()
            failures = 1 if row is None else int(row[0])
            delay = delay_for(failures)
            if delay > 0:
                conn.execute(
                    "UPDATE guard_backoff SET closed_until = greatest(closed_until, %s) "
                    "WHERE name = %s",
                    (self._clock() + delay, name),
                )
        return failures, delay

    def failures(self, name: str) -> int:
        """The failures back-off ``name`` has counted (0 when none)."""
        row = self._run(
            "reading a back-off", "SELECT failures FROM guard_backoff WHERE name = %s", (name,)
        )
        return 0 if row is None else int(row[0])

    def take_upload(self, identity: str, burst: float, rate: float) -> float:
        """Take one upload from ``identity``'s bucket (``burst`` at most, refilled at ``rate``
        a second); 0 when taken, else the seconds until one more upload fits.

        The refill and the take are one statement, so two instances never both spend the
        same upload.
        """
        now = self._clock()
        parameters: dict[str, object] = {
            "identity": identity,
            "now": now,
            "step": 1.0 / rate,
            "window": burst / rate,
        }
        if self._run("counting an upload", _TAKE_UPLOAD, parameters) is not None:
            return 0.0
        row = self._run(
            "reading an upload bucket",
            "SELECT tat FROM guard_uploads WHERE identity = %s",
            (identity,),
        )
        tat = now if row is None else float(row[0])
        return max(0.0, max(tat, now) + 1.0 / rate - burst / rate - now)

    def advance_otp_step(self, service: str, step: int) -> bool:
        """Record that ``service``'s one-time password of ``step`` was used; False when that
        step (or a later one) was used already, at any instance."""
        row = self._run(
            "recording a one-time password",
            "INSERT INTO guard_otp_steps AS o (service, step, used_at) VALUES (%s, %s, %s) "
            "ON CONFLICT (service) DO UPDATE SET step = excluded.step, used_at = excluded.used_at "
            "WHERE o.step < excluded.step RETURNING 1",
            (self._id(b"otp", service), step, self._clock()),
        )
        return row is not None


def _purges() -> Iterator[str]:
    yield "DELETE FROM guard_nonces WHERE expires_at < %(now)s"
    yield "DELETE FROM guard_proofs WHERE expires_at < %(now)s"
    yield "DELETE FROM guard_uploads WHERE tat < %(now)s"
    yield "DELETE FROM guard_otp_steps WHERE used_at < %(otp)s"
