"""The rows through which the instances of one CAS on PostgreSQL find each other.

Migration 3 of :mod:`opencas.store.postgres` adds them:

- ``cluster_instances``: one row per instance (its id, where its client API listens, its
  software measurement, the evidence that binds its TLS key to it and the digest of that
  evidence, its TLS certificate, when it started and its last heartbeat);
- ``cluster_join_requests``: a new instance's request for the database key
  (:class:`opencas.service.key_handover.HandoverRequest`), which a running instance claims and
  answers with the sealed key or refuses with the reason;
- ``cluster_leases``: a named lease with a fencing token, held by one instance at a time, for
  work that must run on one instance only (snapshots, key rollover). A leader writes under
  :meth:`opencas.store.postgres.PostgresStore.transaction` with ``fence=lease``: the lease is
  checked (and share-locked) in the same transaction as the writes, so a leader deposed by an
  expiry and a new holder cannot commit after the new one took the lease.

These rows are not records: they are not encrypted and not in the commit state, and they need no
database key, since a new instance must use them before it has one. The database is untrusted,
so nothing here is believed on its own: a join request and its answer are each bound by the
evidence of the CAS that wrote them; the instances' rows say where to look and who is alive,
and someone with the database can forge or delete them (docs/security.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import psycopg

#: Migration 3 of :mod:`opencas.store.postgres`: the cluster's tables.
CLUSTER_TABLES: Final[tuple[str, ...]] = (
    "CREATE TABLE cluster_instances (instance_id TEXT NOT NULL PRIMARY KEY, "
    "api_url TEXT NOT NULL, software_measurement TEXT NOT NULL, evidence TEXT NOT NULL, "
    "evidence_sha256 TEXT NOT NULL, tls_certificate TEXT NOT NULL, "
    "started_at DOUBLE PRECISION NOT NULL, heartbeat_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE cluster_join_requests (request_id TEXT NOT NULL PRIMARY KEY, "
    "instance_id TEXT NOT NULL, request TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, "
    "claimed_by TEXT, claimed_at DOUBLE PRECISION, answer TEXT, refusal TEXT, "
    "answered_at DOUBLE PRECISION)",
    "CREATE TABLE cluster_leases (name TEXT NOT NULL PRIMARY KEY, holder TEXT NOT NULL, "
    "token BIGINT NOT NULL, expires_at DOUBLE PRECISION NOT NULL)",
)

#: Seconds after which a claimed request that got no answer may be claimed by another instance
#: (the first claimer died before it answered).
CLAIM_SECONDS: Final = 30.0
#: Seconds a request is kept after it was made; older ones are deleted.
REQUEST_RETENTION: Final = 600.0

# Leases expire by the database server's clock (extract(epoch from clock_timestamp())), not by
# any instance's, so instances whose clocks differ still agree on who holds a lease.
_TAKE_LEASE: Final = (
    "INSERT INTO cluster_leases AS l (name, holder, token, expires_at) "
    "VALUES (%(name)s, %(holder)s, 1, extract(epoch from clock_timestamp()) + %(seconds)s) "
    "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
    "token = CASE WHEN l.holder = excluded.holder "
    "AND l.expires_at > extract(epoch from clock_timestamp()) "
    "THEN l.token ELSE l.token + 1 END, expires_at = excluded.expires_at "
    "WHERE l.holder = excluded.holder OR l.expires_at <= extract(epoch from clock_timestamp()) "
    "RETURNING token, expires_at"
)
_CHECK_FENCE: Final = (
    "SELECT 1 FROM cluster_leases WHERE name = %s AND holder = %s AND token = %s "
    "AND expires_at > extract(epoch from clock_timestamp()) FOR SHARE"
)
# A fenced transaction's last statement: the commit state is written only where the lease row
# still names this holder and token and has not run out by the server's clock, so the database
# itself refuses the commit of a leader that was deposed after its transaction began.
_FENCED_STATE_WRITE: Final = (
    "UPDATE commit_state SET value = %s WHERE name = 'state' AND EXISTS ("
    "SELECT 1 FROM cluster_leases WHERE name = %s AND holder = %s AND token = %s "
    "AND expires_at > extract(epoch from clock_timestamp()))"
)

Connect = Callable[[], contextlib.AbstractContextManager[psycopg.Connection[Any]]]


@dataclass(frozen=True)
class InstanceRow:
    """One instance as it announces itself (untrusted: anyone with the database can write one)."""

    instance_id: str
    api_url: str
    software_measurement: str
    evidence: str
    evidence_sha256: str
    tls_certificate: str
    started_at: float
    heartbeat_at: float


@dataclass(frozen=True)
class JoinOutcome:
    """What became of a join request: the answer's text, or why it was refused, and by whom."""

    answer: str | None
    refusal: str | None
    answered_by: str | None


