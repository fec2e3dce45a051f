"""The SQLite state store: records, versions, transactions, tamper and rollback detection, creation,
threads."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from opencas.errors import KeyStoreError, RecordDamagedError, StoreError
from opencas.store import SqliteStore, Store, Transaction
from opencas.store.records import upgrade_tables
from opencas.store.sqlite import APPLICATION_ID, SCHEMA_VERSION
from opencas.store.state import (
    INITIAL_STATE,
    CommitState,
    IndexEntry,
    StateKeys,
    check_record,
    envelope_sha256,
    xor,
)
from opencas.testing import rewrite_as_sqlite_schema_2

DMK = bytes(range(32))
# The ids under which secrets/a and secrets/b are stored: what someone editing the file sees.
A = StateKeys(DMK).record_id("secrets", "a")
B = StateKeys(DMK).record_id("secrets", "b")
KEYS = StateKeys(DMK)
NAME = "payroll-Distinctive-Session-Name"


def _nothing(tx: Transaction) -> None:
    return None


def _create(path: Path, populate: Callable[[Transaction], None] = _nothing) -> SqliteStore:
    return SqliteStore.create_atomically(path, DMK, populate)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "cas.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteStore]:
    opened = _create(db_path)
    yield opened
    opened.close()


@contextlib.contextmanager
def _raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection, as someone editing the file behind the store's back."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def _build_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if ".init-" in p.name)


# --- records and versions -------------------------------------------------------------------


def test_put_get_versions_delete_list(store: SqliteStore) -> None:
    with store.transaction() as tx:
        assert tx.put("sessions", "b", b"one") == 1
        assert tx.put("sessions", "a", b"") == 1
        assert tx.put("sessions", "b", b"two") == 2
        assert tx.put("other", "b", b"elsewhere") == 1
        assert tx.get("sessions", "b") == b"two"
        assert tx.get_versioned("sessions", "b") == (b"two", 2)
    assert store.get("sessions", "b") == b"two"
    assert store.get_versioned("sessions", "a") == (b"", 1)
    assert store.get_versioned("other", "b") == (b"elsewhere", 1)
    assert store.get("sessions", "missing") is None
    assert store.get_versioned("nothing-here", "x") is None
    assert store.list_keys("sessions") == ["a", "b"]

    with store.transaction() as tx:
        assert tx.put("sessions", "b", b"three") == 3
        assert tx.delete("sessions", "a") is True
        assert tx.delete("sessions", "a") is False
        assert tx.get("sessions", "a") is None
        assert tx.list_keys("sessions") == ["b"]
    assert store.list_keys("sessions") == ["b"]
    assert store.get_versioned("sessions", "b") == (b"three", 3)

    with store.transaction() as tx:
        assert tx.put("sessions", "a", b"again") == 1


def test_list_keys_prefix_and_order(store: SqliteStore) -> None:
    keys = ["s/b", "s/a", "s", "s0", "r/z", "s/\u00e9", "s/\U0001f600", "s/Z", "t"]
    with store.transaction() as tx:
        for key in keys:
            tx.put("names", key, key.encode())
        assert tx.list_keys("names", "s/") == sorted(k for k in keys if k.startswith("s/"))
    assert store.list_keys("names") == sorted(keys)
    assert store.list_keys("names", "s/") == ["s/Z", "s/a", "s/b", "s/\u00e9", "s/\U0001f600"]
    assert store.list_keys("names", "s") == sorted(k for k in keys if k.startswith("s"))
    assert store.list_keys("names", "x") == []
    assert store.list_keys("empty") == []


def test_values_are_encrypted_on_disk(store: SqliteStore, db_path: Path) -> None:
    secret = b"a-very-recognisable-secret-value"
    with store.transaction() as tx:
        tx.put("secrets", "k", secret)
    store.close()
    assert secret not in db_path.read_bytes()
    with _raw(db_path) as conn:
        (value,) = conn.execute("SELECT value FROM records WHERE tbl = 'secrets'").fetchone()
    assert secret not in value
    assert value[0] == 0x01


def test_reserved_and_empty_table_names_are_refused(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="reserved"):
        store.get("_meta", "dmk-check")
    with pytest.raises(ValueError, match="reserved"):
        store.list_keys("")
    with store.transaction() as tx:
        with pytest.raises(ValueError, match="reserved"):
            tx.put("_meta", "dmk-check", b"x")
        with pytest.raises(ValueError, match="reserved"):
            tx.delete("_meta", "dmk-check")


def test_satisfies_the_store_protocol(store: SqliteStore) -> None:
    assert isinstance(store, Store)
    with store.transaction() as tx:
        assert isinstance(tx, Transaction)


# --- transactions ---------------------------------------------------------------------------


class Boom(Exception):
    pass


def test_rollback_on_exception(store: SqliteStore) -> None:
    with store.transaction() as tx:
        tx.put("t", "kept", b"1")

    def failing_transaction() -> None:
        with store.transaction() as tx:
            tx.put("t", "kept", b"2")
            tx.put("t", "new", b"x")
            tx.delete("t", "kept")
            raise Boom

    with pytest.raises(Boom):
        failing_transaction()
    assert store.get_versioned("t", "kept") == (b"1", 1)
    assert store.get("t", "new") is None
    # The writer is usable again after a rollback.
    with store.transaction() as tx:
        assert tx.put("t", "kept", b"3") == 2


def test_transaction_is_invalid_after_its_block(store: SqliteStore) -> None:
    with store.transaction() as tx:
        pass
    with pytest.raises(StoreError, match="after it ended"):
        tx.get("t", "k")
    with pytest.raises(StoreError, match="after it ended"):
        tx.put("t", "k", b"v")


def test_nested_transaction_is_refused_not_deadlocked(store: SqliteStore) -> None:
    with store.transaction() as tx:
        tx.put("t", "k", b"v")
        with pytest.raises(RuntimeError, match="nest"), store.transaction():
            pass
    assert store.get("t", "k") == b"v"


def test_reads_outside_see_only_committed_state_and_do_not_wait(store: SqliteStore) -> None:
    with store.transaction() as tx:
        tx.put("t", "k", b"old")
    inside = threading.Event()
    release = threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            with store.transaction() as tx:
                tx.put("t", "k", b"new")
                inside.set()
                assert release.wait(30)
        except BaseException as exc:
            failures.append(exc)
            inside.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert inside.wait(30)
        # The write transaction is open and holds the write lock; this read must not wait for it.
        assert store.get("t", "k") == b"old"
        assert store.list_keys("t") == ["k"]
    finally:
        release.set()
        thread.join(30)
    assert not failures
    assert store.get_versioned("t", "k") == (b"new", 2)


def test_concurrent_writes_from_threads_all_land(store: SqliteStore) -> None:
    threads_count, rounds = 8, 25
    barrier = threading.Barrier(threads_count)
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            barrier.wait(30)
            for i in range(rounds):
                with store.transaction() as tx:
                    tx.put("own", f"{n}/{i}", str(i).encode())
                    current = tx.get("shared", "counter")
                    tx.put("shared", "counter", str(int(current or b"0") + 1).encode())
                assert store.get("own", f"{n}/{i}") == str(i).encode()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures
    assert store.get_versioned("shared", "counter") == (
        str(threads_count * rounds).encode(),
        threads_count * rounds,
    )
    assert len(store.list_keys("own")) == threads_count * rounds


def test_values_persist_across_close_and_reopen(store: SqliteStore, db_path: Path) -> None:
    with store.transaction() as tx:
        tx.put("t", "k", b"v1")
        tx.put("t", "k", b"v2")
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.get("t", "k")
    with SqliteStore.open(db_path, DMK) as reopened:
        assert reopened.get_versioned("t", "k") == (b"v2", 2)


# --- damaged records ------------------------------------------------------------------------


def _damaged_store(db_path: Path, edit: Callable[[sqlite3.Connection], None]) -> SqliteStore:
    with _create(db_path) as store, store.transaction() as tx:
        tx.put("secrets", "a", b"value of a")
        tx.put("secrets", "b", b"value of b")
    with _raw(db_path) as conn:
        edit(conn)
    return SqliteStore.open(db_path, DMK)


def test_flipped_byte_in_a_value_is_reported(db_path: Path) -> None:
    def flip(conn: sqlite3.Connection) -> None:
        (value,) = conn.execute(
            "SELECT value FROM records WHERE tbl = 'secrets' AND key = ?", (A,)
        ).fetchone()
        damaged = bytearray(value)
        damaged[len(damaged) // 2] ^= 0x01
        conn.execute(
            "UPDATE records SET value = ? WHERE tbl = 'secrets' AND key = ?", (bytes(damaged), A)
        )

    with _damaged_store(db_path, flip) as store:
        with pytest.raises(RecordDamagedError) as caught:
            store.get("secrets", "a")
        assert (caught.value.table, caught.value.key) == ("secrets", "a")
        assert "secrets/a" in str(caught.value)
        assert caught.value.code == "record-damaged"
        assert store.get("secrets", "b") == b"value of b"
        with store.transaction() as tx, pytest.raises(RecordDamagedError):
            tx.get("secrets", "a")


def test_value_copied_onto_another_key_is_reported(db_path: Path) -> None:
    def copy(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE records SET value = (SELECT value FROM records WHERE key = ?) "
            "WHERE tbl = 'secrets' AND key = ?",
            (A, B),
        )

    with _damaged_store(db_path, copy) as store:
        assert store.get("secrets", "a") == b"value of a"
        with pytest.raises(RecordDamagedError) as caught:
            store.get("secrets", "b")
        assert (caught.value.table, caught.value.key) == ("secrets", "b")


def test_value_moved_to_another_table_is_reported(db_path: Path) -> None:
    def move(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE records SET tbl = 'public' WHERE tbl = 'secrets' AND key = ?", (A,))

    # The record id is keyed by its table too, so the moved row is no record of "public": it is
    # reported where it was committed, and as a row the store never committed where it is now.
    with _damaged_store(db_path, move) as store:
        with pytest.raises(RecordDamagedError) as caught:
            store.get("secrets", "a")
        assert (caught.value.table, caught.value.key) == ("secrets", "a")
        assert store.get("public", "a") is None
        assert {(damage.table, damage.key) for damage in store.damaged_records} == {
            ("secrets", "a"),
            ("public", A.hex()),
        }


# Text that looks like an integer ("1", 1.0) is stored as an integer by the column's affinity,
# so only values that stay something else are listed besides wrong integers.
@pytest.mark.parametrize("version", [2, 0, -1, 2**53, 2**62, "one", 1.5, b"1"])
def test_changed_version_is_reported(db_path: Path, version: object) -> None:
    def change(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE records SET version = ? WHERE key = ?", (version, A))

    with _damaged_store(db_path, change) as store:
        with pytest.raises(RecordDamagedError):
            store.get("secrets", "a")
        with store.transaction() as tx:
            if version == 2:
                # A plausible version is simply superseded: put does not read the old value.
                assert tx.put("secrets", "a", b"new") == 3
            else:
                with pytest.raises(RecordDamagedError):
                    tx.put("secrets", "a", b"new")


@pytest.mark.parametrize("value", ["text instead of a blob", 42, b"", b"\x01short"])
def test_value_of_the_wrong_kind_is_reported(db_path: Path, value: object) -> None:
    def change(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE records SET value = ? WHERE key = ?", (value, A))

    with _damaged_store(db_path, change) as store, pytest.raises(RecordDamagedError):
        store.get("secrets", "a")


def test_damaged_record_can_be_deleted_and_rewritten(db_path: Path) -> None:
    def flip(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE records SET value = zeroblob(40) WHERE key = ?", (A,))

    with _damaged_store(db_path, flip) as store:
        with store.transaction() as tx:
            assert tx.delete("secrets", "a") is True
            assert tx.put("secrets", "a", b"fresh") == 1
        assert store.get("secrets", "a") == b"fresh"


# --- opening --------------------------------------------------------------------------------


def test_wrong_dmk_is_a_key_store_error(db_path: Path) -> None:
    _create(db_path).close()
    with pytest.raises(KeyStoreError, match="the database key does not open") as caught:
        SqliteStore.open(db_path, bytes(32))
    assert str(db_path) in str(caught.value)


def test_dmk_must_be_32_bytes(db_path: Path) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SqliteStore.create_atomically(db_path, b"short", _nothing)
    assert not db_path.exists()


def test_open_missing_file(db_path: Path) -> None:
    with pytest.raises(StoreError, match="no database") as caught:
        SqliteStore.open(db_path, DMK)
    assert str(db_path) in str(caught.value)
    assert not db_path.exists()


@pytest.mark.parametrize("content", [b"", b"hello", os.urandom(4096)])
def test_open_random_file(db_path: Path, content: bytes) -> None:
    db_path.write_bytes(content)
    with pytest.raises(StoreError, match="not an SQLite database") as caught:
        SqliteStore.open(db_path, DMK)
    assert str(db_path) in str(caught.value)
    assert db_path.read_bytes() == content


def test_open_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as caught:
        SqliteStore.open(tmp_path, DMK)
    assert str(tmp_path) in str(caught.value)


def test_open_foreign_sqlite_database_leaves_it_alone(db_path: Path) -> None:
    with _raw(db_path) as conn:
        conn.execute("CREATE TABLE records (x)")
    before = db_path.read_bytes()
    with pytest.raises(StoreError, match="not an OpenCAS database") as caught:
        SqliteStore.open(db_path, DMK)
    assert str(db_path) in str(caught.value)
    assert db_path.read_bytes() == before
    assert not db_path.with_name(db_path.name + "-wal").exists()


def test_open_database_with_our_id_but_no_schema(db_path: Path) -> None:
    with _raw(db_path) as conn:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    with pytest.raises(StoreError, match="not a complete OpenCAS database") as caught:
        SqliteStore.open(db_path, DMK)
    assert str(db_path) in str(caught.value)


def test_open_database_without_key_check_record(db_path: Path) -> None:
    _create(db_path).close()
    with _raw(db_path) as conn:
        conn.execute("DELETE FROM records WHERE tbl = '_meta'")
    with pytest.raises(StoreError, match="no key-check record"):
        SqliteStore.open(db_path, DMK)


def test_open_newer_schema_is_refused(db_path: Path) -> None:
    _create(db_path).close()
    with _raw(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer") as caught:
        SqliteStore.open(db_path, DMK)
    assert str(db_path) in str(caught.value)


def test_file_is_marked_and_in_wal_mode(store: SqliteStore, db_path: Path) -> None:
    with _raw(db_path) as conn:
        assert conn.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
    assert APPLICATION_ID.to_bytes(4, "big") == b"OCAS"
    assert meta["format"] == "opencas-store/2"
    assert "created_at" in meta


# --- atomic creation ------------------------------------------------------------------------


def test_create_populates_in_one_transaction(db_path: Path) -> None:
    def populate(tx: Transaction) -> None:
        assert tx.put("t", "k", b"v") == 1
        assert tx.put("t", "k", b"w") == 2

    with _create(db_path, populate) as store:
        assert store.get_versioned("t", "k") == (b"w", 2)
    assert _build_files(db_path) == []


def test_create_refuses_an_existing_path(db_path: Path) -> None:
    db_path.write_bytes(b"something precious")
    with pytest.raises(StoreError, match="already exists") as caught:
        _create(db_path)
    assert str(db_path) in str(caught.value)
    assert db_path.read_bytes() == b"something precious"
    assert _build_files(db_path) == []


def test_populate_raising_leaves_nothing(db_path: Path) -> None:
    def populate(tx: Transaction) -> None:
        tx.put("t", "k", b"v")
        raise Boom

    with pytest.raises(Boom):
        _create(db_path, populate)
    assert not db_path.exists()
    assert _build_files(db_path) == []
    assert list(db_path.parent.iterdir()) == []


def test_before_publish_runs_after_build_and_before_rename(db_path: Path) -> None:
    seen: list[list[str]] = []

    def before_publish() -> None:
        assert not db_path.exists()
        seen.append(_build_files(db_path))

    def populate(tx: Transaction) -> None:
        tx.put("t", "k", b"v")

    with SqliteStore.create_atomically(db_path, DMK, populate, before_publish) as store:
        assert store.get("t", "k") == b"v"
    # During the build there is only the database file: no journal, no WAL.
    assert len(seen) == 1
    assert len(seen[0]) == 1
    assert seen[0][0].startswith("cas.db.init-")
    assert _build_files(db_path) == []


def test_before_publish_raising_leaves_nothing(db_path: Path) -> None:
    def before_publish() -> None:
        raise Boom

    with pytest.raises(Boom):
        SqliteStore.create_atomically(db_path, DMK, _nothing, before_publish)
    assert not db_path.exists()
    assert _build_files(db_path) == []


def test_stale_build_files_are_removed(db_path: Path) -> None:
    stale = db_path.with_name(db_path.name + ".init-deadbeef")
    stale.write_bytes(b"left by a killed attempt")
    stale.with_name(stale.name + "-journal").write_bytes(b"journal")
    unrelated = db_path.with_name("other.db.init-cafe")
    unrelated.write_bytes(b"not ours")
    _create(db_path).close()
    assert _build_files(db_path) == ["other.db.init-cafe"]


_KILLED_CREATE = """
import sys
from pathlib import Path
from opencas.store import SqliteStore

