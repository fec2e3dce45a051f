"""Moving every record of a store to a new database key, on SQLite and PostgreSQL.

The store is opened with the new key and the previous one; pages of records move while other
writes go on, and at every commit each record must open (under one of the two keys), the commit
state must add up, and after the last page the old key must open nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from opencas.errors import KeyStoreError, StoreError
from opencas.store import PostgresStore, SqliteStore, Store, Transaction
from opencas.store.records import (
    IndexPosition,
    RekeyedPage,
    RowidPosition,
    index_size,
    parse_position,
    position_text,
    rekey_page,
)
from opencas.store.sqlite import renumber_rows
from opencas.store.state import StateKeys

OLD = bytes(range(32))
NEW = bytes(range(100, 132))


class _Backend:
    def __init__(self, kind: str, where: str) -> None:
        self.kind = kind
        self.where = where

    def create(self) -> Store:
        def populate(tx: Transaction) -> None:
            for number in range(57):
                tx.put("sessions", f"s{number:03}", f"session {number}".encode())
                tx.put("session-secrets", f"s{number:03}", f"secret {number}".encode())
            tx.put("cas", "state", b"the state")

        if self.kind == "sqlite":
            return SqliteStore.create_atomically(Path(self.where), OLD, populate)
        return PostgresStore.create(self.where, OLD, populate)

    def open(self, dmk: bytes, previous: bytes | None = None) -> Store:
        if self.kind == "sqlite":
            return SqliteStore.open(Path(self.where), dmk, previous)
        return PostgresStore.open(self.where, dmk, previous_dmk=previous)

    def raw(self, sql: str, parameters: tuple[object, ...] = ()) -> list[Any]:
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.where, isolation_level=None)
            try:
                return conn.execute(sql, parameters).fetchall()
            finally:
                conn.close()
        with psycopg.connect(self.where, autocommit=True) as pg:
            cursor = pg.execute(sql.replace("?", "%s"), parameters)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description is not None else []


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> _Backend:
    if request.param == "sqlite":
        return _Backend("sqlite", str(tmp_path / "cas.db"))
    return _Backend("postgres", request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(backend: _Backend) -> Iterator[Store]:
    opened = backend.create()
    yield opened
    opened.close()


def _expected() -> dict[tuple[str, str], bytes]:
    values = {("cas", "state"): b"the state"}
    for number in range(57):
        values["sessions", f"s{number:03}"] = f"session {number}".encode()
        values["session-secrets", f"s{number:03}"] = f"secret {number}".encode()
    return values


def _everything(store: Store) -> dict[tuple[str, str], bytes]:
    found: dict[tuple[str, str], bytes] = {}
    with store.snapshot() as reader:
        for table in ("cas", "sessions", "session-secrets"):
            for key in reader.list_keys(table):
                value = reader.get(table, key)
                assert value is not None
                found[table, key] = value
    return found


def _page(store: Store, after: str | None, limit: int) -> RekeyedPage:
    with store.transaction() as tx:
        return rekey_page(tx, after, limit)


def test_every_record_moves_while_writes_go_on_and_the_old_key_opens_nothing_after(
    backend: _Backend, store: Store
) -> None:
    expected = _expected()
    store.use_keys(NEW, OLD)
    after: str | None = None
    moved = 0
    number = 0
    while True:
        page = _page(store, after, 10)
        moved += page.moved
        # A write between pages: an update of a record not moved yet (it moves with the write),
        # a new record, and a deletion.
        with store.transaction() as tx:
            tx.put("sessions", f"s{56 - number:03}", b"updated")
            tx.put("sessions", f"new{number}", b"new")
            tx.delete("session-secrets", f"s{number:03}")
        expected["sessions", f"s{56 - number:03}"] = b"updated"
        expected["sessions", f"new{number}"] = b"new"
        expected.pop(("session-secrets", f"s{number:03}"), None)
        number += 1
        # A fresh open with both keys at this commit: every record opens, none is damaged.
        reopened = backend.open(NEW, OLD)
        try:
            assert reopened.damaged_records == ()
            assert _everything(reopened) == expected
        finally:
            reopened.close()
        if page.after is None:
            break
        after = page.after
    assert page.damaged == 0
    assert 0 < moved <= 57 * 2 + 2
    _old_key_opens_nothing(backend, store, expected)
    with pytest.raises(KeyStoreError, match="does not open"):
        backend.open(OLD)


def test_a_rollover_interrupted_between_pages_resumes_after_a_new_open(
    backend: _Backend, store: Store
) -> None:
    store.use_keys(NEW, OLD)
    first = _page(store, None, 25)
    assert first.moved > 0
    assert first.after is not None
    store.close()
    # What a crash leaves: a store opened again with both keys from the key store.
    reopened = backend.open(NEW, OLD)
    try:
        assert _everything(reopened) == _expected()
        after = first.after
        while after is not None:
            after = _page(reopened, after, 25).after
        reopened.use_keys(NEW, None)
        assert _everything(reopened) == _expected()
    finally:
        reopened.close()
    backend.open(NEW).close()


def test_a_damaged_record_is_counted_and_left_where_it_is(backend: _Backend, store: Store) -> None:
    record_id = StateKeys(OLD).record_id("sessions", "s007")
    backend.raw(
        "UPDATE records SET value = ? WHERE tbl = ? AND key = ?",
        (b"\x01" + bytes(40), "sessions", record_id),
    )
    store.use_keys(NEW, OLD)
    page = _page(store, None, 1000)
    assert page.after is None
    assert page.damaged == 1
    assert page.moved == len(_expected()) - 1 + 1  # every other record, and the key check


def test_pages_need_a_running_rollover_and_count_the_records(store: Store) -> None:
    with store.transaction() as tx:
        assert index_size(tx) == len(_expected()) + 1  # and the key-check record
    with pytest.raises(StoreError, match="no key rollover is running"):
        _page(store, None, 10)


def test_a_page_out_of_time_ends_after_one_row_and_the_next_carries_on(
    backend: _Backend, store: Store
) -> None:
    store.use_keys(NEW, OLD)
    asked: list[int] = []

    def out_of_time() -> bool:
        asked.append(1)
        return True

    pages: list[RekeyedPage] = []
    after: str | None = None
    while not pages or after is not None:
        with store.transaction() as tx:
            page = rekey_page(tx, after, 1000, out_of_time)
        pages.append(page)
        after = page.after
        # Every page stops after the one row it has to visit; the last finds no other.
        assert page.visited == 1
    # Asked once per page, before its second row; the last page had none.
    assert len(asked) == len(pages) - 1
    assert sum(page.moved for page in pages) == len(_expected()) + 1  # and the key check
    store.use_keys(NEW, None)
    assert _everything(store) == _expected()


def test_a_page_with_time_left_visits_every_row_it_asked_for(store: Store) -> None:
    store.use_keys(NEW, OLD)
    with store.transaction() as tx:
        page = rekey_page(tx, None, 40, lambda: False)
    assert (page.visited, page.moved) == (40, 40)
    assert page.after is not None


def _walk(store: Store, after: str | None, limit: int) -> tuple[int, int]:
    """Pages from ``after`` to the end of the walk: the records moved and the damaged."""
    moved = damaged = 0
    while True:
        page = _page(store, after, limit)
        moved, damaged = moved + page.moved, damaged + page.damaged
        if page.after is None:
            return moved, damaged
        after = page.after


def _old_key_opens_nothing(backend: _Backend, store: Store, expected: dict[Any, bytes]) -> None:
    """Every record of ``expected`` opens under the new key alone, none is damaged, and no
    row is left under a record id of the old key."""
    store.use_keys(NEW, None)
    assert _everything(store) == expected
    reopened = backend.open(NEW)
    try:
        assert reopened.damaged_records == ()
        assert _everything(reopened) == expected
    finally:
        reopened.close()
    old_ids = {StateKeys(OLD).record_id(table, key) for table, key in _expected()}
    for table in ("records", "record_index"):
        assert not old_ids & {bytes(row[0]) for row in backend.raw(f"SELECT key FROM {table}")}


def test_rows_written_behind_the_walk_and_ahead_of_it_leave_no_record_under_the_old_key(
    backend: _Backend, store: Store
) -> None:
    expected = _expected()
    store.use_keys(NEW, OLD)
    first = _page(store, None, 20)
    assert (first.moved, first.after is not None) == (20, True)
    with store.transaction() as tx:
        for number in range(30):
            # New records, appended after the end of the walk.
            tx.put("sessions", f"during{number:02}", b"new")
            expected["sessions", f"during{number:02}"] = b"new"
        # An update in place of a record the first page moved, and the move of one it has not
        # reached yet, which the walk then meets under the new key.
        for table, key in list(_expected())[:2] + list(_expected())[-2:]:
            tx.put(table, key, b"updated")
            expected[table, key] = b"updated"
    moved, damaged = _walk(store, first.after, 7)
    assert damaged == 0
    # Each record under the old key moved once: by a page, or by its update (up to four).
    assert len(_expected()) + 1 - 4 <= first.moved + moved <= len(_expected()) + 1
    _old_key_opens_nothing(backend, store, expected)


def _last_row(backend: _Backend) -> tuple[int, str, str]:
    """The rowid, table and key of the record row with the largest rowid (under the old key)."""
    ((rowid, table, record_id),) = backend.raw(
        "SELECT rowid, tbl, key FROM records ORDER BY rowid DESC LIMIT 1"
    )
    (key,) = [
        k for t, k in _expected() if t == table and StateKeys(OLD).record_id(t, k) == record_id
    ]
    return int(rowid), str(table), key


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_last_row_moved_first_lets_its_rowid_be_reused_and_nothing_is_skipped(
    backend: _Backend, store: Store
) -> None:
    expected = _expected()
    end, table, key = _last_row(backend)
    store.use_keys(NEW, OLD)
    with store.transaction() as tx:
        # Its update deletes the largest rowid, and SQLite gives the new row that one again.
        tx.put(table, key, b"moved by its update")
        first = rekey_page(tx, None, 3)
    expected[table, key] = b"moved by its update"
    new_id = StateKeys(NEW).record_id(table, key)
    assert backend.raw("SELECT rowid FROM records WHERE key = ?", (new_id,)) == [(end,)]
    assert parse_position(first.after or "") == RowidPosition(3, end)
    moved, damaged = _walk(store, first.after, 10)
    assert (first.moved + moved, damaged) == (len(_expected()) + 1 - 1, 0)
    _old_key_opens_nothing(backend, store, expected)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_walk_that_begins_after_rows_were_deleted_and_written_reaches_each_old_row(
    backend: _Backend, store: Store
) -> None:
    expected = _expected()
    store.use_keys(NEW, OLD)
    # Between the start and the first page: the record with the largest rowid deleted,
    # then new ones written (one of them takes that rowid), all under the new key.
    _, table, key = _last_row(backend)
    with store.transaction() as tx:
        tx.delete(table, key)
        tx.put("sessions", "after-the-start", b"new")
    del expected[table, key]
    expected["sessions", "after-the-start"] = b"new"
    moved, damaged = _walk(store, None, 9)
    assert (moved, damaged) == (len(_expected()) + 1 - 1, 0)
    _old_key_opens_nothing(backend, store, expected)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_walk_stored_before_the_rows_were_numbered_anew_begins_again(
    backend: _Backend, store: Store
) -> None:
    expected = _expected()
    store.use_keys(NEW, OLD)
    first = _page(store, None, 20)
    before = parse_position(first.after or "")
    assert isinstance(before, RowidPosition)
    assert (first.moved, before.numbering) == (20, 0)
    # What a migration that copies ``records`` does, in one committed transaction: the rows
    # not yet moved get the smallest rowids, which the stored position has passed.
    conn = sqlite3.connect(backend.where, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("CREATE TABLE copied AS SELECT tbl, key, version, value FROM records")
        conn.execute("DELETE FROM records")
        conn.execute(
            "INSERT INTO records (rowid, tbl, key, version, value) "
            "SELECT row_number() OVER (ORDER BY c.rowid > ?, c.rowid), tbl, key, version, value "
            "FROM copied AS c",
            (before.end,),
        )
        conn.execute("DROP TABLE copied")
        renumber_rows(conn)
        conn.execute("COMMIT")
    finally:
        conn.close()
    second = _page(store, first.after, 5)
    after = parse_position(second.after or "")
    assert isinstance(after, RowidPosition)
    # Begun again from the first row, in the new numbering, and kept as text with it.
    assert (after.after, after.numbering, second.moved) == (5, 1, 5)
    assert (second.after or "").endswith(":1")
    moved, damaged = _walk(store, second.after, 9)
    assert (first.moved + second.moved + moved, damaged) == (len(_expected()) + 1, 0)
    _old_key_opens_nothing(backend, store, expected)


def test_an_index_row_without_its_record_is_counted_as_damaged(
    backend: _Backend, store: Store
) -> None:
    record_id = StateKeys(OLD).record_id("sessions", "s007")
    backend.raw("DELETE FROM records WHERE tbl = ? AND key = ?", ("sessions", record_id))
    store.use_keys(NEW, OLD)
    moved, damaged = _walk(store, None, 10)
    assert (moved, damaged) == (len(_expected()) - 1 + 1, 1)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_on_sqlite_a_record_row_without_its_index_row_is_counted_as_damaged(
    backend: _Backend, store: Store
) -> None:
    record_id = StateKeys(OLD).record_id("sessions", "s007")
    backend.raw("DELETE FROM record_index WHERE tbl = ? AND key = ?", ("sessions", record_id))
    store.use_keys(NEW, OLD)
    moved, damaged = _walk(store, None, 10)
    assert (moved, damaged) == (len(_expected()) - 1 + 1, 1)


def test_a_walk_position_is_kept_as_text_and_nothing_else_is_one() -> None:
    for position in (
        RowidPosition(-1, 7),
        RowidPosition(3, 9, 2),
        IndexPosition("a:b", b"\x00\xff"),
    ):
        assert parse_position(position_text(position)) == position
    # The first numbering is written as the build before numberings wrote every position.
    assert position_text(RowidPosition(3, 9)) == "rowid:3:9"
    for text in (
        "",
        "rowid:1",
        "rowid:a:2",
        "rowid:1:2:3:4",
        "rowid:1:2:x",
        "index:zz:t",
        "sessions:00",
    ):
        with pytest.raises(StoreError, match="not the position"):
            parse_position(text)