@dataclass(frozen=True)
class PendingRequest:
    """A join request no instance answered yet."""

    request_id: str
    instance_id: str
    request: str


@dataclass(frozen=True)
class Lease:
    """A held lease: its name, holder, fencing token and expiry (server time, seconds)."""

    name: str
    holder: str
    token: int
    expires_at: float


class ClusterRows:
    """The cluster's rows over ``connect`` (a pooled connection, or one of its own).

    ``failing(action)`` turns database errors into the store's errors (see
    :class:`opencas.store.postgres.PostgresStore`). Each method is one statement.
    """

    def __init__(
        self, connect: Connect, failing: Callable[[str], contextlib.AbstractContextManager[None]]
    ) -> None:
        self._connect = connect
        self._failing = failing

    @contextlib.contextmanager
    def _conn(self, action: str) -> Iterator[psycopg.Connection[Any]]:
        with self._failing(action), self._connect() as conn:
            yield conn

    def heartbeat(self, row: InstanceRow) -> None:
        """Insert or refresh this instance's row."""
        with self._conn("writing this instance's heartbeat") as conn:
            conn.execute(
                "INSERT INTO cluster_instances (instance_id, api_url, software_measurement, "
                "evidence, evidence_sha256, tls_certificate, started_at, heartbeat_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (instance_id) DO UPDATE SET "
                "api_url = excluded.api_url, software_measurement = excluded.software_measurement, "
                "evidence = excluded.evidence, evidence_sha256 = excluded.evidence_sha256, "
                "tls_certificate = excluded.tls_certificate, started_at = excluded.started_at, "
                "heartbeat_at = excluded.heartbeat_at",
                (
                    row.instance_id,
                    row.api_url,
                    row.software_measurement,
                    row.evidence,
                    row.evidence_sha256,
                    row.tls_certificate,
                    row.started_at,
                    row.heartbeat_at,
                ),
            )

    def instances(self, alive_since: float = 0.0) -> list[InstanceRow]:
        """Every instance whose last heartbeat is at or after ``alive_since``, newest first."""
        with self._conn("listing the instances") as conn:
            rows = conn.execute(
                "SELECT instance_id, api_url, software_measurement, evidence, evidence_sha256, "
                "tls_certificate, started_at, heartbeat_at FROM cluster_instances "
                "WHERE heartbeat_at >= %s ORDER BY heartbeat_at DESC",
                (alive_since,),
            ).fetchall()
        return [InstanceRow(*row) for row in rows]

    def post_request(self, request_id: str, instance_id: str, text: str, now: float) -> None:
        """Post a join request (and delete requests older than :data:`REQUEST_RETENTION`)."""
        with self._conn("posting a join request") as conn:
            conn.execute(
                "DELETE FROM cluster_join_requests WHERE created_at < %s",
                (now - REQUEST_RETENTION,),
            )
            conn.execute(
                "INSERT INTO cluster_join_requests (request_id, instance_id, request, created_at) "
                "VALUES (%s, %s, %s, %s)",
                (request_id, instance_id, text, now),
            )

    def outcome(self, request_id: str) -> JoinOutcome | None:
        """What became of the request so far; ``None`` when it is gone."""
        with self._conn("reading a join request") as conn:
            row = conn.execute(
                "SELECT answer, refusal, claimed_by FROM cluster_join_requests "
                "WHERE request_id = %s",
                (request_id,),
            ).fetchone()
        return None if row is None else JoinOutcome(row[0], row[1], row[2])

    def withdraw(self, request_id: str) -> None:
        """Delete the request (its maker got what it needed, or gave up)."""
        with self._conn("withdrawing a join request") as conn:
            conn.execute("DELETE FROM cluster_join_requests WHERE request_id = %s", (request_id,))

    def pending(self, now: float) -> list[PendingRequest]:
        """The requests of the last :data:`REQUEST_RETENTION` seconds with no answer yet."""
        with self._conn("reading the join requests") as conn:
            rows = conn.execute(
                "SELECT request_id, instance_id, request FROM cluster_join_requests "
                "WHERE answer IS NULL AND refusal IS NULL AND created_at >= %s "
                "AND (claimed_by IS NULL OR claimed_at < %s) ORDER BY created_at",
                (now - REQUEST_RETENTION, now - CLAIM_SECONDS),
            ).fetchall()
        return [PendingRequest(*row) for row in rows]

    def claim(self, request_id: str, instance_id: str, now: float) -> bool:
        """Claim the request for this instance; False when another instance holds it."""
        with self._conn("claiming a join request") as conn:
            cursor = conn.execute(
                "UPDATE cluster_join_requests SET claimed_by = %s, claimed_at = %s "
                "WHERE request_id = %s AND answer IS NULL AND refusal IS NULL "
                "AND (claimed_by IS NULL OR claimed_at < %s)",
                (instance_id, now, request_id, now - CLAIM_SECONDS),
            )
            return cursor.rowcount == 1

    def answer(self, request_id: str, answer: str | None, refusal: str | None, now: float) -> None:
        """Store the answer to (or the refusal of) a request this instance claimed."""
        with self._conn("answering a join request") as conn:
            conn.execute(
                "UPDATE cluster_join_requests SET answer = %s, refusal = %s, answered_at = %s "
                "WHERE request_id = %s",
                (answer, refusal, now, request_id),
            )

    def acquire_lease(self, name: str, holder: str, seconds: float) -> Lease | None:
        """Take or renew the lease ``name`` for ``holder`` for ``seconds``; ``None`` while
        another holder's lease runs.

        A new holder gets the next fencing token; a holder that renews its running lease keeps
        its token, one whose lease ran out gets a new one (someone may have held it between).
        """
        with self._conn("taking a lease") as conn:
            row = conn.execute(
                _TAKE_LEASE,
                {"name": name, "holder": holder, "seconds": seconds},
            ).fetchone()
        return None if row is None else Lease(name, holder, int(row[0]), float(row[1]))

    def release_lease(self, lease: Lease) -> None:
        """Give the lease up now, if it is still this one."""
        with self._conn("releasing a lease") as conn:
            conn.execute(
                "UPDATE cluster_leases SET expires_at = 0 "
                "WHERE name = %s AND holder = %s AND token = %s",
                (lease.name, lease.holder, lease.token),
            )


def check_fence(conn: psycopg.Connection[Any], lease: Lease) -> bool:
    """Whether ``lease`` still holds, checked on ``conn`` inside the caller's transaction and
    share-locked until it ends, so nobody takes the lease before that transaction commits."""
    row = conn.execute(
        _CHECK_FENCE,
        (lease.name, lease.holder, lease.token),
    ).fetchone()
    return row is not None


def write_fenced_state(conn: psycopg.Connection[Any], lease: Lease, sealed: bytes) -> bool:
    """Write the sealed commit state on ``conn`` only while ``lease`` holds (by the server's
    clock, at this statement); whether it was written. ``False`` leaves the state as it was,
    and the caller rolls the transaction back."""
    cursor = conn.execute(_FENCED_STATE_WRITE, (sealed, lease.name, lease.holder, lease.token))
    return cursor.rowcount == 1