def wait() -> None:
    print("ready", flush=True)
    sys.stdin.readline()

def populate(tx):
    tx.put("t", "k", b"v")
    if sys.argv[2] == "populate":
        wait()

def before_publish():
    if sys.argv[2] == "publish":
        wait()

SqliteStore.create_atomically(Path(sys.argv[1]), bytes(range(32)), populate, before_publish)
"""


@pytest.mark.parametrize("stage", ["populate", "publish"])
def test_kill_during_create_leaves_no_database(db_path: Path, stage: str) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _KILLED_CREATE, str(db_path), stage],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n"
            child.send_signal(signal.SIGKILL)
        finally:
            if child.poll() is None:
                child.kill()
    assert child.returncode == -signal.SIGKILL
    assert not db_path.exists()
    assert _build_files(db_path) != []
    with _create(db_path) as store:
        assert store.get("t", "k") is None
    assert _build_files(db_path) == []


def test_snapshot_sees_one_committed_state(tmp_path: Path) -> None:
    store = SqliteStore.create_atomically(tmp_path / "snap.db", bytes(range(32)), lambda txn: None)
    try:
        with store.transaction() as txn:
            txn.put("t", "a", b"1")
            txn.put("t", "b", b"1")
        with store.snapshot() as view:
            assert view.get("t", "a") == b"1"
            with store.transaction() as txn:  # a writer is not blocked by the snapshot
                txn.put("t", "a", b"2")
                txn.put("t", "b", b"2")
            assert view.get("t", "b") == b"1"  # ... and the snapshot does not see it
            assert view.list_keys("t") == ["a", "b"]
        assert store.get("t", "b") == b"2"
    finally:
        store.close()


# --- the commit state: rolled-back, mixed and deleted records ---------------------------------


def _two_sessions(tx: Transaction) -> None:
    tx.put("sessions", NAME, b"reader: alice, bob")
    tx.put("secrets", NAME, b"password-one")
    tx.put("sessions", "other", b"other session")


def _rows(path: Path, table: str, key: str) -> dict[str, tuple[object, ...]]:
    record_id = KEYS.record_id(table, key)
    with _raw(path) as conn:
        return {
            sql_table: conn.execute(
                f"SELECT * FROM {sql_table} WHERE tbl = ? AND key = ?",
                (table, record_id),
            ).fetchone()
            for sql_table in ("records", "record_index")
        }


def _put_back(path: Path, sql_table: str, row: tuple[object, ...]) -> None:
    marks = ", ".join("?" for _ in row)
    with _raw(path) as conn:
        conn.execute(f"INSERT OR REPLACE INTO {sql_table} VALUES ({marks})", row)


@pytest.fixture
def sessions_db(db_path: Path) -> Path:
    SqliteStore.create_atomically(db_path, DMK, _two_sessions).close()
    return db_path


def _revoke_and_rotate(path: Path) -> None:
    with SqliteStore.open(path, DMK) as store, store.transaction() as tx:
        tx.put("sessions", NAME, b"reader: alice")
        tx.put("secrets", NAME, b"password-two")


def test_every_changing_commit_advances_the_counter(sessions_db: Path) -> None:
    db_path = sessions_db
    with SqliteStore.open(db_path, DMK) as store:
        first = store.state()
        with store.transaction() as tx:
            tx.get("sessions", NAME)
        assert store.state() == first
        with store.transaction() as tx:
            tx.put("sessions", "new", b"x")
        second = store.state()
        with store.transaction() as tx:
            tx.delete("sessions", "new")
        third = store.state()
    assert (first.counter, second.counter, third.counter) == (1, 2, 3)
    assert len({first.digest, second.digest, third.digest}) == 3
    assert all(len(state.digest) == 64 for state in (first, second, third))


def test_an_older_row_copied_back_is_damaged_at_open_and_at_read(sessions_db: Path) -> None:
    db_path = sessions_db
    old_session = _rows(db_path, "sessions", NAME)["records"]
    old_secret = _rows(db_path, "secrets", NAME)["records"]
    _revoke_and_rotate(db_path)
    _put_back(db_path, "records", old_session)
    _put_back(db_path, "records", old_secret)
    with SqliteStore.open(db_path, DMK) as store:
        assert {(damage.table, damage.key) for damage in store.damaged_records} == {
            ("sessions", NAME),
            ("secrets", NAME),
        }
        for table in ("sessions", "secrets"):
            with pytest.raises(RecordDamagedError, match="older copy") as caught:
                store.get(table, NAME)
            assert (caught.value.table, caught.value.key) == (table, NAME)
        assert store.get("sessions", "other") == b"other session"


def test_an_older_row_with_its_older_index_entry_refuses_the_store(sessions_db: Path) -> None:
    db_path = sessions_db
    old = _rows(db_path, "secrets", NAME)
    _revoke_and_rotate(db_path)
    _put_back(db_path, "records", old["records"])
    _put_back(db_path, "record_index", old["record_index"])
    with pytest.raises(RecordDamagedError, match="does not add up") as caught:
        SqliteStore.open(db_path, DMK)
    assert (caught.value.table, caught.value.key) == ("_state", "commit")


def test_a_deleted_row_is_damaged(sessions_db: Path) -> None:
    db_path = sessions_db
    with _raw(db_path) as conn:
        conn.execute("DELETE FROM records WHERE key = ?", (KEYS.record_id("secrets", NAME),))
    with SqliteStore.open(db_path, DMK) as store:
        assert [(d.table, d.key) for d in store.damaged_records] == [("secrets", NAME)]
        with pytest.raises(RecordDamagedError, match="deleted"):
            store.get("secrets", NAME)
        # Deleting it for real, or writing it again, is a committed change like any other.
        with store.transaction() as tx:
            assert tx.delete("secrets", NAME) is True
        assert store.get("secrets", NAME) is None
    with SqliteStore.open(db_path, DMK) as store:
        assert store.damaged_records == ()


def test_a_row_deleted_with_its_index_entry_refuses_the_store(sessions_db: Path) -> None:
    db_path = sessions_db
    record_id = KEYS.record_id("secrets", NAME)
    with _raw(db_path) as conn:
        conn.execute("DELETE FROM records WHERE key = ?", (record_id,))
        conn.execute("DELETE FROM record_index WHERE key = ?", (record_id,))
    with pytest.raises(RecordDamagedError, match="does not add up"):
        SqliteStore.open(db_path, DMK)


def test_an_older_commit_state_refuses_the_store(sessions_db: Path) -> None:
    db_path = sessions_db
    with _raw(db_path) as conn:
        (old_state,) = conn.execute("SELECT value FROM commit_state").fetchone()
    _revoke_and_rotate(db_path)
    with _raw(db_path) as conn:
        conn.execute("UPDATE commit_state SET value = ?", (old_state,))
    with pytest.raises(RecordDamagedError, match="_state/commit"):
        SqliteStore.open(db_path, DMK)


def test_no_name_is_stored_in_clear(tmp_path: Path) -> None:
    path = tmp_path / "cas.db"
    store = SqliteStore.create_atomically(path, DMK, _two_sessions)
    with store.transaction() as tx:
        tx.put("sessions", "second-Distinctive-Name", b"x")
    files = [path, path.with_name(path.name + "-wal")]
    raw = b"".join(file.read_bytes() for file in files if file.exists())
    store.close()
    raw += path.read_bytes()
    for name in (NAME, "second-Distinctive-Name", "password-one"):
        assert name.encode() not in raw
    with SqliteStore.open(path, DMK) as reopened:
        assert reopened.list_keys("sessions") == sorted([NAME, "other", "second-Distinctive-Name"])


def test_a_store_of_the_first_format_is_refused_clearly(sessions_db: Path) -> None:
    db_path = sessions_db
    with _raw(db_path) as conn:
        conn.execute("PRAGMA user_version = 1")
    with pytest.raises(StoreError, match="older cas") as caught:
        SqliteStore.open(db_path, DMK)
    assert str(db_path) in str(caught.value)


def test_digest_is_the_xor_of_tags_so_a_change_undoes_exactly() -> None:
    entry = IndexEntry("k", 1, envelope_sha256(b"v"))
    tag = KEYS.tag("t", entry)
    state = INITIAL_STATE.advanced(tag).advanced(tag)
    assert state == CommitState(2, INITIAL_STATE.digest)
    assert xor(tag, tag) == INITIAL_STATE.digest
    assert KEYS.commitment(state) != KEYS.commitment(CommitState(1, INITIAL_STATE.digest))


def test_an_index_entry_opens_only_for_its_own_id() -> None:
    entry = IndexEntry("k", 3, envelope_sha256(b"v"))
    record_id = KEYS.record_id("t", "k")
    sealed = KEYS.seal_entry("t", record_id, entry)
    assert KEYS.open_entry("t", record_id, sealed) == entry
    with pytest.raises(RecordDamagedError):
        KEYS.open_entry("t", KEYS.record_id("t", "other"), sealed)
    with pytest.raises(RecordDamagedError):
        KEYS.open_entry("u", record_id, sealed)
    assert check_record("t", "k", entry, 3, b"v") == entry
    with pytest.raises(RecordDamagedError, match="older copy"):
        check_record("t", "k", entry, 2, b"v")
    with pytest.raises(RecordDamagedError, match="not the one"):
        check_record("t", "k", entry, 3, b"w")


# --- schema version 2, converted on open ----------------------------------------------------


def _many_records(tx: Transaction) -> None:
    for number in range(300):
        tx.put("sessions", f"s-{number:03}", f"session {number}".encode() * 50)
        tx.put("secrets", f"s-{number:03}", _secret_value(number))
    tx.put("sessions", "s-000", b"second version")


def _secret_value(number: int) -> bytes:
    return number.to_bytes(4, "big") * 500


def _schema_of_records(path: Path) -> tuple[int, str, list[str]]:
    with _raw(path) as conn:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        (table,) = conn.execute(
            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'records'"
        ).fetchone()
        indexes = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'records' "
                "AND sql IS NOT NULL"
            )
        ]
    return version, table, indexes


def test_a_new_store_keeps_records_in_a_rowid_table_with_a_unique_index(db_path: Path) -> None:
    _create(db_path).close()
    version, table, indexes = _schema_of_records(db_path)
    assert version == SCHEMA_VERSION == 3
    assert "WITHOUT ROWID" not in table
    assert indexes == ["records_by_key"]
    with _raw(db_path) as conn, pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        conn.execute("INSERT INTO records SELECT tbl, key, version, value FROM records LIMIT 1")


def _convert(store: SqliteStore) -> bool:
    with store.transaction() as tx:
        return upgrade_tables(tx)


def test_a_store_of_schema_2_opens_as_it_is_and_converts_keeping_every_record(
    db_path: Path,
) -> None:
    with SqliteStore.create_atomically(db_path, DMK, _many_records) as created:
        state = created.state()
        with created.snapshot() as view:
            before = sorted(view.every_record())
        assert not _convert(created)
    rewrite_as_sqlite_schema_2(db_path)
    assert _schema_of_records(db_path)[0] == 2

    with SqliteStore.open(db_path, DMK) as store:
        assert store.damaged_records == ()
        # Read and written as it is: the same SQL serves both schemas.
        assert store.get_versioned("sessions", "s-000") == (b"second version", 2)
        with store.transaction() as tx:
            assert tx.put("sessions", "written-before", b"x") == 1
        assert _schema_of_records(db_path)[0] == 2
        assert _convert(store)
        assert not _convert(store)
        with _raw(db_path) as conn:
            # Compacted: the old table's pages are not left behind as free pages.
            assert conn.execute("PRAGMA freelist_count").fetchone() == (0,)
            # The copy gave the rows new rowids: a rollover's walk stored before begins again.
            assert conn.execute(
                "SELECT value FROM meta WHERE name = 'rowid_numbering'"
            ).fetchone() == ("1",)
        with store.snapshot() as view:
            records = sorted(view.every_record())
        assert records == sorted([*before, ("sessions", "written-before", 1, b"x")])
        assert store.state().counter == state.counter + 1
        with store.transaction() as tx:
            assert tx.put("sessions", "s-000", b"third") == 3
            assert tx.delete("secrets", "s-299")
    version, table, indexes = _schema_of_records(db_path)
    assert (version, "WITHOUT ROWID" in table, indexes) == (3, False, ["records_by_key"])
    with SqliteStore.open(db_path, DMK) as reopened:
        assert reopened.damaged_records == ()
        assert reopened.get("sessions", "s-000") == b"third"
        assert reopened.get("secrets", "s-299") is None
        assert reopened.get("secrets", "s-298") == _secret_value(298)


def test_a_failed_conversion_leaves_schema_2_whole_and_a_later_one_converts(
    db_path: Path,
) -> None:
    SqliteStore.create_atomically(db_path, DMK, _many_records).close()
    rewrite_as_sqlite_schema_2(db_path)
    with _raw(db_path) as conn:
        # Makes the conversion's first statement fail, inside its transaction.
        conn.execute("CREATE TABLE records_v3 (obstacle INTEGER)")

    def write_and_convert(store: SqliteStore) -> None:
        with store.transaction() as tx:
            tx.put("sessions", "lost", b"with the conversion")
            upgrade_tables(tx)

    with SqliteStore.open(db_path, DMK) as store:
        with pytest.raises(StoreError, match="converting the tables") as caught:
            write_and_convert(store)
        assert str(db_path) in str(caught.value)
        assert store.get("sessions", "lost") is None
    version, table, _ = _schema_of_records(db_path)
    assert (version, "WITHOUT ROWID" in table) == (2, True)
    with _raw(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM records").fetchone() == (601,)
        conn.execute("DROP TABLE records_v3")
    with SqliteStore.open(db_path, DMK) as store:
        assert _convert(store)
        assert store.damaged_records == ()
        assert store.get("secrets", "s-007") == _secret_value(7)
    assert _schema_of_records(db_path)[0] == 3


# Opens the store and converts it so that the process is killed (SIGKILL, no clean-up) right
# after statement ``argv[2]`` of the conversion, inside its transaction.
_KILLED_CONVERSION = """
import os, signal, sys
from pathlib import Path
from opencas.store import sqlite as backend
from opencas.store.records import upgrade_tables

