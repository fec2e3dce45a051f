"""The store contract, run against every backend: SQLite and PostgreSQL.

Each test gets a fresh database (a file, or a PostgreSQL database of its own). "Raw" access is
what someone with full access to the storage can do behind the store's back: read and write the
rows with plain SQL.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest

from opencas.errors import KeyStoreError, RecordDamagedError, StoreError
from opencas.store import PostgresStore, SqliteStore, Store, Transaction
from opencas.store.records import RecordTransaction
from opencas.store.state import StateKeys

DMK = bytes(range(32))
OTHER_DMK = bytes(32)
KEYS = StateKeys(DMK)
NAME = "payroll-Distinctive-Session-Name"


def _nothing(tx: Transaction) -> None:
    return None


class Raw(Protocol):
    """Plain SQL on the store's database; ``?`` placeholders."""

    def one(self, sql: str, parameters: tuple[object, ...] = ()) -> Any: ...

    def run(self, sql: str, parameters: tuple[object, ...] = ()) -> None: ...


class Backend(Protocol):
    def create(self, populate: Callable[[Transaction], None] = _nothing) -> Store: ...

    def open(self, dmk: bytes = DMK) -> Store: ...

    def raw(self) -> contextlib.AbstractContextManager[Raw]: ...


class _SqliteRaw:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def one(self, sql: str, parameters: tuple[object, ...] = ()) -> Any:
        return self._conn.execute(sql, parameters).fetchone()

    def run(self, sql: str, parameters: tuple[object, ...] = ()) -> None:
        self._conn.execute(sql, parameters)


class _SqliteBackend:
    def __init__(self, path: Path) -> None:
        self.path = path

    def create(self, populate: Callable[[Transaction], None] = _nothing) -> Store:
        return SqliteStore.create_atomically(self.path, DMK, populate)

    def open(self, dmk: bytes = DMK) -> Store:
        return SqliteStore.open(self.path, dmk)

    @contextlib.contextmanager
    def raw(self) -> Iterator[Raw]:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            yield _SqliteRaw(conn)
        finally:
            conn.close()


class _PostgresRaw:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def one(self, sql: str, parameters: tuple[object, ...] = ()) -> Any:
        return self._conn.execute(sql.replace("?", "%s"), parameters).fetchone()  # type: ignore[arg-type]

    def run(self, sql: str, parameters: tuple[object, ...] = ()) -> None:
        self._conn.execute(sql.replace("?", "%s"), parameters)  # type: ignore[arg-type]


class _PostgresBackend:
    def __init__(self, url: str) -> None:
        self.url = url

    def create(self, populate: Callable[[Transaction], None] = _nothing) -> Store:
        return PostgresStore.create(self.url, DMK, populate)

    def open(self, dmk: bytes = DMK) -> Store:
        return PostgresStore.open(self.url, dmk)

    @contextlib.contextmanager
    def raw(self) -> Iterator[Raw]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            yield _PostgresRaw(conn)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return _SqliteBackend(tmp_path / "cas.db")
    url: str = request.getfixturevalue("postgres_url")
    return _PostgresBackend(url)


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    opened = backend.create()
    yield opened
    opened.close()


def _record(raw: Raw, table: str, key: str) -> tuple[int, bytes]:
    row = raw.one(
        "SELECT version, value FROM records WHERE tbl = ? AND key = ?",
        (table, KEYS.record_id(table, key)),
    )
    return int(row[0]), bytes(row[1])


def _index(raw: Raw, table: str, key: str) -> bytes:
    row = raw.one(
        "SELECT value FROM record_index WHERE tbl = ? AND key = ?",
        (table, KEYS.record_id(table, key)),
    )
    return bytes(row[0])


def _state(raw: Raw) -> bytes:
    return bytes(raw.one("SELECT value FROM commit_state WHERE name = 'state'")[0])


def _put_back(raw: Raw, table: str, key: str, version: int, value: bytes) -> None:
    raw.run(
        "UPDATE records SET version = ?, value = ? WHERE tbl = ? AND key = ?",
        (version, value, table, KEYS.record_id(table, key)),
    )


# --- records, versions, transactions ------------------------------------------------------------


