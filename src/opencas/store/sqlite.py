"""The embedded state store: one SQLite file, every value encrypted and bound to its place.

Layout::

    meta(name TEXT, value TEXT)                                  plaintext: format, created_at
    records(tbl TEXT, key BLOB, version INTEGER, value BLOB)     PRIMARY KEY (tbl, key)
    record_index(tbl TEXT, key BLOB, value BLOB)                 PRIMARY KEY (tbl, key)
    commit_state(name TEXT, value BLOB)                          one row, "state"

``key`` is the record id (:meth:`StateKeys.record_id`, a keyed hash of table and key), ``value``
is ``seal(derive_key(dmk, "store/table/" + tbl), plaintext, record_aad(tbl, key, version))`` over
the real key, so a value edited, or moved to another table, key or version, does not decrypt and
is reported as damaged. ``record_index`` and ``commit_state`` hold the authenticated state of
:mod:`opencas.store.state`: a row older than its index entry, or missing, is damaged, and the
index as a whole is checked against the commit state when the store is opened. The record
``_meta``/``dmk-check`` lets :meth:`SqliteStore.open` tell a wrong database key apart from
damage. The file carries ``PRAGMA application_id`` "OCAS" and ``PRAGMA user_version`` = schema
version.

Concurrency: one writer connection serialised by a lock (writes are ``BEGIN IMMEDIATE``
transactions), and a pool of read-only connections for reads outside transactions. In WAL mode
those reads see the last committed state and never wait for a running write transaction.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from opencas.crypto.envelope import derive_key, open_envelope, record_aad, seal
from opencas.errors import KeyStoreError, RecordDamagedError, StoreError
from opencas.store.base import StoreState, Transaction
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

APPLICATION_ID = int.from_bytes(b"OCAS", "big")
SCHEMA_VERSION = 2
STORE_FORMAT = "opencas-store/2"
BUSY_TIMEOUT_SECONDS = 10.0
DMK_SIZE = 32
# The database and the files SQLite keeps next to it are readable by their owner only.
DATABASE_FILE_MODE = 0o600

_META_TABLE = "_meta"
_CHECK_KEY = "dmk-check"
_CHECK_PLAINTEXT = b"opencas database key check v1"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_SIZE = 100
_APPLICATION_ID_OFFSET = 68

_SCHEMA = (
    "CREATE TABLE meta (name TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE records (tbl TEXT NOT NULL, key BLOB NOT NULL, version INTEGER NOT NULL, "
    "value BLOB NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID",
    "CREATE TABLE record_index (tbl TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, "
    "PRIMARY KEY (tbl, key)) WITHOUT ROWID",
    "CREATE TABLE commit_state (name TEXT NOT NULL PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
)
_TABLES = {"meta", "records", "record_index", "commit_state"}


def _do_nothing() -> None:
    return None


class _RecordCipher:
    """Seals and opens record values with per-table keys derived from the DMK."""

    def __init__(self, dmk: bytes) -> None:
        if len(dmk) != DMK_SIZE:
            raise ValueError(f"database master key must be {DMK_SIZE} bytes, got {len(dmk)}")
        self._dmk = dmk
        self._table_keys: dict[str, bytes] = {}
        self.state_keys = StateKeys(dmk)

    def __repr__(self) -> str:
        return "<_RecordCipher>"

    def _table_key(self, table: str) -> bytes:
        key = self._table_keys.get(table)
        if key is None:
            # Two threads may derive the same key at once; both get the same bytes, so the race
            # is harmless and a lock would only cost time.
            key = derive_key(self._dmk, "store/table/" + table)
            self._table_keys[table] = key
        return key

    def seal(self, table: str, key: str, version: int, value: bytes) -> bytes:
        return seal(self._table_key(table), value, record_aad(table, key, version))

    def open(self, table: str, key: str, version: object, envelope: object) -> bytes:
        # The row comes from a file anyone with disk access may have edited, so even its types
        # are checked before they are trusted.
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


@contextlib.contextmanager
def _sqlite_errors(path: Path, action: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"database {path}: {action} failed: {exc}") from exc


def _check_table(table: str) -> None:
    if not table or table.startswith("_"):
        raise ValueError(f"table name {table!r} is empty or reserved (names starting with '_')")


def _fetch_one(conn: sqlite3.Connection, sql: str, parameters: tuple[object, ...]) -> Any:
    # Closing the cursor ends the statement at once; a statement left open would pin an old
    # snapshot on a pooled read connection.
    with contextlib.closing(conn.execute(sql, parameters)) as cursor:
        return cursor.fetchone()


def _index_entry(
    conn: sqlite3.Connection, cipher: _RecordCipher, table: str, record_id: bytes
) -> IndexEntry | None:
    row = _fetch_one(
        conn, "SELECT value FROM record_index WHERE tbl = ? AND key = ?", (table, record_id)
    )
    return None if row is None else cipher.state_keys.open_entry(table, record_id, row[0])


def _read_record(
    conn: sqlite3.Connection, cipher: _RecordCipher, path: Path, table: str, key: str
) -> tuple[bytes, int] | None:
    record_id = cipher.state_keys.record_id(table, key)
    with _sqlite_errors(path, f"reading {table}/{key}"):
        row = _fetch_one(
            conn,
            "SELECT version, value FROM records WHERE tbl = ? AND key = ?",
            (table, record_id),
        )
        entry = _index_entry(conn, cipher, table, record_id)
    if row is None and entry is None:
        return None
    version, envelope = (None, None) if row is None else row
    committed = check_record(table, key, entry, version, envelope)
    return cipher.open(table, key, version, envelope), committed.version


def _read_keys(
    conn: sqlite3.Connection, cipher: _RecordCipher, path: Path, table: str, prefix: str
) -> list[str]:
    keys: list[str] = []
    with (
        _sqlite_errors(path, f"listing {table}"),
        contextlib.closing(
            conn.execute("SELECT key, value FROM record_index WHERE tbl = ?", (table,))
        ) as cursor,
    ):
        for record_id, sealed in cursor:
            if not isinstance(record_id, bytes):
                raise RecordDamagedError(table, str(record_id), "its id is not a blob")
            key = cipher.state_keys.open_entry(table, record_id, sealed).key
            if key.startswith(prefix):
                keys.append(key)
    # Python orders strings by code point, the order the contract promises.
    return sorted(keys)


def _read_state(conn: sqlite3.Connection, cipher: _RecordCipher, path: Path) -> CommitState:
    with _sqlite_errors(path, "reading the commit state"):
        row = _fetch_one(conn, "SELECT value FROM commit_state WHERE name = 'state'", ())
    if row is None:
        raise RecordDamagedError(STATE_TABLE, STATE_KEY, "the commit state is missing")
    return cipher.state_keys.open_state(row[0])


def _write_state(conn: sqlite3.Connection, cipher: _RecordCipher, state: CommitState) -> None:
    conn.execute(
        "INSERT INTO commit_state (name, value) VALUES ('state', ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (cipher.state_keys.seal_state(state),),
    )


class SqliteTransaction:
    """A write transaction on the writer connection (see :class:`opencas.store.base.Transaction`).

    Valid only inside the ``with`` block that produced it.
    """

    def __init__(self, conn: sqlite3.Connection, cipher: _RecordCipher, path: Path) -> None:
        self._conn = conn
        self._cipher = cipher
        self._path = path
        self._active = True
        self._changed = False
        self._delta = EMPTY_DIGEST

    def _connection(self) -> sqlite3.Connection:
        if not self._active:
            raise StoreError(f"a transaction on {self._path} was used after it ended")
        return self._conn

    def _finish(self) -> None:
        self._active = False

    def _change(self, table: str, old: IndexEntry | None, new: IndexEntry | None) -> None:
        keys = self._cipher.state_keys
        for entry in (old, new):
            if entry is not None:
                self._delta = xor(self._delta, keys.tag(table, entry))
        self._changed = True

    def _advance_state(self) -> None:
        """Write the commit state advanced by this transaction's changes, if it made any."""
        if not self._changed:
            return
        state = _read_state(self._conn, self._cipher, self._path)
        with _sqlite_errors(self._path, "writing the commit state"):
            _write_state(self._conn, self._cipher, state.advanced(self._delta))

    def get(self, table: str, key: str) -> bytes | None:
        """The value of ``table``/``key`` as this transaction sees it, or ``None``."""
        found = self.get_versioned(table, key)
        return None if found is None else found[0]

    def get_versioned(self, table: str, key: str) -> tuple[bytes, int] | None:
        """Value and version of ``table``/``key`` as this transaction sees it, or ``None``.

        Raises :class:`RecordDamagedError` when the stored value does not authenticate.
        """
        _check_table(table)
        return _read_record(self._connection(), self._cipher, self._path, table, key)

    def put(self, table: str, key: str, value: bytes) -> int:
        """Insert or replace ``table``/``key``; return its new version (1 on insert, else +1).

        The old value is not read, so a damaged record can be overwritten; a stored version that
        is not a valid integer, or an index entry that does not open, raises
        :class:`RecordDamagedError` (delete the record first).
        """
        _check_table(table)
        return self._put(table, key, value)

    def _put(self, table: str, key: str, value: bytes) -> int:
        conn = self._connection()
        record_id = self._cipher.state_keys.record_id(table, key)
        with _sqlite_errors(self._path, f"writing {table}/{key}"):
            row = _fetch_one(
                conn, "SELECT version FROM records WHERE tbl = ? AND key = ?", (table, record_id)
            )
            if row is None:
                version = 1
            elif is_valid_version(row[0]) and row[0] < MAX_VERSION:
                version = row[0] + 1
            else:
                raise RecordDamagedError(
                    table, key, f"its version is not an integer in 1..{MAX_VERSION - 1}"
                )
            old = _index_entry(conn, self._cipher, table, record_id)
            envelope = self._cipher.seal(table, key, version, value)
            new = IndexEntry(key, version, envelope_sha256(envelope))
            conn.execute(
                "INSERT INTO records (tbl, key, version, value) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (tbl, key) DO UPDATE SET version = excluded.version, "
                "value = excluded.value",
                (table, record_id, version, envelope),
            )
            conn.execute(
                "INSERT INTO record_index (tbl, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (tbl, key) DO UPDATE SET value = excluded.value",
                (table, record_id, self._cipher.state_keys.seal_entry(table, record_id, new)),
            )
        self._change(table, old, new)
        return version

    def delete(self, table: str, key: str) -> bool:
        """Remove ``table``/``key``; return whether a record was there.

        Raises :class:`RecordDamagedError` when its index entry does not open.
        """
        _check_table(table)
        conn = self._connection()
        record_id = self._cipher.state_keys.record_id(table, key)
        with _sqlite_errors(self._path, f"deleting {table}/{key}"):
            old = _index_entry(conn, self._cipher, table, record_id)
            cursor = conn.execute(
                "DELETE FROM records WHERE tbl = ? AND key = ?", (table, record_id)
            )
            deleted = cursor.rowcount > 0
            cursor.close()
            conn.execute("DELETE FROM record_index WHERE tbl = ? AND key = ?", (table, record_id))
            deleted = deleted or old is not None
        if old is not None:
            self._change(table, old, None)
        return deleted

    def list_keys(self, table: str, prefix: str = "") -> list[str]:
        """The keys of ``table`` starting with ``prefix``, sorted, as this transaction sees them."""
        _check_table(table)
        return _read_keys(self._connection(), self._cipher, self._path, table, prefix)