statements = backend._MIGRATIONS[3]
at = int(sys.argv[2])
backend._MIGRATIONS[3] = statements[:at] + ("SELECT die()",) + statements[at:]
connect = backend._connect


def connect_and_arm(path):
    conn = connect(path)
    conn.create_function("die", 0, lambda: os.kill(os.getpid(), signal.SIGKILL))
    return conn


backend._connect = connect_and_arm
store = backend.SqliteStore.open(Path(sys.argv[1]), bytes(range(32)))
with store.transaction() as tx:
    upgrade_tables(tx)
"""


@pytest.mark.parametrize("after_statement", [1, 2, 3, 4, 5])
def test_kill_during_conversion_leaves_schema_2_and_a_later_one_converts(
    db_path: Path, after_statement: int
) -> None:
    SqliteStore.create_atomically(db_path, DMK, _many_records).close()
    rewrite_as_sqlite_schema_2(db_path)
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_CONVERSION, str(db_path), str(after_statement)],
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL
    version, table, _ = _schema_of_records(db_path)
    assert (version, "WITHOUT ROWID" in table) == (2, True)
    with SqliteStore.open(db_path, DMK) as store:
        assert store.damaged_records == ()
        assert store.get("secrets", "s-123") == _secret_value(123)
        assert _convert(store)
        assert len(store.list_keys("sessions")) == 300
    assert _schema_of_records(db_path)[0] == 3


def test_a_wrong_key_does_not_convert_a_store_of_schema_2(db_path: Path) -> None:
    SqliteStore.create_atomically(db_path, DMK, _many_records).close()
    rewrite_as_sqlite_schema_2(db_path)
    with pytest.raises(KeyStoreError):
        SqliteStore.open(db_path, bytes(32))
    assert _schema_of_records(db_path)[0] == 2