def test_round_trip_versions_delete_list(store: Store) -> None:
    assert isinstance(store, Store)
    with store.transaction() as tx:
        assert tx.put("sessions", "b", b"one") == 1
        assert tx.put("sessions", "a", b"") == 1
        assert tx.put("sessions", "b", b"two") == 2
        assert tx.put("other", "b", b"elsewhere") == 1
        assert tx.get_versioned("sessions", "b") == (b"two", 2)
        assert tx.list_keys("sessions") == ["a", "b"]
    assert store.get("sessions", "b") == b"two"
    assert store.get_versioned("sessions", "a") == (b"", 1)
    assert store.get_versioned("other", "b") == (b"elsewhere", 1)
    assert store.get("sessions", "missing") is None
    with store.transaction() as tx:
        assert tx.put("sessions", "b", b"three") == 3
        assert tx.delete("sessions", "a") is True
        assert tx.delete("sessions", "a") is False
        assert tx.get("sessions", "a") is None
    assert store.list_keys("sessions") == ["b"]
    assert store.get_versioned("sessions", "b") == (b"three", 3)
    keys = ["s/b", "s/a", "s", "s/\u00e9", "s/\U0001f600", "s/Z", "t"]
    with store.transaction() as tx:
        for key in keys:
            tx.put("names", key, key.encode())
    assert store.list_keys("names", "s/") == ["s/Z", "s/a", "s/b", "s/\u00e9", "s/\U0001f600"]
    assert store.list_keys("names") == sorted(keys)
    with pytest.raises(ValueError, match="reserved"):
        store.get("_meta", "dmk-check")


def test_values_and_names_are_not_stored_in_clear(backend: Backend, store: Store) -> None:
    secret = b"a-very-recognisable-secret-value"
    with store.transaction() as tx:
        tx.put("sessions", NAME, secret)
    with backend.raw() as raw:
        version, value = _record(raw, "sessions", NAME)
        stored = [
            bytes(row[0]) for row in [raw.one("SELECT key FROM records WHERE tbl = 'sessions'")]
        ]
        index = _index(raw, "sessions", NAME)
    assert version == 1
    assert secret not in value
    assert NAME.encode() not in stored
    assert NAME.encode() not in index


def test_rollback_on_exception_changes_nothing(store: Store) -> None:
    with store.transaction() as tx:
        tx.put("t", "kept", b"1")
    before = store.state()

    class Boom(Exception):
        pass

    def failing() -> Transaction:
        with store.transaction() as tx:
            tx.put("t", "kept", b"2")
            tx.put("t", "new", b"x")
            raise Boom

    with pytest.raises(Boom):
        failing()
    with store.transaction() as tx:
        pass
    assert store.get_versioned("t", "kept") == (b"1", 1)
    assert store.get("t", "new") is None
    assert store.state() == before
    with pytest.raises(StoreError, match="used after it ended"):
        tx.get("t", "kept")


def test_nested_transaction_is_refused(store: Store) -> None:
    with store.transaction() as tx:
        tx.put("t", "k", b"v")
        with pytest.raises(RuntimeError, match="do not nest"), store.transaction():
            pass
    assert store.get("t", "k") == b"v"


def test_every_changing_commit_advances_the_counter(store: Store) -> None:
    start = store.state()
    with store.transaction() as tx:
        tx.get("t", "a")
    assert store.state() == start
    with store.transaction() as tx:
        tx.put("t", "a", b"1")
        tx.put("t", "b", b"1")
    middle = store.state()
    assert middle.counter == start.counter + 1
    assert middle.digest != start.digest
    with store.transaction() as tx:
        tx.delete("t", "b")
    assert store.state().counter == start.counter + 2


def test_reads_outside_see_only_committed_state(store: Store) -> None:
    with store.transaction() as tx:
        tx.put("t", "a", b"old")
    with store.transaction() as tx:
        tx.put("t", "a", b"new")
        tx.put("t", "b", b"new")
        assert store.get("t", "a") == b"old"
        assert store.list_keys("t") == ["a"]
    assert store.get_versioned("t", "a") == (b"new", 2)


def test_snapshot_sees_one_committed_state(store: Store) -> None:
    with store.transaction() as tx:
        tx.put("t", "a", b"1")
        tx.put("t", "b", b"1")
    with store.snapshot() as view:
        assert view.get("t", "a") == b"1"
        with store.transaction() as tx:
            tx.put("t", "a", b"2")
            tx.put("t", "b", b"2")
            tx.put("t", "c", b"2")
        assert view.get("t", "b") == b"1"
        assert view.get_versioned("t", "a") == (b"1", 1)
        assert view.list_keys("t") == ["a", "b"]
    assert store.get("t", "b") == b"2"


