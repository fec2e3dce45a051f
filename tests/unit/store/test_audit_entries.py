"""The cluster's audit log rows on PostgreSQL: appends serialised by the head row from several
stores at once, an append inside a store transaction that commits or rolls back with it, pages,
and moving a log file in."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opencas.audit.chain import (
    GENESIS,
    ChainedBatch,
    Head,
    PendingEntry,
    chain_batch,
    line_hash,
    parse_entry,
)
from opencas.errors import AuditLogError
from opencas.store import PostgresStore, Transaction
from opencas.store.audit_entries import AuditEntries, Extend

DMK = bytes(range(32))
KEY = Ed25519PrivateKey.generate()


def _nothing(tx: Transaction) -> None:
    return None


def _entries(subjects: list[str]) -> list[PendingEntry]:
    return [
        PendingEntry("session_read", "cas", subject, {}, "2026-12-01T12:00:00Z", True)
        for subject in subjects
    ]


def _extend(subjects: list[str], settings: str = "") -> Extend:
    def extend(head: Head, _: str) -> tuple[ChainedBatch, str]:
        return chain_batch(head, _entries(subjects), sign=KEY.sign), settings

    return extend


@pytest.fixture
def stores(postgres_url: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one database, as two instances open it."""
    PostgresStore.create(postgres_url, DMK, _nothing).close()
    with PostgresStore.open(postgres_url, DMK) as one, PostgresStore.open(postgres_url, DMK) as two:
        yield one, two


def _lines(url: str) -> list[bytes]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT line FROM audit_entries ORDER BY position").fetchall()
    return [str(row[0]).encode() for row in rows]


def test_appends_from_two_stores_form_one_chain(
    stores: tuple[PostgresStore, PostgresStore], postgres_url: str
) -> None:
    assert stores[0].audit_entries.head() == GENESIS

    def append(store: PostgresStore, prefix: str) -> None:
        for number in range(20):
            store.audit_entries.append(_extend([f"{prefix}{number}a", f"{prefix}{number}b"]))

    writers = [
        threading.Thread(target=append, args=(store, str(n))) for n, store in enumerate(stores)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    lines = _lines(postgres_url)
    entries = [parse_entry(line) for line in lines]
    assert [entry.seq for entry in entries] == list(range(1, 81))
    assert entries[0].prev == GENESIS.hash
    assert [entry.prev for entry in entries[1:]] == [line_hash(line) for line in lines[:-1]]
    # A batch is never split by another writer's.
    subjects = [entry.subject for entry in entries]
    for index in range(0, 80, 2):
        assert subjects[index][:-1] == subjects[index + 1][:-1]
    assert stores[1].audit_entries.head() == Head(80, line_hash(lines[-1]))


def test_an_append_in_a_transaction_commits_or_rolls_back_with_it(
    stores: tuple[PostgresStore, PostgresStore], postgres_url: str
) -> None:
    store = stores[0]
    with pytest.raises(RuntimeError, match="no store transaction"):
        store.audit_entries.append_in_transaction(_extend(["x"]))

    def failing_change() -> None:
        with store.transaction() as txn:
            txn.put("t", "lost", b"1")
            store.audit_entries.append_in_transaction(_extend(["lost"]))
            raise RuntimeError("the operation fails")

    with pytest.raises(RuntimeError, match="fails"):
        failing_change()
    assert _lines(postgres_url) == []
    assert store.audit_entries.head() == GENESIS
    with store.transaction() as txn:
        txn.put("t", "kept", b"1")
        head = store.audit_entries.append_in_transaction(_extend(["kept"]))
    assert [parse_entry(line).subject for line in _lines(postgres_url)] == ["kept"]
    assert stores[1].audit_entries.head() == head


def test_pages_go_through_the_log_from_a_seq(
    stores: tuple[PostgresStore, PostgresStore], postgres_url: str
) -> None:
    entries = stores[0].audit_entries
    entries.append(_extend([str(n) for n in range(10)]))
    lines = _lines(postgres_url)
    first = entries.page(1, 4, 10**6)
    assert (first.lines, first.next) == ([line.decode() for line in lines[:4]], 5)
    assert entries.page(5, 4, 10**6).next == 9
    last = entries.page(9, 4, 10**6)
    assert (last.lines, last.next) == ([line.decode() for line in lines[8:]], None)
    assert entries.page(3, 100, len(lines[2]) + 1).lines == [lines[2].decode()]
    assert entries.page(11, 4, 10**6).lines == []


class _Recording:
    """A connection that notes each statement it is asked to run."""

    def __init__(self, conn: psycopg.Connection[Any], statements: list[str]) -> None:
        self._conn, self._statements = conn, statements

    def execute(self, query: str, params: object = None) -> psycopg.Cursor[Any]:
        self._statements.append(query.split(maxsplit=1)[0] if "SELECT" in query else query)
        return self._conn.execute(query, params)  # type: ignore[arg-type]


def test_a_page_is_one_read_only_snapshot_whose_level_is_in_its_begin(
    stores: tuple[PostgresStore, PostgresStore], postgres_url: str
) -> None:
    stores[0].audit_entries.append(_extend(["a", "b"]))
    statements: list[str] = []

    @contextlib.contextmanager
    def connect() -> Iterator[Any]:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            yield _Recording(conn, statements)

    entries = AuditEntries(connect, lambda: None, lambda _: contextlib.nullcontext())
    assert len(entries.page(1, 10, 10**6).lines) == 2
    # Two reads in one snapshot; a SET TRANSACTION after the BEGIN would be a round trip more.
    assert statements == [
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        "SELECT",
        "SELECT",
        "COMMIT",
    ]


def test_a_log_file_is_moved_in_once(stores: tuple[PostgresStore, PostgresStore]) -> None:
    entries = stores[0].audit_entries
    batch = chain_batch(GENESIS, _entries(["a", "b", "c"]), sign=KEY.sign)
    head = entries.import_log(zip(batch.heads, batch.lines, strict=True))
    assert head == batch.heads[-1] == entries.head()
    following = entries.append(_extend(["d"]))
    assert following.seq == 4
    with pytest.raises(AuditLogError, match="holds audit entries already"):
        entries.import_log(zip(batch.heads, batch.lines, strict=True))