def _rollback_quietly(conn: sqlite3.Connection) -> None:
    # Called while another exception is on its way out; that one is the error worth reporting.
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


@contextlib.contextmanager
def _transaction_on(
    conn: sqlite3.Connection, cipher: _RecordCipher, path: Path
) -> Iterator[SqliteTransaction]:
    with _sqlite_errors(path, "starting a transaction"):
        conn.execute("BEGIN IMMEDIATE")
    tx = SqliteTransaction(conn, cipher, path)
    try:
        yield tx
        tx._advance_state()
    except BaseException:
        tx._finish()
        _rollback_quietly(conn)
        raise
    tx._finish()
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback_quietly(conn)
        raise StoreError(f"database {path}: commit failed: {exc}") from exc


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_reader(path: Path) -> sqlite3.Connection:
    with _sqlite_errors(path, "opening a read connection"):
        conn = _connect(path)
        try:
            conn.execute("PRAGMA query_only = ON")
        except BaseException:
            conn.close()
            raise
    return conn


def _check_header(path: Path) -> None:
    try:
        with path.open("rb") as file:
            header = file.read(_HEADER_SIZE)
    except FileNotFoundError:
        raise StoreError(f"there is no database at {path}") from None
    except OSError as exc:
        raise StoreError(f"cannot read database {path}: {exc.strerror or exc}") from exc
    if len(header) < _HEADER_SIZE or not header.startswith(_SQLITE_MAGIC):
        raise StoreError(f"{path} is not an SQLite database, so not an OpenCAS database")
    # Checked on the raw header so that a foreign database is refused before anything (such as
    # switching it to WAL) could change it.
    application_id = int.from_bytes(
        header[_APPLICATION_ID_OFFSET : _APPLICATION_ID_OFFSET + 4], "big"
    )
    if application_id != APPLICATION_ID:
        raise StoreError(f"{path} is an SQLite database but not an OpenCAS database")


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    with _sqlite_errors(path, "reading the schema"):
        (application_id,) = _fetch_one(conn, "PRAGMA application_id", ())
        (schema_version,) = _fetch_one(conn, "PRAGMA user_version", ())
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
        }
        if application_id != APPLICATION_ID:
            raise StoreError(f"{path} is an SQLite database but not an OpenCAS database")
        if schema_version > SCHEMA_VERSION:
            raise StoreError(
                f"database {path} has schema version {schema_version}, newer than this cas "
                f"supports ({SCHEMA_VERSION}); use a newer cas"
            )
        if schema_version == 1:
            raise StoreError(
                f"database {path} has schema version 1, written by an older cas; this cas reads "
                f"version {SCHEMA_VERSION} only (record keys are no longer stored in clear and "
                "every commit is authenticated), so create a new CAS for it"
            )
        if schema_version < 1 or not tables >= _TABLES:
            raise StoreError(f"{path} is not a complete OpenCAS database (its schema is missing)")
        row = _fetch_one(conn, "SELECT value FROM meta WHERE name = 'format'", ())
        if row is None or row[0] != STORE_FORMAT:
            raise StoreError(f"{path} is not a complete OpenCAS database (unknown format)")