def test_values_persist_across_close_and_reopen(backend: Backend) -> None:
    store = backend.create(lambda tx: tx.put("t", "from-create", b"c"))
    with store.transaction() as tx:
        tx.put("t", "a", b"1")
        tx.put("t", "a", b"2")
    state = store.state()
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get("t", "a")
    reopened = backend.open()
    try:
        assert reopened.damaged_records == ()
        assert reopened.get_versioned("t", "a") == (b"2", 2)
        assert reopened.get("t", "from-create") == b"c"
        assert reopened.state() == state
    finally:
        reopened.close()


def test_wrong_key_is_a_key_store_error(backend: Backend) -> None:
    backend.create().close()
    with pytest.raises(KeyStoreError, match="does not open"):
        backend.open(OTHER_DMK)
    with pytest.raises(ValueError, match="32 bytes"):
        backend.open(b"short")


def test_populate_raising_leaves_no_store(backend: Backend) -> None:
    def fail(tx: Transaction) -> None:
        tx.put("t", "a", b"x")
        raise RuntimeError("populate failed")

    with pytest.raises(RuntimeError, match="populate failed"):
        backend.create(fail)
    with pytest.raises(StoreError):
        backend.open()
    backend.create().close()


# --- concurrent writers ------------------------------------------------------------------------


