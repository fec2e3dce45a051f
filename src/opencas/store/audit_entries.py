"""The audit log of a CAS on PostgreSQL: one chain for every instance, kept in the database.

Migration 4 of :mod:`opencas.store.postgres` adds two tables:

- ``audit_entries(position, seq, line)``: every entry of the cluster's log, in chain order
  (``position`` 1, 2, ...), its ``seq`` and its line (the canonical JSON the file sink writes).
  Entries are signed and hold no secrets, so they are stored as they are, not encrypted: every
  instance can serve them, and an auditor verifies them as any log.
- ``audit_head``: one row, ``cluster``: the position, ``seq`` and hash of the last entry. It is
  the serialisation point of the chain: an append locks it (``SELECT ... FOR UPDATE``), chains
  its entries onto the head it read, inserts them and moves the head, in one transaction. A
  state-changing operation does the same inside its own transaction, after the state row's
  lock, so its entry commits with its change or not at all.

Migration 5 adds ``audit_head.owner_config``: the hash of the owner config whose audit log
settings (mode, sink) the entries after the head follow. An owner config change sets it with
its entry; every append reads it with the head, so an instance whose settings are older sees
that before it chains anything (:mod:`opencas.audit.log`). Like the rest of these rows it is
believed for nothing: a value that differs only makes the instance read the owner config again
from the store, where it is authenticated.

The database is untrusted: the rows can be deleted or rewritten by whoever holds it. The
signatures and the chain show a changed or removed entry; the head committed with each state
change (the encrypted ``audit-head`` record and its checkpoints) shows a log cut back behind
it, and each instance refuses a head row older than one it saw (:class:`AuditLogError`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg

from opencas.audit.chain import ChainedBatch, Head
from opencas.errors import AuditLogError
from opencas.store.postgres_reads import repeatable_read

#: Migration 4 of :mod:`opencas.store.postgres`: the cluster's audit log.
AUDIT_TABLES: Final[tuple[str, ...]] = (
    "CREATE TABLE audit_entries (position BIGINT NOT NULL PRIMARY KEY, seq BIGINT NOT NULL, "
    "line TEXT NOT NULL)",
    "CREATE INDEX audit_entries_seq ON audit_entries (seq)",
    "CREATE TABLE audit_head (name TEXT NOT NULL PRIMARY KEY, position BIGINT NOT NULL, "
    "seq BIGINT NOT NULL, hash TEXT NOT NULL)",
    "INSERT INTO audit_head (name, position, seq, hash) VALUES ('cluster', 0, 0, "
    "'0000000000000000000000000000000000000000000000000000000000000000')",
)
#: Migration 5: the owner config the log's settings come from (see the module docstring).
AUDIT_SETTINGS: Final[tuple[str, ...]] = (
    "ALTER TABLE audit_head ADD COLUMN owner_config TEXT NOT NULL DEFAULT ''",
)

_LOCK_HEAD: Final = (
    "SELECT position, seq, hash, owner_config FROM audit_head WHERE name = 'cluster' FOR UPDATE"
)
_READ_HEAD: Final = "SELECT position, seq, hash FROM audit_head WHERE name = 'cluster'"
# One statement stores a batch and moves the head: a data-modifying WITH runs once whether or
# not the statement reads it, and both commit together or not at all.
_STORE: Final = (
    "WITH inserted AS (INSERT INTO audit_entries (position, seq, line) "
    "SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::text[])) "
    "UPDATE audit_head SET position = %s, seq = %s, hash = %s, owner_config = %s "
    "WHERE name = 'cluster'"
)
_MARK_SETTINGS: Final = "UPDATE audit_head SET owner_config = %s WHERE name = 'cluster'"

#: Entries one statement of :meth:`AuditEntries.import_log` inserts.
_IMPORT_BATCH: Final = 1000

Connect = Callable[[], contextlib.AbstractContextManager[psycopg.Connection[Any]]]


Extend = Callable[[Head, str], tuple[ChainedBatch, str]]
"""Chains a batch onto the given head, whose entries after it follow the settings of the owner
config of the given hash (called with the head row locked); the batch, and the hash of the
owner config the entries after it follow."""


@dataclass(frozen=True)
class StoredPage:
    """Entry lines from a ``seq`` on, and the ``seq`` the next page starts at (None: the end)."""

    lines: list[str]
    next: int | None


class AuditEntries:
    """The cluster's audit log rows (see the module docstring).

    ``connect`` gives a pooled connection, ``current`` the connection of the write transaction
    the calling thread has open (or None), ``failing(action)`` turns database errors into the
    store's errors.
    """

    def __init__(
        self,
        connect: Connect,
        current: Callable[[], psycopg.Connection[Any] | None],
        failing: Callable[[str], contextlib.AbstractContextManager[None]],
    ) -> None:
        self._connect = connect
        self._current = current
        self._failing = failing

    def head(self) -> Head:
        """The committed head of the cluster's log (seq 0: no entry yet)."""
        with self._failing("reading the audit head"), self._connect() as conn:
            row = conn.execute(_READ_HEAD).fetchone()
        return _head_of(row)

    def append(self, extend: Extend) -> Head:
        """In a transaction of its own: lock the head, chain a batch onto it with ``extend``,
        store the batch and move the head; the new head, once committed. Two round trips to
        the database, whatever the batch's size.

        Raises :class:`StoreError` (or :class:`DatabaseUnavailable`) when the database fails;
        then nothing of the batch is stored.
        """
        with self._failing("appending to the audit log"), self._connect() as conn:
            return _append_pipelined(conn, extend)

    def append_in_transaction(self, extend: Extend) -> Head:
        """As :meth:`append`, inside the write transaction this thread has open: the batch
        commits with it, or not at all. ``RuntimeError`` when no transaction is open."""
        conn = self._current()
        if conn is None:
            raise RuntimeError("no store transaction is open in this thread")
        with self._failing("appending to the audit log"):
            return _append(conn, extend)

    def page(self, start: int, max_entries: int, max_bytes: int) -> StoredPage:
        """The entries from ``seq`` ``start`` on: at most ``max_entries``, and no more than about
        ``max_bytes`` of lines (one entry always); entries of the same ``seq`` (a failed
        operation and the entry after it) are never split between two pages."""
        with (
            self._failing("reading the audit log"),
            self._connect() as conn,
            repeatable_read(conn),
        ):
            sizes = conn.execute(
                "SELECT position, seq, octet_length(line) FROM audit_entries WHERE seq >= %s "
                "ORDER BY position LIMIT %s",
                (start, max_entries + 1),
            ).fetchall()
            if not sizes:
                return StoredPage([], None)
            found = [(int(seq), int(size)) for _, seq, size in sizes]
            count = page_length(found, max_entries, max_bytes)
            following = int(sizes[count][1]) if count < len(sizes) else None
            rows = conn.execute(
                "SELECT line FROM audit_entries WHERE position >= %s AND position <= %s "
                "ORDER BY position",
                (sizes[0][0], sizes[count - 1][0]),
            ).fetchall()
        return StoredPage([str(row[0]) for row in rows], following)

    def import_log(self, entries: Iterable[tuple[Head, bytes]]) -> Head:
        """Store a log kept so far in a file (each entry's head and line, in order) as the start
        of the cluster's log, in one transaction; the head after it. :class:`AuditLogError`
        when the database holds entries already."""
        with (
            self._failing("moving the audit log into the database"),
            self._connect() as conn,
            conn.transaction(),
        ):
            position, head = _row_of(conn.execute(_LOCK_HEAD).fetchone())
            if position != 0:
                raise AuditLogError(
                    "the database holds audit entries already: the log file cannot be moved in"
                )
            lines: list[bytes] = []
            heads: list[Head] = []
            for entry_head, line in entries:
                lines.append(line)
                heads.append(entry_head)
                if len(lines) == _IMPORT_BATCH:
                    head = _store(conn, position, lines, heads)
                    position += len(lines)
                    lines, heads = [], []
            if lines:
                head = _store(conn, position, lines, heads)
            return head


