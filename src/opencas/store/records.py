"""The encrypted record layer every backend shares, over a small interface of raw rows.

A backend (SQLite, PostgreSQL) stores four kinds of row and nothing else it understands:

- a *record row*: ``(table, record id) -> (version, envelope)``;
- an *index row*: ``(table, record id) -> sealed index entry``;
- the *state row*: the sealed commit state;
- plaintext metadata (format, creation time), which is the backend's own business.

Everything that makes those rows trustworthy is here, written once: the encryption of values
(per-table keys from the database master key, bound to table, key and version), record ids,
index entries and the commit state of :mod:`opencas.store.state`, the key check, and the check of
every record when a store is opened. A backend only moves bytes (:class:`Rows`,
:class:`WritableRows`) and says how its errors read (:meth:`Rows.failing`); its rows come from
storage anyone with access to it may have edited, so every value read from them is type-checked
here before it is trusted.

During a *key rollover* (:func:`rekey_page`) a store is opened with two database keys: the
current one, which seals everything written, and the previous one, which still opens the records
not yet moved. Each record is under exactly one of them at any commit: a record is moved (its old
row deleted, its new row written, both tags exchanged in the commit digest) in one transaction,
so no record is ever readable by neither key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from opencas.crypto.envelope import derive_key, open_envelope, record_aad, seal
from opencas.errors import KeyStoreError, RecordDamagedError, StoreError
from opencas.store.base import Transaction
from opencas.store.state import (
    EMPTY_DIGEST,
    INITIAL_STATE,
    MAX_VERSION,
    STATE_KEY,
    STATE_TABLE,
    CommitState,
    IndexEntry,
    StateKeys,
    check_record,
    envelope_sha256,
    is_valid_version,
    xor,
)

DMK_SIZE = 32
META_TABLE = "_meta"
CHECK_KEY = "dmk-check"
CHECK_PLAINTEXT = b"opencas database key check v1"


def _never() -> bool:
    return False


@dataclass(frozen=True)
class RowidPosition:
    """A key rollover's walk in storage order (SQLite): past the row ``after``, up to the row
    ``end``, the largest when the walk began, in the rows' ``numbering`` then. Rows written
    since then are sealed under the new key, so the walk need not reach past ``end``; once the
    rows are numbered anew, the position means nothing and the walk begins again."""

    after: int
    end: int
    numbering: int = 0


@dataclass(frozen=True)
class IndexPosition:
    """A key rollover's walk in index order: past ``(table, record_id)``. SQLite's walk ends
    with the index rows that have no record row; PostgreSQL walks its whole index this way."""

    table: str
    record_id: bytes


#: Where a key rollover's walk stands; each backend walks with one of these.
WalkPosition = RowidPosition | IndexPosition


def position_text(position: WalkPosition) -> str:
    """``position`` as the rollover's progress record keeps it: ``rowid:<after>:<end>`` (the
    first numbering), ``rowid:<after>:<end>:<numbering>`` or ``index:<record id in
    hex>:<table>``."""
    if isinstance(position, RowidPosition):
        numbering = f":{position.numbering}" if position.numbering else ""
        return f"rowid:{position.after}:{position.end}{numbering}"
    return f"index:{position.record_id.hex()}:{position.table}"


def parse_position(text: str) -> WalkPosition:
    """The position :func:`position_text` wrote as ``text``; :class:`StoreError` when it is
    not one."""
    kind, _, rest = text.partition(":")
    try:
        if kind == "rowid":
            after, end, *numbering = rest.split(":")
            if len(numbering) <= 1:
                return RowidPosition(int(after), int(end), int(numbering[0]) if numbering else 0)
        if kind == "index":
            record_id, table = rest.split(":", 1)
            return IndexPosition(table, bytes.fromhex(record_id))
    except ValueError:
        pass
    raise StoreError(f"{text!r} is not the position of a key rollover")


class Rows(Protocol):
    """Raw rows as one backend connection sees them (in a transaction, a snapshot or not)."""

    @property
    def name(self) -> str:
        """The database as messages name it (a path, or a URL without its password)."""
        ...

    def failing(self, action: str) -> contextlib.AbstractContextManager[None]:
        """A block whose backend errors become :class:`StoreError` naming the database and
        ``action``."""
        ...

    def record(self, table: str, record_id: bytes) -> tuple[object, object] | None:
        """The ``(version, envelope)`` stored for ``record_id``, or ``None``."""
        ...

    def index_entry(self, table: str, record_id: bytes) -> object | None:
        """The sealed index entry of ``record_id``, or ``None``."""
        ...

    def stored(
        self, table: str, record_id: bytes
    ) -> tuple[tuple[object, object] | None, object | None]:
        """What :meth:`record` and :meth:`index_entry` give for ``record_id``, read together
        (on a database server: in one round trip)."""
        ...

    def index_entries(self, table: str | None) -> Iterator[tuple[object, object, object]]:
        """Every ``(table, record id, sealed entry)`` of ``table`` (of every table: ``None``)."""
        ...

    def records(self) -> Iterator[tuple[object, object, object, object]]:
        """Every ``(table, record id, version, envelope)``."""
        ...

    def state(self) -> object | None:
        """The sealed commit state, or ``None`` when there is no state row."""
        ...

    def rekey_rows(self, after: WalkPosition | None, limit: int) -> list[WalkedRow]:
        """Up to ``limit`` rows a key rollover visits next, after ``after`` (from the start:
        ``None``), each with the position after it. Fewer than ``limit`` only at the end.

        A walk begun (``after`` ``None``) once the store seals under the new key reaches every
        row sealed under the previous key that is still there when its page comes, and every
        index row without a record row; the backend chooses the order and the position type.
        """
        ...

    def index_size(self) -> int:
        """How many index rows there are."""
        ...


class WalkedRow(NamedTuple):
    """One row of a key rollover's walk, read in the walk's own statement so that moving it
    needs no second lookup: the sealed index entry is ``None`` for a record row without one,
    ``row`` (version, envelope) ``None`` for an index row without a record row."""

    position: WalkPosition
    table: object
    record_id: object
    sealed: object | None
    row: tuple[object, object] | None


class WritableRows(Rows, Protocol):
    """Raw rows inside a write transaction, which the backend runs one at a time."""

    def write_record(
        self, table: str, record_id: bytes, version: int, envelope: bytes, entry: bytes
    ) -> None:
        """Insert or replace the record row and the index row of ``record_id``."""
        ...

    def delete_record(self, table: str, record_id: bytes) -> bool:
        """Remove the record row and the index row of ``record_id``; whether a record row was
        there."""
        ...

    def write_state(self, sealed: bytes) -> None:
        """Insert or replace the state row."""
        ...

    def upgrade_tables(self) -> bool:
        """Convert the backend's tables from an older schema version to this code's, inside
        this transaction; whether there was anything to convert."""
        ...


class RecordKeys:
    """The keys of one database master key: per-table value keys and the state keys."""

    def __init__(self, dmk: bytes) -> None:
        if len(dmk) != DMK_SIZE:
            raise ValueError(f"database master key must be {DMK_SIZE} bytes, got {len(dmk)}")
        self._dmk = dmk
        self._table_keys: dict[str, bytes] = {}
        self.state_keys = StateKeys(dmk)

    def __repr__(self) -> str:
        return "<RecordKeys>"

    def _table_key(self, table: str) -> bytes:
        key = self._table_keys.get(table)
        if key is None:
            # Two threads may derive the same key at once; both get the same bytes, so the race
            # is harmless and a lock would only cost time.
            key = derive_key(self._dmk, "store/table/" + table)
            self._table_keys[table] = key
        return key

    def seal(self, table: str, key: str, version: int, value: bytes) -> bytes:
        """The stored envelope of ``value`` at ``table``/``key``, version ``version``."""
        return seal(self._table_key(table), value, record_aad(table, key, version))

    def open(self, table: str, key: str, version: object, envelope: object) -> bytes:
        """The plaintext of a stored row; :class:`RecordDamagedError` unless it authenticates."""
        if not is_valid_version(version):
            raise RecordDamagedError(
                table, key, f"its version is not an integer in 1..{MAX_VERSION}"
            )
        if not isinstance(envelope, bytes):
            raise RecordDamagedError(table, key, "its value is not a blob")
        try:
            return open_envelope(self._table_key(table), envelope, record_aad(table, key, version))
        except ValueError:
            raise RecordDamagedError(table, key) from None


class RecordCipher:
    """Seals record values under the current database key; opens them under it or, while a
    key rollover runs, under the previous one."""

    def __init__(self, dmk: bytes, previous: bytes | None = None) -> None:
        self.current = RecordKeys(dmk)
        self.previous = None if previous is None else RecordKeys(previous)
        self.state_keys = self.current.state_keys
        #: The keys to try, the current one first.
        self.epochs: tuple[RecordKeys, ...] = (
            (self.current,) if self.previous is None else (self.current, self.previous)
        )

    def __repr__(self) -> str:
        return "<RecordCipher>"

    def seal(self, table: str, key: str, version: int, value: bytes) -> bytes:
        """The stored envelope of ``value`` under the current key."""
        return self.current.seal(table, key, version, value)

    def open_entry(
        self, table: str, record_id: bytes, sealed: object
    ) -> tuple[IndexEntry, RecordKeys]:
        """The index entry of ``record_id`` and the keys it was sealed under;
        :class:`RecordDamagedError` (the current key's) when none opens it."""
        failure: RecordDamagedError | None = None
        for keys in self.epochs:
            try:
                return keys.state_keys.open_entry(table, record_id, sealed), keys
            except RecordDamagedError as exc:
                failure = failure or exc
        assert failure is not None
        raise failure

    def open_state(self, sealed: object) -> CommitState:
        """The commit state, sealed under either key (the state moves to the current key at
        the first commit after a rollover started)."""
        failure: RecordDamagedError | None = None
        for keys in self.epochs:
            try:
                return keys.state_keys.open_state(sealed)
            except RecordDamagedError as exc:
                failure = failure or exc
        assert failure is not None
        raise failure


def check_table(table: str) -> None:
    """``ValueError`` unless ``table`` is a name callers may use (not empty, no leading ``_``)."""
    if not table or table.startswith("_"):
        raise ValueError(f"table name {table!r} is empty or reserved (names starting with '_')")


@dataclass(frozen=True)
class _Located:
    """Where a record is stored: its id, the keys it is under, its row and index entry."""

    record_id: bytes
    keys: RecordKeys
    row: tuple[object, object] | None
    entry: IndexEntry | None

    @property
    def found(self) -> bool:
        return self.row is not None or self.entry is not None


def _locate(rows: Rows, cipher: RecordCipher, table: str, key: str) -> _Located:
    """The record ``table``/``key`` under whichever key holds it (the current one when none)."""
    first: _Located | None = None
    for keys in cipher.epochs:
        record_id = keys.state_keys.record_id(table, key)
        row, sealed = rows.stored(table, record_id)
        opened = None if sealed is None else cipher.open_entry(table, record_id, sealed)
        located = (
            _Located(record_id, keys, row, None)
            if opened is None
            else _Located(record_id, opened[1], row, opened[0])
        )
        if located.found:
            return located
        first = first or located
    assert first is not None
    return first


def read_record(rows: Rows, cipher: RecordCipher, table: str, key: str) -> tuple[bytes, int] | None:
    """The value and version of ``table``/``key``, checked against its index entry; ``None``
    when neither row is there; :class:`RecordDamagedError` when they disagree."""
    with rows.failing(f"reading {table}/{key}"):
        located = _locate(rows, cipher, table, key)
    if not located.found:
        return None
    version, envelope = (None, None) if located.row is None else located.row
    committed = check_record(table, key, located.entry, version, envelope)
    return located.keys.open(table, key, version, envelope), committed.version


def read_keys(rows: Rows, cipher: RecordCipher, table: str, prefix: str) -> list[str]:
    """The keys of ``table`` that start with ``prefix``, sorted by code point."""
    keys: list[str] = []
    with rows.failing(f"listing {table}"):
        for _, record_id, sealed in rows.index_entries(table):
            if not isinstance(record_id, bytes):
                raise RecordDamagedError(table, str(record_id), "its id is not a blob")
            key = cipher.open_entry(table, record_id, sealed)[0].key
            if key.startswith(prefix):
                keys.append(key)
    # Python orders strings by code point, the order the contract promises.
    return sorted(keys)


def read_state(rows: Rows, cipher: RecordCipher) -> CommitState:
    """The committed state; :class:`RecordDamagedError` naming ``_state/commit`` when it is
    missing or does not open."""
    with rows.failing("reading the commit state"):
        sealed = rows.state()
    if sealed is None:
        raise RecordDamagedError(STATE_TABLE, STATE_KEY, "the commit state is missing")
    return cipher.open_state(sealed)


class RecordReader:
    """Reads through one connection's rows: a snapshot, or a transaction's view."""

    def __init__(self, rows: Rows, cipher: RecordCipher) -> None:
        self._rows = rows
        self._cipher = cipher

    def _view(self) -> Rows:
        return self._rows

    def get(self, table: str, key: str) -> bytes | None:
        """The value of ``table``/``key``, or ``None``."""
        found = self.get_versioned(table, key)
        return None if found is None else found[0]

    def get_versioned(self, table: str, key: str) -> tuple[bytes, int] | None:
        """The value and version of ``table``/``key``, or ``None``.

        Raises :class:`RecordDamagedError` when the stored value does not authenticate.
        """
        check_table(table)
        return read_record(self._view(), self._cipher, table, key)

    def list_keys(self, table: str, prefix: str = "") -> list[str]:
        """The keys of ``table`` starting with ``prefix``, sorted by code point."""
        check_table(table)
        return read_keys(self._view(), self._cipher, table, prefix)

    def commit_state(self) -> CommitState:
        """The commit state this view sees."""
        return read_state(self._view(), self._cipher)

    def every_record(self) -> Iterator[tuple[str, str, int, bytes]]:
        """Every record callers wrote (not the store's own), as ``(table, key, version,
        value)``, each checked against its index entry; in the order of the index.

        Raises :class:`RecordDamagedError` at the first record that does not check.
        """
        rows = self._view()
        with rows.failing("reading every record"):
            entries = list(rows.index_entries(None))
        for table, record_id, sealed in entries:
            if not isinstance(table, str) or not isinstance(record_id, bytes):
                raise RecordDamagedError(
                    STATE_TABLE, STATE_KEY, "the record index holds a row of the wrong shape"
                )
            if table.startswith("_"):
                continue
            entry, keys = self._cipher.open_entry(table, record_id, sealed)
            with rows.failing(f"reading {table}/{entry.key}"):
                row = rows.record(table, record_id)
            version, envelope = (None, None) if row is None else row
            check_record(table, entry.key, entry, version, envelope)
            yield table, entry.key, entry.version, keys.open(table, entry.key, version, envelope)


class RecordTransaction(RecordReader):
    """A write transaction over a backend's writable rows (see
    :class:`opencas.store.base.Transaction`).

    Valid only inside the ``with`` block that produced it; the backend calls :meth:`finish`
    before it commits and :meth:`abandon` when the block raises.
    """

    def __init__(self, rows: WritableRows, cipher: RecordCipher) -> None:
        super().__init__(rows, cipher)
        self._writable = rows
        self._active = True
        self._changed = False
        self._delta = EMPTY_DIGEST

    def _view(self) -> WritableRows:
        if not self._active:
            raise StoreError(f"a transaction on {self._writable.name} was used after it ended")
        return self._writable

    def _change(
        self, table: str, old: tuple[IndexEntry, RecordKeys] | None, new: IndexEntry | None
    ) -> None:
        # Each tag is made with the keys its entry is sealed under: the digest holds the tags
        # of both keys while a rollover runs.
        if old is not None:
            self._delta = xor(self._delta, old[1].state_keys.tag(table, old[0]))
        if new is not None:
            self._delta = xor(self._delta, self._cipher.state_keys.tag(table, new))
        self._changed = True

    def finish(self) -> None:
        """Write the commit state advanced by this transaction's changes, if it made any, and
        end the transaction object; the backend commits next."""
        rows = self._view()
        if self._changed:
            state = read_state(rows, self._cipher)
            with rows.failing("writing the commit state"):
                rows.write_state(self._cipher.state_keys.seal_state(state.advanced(self._delta)))
        self._active = False

    def abandon(self) -> None:
        """End the transaction object without writing anything more; the backend rolls back."""
        self._active = False

    def initialise(self) -> None:
        """Write the state of an empty store and its key-check record into a new database, whose
        schema the backend has just created in this transaction."""
        rows = self._view()
        with rows.failing("writing the initial commit state"):
            rows.write_state(self._cipher.state_keys.seal_state(INITIAL_STATE))
        self.put_reserved(META_TABLE, CHECK_KEY, CHECK_PLAINTEXT)

    def continue_counter(self, counter: int) -> None:
        """Make a new store's commit counter continue from ``counter``: its creating
        transaction commits as ``counter + 1``. For a store restored from a snapshot taken at
        commit ``counter``, so that clients see its state move on, never back.

        Raises :class:`StoreError` unless this store has committed nothing yet.
        """
        rows = self._view()
        state = read_state(rows, self._cipher)
        if state != INITIAL_STATE or not 0 <= counter < MAX_VERSION:
            raise StoreError(
                f"the commit counter of {rows.name} can only be set in a new, empty store"
            )
        with rows.failing("writing the commit state"):
            rows.write_state(self._cipher.state_keys.seal_state(CommitState(counter, EMPTY_DIGEST)))

    def restore_record(self, table: str, key: str, version: int, value: bytes) -> None:
        """Insert ``table``/``key`` at ``version`` (a record read from a snapshot, which keeps
        the version it had). Raises :class:`StoreError` when it exists already or the version
        is not in 1..2^53-2."""
        check_table(table)
        rows = self._view()
        if not is_valid_version(version) or not 1 <= version < MAX_VERSION:
            raise StoreError(f"{table}/{key} cannot be restored at version {version!r}")
        with rows.failing(f"writing {table}/{key}"):
            located = _locate(rows, self._cipher, table, key)
            if located.row is not None or located.entry is not None:
                raise StoreError(f"{table}/{key} is restored twice")
            self._write_current(table, key, version, value, located)

    def put(self, table: str, key: str, value: bytes) -> int:
        """Insert or replace ``table``/``key``; return its new version (1 on insert, else +1).

        The old value is not read, so a damaged record can be overwritten; a stored version that
        is not a valid integer, or an index entry that does not open, raises
        :class:`RecordDamagedError` (delete the record first).
        """
        check_table(table)
        return self.put_reserved(table, key, value)

    def put_reserved(self, table: str, key: str, value: bytes) -> int:
        """:meth:`put` without the check of the table name: for the store's own records."""
        rows = self._view()
        with rows.failing(f"writing {table}/{key}"):
            located = _locate(rows, self._cipher, table, key)
            row = located.row
            if row is None:
                version = 1
            elif is_valid_version(row[0]) and row[0] < MAX_VERSION:
                version = row[0] + 1
            else:
                raise RecordDamagedError(
                    table, key, f"its version is not an integer in 1..{MAX_VERSION - 1}"
                )
            self._write_current(table, key, version, value, located)
        return version

    def _write_current(
        self,
        table: str,
        key: str,
        version: int,
        value: bytes,
        located: _Located,
        *,
        old_row_deleted: bool = False,
    ) -> IndexEntry:
        """Write ``value`` under the current key, replacing the record where ``located``
        found it (under the previous key, at its old id, whose rows are deleted here unless
        ``old_row_deleted`` says the caller did it), and account for it in the digest."""
        rows = self._view()
        current = self._cipher.current
        record_id = current.state_keys.record_id(table, key)
        if located.found and located.record_id != record_id and not old_row_deleted:
            rows.delete_record(table, located.record_id)
        envelope = current.seal(table, key, version, value)
        new = IndexEntry(key, version, envelope_sha256(envelope))
        sealed = current.state_keys.seal_entry(table, record_id, new)
        rows.write_record(table, record_id, version, envelope, sealed)
        old = None if located.entry is None else (located.entry, located.keys)
        self._change(table, old, new)
        return new

    def delete(self, table: str, key: str) -> bool:
        """Remove ``table``/``key``; return whether a record was there.

        Raises :class:`RecordDamagedError` when its index entry does not open.
        """
        check_table(table)
        rows = self._view()
        with rows.failing(f"deleting {table}/{key}"):
            located = _locate(rows, self._cipher, table, key)
            deleted = rows.delete_record(table, located.record_id) or located.entry is not None
        if located.entry is not None:
            self._change(table, (located.entry, located.keys), None)
        return deleted

    def rekey_page(
        self,
        after: str | None,
        limit: int,
        out_of_time: Callable[[], bool] = _never,
    ) -> RekeyedPage:
        """Move the records sealed under the previous key among the next ``limit`` rows of the
        backend's walk (:meth:`Rows.rekey_rows`) after the position ``after`` (as
        :func:`position_text` writes it; from the start: ``None``) to the current key, keeping
        their versions.

        Rows already under the current key (moved before, or written since the rollover
        started) are passed over. A record that is damaged (it opens under neither key, its
        row is not the committed one, its record row has no index row or its index row no
        record row) is left where it is and counted: it was unreadable before and stays so.
        ``out_of_time`` is asked before each row but the first: once it says so, the page ends
        there (so every page makes progress) and its ``after`` says where the next one starts.
        Raises :class:`StoreError` when no rollover runs or ``after`` is no position.
        """
        previous = self._cipher.previous
        rows = self._view()
        if previous is None:
            raise StoreError(f"no key rollover is running on {rows.name}")
        damaged = seen = 0
        last: WalkPosition | None = None
        moving: list[_Moving] = []
        with rows.failing("re-encrypting records under the new database key"):
            page = rows.rekey_rows(None if after is None else parse_position(after), limit)
            for position, table, record_id, sealed, row in page:
                if seen and out_of_time():
                    break
                seen += 1
                last = position
                if not isinstance(table, str) or not isinstance(record_id, bytes):
                    damaged += 1
                    continue
                try:
                    opened = self._open_previous(table, record_id, sealed, row, previous)
                except RecordDamagedError:
                    damaged += 1
                    continue
                if opened is not None:
                    moving.append(opened)
            # The old rows go in the walk's order (on SQLite the order they lie in the table,
            # one pass over a table far larger than the page cache). The new ids are keyed
            # hashes under the new key, scattered over the id-ordered B-trees: written in their
            # own order, the batch walks each of them once from left to right instead of
            # jumping to a random leaf (and its path of interior pages) per record.
            for item in moving:
                rows.delete_record(item.table, item.located.record_id)
            moving.sort(key=lambda item: (item.table, item.new_id))
            for item in moving:
                self._write_current(
                    item.table,
                    item.entry.key,
                    item.entry.version,
                    item.value,
                    item.located,
                    old_row_deleted=True,
                )
        # Every row was visited only when the walk gave fewer than asked for, and the loop went
        # through all of them.
        finished = seen < limit and len(page) == seen
        # Only where the page ended is kept; ``after`` stands when it visited nothing.
        following = after if last is None else position_text(last)
        return RekeyedPage(None if finished else following, len(moving), damaged, seen)

    def upgrade_tables(self) -> bool:
        """Convert the backend's tables to this code's schema if they are older (committed with
        this transaction); whether they were."""
        rows = self._view()
        with rows.failing("converting the tables to the current schema"):
            return rows.upgrade_tables()

    def record_count(self) -> int:
        """How many records (the store's own included) this transaction sees."""
        rows = self._view()
        with rows.failing("counting the records"):
            return rows.index_size()

    def _open_previous(
        self,
        table: str,
        record_id: bytes,
        sealed: object,
        row: tuple[object, object] | None,
        previous: RecordKeys,
    ) -> _Moving | None:
        """The record at ``record_id`` (its ``row`` as the walk read it) opened under the
        previous key, with the id it moves to; ``None`` when it is under the current key
        already. :class:`RecordDamagedError` when it does not check."""
        entry, keys = self._cipher.open_entry(table, record_id, sealed)
        if keys is not previous:
            return None
        version, envelope = (None, None) if row is None else row
        check_record(table, entry.key, entry, version, envelope)
        value = previous.open(table, entry.key, version, envelope)
        new_id = self._cipher.current.state_keys.record_id(table, entry.key)
        return _Moving(table, new_id, entry, value, _Located(record_id, previous, row, entry))


@dataclass(frozen=True)
class _Moving:
    """A record a rollover batch moves: its table, its id under the current key, its value, and
    its committed index entry, and where it is now (under the previous key)."""

    table: str
    new_id: bytes
    entry: IndexEntry
    value: bytes
    located: _Located


@dataclass(frozen=True)
class RekeyedPage:
    """What one :meth:`RecordTransaction.rekey_page` did: where the next page starts (``None``:
    every row was visited), how many records it moved, how many it left because they are
    damaged, and how many index rows it visited."""

    after: str | None
    moved: int
    damaged: int
    visited: int


def rekey_page(
    txn: Transaction,
    after: str | None,
    limit: int,
    out_of_time: Callable[[], bool] = _never,
) -> RekeyedPage:
    """:meth:`RecordTransaction.rekey_page` on a transaction of any backend of this module."""
    if not isinstance(txn, RecordTransaction):
        raise TypeError(f"{type(txn).__name__} is not a transaction of the record layer")
    return txn.rekey_page(after, limit, out_of_time)


def upgrade_tables(txn: Transaction) -> bool:
    """:meth:`RecordTransaction.upgrade_tables` on a transaction of any backend of this module."""
    if not isinstance(txn, RecordTransaction):
        raise TypeError(f"{type(txn).__name__} is not a transaction of the record layer")
    return txn.upgrade_tables()


def index_size(txn: Transaction) -> int:
    """How many records (and store records) the store holds, seen from ``txn``."""
    if not isinstance(txn, RecordTransaction):
        raise TypeError(f"{type(txn).__name__} is not a transaction of the record layer")
    return txn.record_count()


def check_key(rows: Rows, cipher: RecordCipher) -> None:
    """:class:`KeyStoreError` unless the database key opens the key-check record;
    :class:`StoreError` when there is none."""
    wrong_key = KeyStoreError(
        f"the database key does not open {rows.name} "
        "(it is another database's key, or the key-check record was damaged)"
    )
    # Read without the index: its entries open only under the right key, which is the question.
    with rows.failing("reading the key-check record"):
        row = rows.record(META_TABLE, cipher.state_keys.record_id(META_TABLE, CHECK_KEY))
    if row is None:
        raise StoreError(f"{rows.name} is not a complete OpenCAS database (no key-check record)")
    for keys in cipher.epochs:
        # While a rollover runs, the check record moves to the new key in its first commit.
        with contextlib.suppress(RecordDamagedError):
            if keys.open(META_TABLE, CHECK_KEY, row[0], row[1]) == CHECK_PLAINTEXT:
                return
    raise wrong_key


def _committed_index(rows: Rows, cipher: RecordCipher) -> dict[tuple[str, bytes], IndexEntry]:
    """Every index entry, once their tags are shown to add up to the commit state."""
    state = read_state(rows, cipher)
    entries: dict[tuple[str, bytes], IndexEntry] = {}
    digest = EMPTY_DIGEST
    with rows.failing("checking the record index"):
        for table, record_id, sealed in rows.index_entries(None):
            if not isinstance(table, str) or not isinstance(record_id, bytes):
                raise RecordDamagedError(
                    STATE_TABLE, STATE_KEY, "the record index holds a row of the wrong shape"
                )
            entry, keys = cipher.open_entry(table, record_id, sealed)
            digest = xor(digest, keys.state_keys.tag(table, entry))
            entries[table, record_id] = entry
    if digest != state.digest:
        raise RecordDamagedError(
            STATE_TABLE,
            STATE_KEY,
            f"the record index does not add up to commit {state.counter}: records were removed "
            "or rolled back together with their index entries",
        )
    return entries


def check_records(rows: Rows, cipher: RecordCipher) -> tuple[RecordDamagedError, ...]:
    """Check every record against the committed index (run inside one snapshot); the records
    that fail, named. :class:`RecordDamagedError` naming ``_state/commit`` when the index itself
    does not add up to the commit state."""
    entries = _committed_index(rows, cipher)
    damaged: list[RecordDamagedError] = []
    with rows.failing("checking the records"):
        for table, record_id, version, envelope in rows.records():
            entry = entries.pop((table, record_id), None)  # type: ignore[arg-type]
            shown = entry.key if entry is not None else _shown_id(record_id)
            try:
                check_record(str(table), shown, entry, version, envelope)
            except RecordDamagedError as exc:
                damaged.append(exc)
    for (table, _), entry in sorted(entries.items()):
        damaged.append(
            RecordDamagedError(table, entry.key, "the record was deleted behind the store's back")
        )
    return tuple(damaged)


def _shown_id(record_id: object) -> str:
    return record_id.hex() if isinstance(record_id, bytes) else str(record_id)