def test_two_store_instances_never_lose_an_update(backend: Backend) -> None:
    backend.create(lambda tx: tx.put("t", "counter", b"0")).close()
    first, second = backend.open(), backend.open()
    rounds = 25
    failures: list[BaseException] = []

    def add(store: Store) -> None:
        try:
            for _ in range(rounds):
                with store.transaction() as tx:
                    value = tx.get("t", "counter")
                    assert value is not None
                    tx.put("t", "counter", str(int(value) + 1).encode())
        except BaseException as exc:
            failures.append(exc)

    start = first.state().counter
    threads = [threading.Thread(target=add, args=(s,)) for s in (first, second, first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert first.get_versioned("t", "counter") == (str(4 * rounds).encode(), 4 * rounds + 1)
    assert second.state() == first.state()
    assert first.state().counter == start + 4 * rounds
    first.close()
    second.close()
    reopened = backend.open()
    assert reopened.damaged_records == ()
    reopened.close()


# --- someone with access to the database -------------------------------------------------------


def _two_versions(backend: Backend) -> tuple[tuple[int, bytes], tuple[int, bytes], bytes]:
    """A store where sessions/NAME went from version 1 to 2; the raw version 1 row and its index
    entry, as copied before the update."""
    store = backend.create(lambda tx: tx.put("sessions", NAME, b"first"))
    with backend.raw() as raw:
        old_row, old_index = _record(raw, "sessions", NAME), _index(raw, "sessions", NAME)
    with store.transaction() as tx:
        tx.put("sessions", NAME, b"second")
        tx.put("sessions", "other", b"fine")
    with backend.raw() as raw:
        new_row = _record(raw, "sessions", NAME)
    store.close()
    return old_row, new_row, old_index


def test_an_older_row_copied_back_is_damaged_at_open_and_at_read(backend: Backend) -> None:
    old_row, _, _ = _two_versions(backend)
    with backend.raw() as raw:
        _put_back(raw, "sessions", NAME, *old_row)
    store = backend.open()
    try:
        assert [(d.table, d.key) for d in store.damaged_records] == [("sessions", NAME)]
        with pytest.raises(RecordDamagedError, match="older copy"):
            store.get("sessions", NAME)
        assert store.get("sessions", "other") == b"fine"
    finally:
        store.close()


def test_mixed_versions_are_damaged(backend: Backend) -> None:
    old_row, new_row, _ = _two_versions(backend)
    with backend.raw() as raw:
        # The newer version number with the older value: the row no longer authenticates.
        _put_back(raw, "sessions", NAME, new_row[0], old_row[1])
    store = backend.open()
    try:
        assert [d.key for d in store.damaged_records] == [NAME]
        with pytest.raises(RecordDamagedError, match="not the one the store committed"):
            store.get("sessions", NAME)
    finally:
        store.close()


def test_an_older_row_with_its_older_index_entry_refuses_the_store(backend: Backend) -> None:
    old_row, _, old_index = _two_versions(backend)
    with backend.raw() as raw:
        _put_back(raw, "sessions", NAME, *old_row)
        raw.run(
            "UPDATE record_index SET value = ? WHERE tbl = ? AND key = ?",
            (old_index, "sessions", KEYS.record_id("sessions", NAME)),
        )
    with pytest.raises(RecordDamagedError, match=r"_state/commit.*does not add up"):
        backend.open()


def test_a_deleted_row_is_damaged(backend: Backend) -> None:
    _two_versions(backend)
    with backend.raw() as raw:
        raw.run(
            "DELETE FROM records WHERE tbl = ? AND key = ?",
            ("sessions", KEYS.record_id("sessions", NAME)),
        )
    store = backend.open()
    try:
        assert [d.key for d in store.damaged_records] == [NAME]
        with pytest.raises(RecordDamagedError, match="deleted behind the store's back"):
            store.get("sessions", NAME)
        assert store.list_keys("sessions") == sorted(["other", NAME])
    finally:
        store.close()


def test_a_row_deleted_with_its_index_entry_refuses_the_store(backend: Backend) -> None:
    _two_versions(backend)
    with backend.raw() as raw:
        for table in ("records", "record_index"):
            raw.run(
                f"DELETE FROM {table} WHERE tbl = ? AND key = ?",
                ("sessions", KEYS.record_id("sessions", "other")),
            )
    with pytest.raises(RecordDamagedError, match="_state/commit"):
        backend.open()


def test_an_older_commit_state_refuses_the_store(backend: Backend) -> None:
    store = backend.create()
    with backend.raw() as raw:
        old_state = _state(raw)
    with store.transaction() as tx:
        tx.put("t", "a", b"1")
    store.close()
    with backend.raw() as raw:
        raw.run("UPDATE commit_state SET value = ? WHERE name = 'state'", (old_state,))
    with pytest.raises(RecordDamagedError, match="_state/commit"):
        backend.open()


def test_a_row_damaged_while_open_is_refused_at_read(backend: Backend, store: Store) -> None:
    with store.transaction() as tx:
        tx.put("t", "a", b"1")
    with backend.raw() as raw:
        version, value = _record(raw, "t", "a")
        flipped = value[:-1] + bytes([value[-1] ^ 1])
        _put_back(raw, "t", "a", version, flipped)
    with pytest.raises(RecordDamagedError, match="t/a"):
        store.get("t", "a")
    with store.transaction() as tx:
        assert tx.delete("t", "a") is True
        assert tx.put("t", "a", b"fresh") == 1
    assert store.get("t", "a") == b"fresh"


def test_a_restored_store_keeps_versions_and_continues_the_counter(backend: Backend) -> None:
    def restore(tx: Transaction) -> None:
        assert isinstance(tx, RecordTransaction)
        tx.continue_counter(41)
        tx.restore_record("t", "a", 7, b"seven")
        tx.restore_record("t", "b", 1, b"one")

    store = backend.create(restore)
    try:
        assert store.state().counter == 42
        assert store.get_versioned("t", "a") == (b"seven", 7)
        with store.transaction() as tx:
            assert tx.put("t", "a", b"eight") == 8
        assert store.state().counter == 43
    finally:
        store.close()
    reopened = backend.open()
    try:
        assert not reopened.damaged_records
        assert reopened.get_versioned("t", "a") == (b"eight", 8)
    finally:
        reopened.close()


def _restoring(store: Store, change: Callable[[RecordTransaction], None]) -> None:
    with store.transaction() as tx:
        assert isinstance(tx, RecordTransaction)
        change(tx)


def test_a_counter_is_continued_only_in_a_new_store_and_a_record_restored_once(
    store: Store,
) -> None:
    with store.transaction() as tx:
        tx.put("t", "a", b"1")
    with pytest.raises(StoreError, match="only be set in a new, empty store"):
        _restoring(store, lambda tx: tx.continue_counter(99))
    with pytest.raises(StoreError, match="restored twice"):
        _restoring(store, lambda tx: tx.restore_record("t", "a", 3, b"again"))
    with pytest.raises(StoreError, match="at version 0"):
        _restoring(store, lambda tx: tx.restore_record("t", "b", 0, b"zero"))
    assert store.get_versioned("t", "a") == (b"1", 1)