def _enable_wal(conn: sqlite3.Connection, path: Path) -> None:
    with _sqlite_errors(path, "enabling write-ahead logging"):
        (mode,) = _fetch_one(conn, "PRAGMA journal_mode = WAL", ())
        if str(mode).lower() != "wal":
            raise StoreError(
                f"database {path} cannot use write-ahead logging (journal mode stays {mode})"
            )
        conn.execute("PRAGMA synchronous = FULL")


def _check_key(conn: sqlite3.Connection, cipher: _RecordCipher, path: Path) -> None:
    wrong_key = KeyStoreError(
        f"the database key does not open {path} "
        "(it is another database's key, or the key-check record was damaged)"
    )
    # Read without the index: its entries open only under the right key, which is the question.
    with _sqlite_errors(path, "reading the key-check record"):
        row = _fetch_one(
            conn,
            "SELECT version, value FROM records WHERE tbl = ? AND key = ?",
            (_META_TABLE, cipher.state_keys.record_id(_META_TABLE, _CHECK_KEY)),
        )
    if row is None:
        raise StoreError(f"{path} is not a complete OpenCAS database (no key-check record)")
    try:
        plaintext = cipher.open(_META_TABLE, _CHECK_KEY, row[0], row[1])
    except RecordDamagedError:
        raise wrong_key from None
    if plaintext != _CHECK_PLAINTEXT:
        raise wrong_key