def _row_of(row: Any) -> tuple[int, Head]:
    """The position and head of the head row."""
    if row is None:
        raise AuditLogError("the database has no audit head row (audit_head 'cluster')")
    return int(row[0]), Head(int(row[1]), str(row[2]))


def _head_of(row: Any) -> Head:
    return _row_of(row)[1]


def _append(conn: psycopg.Connection[Any], extend: Extend) -> Head:
    row: Any = conn.execute(_LOCK_HEAD).fetchone()
    position, head = _row_of(row)
    settings = str(row[3])  # the row is there: _row_of raised otherwise
    batch, following = extend(head, settings)
    if not batch.lines:
        if following != settings:
            conn.execute(_MARK_SETTINGS, (following,))
        return head
    return _store(conn, position, batch.lines, batch.heads, following)


def _append_pipelined(conn: psycopg.Connection[Any], extend: Extend) -> Head:
    """:func:`_append` in a transaction of its own on ``conn`` (in autocommit), in two round
    trips: ``BEGIN`` goes with the lock, the store with ``COMMIT`` (psycopg's pipeline mode;
    its ``transaction()`` would wait for each of them). The batch is chained on the head the
    first read, so fewer cannot be; anything that fails rolls the transaction back."""
    committed = False
    try:
        with conn.pipeline():
            conn.execute("BEGIN")
            head = _append(conn, extend)
            conn.execute("COMMIT")
        committed = True  # leaving the pipeline waited for every answer, COMMIT's too
        return head
    finally:
        if not committed and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")


def _store(
    conn: psycopg.Connection[Any],
    position: int,
    lines: Sequence[bytes],
    heads: Sequence[Head],
    settings: str = "",
) -> Head:
    positions = list(range(position + 1, position + 1 + len(lines)))
    last = heads[-1]
    conn.execute(
        _STORE,
        (
            positions,
            [head.seq for head in heads],
            [line.decode("utf-8") for line in lines],
            positions[-1],
            last.seq,
            last.hash,
            settings,
        ),
    )
    return last


def page_length(rows: Sequence[tuple[int, int]], max_entries: int, max_bytes: int) -> int:
    """How many of ``rows`` (each entry's seq and size, in chain order) go into one page: at
    most ``max_entries`` and ``max_bytes`` (but one entry always), cut before a run of entries
    with the same seq rather than through it (the next page starts at a seq)."""
    count, size = 0, 0
    for _, length in rows:
        if count and (count >= max_entries or size + length > max_bytes):
            break
        count += 1
        size += length
    end = count
    while 0 < end < len(rows) and rows[end][0] == rows[end - 1][0]:
        end -= 1
    if end == 0:  # the page would start inside a run: it takes the run whole
        end = count
        while end < len(rows) and rows[end][0] == rows[end - 1][0]:
            end += 1
    return end