def _committed_index(
    conn: sqlite3.Connection, cipher: _RecordCipher, path: Path
) -> dict[tuple[str, bytes], IndexEntry]:
    """Every index entry, once their tags are shown to add up to the commit state."""
    state = _read_state(conn, cipher, path)
    entries: dict[tuple[str, bytes], IndexEntry] = {}
    digest = EMPTY_DIGEST
    with (
        _sqlite_errors(path, "checking the record index"),
        contextlib.closing(conn.execute("SELECT tbl, key, value FROM record_index")) as cursor,
    ):
        for table, record_id, sealed in cursor:
            if not isinstance(table, str) or not isinstance(record_id, bytes):
                raise RecordDamagedError(
                    STATE_TABLE, STATE_KEY, "the record index holds a row of the wrong shape"
                )
            entry = cipher.state_keys.open_entry(table, record_id, sealed)
            digest = xor(digest, cipher.state_keys.tag(table, entry))
            entries[table, record_id] = entry
    if digest != state.digest:
        raise RecordDamagedError(
            STATE_TABLE,
            STATE_KEY,
            f"the record index does not add up to commit {state.counter}: records were removed "
            "or rolled back together with their index entries",
        )
    return entries


def _check_records(
    conn: sqlite3.Connection, cipher: _RecordCipher, path: Path
) -> tuple[RecordDamagedError, ...]:
    """Check every record against the committed index; the records that fail, named."""
    entries = _committed_index(conn, cipher, path)
    damaged: list[RecordDamagedError] = []
    with (
        _sqlite_errors(path, "checking the records"),
        contextlib.closing(conn.execute("SELECT tbl, key, version, value FROM records")) as cursor,
    ):
        for table, record_id, version, envelope in cursor:
            entry = entries.pop((table, record_id), None)
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


def _fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _build_prefix(path: Path) -> str:
    return path.name + ".init-"


def _remove_build(building: Path) -> None:
    for leftover in (building, building.with_name(building.name + "-journal")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def _remove_stale_builds(path: Path) -> None:
    prefix = _build_prefix(path)
    for entry in path.parent.iterdir():
        if entry.name.startswith(prefix):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def _create_private_file(path: Path) -> None:
    # SQLite creates a database's -journal, -wal and -shm files with the database file's own
    # mode, so creating the file 0600 here (whatever the umask) keeps all of them private.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, DATABASE_FILE_MODE)
    try:
        os.fchmod(fd, DATABASE_FILE_MODE)
    finally:
        os.close(fd)


def _build(
    building: Path, path: Path, cipher: _RecordCipher, populate: Callable[[Transaction], None]
) -> None:
    _create_private_file(building)
    with _sqlite_errors(path, "creating the new database file"):
        conn = _connect(building)
    try:
        with _sqlite_errors(path, "preparing the new database"):
            # A rollback journal, not WAL, while building: after the build the file alone is
            # the whole database, so renaming it publishes everything.
            conn.execute("PRAGMA journal_mode = DELETE")
            conn.execute("PRAGMA synchronous = FULL")
        with _transaction_on(conn, cipher, path) as tx:
            with _sqlite_errors(path, "creating the schema"):
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.executemany(
                    "INSERT INTO meta (name, value) VALUES (?, ?)",
                    [
                        ("format", STORE_FORMAT),
                        ("created_at", datetime.now(UTC).isoformat(timespec="seconds")),
                    ],
                )
                _write_state(conn, cipher, INITIAL_STATE)
            tx._put(_META_TABLE, _CHECK_KEY, _CHECK_PLAINTEXT)
            populate(tx)
    finally:
        conn.close()


class SqliteSnapshot:
    """Reads from one snapshot of the database (see :meth:`SqliteStore.snapshot`)."""

    def __init__(self, conn: sqlite3.Connection, cipher: _RecordCipher, path: Path) -> None:
        self._conn = conn
        self._cipher = cipher
        self._path = path

    def get(self, table: str, key: str) -> bytes | None:
        """The value of ``table``/``key`` in this snapshot, or ``None``."""
        found = self.get_versioned(table, key)
        return None if found is None else found[0]

    def get_versioned(self, table: str, key: str) -> tuple[bytes, int] | None:
        """The value and version of ``table``/``key`` in this snapshot, or ``None``."""
        _check_table(table)
        return _read_record(self._conn, self._cipher, self._path, table, key)

    def list_keys(self, table: str, prefix: str = "") -> list[str]:
        """The keys of ``table`` starting with ``prefix`` in this snapshot, sorted."""
        _check_table(table)
        return _read_keys(self._conn, self._cipher, self._path, table, prefix)


class SqliteStore:
    """The SQLite implementation of :class:`opencas.store.base.Store`; safe to share by threads.

    Obtain one with :meth:`open` or :meth:`create_atomically`. The caller should hold the
    :class:`~opencas.store.lock.DatabaseLock` of the database while the store is open.
    """

    def __init__(
        self,
        path: Path,
        cipher: _RecordCipher,
        writer: sqlite3.Connection,
        damaged: tuple[RecordDamagedError, ...] = (),
    ) -> None:
        self._path = path
        self._cipher = cipher
        self._writer = writer
        self._damaged = damaged
        self._write_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._idle_readers: list[sqlite3.Connection] = []
        self._closed = False
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"SqliteStore({str(self._path)!r})"

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def damaged_records(self) -> tuple[RecordDamagedError, ...]:
        """The records found damaged when the store was opened (reading one raises)."""
        return self._damaged

    @staticmethod
    def check_file(path: Path) -> None:
        """Raise :class:`StoreError` naming ``path`` unless it looks like an OpenCAS database.

        Reads only the file header, so it needs no key and changes nothing.
        """
        _check_header(path)

    @classmethod
    def open(cls, path: Path, dmk: bytes) -> SqliteStore:
        """Open the existing OpenCAS database at ``path`` with the database master key ``dmk``.

        Raises :class:`StoreError`, naming ``path``, when there is no file, when it is not an
        SQLite database, when it is an SQLite database but not a (complete) OpenCAS one, or when
        its schema is newer or older than this code; a foreign file is not modified. Raises
        :class:`KeyStoreError` when ``dmk`` is not this database's key, and ``ValueError``
        unless ``dmk`` is 32 bytes.

        Every record is checked against the committed state: the ones that fail are listed in
        :attr:`damaged_records` (and reading one raises). When the record index itself does not
        add up to the commit state, nothing can be trusted and :class:`RecordDamagedError`
        naming ``_state/commit`` is raised.
        """
        cipher = _RecordCipher(dmk)
        _check_header(path)
        with _sqlite_errors(path, "opening"):
            writer = _connect(path)
        try:
            _check_schema(writer, path)
            _enable_wal(writer, path)
            _check_key(writer, cipher, path)
            with _sqlite_errors(path, "starting the check of every record"):
                writer.execute("BEGIN")
            try:
                damaged = _check_records(writer, cipher, path)
            finally:
                _rollback_quietly(writer)
        except BaseException:
            writer.close()
            raise
        return cls(path, cipher, writer, damaged)

    @classmethod
    def create_atomically(
        cls,
        path: Path,
        dmk: bytes,
        populate: Callable[[Transaction], None],
        before_publish: Callable[[], None] = _do_nothing,
    ) -> SqliteStore:
        """Create a new database at ``path`` holding what ``populate`` writes, then open it.

        The database is built in ``<name>.init-<random>`` next to ``path``, ``populate`` runs in
        its single transaction, the file is made durable, ``before_publish`` runs (the caller
        writes the sealed key store there), and only then is the file renamed onto ``path``.
        So a crash at any moment leaves either no database at ``path`` or a complete one.
        Build files left by an interrupted earlier attempt are removed first; the caller should
        hold the database lock so that no other process is building at the same time.

        Raises :class:`StoreError` when ``path`` already exists or the file cannot be built.
        When ``populate`` or ``before_publish`` raises, nothing is left behind and the exception
        propagates unchanged.
        """
        cipher = _RecordCipher(dmk)
        if path.exists() or path.is_symlink():
            raise StoreError(f"database {path} already exists; refusing to create it again")
        directory = path.parent
        if not directory.is_dir():
            raise StoreError(f"cannot create database {path}: {directory} is not a directory")
        building = directory / f"{_build_prefix(path)}{secrets.token_hex(8)}"
        try:
            try:
                _remove_stale_builds(path)
                _build(building, path, cipher, populate)
                _fsync_path(building)
            except OSError as exc:
                raise StoreError(f"cannot create database {path}: {exc.strerror or exc}") from exc
            before_publish()
            try:
                os.replace(building, path)
                _fsync_path(directory, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                raise StoreError(f"cannot publish database {path}: {exc.strerror or exc}") from exc
        except BaseException:
            _remove_build(building)
            raise
        return cls.open(path, dmk)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"database {self._path} is closed")

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        with self._pool_lock:
            self._check_open()
            conn = self._idle_readers.pop() if self._idle_readers else None
        if conn is None:
            conn = _connect_reader(self._path)
        try:
            yield conn
        finally:
            with self._pool_lock:
                if self._closed:
                    conn.close()
                else:
                    self._idle_readers.append(conn)

    def get(self, table: str, key: str) -> bytes | None:
        """The committed value of ``table``/``key``, or ``None``.

        Raises :class:`RecordDamagedError` when the stored value does not authenticate.
        """
        found = self.get_versioned(table, key)
        return None if found is None else found[0]

    def get_versioned(self, table: str, key: str) -> tuple[bytes, int] | None:
        """The committed value and version of ``table``/``key``, or ``None``.

        Raises :class:`RecordDamagedError` when the stored value does not authenticate.
        """
        _check_table(table)
        with self._reader() as conn:
            return _read_record(conn, self._cipher, self._path, table, key)

    def list_keys(self, table: str, prefix: str = "") -> list[str]:
        """The committed keys of ``table`` that start with ``prefix``, sorted by code point."""
        _check_table(table)
        with self._reader() as conn:
            return _read_keys(conn, self._cipher, self._path, table, prefix)

    def state(self) -> StoreState:
        """The committed state: its commit counter and a commitment to its digest."""
        with self._reader() as conn:
            committed = _read_state(conn, self._cipher, self._path)
        return StoreState(committed.counter, self._cipher.state_keys.commitment(committed))

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[SqliteSnapshot]:
        """A consistent read-only view: every read inside sees the same committed state.

        Writers are not blocked (WAL); use it when several records must agree, such as a
        session and its secrets while a workload is being configured.
        """
        with self._reader() as conn:
            with _sqlite_errors(self._path, "starting a snapshot"):
                conn.execute("BEGIN")
            try:
                yield SqliteSnapshot(conn, self._cipher, self._path)
            finally:
                _rollback_quietly(conn)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[SqliteTransaction]:
        """A write transaction: committed durably on normal exit, rolled back on exception.

        Transactions run one at a time (others wait); they do not nest, and opening one inside
        another in the same thread raises ``RuntimeError`` instead of deadlocking.
        """
        if getattr(self._local, "in_transaction", False):
            raise RuntimeError("a transaction is already open in this thread; they do not nest")
        with self._write_lock:
            self._check_open()
            self._local.in_transaction = True
            try:
                with _transaction_on(self._writer, self._cipher, self._path) as tx:
                    yield tx
            finally:
                self._local.in_transaction = False

    def close(self) -> None:
        """Wait for a running transaction, then close every connection; idempotent."""
        if getattr(self._local, "in_transaction", False):
            raise RuntimeError("cannot close the store inside one of its transactions")
        with self._write_lock:
            with self._pool_lock:
                if self._closed:
                    return
                self._closed = True
                readers, self._idle_readers = self._idle_readers, []
            for conn in readers:
                conn.close()
            # Closed last, so that SQLite checkpoints the WAL into the database file.
            self._writer.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
