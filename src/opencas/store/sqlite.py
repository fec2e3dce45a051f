"""The embedded state store: one SQLite file, every value encrypted and bound to its place.

Layout::

    meta(name TEXT, value TEXT)                                  plaintext: format, created_at
    records(tbl TEXT, key BLOB, version INTEGER, value BLOB)     rowid table, UNIQUE (tbl, key)
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

``records`` keeps its rows in the order they were written (a rowid table) and finds them through
a small unique index on ``(tbl, key)``. Record ids are keyed hashes, so a batch that writes many
new ids (a key rollover's) would land on random leaves of a table ordered by them; appended in
rowid order, the large values go to the end of the table and only the index entries (some 50
bytes each) land at random places. ``record_index`` holds small rows and stays ordered by
``(tbl, key)``. A key rollover walks ``records`` in rowid order, up to the largest rowid when its
walk began, and then the index rows that have no record row; its position (a
:class:`~opencas.store.records.RowidPosition`) is a rowid, so anything that renumbers the rows
(a migration that copies ``records``, ``VACUUM``) first raises the numbering in ``meta``
(:data:`ROWID_NUMBERING`, committed), and a walk whose position has another numbering begins
again. Schema version 2 had ``records``
ordered by ``(tbl, key)`` too. :meth:`SqliteStore.open` opens such a file as it is, and
:func:`opencas.store.records.upgrade_tables` converts it (migration 3) inside a write transaction,
the one in which a build takes the store over, so a crash leaves the old table or the new one,
never a mix, and a build refused the store leaves it as it was.

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

from opencas.errors import RecordDamagedError, StoreError
from opencas.store.base import StoreState, Transaction
from opencas.store.records import (
    IndexPosition,
    RecordCipher,
    RecordReader,
    RecordTransaction,
    RowidPosition,
    WalkedRow,
    WalkPosition,
    check_key,
    check_records,
    check_table,
    read_state,
)

APPLICATION_ID = int.from_bytes(b"OCAS", "big")
SCHEMA_VERSION = 3
#: The oldest schema version this code converts on open (1 stored record keys in clear).
OLDEST_MIGRATED_VERSION = 2
STORE_FORMAT = "opencas-store/2"
BUSY_TIMEOUT_SECONDS = 10.0
#: The page cache of the connection that writes (SQLite's default is 2 MiB). Record ids are keyed
#: hashes, so a batch of writes (a key rollover's, a restore's) lands all over the tables; with
#: 2 MiB the interior pages of a store of 10^5 sessions no longer stay cached and every write
#: reads pages again. 64 MiB keeps them for stores some ten times larger; SQLite takes the memory
#: only as pages are read.
WRITER_CACHE_KIB = 64 * 1024
# The database and the files SQLite keeps next to it are readable by their owner only.
DATABASE_FILE_MODE = 0o600

_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_SIZE = 100
_APPLICATION_ID_OFFSET = 68

_SCHEMA = (
    "CREATE TABLE meta (name TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE records (tbl TEXT NOT NULL, key BLOB NOT NULL, version INTEGER NOT NULL, "
    "value BLOB NOT NULL)",
    "CREATE UNIQUE INDEX records_by_key ON records (tbl, key)",
    "CREATE TABLE record_index (tbl TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, "
    "PRIMARY KEY (tbl, key)) WITHOUT ROWID",
    "CREATE TABLE commit_state (name TEXT NOT NULL PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
)
_TABLES = {"meta", "records", "record_index", "commit_state"}
#: The ``meta`` row naming the current numbering of ``records``' rowids (a file without it:
#: numbering 0). A key rollover's walk keeps its place as a rowid of one numbering.
ROWID_NUMBERING = "rowid_numbering"
#: Migration N turns a file of schema version N - 1 into version N, in one transaction. One that
#: copies ``records`` gives its rows new rowids, so it is named in :data:`_RENUMBERING` and its
#: transaction raises :data:`ROWID_NUMBERING`: a walk stored before it begins again.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # The rows are copied as they are: envelopes and index entries are bound to table, key and
    # version, not to where a row is kept, so every record opens as before.
    3: (
        "CREATE TABLE records_v3 (tbl TEXT NOT NULL, key BLOB NOT NULL, "
        "version INTEGER NOT NULL, value BLOB NOT NULL)",
        "INSERT INTO records_v3 (tbl, key, version, value) "
        "SELECT tbl, key, version, value FROM records ORDER BY tbl, key",
        "DROP TABLE records",
        "ALTER TABLE records_v3 RENAME TO records",
        "CREATE UNIQUE INDEX records_by_key ON records (tbl, key)",
    ),
}


_RENUMBERING = frozenset({3})


def _do_nothing() -> None:
    return None


@contextlib.contextmanager
def _sqlite_errors(path: Path, action: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"database {path}: {action} failed: {exc}") from exc


def _fetch_one(conn: sqlite3.Connection, sql: str, parameters: tuple[object, ...]) -> Any:
    # Closing the cursor ends the statement at once; a statement left open would pin an old
    # snapshot on a pooled read connection.
    with contextlib.closing(conn.execute(sql, parameters)) as cursor:
        return cursor.fetchone()


def _fetch_all(conn: sqlite3.Connection, sql: str, parameters: tuple[object, ...]) -> Iterator[Any]:
    with contextlib.closing(conn.execute(sql, parameters)) as cursor:
        yield from cursor


class _SqliteRows:
    """The raw rows of :mod:`opencas.store.records` on one SQLite connection."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._path = path
        #: Whether this transaction converted the tables (the file is compacted after it).
        self.converted = False

    @property
    def name(self) -> str:
        return str(self._path)

    def failing(self, action: str) -> contextlib.AbstractContextManager[None]:
        return _sqlite_errors(self._path, action)

    def record(self, table: str, record_id: bytes) -> tuple[object, object] | None:
        row = _fetch_one(
            self._conn,
            "SELECT version, value FROM records WHERE tbl = ? AND key = ?",
            (table, record_id),
        )
        return None if row is None else (row[0], row[1])

    def index_entry(self, table: str, record_id: bytes) -> object | None:
        row = _fetch_one(
            self._conn,
            "SELECT value FROM record_index WHERE tbl = ? AND key = ?",
            (table, record_id),
        )
        return None if row is None else row[0]

    def stored(
        self, table: str, record_id: bytes
    ) -> tuple[tuple[object, object] | None, object | None]:
        # In process, two statements cost no more than one that joins them.
        return self.record(table, record_id), self.index_entry(table, record_id)

    def index_entries(self, table: str | None) -> Iterator[tuple[object, object, object]]:
        if table is None:
            return _fetch_all(self._conn, "SELECT tbl, key, value FROM record_index", ())
        return _fetch_all(
            self._conn, "SELECT tbl, key, value FROM record_index WHERE tbl = ?", (table,)
        )

    def records(self) -> Iterator[tuple[object, object, object, object]]:
        return _fetch_all(self._conn, "SELECT tbl, key, version, value FROM records", ())

    def state(self) -> object | None:
        row = _fetch_one(self._conn, "SELECT value FROM commit_state WHERE name = 'state'", ())
        return None if row is None else row[0]

    def rekey_rows(self, after: WalkPosition | None, limit: int) -> list[WalkedRow]:
        # The value rows in the order they lie in ``records``, so a rollover deletes them in
        # one pass over a table far larger than the page cache; then the index rows that have
        # no value row, which that pass cannot meet. A walk ends at the largest rowid it found
        # when it began: every row written since is sealed under the new key (some may reuse a
        # rowid at or below the end once the largest was deleted; they are passed over).
        numbering = _rowid_numbering(self._conn, self._path)
        if isinstance(after, RowidPosition) and after.numbering != numbering:
            # The rows were numbered anew since: begin again (moved rows are passed over).
            after = None
        if after is None:
            # Two subqueries, each a descent to one end of the table: min and max in one
            # SELECT would scan the whole index.
            first, end = _fetch_one(
                self._conn,
                "SELECT coalesce((SELECT min(rowid) FROM records) - 1, 0), "
                "coalesce((SELECT max(rowid) FROM records), 0)",
                (),
            )
            after = RowidPosition(first, end, numbering)
        if isinstance(after, IndexPosition):
            return self._entries_without_row(after, limit)
        found = self._rows_in_order(after, limit)
        if len(found) < limit:
            found += self._entries_without_row(None, limit - len(found))
        return found

    def _rows_in_order(self, after: RowidPosition, limit: int) -> list[WalkedRow]:
        return [
            WalkedRow(
                RowidPosition(rowid, after.end, after.numbering),
                table,
                record_id,
                sealed,
                (version, value),
            )
            for rowid, table, record_id, sealed, version, value in _fetch_all(
                self._conn,
                "SELECT r.rowid, r.tbl, r.key, i.value, r.version, r.value FROM records AS r "
                "LEFT JOIN record_index AS i ON i.tbl = r.tbl AND i.key = r.key "
                "WHERE r.rowid > ? AND r.rowid <= ? ORDER BY r.rowid LIMIT ?",
                (after.after, after.end, limit),
            )
        ]

    def _entries_without_row(self, after: IndexPosition | None, limit: int) -> list[WalkedRow]:
        # Only rows of the index's shape: one of another shape is no position to go on from,
        # and makes the store refuse to open already (the index does not add up). No table is
        # named "", so ("", x'') comes before every row.
        start = IndexPosition("", b"") if after is None else after
        return [
            WalkedRow(IndexPosition(table, record_id), table, record_id, sealed, None)
            for table, record_id, sealed in _fetch_all(
                self._conn,
                "SELECT i.tbl, i.key, i.value FROM record_index AS i "
                "WHERE (i.tbl, i.key) > (?, ?) AND typeof(i.tbl) = 'text' "
                "AND typeof(i.key) = 'blob' AND NOT EXISTS "
                "(SELECT 1 FROM records AS r WHERE r.tbl = i.tbl AND r.key = i.key) "
                "ORDER BY i.tbl, i.key LIMIT ?",
                (start.table, start.record_id, limit),
            )
        ]

    def index_size(self) -> int:
        (count,) = _fetch_one(self._conn, "SELECT count(*) FROM record_index", ())
        return int(count)

    def write_record(
        self, table: str, record_id: bytes, version: int, envelope: bytes, entry: bytes
    ) -> None:
        self._conn.execute(
            "INSERT INTO records (tbl, key, version, value) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (tbl, key) DO UPDATE SET version = excluded.version, "
            "value = excluded.value",
            (table, record_id, version, envelope),
        )
        self._conn.execute(
            "INSERT INTO record_index (tbl, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (tbl, key) DO UPDATE SET value = excluded.value",
            (table, record_id, entry),
        )

    def delete_record(self, table: str, record_id: bytes) -> bool:
        with contextlib.closing(
            self._conn.execute("DELETE FROM records WHERE tbl = ? AND key = ?", (table, record_id))
        ) as cursor:
            deleted = cursor.rowcount > 0
        self._conn.execute("DELETE FROM record_index WHERE tbl = ? AND key = ?", (table, record_id))
        return deleted

    def upgrade_tables(self) -> bool:
        self.converted = _convert_tables(self._conn) or self.converted
        return self.converted

    def write_state(self, sealed: bytes) -> None:
        self._conn.execute(
            "INSERT INTO commit_state (name, value) VALUES ('state', ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (sealed,),
        )


#: A write transaction on the writer connection (see :class:`opencas.store.base.Transaction`).
SqliteTransaction = RecordTransaction
#: Reads from one snapshot of the database (see :meth:`SqliteStore.snapshot`).
SqliteSnapshot = RecordReader


def _rollback_quietly(conn: sqlite3.Connection) -> None:
    # Called while another exception is on its way out; that one is the error worth reporting.
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


@contextlib.contextmanager
def _transaction_on(
    conn: sqlite3.Connection, cipher: RecordCipher, path: Path
) -> Iterator[RecordTransaction]:
    with _sqlite_errors(path, "starting a transaction"):
        conn.execute("BEGIN IMMEDIATE")
    rows = _SqliteRows(conn, path)
    tx = RecordTransaction(rows, cipher)
    try:
        yield tx
        tx.finish()
    except BaseException:
        tx.abandon()
        _rollback_quietly(conn)
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback_quietly(conn)
        raise StoreError(f"database {path}: commit failed: {exc}") from exc
    if rows.converted:
        # The old table's pages are free pages now, more than the new table takes (version 2
        # spilt every value over 1 KB into an overflow page), and a store that does not grow
        # would never reuse them.
        with _sqlite_errors(path, "compacting the file after its conversion (which is committed)"):
            conn.execute("VACUUM")


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


def writer_connection(path: Path) -> sqlite3.Connection:
    """A connection to the OpenCAS database at ``path`` set up as a store's writer: header and
    schema checked, write-ahead logging with full syncs, :data:`WRITER_CACHE_KIB` of page
    cache. The caller closes it. Raises :class:`StoreError` naming ``path``."""
    _check_header(path)
    with _sqlite_errors(path, "opening"):
        writer = _connect(path)
    try:
        _check_schema(writer, path)
        _enable_wal(writer, path)
        with _sqlite_errors(path, "sizing the page cache"):
            writer.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
    except BaseException:
        writer.close()
        raise
    return writer


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
    """:class:`StoreError` naming ``path`` unless it is an OpenCAS file of a schema version this
    code reads (its own, or an older one it converts)."""
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
        if schema_version < OLDEST_MIGRATED_VERSION or not tables >= _TABLES:
            raise StoreError(f"{path} is not a complete OpenCAS database (its schema is missing)")
        row = _fetch_one(conn, "SELECT value FROM meta WHERE name = 'format'", ())
        if row is None or row[0] != STORE_FORMAT:
            raise StoreError(f"{path} is not a complete OpenCAS database (unknown format)")


def _convert_tables(conn: sqlite3.Connection) -> bool:
    """Inside the caller's write transaction, convert the tables from an older schema version to
    :data:`SCHEMA_VERSION`; whether there was anything to convert."""
    (version,) = _fetch_one(conn, "PRAGMA user_version", ())
    if version >= SCHEMA_VERSION:
        return False
    run = range(int(version) + 1, SCHEMA_VERSION + 1)
    for number in run:
        for statement in _MIGRATIONS[number]:
            conn.execute(statement)
    if _RENUMBERING.intersection(run):
        # Also covers the VACUUM after this commit: no other transaction runs in between.
        renumber_rows(conn)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return True


def renumber_rows(conn: sqlite3.Connection) -> None:
    """Inside the caller's write transaction, mark the rowids of ``records`` as numbered anew;
    to be committed before (or with) whatever gives the rows new rowids."""
    conn.execute(
        "INSERT INTO meta (name, value) VALUES (?, '1') "
        "ON CONFLICT (name) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
        (ROWID_NUMBERING,),
    )


def _rowid_numbering(conn: sqlite3.Connection, path: Path) -> int:
    row = _fetch_one(conn, "SELECT value FROM meta WHERE name = ?", (ROWID_NUMBERING,))
    if row is None:
        return 0
    if not (isinstance(row[0], str) and row[0].isascii() and row[0].isdigit()):
        raise StoreError(f"database {path}: meta row {ROWID_NUMBERING} is not a number")
    return int(row[0])


def _enable_wal(conn: sqlite3.Connection, path: Path) -> None:
    with _sqlite_errors(path, "enabling write-ahead logging"):
        (mode,) = _fetch_one(conn, "PRAGMA journal_mode = WAL", ())
        if str(mode).lower() != "wal":
            raise StoreError(
                f"database {path} cannot use write-ahead logging (journal mode stays {mode})"
            )
        conn.execute("PRAGMA synchronous = FULL")


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
    building: Path, path: Path, cipher: RecordCipher, populate: Callable[[Transaction], None]
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
            conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
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
            tx.initialise()
            populate(tx)
    finally:
        conn.close()


class SqliteStore:
    """The SQLite implementation of :class:`opencas.store.base.Store`; safe to share by threads.

    Obtain one with :meth:`open` or :meth:`create_atomically`. The caller should hold the
    :class:`~opencas.store.lock.DatabaseLock` of the database while the store is open.
    """

    def __init__(
        self,
        path: Path,
        cipher: RecordCipher,
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
    def open(cls, path: Path, dmk: bytes, previous_dmk: bytes | None = None) -> SqliteStore:
        """Open the existing OpenCAS database at ``path`` with the database master key ``dmk``.

        Raises :class:`StoreError`, naming ``path``, when there is no file, when it is not an
        SQLite database, when it is an SQLite database but not a (complete) OpenCAS one, or when
        its schema is newer than this code or older than it converts; a foreign file is not
        modified. A file of the older schema this code converts is opened as it is (the SQL this
        code runs reads and writes both); :func:`opencas.store.records.upgrade_tables` converts
        it. Raises :class:`KeyStoreError` when ``dmk`` is not this database's key, and
        ``ValueError`` unless ``dmk`` is 32 bytes.

        Every record is checked against the committed state: the ones that fail are listed in
        :attr:`damaged_records` (and reading one raises). When the record index itself does not
        add up to the commit state, nothing can be trusted and :class:`RecordDamagedError`
        naming ``_state/commit`` is raised.

        ``previous_dmk`` is the key a running key rollover moves records away from: records
        under either key open, and everything written is sealed under ``dmk``.
        """
        cipher = RecordCipher(dmk, previous_dmk)
        writer = writer_connection(path)
        try:
            check_key(_SqliteRows(writer, path), cipher)
            with _sqlite_errors(path, "starting the check of every record"):
                writer.execute("BEGIN")
            try:
                damaged = check_records(_SqliteRows(writer, path), cipher)
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
        cipher = RecordCipher(dmk)
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
        check_table(table)
        # The row and its index entry are two SELECTs: one snapshot for both, or a commit
        # between them would look like a rolled-back record.
        with self.snapshot() as reader:
            return reader.get_versioned(table, key)

    def list_keys(self, table: str, prefix: str = "") -> list[str]:
        """The committed keys of ``table`` that start with ``prefix``, sorted by code point."""
        check_table(table)
        with self.snapshot() as reader:
            return reader.list_keys(table, prefix)

    def state(self) -> StoreState:
        """The committed state: its commit counter and a commitment to its digest."""
        with self._reader() as conn:
            committed = read_state(_SqliteRows(conn, self._path), self._cipher)
        return StoreState(committed.counter, self._cipher.state_keys.commitment(committed))

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[RecordReader]:
        """A consistent read-only view: every read inside sees the same committed state.

        Writers are not blocked (WAL); use it when several records must agree, such as a
        session and its secrets while a workload is being configured.
        """
        with self._reader() as conn:
            with _sqlite_errors(self._path, "starting a snapshot"):
                conn.execute("BEGIN")
            try:
                yield RecordReader(_SqliteRows(conn, self._path), self._cipher)
            finally:
                _rollback_quietly(conn)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[RecordTransaction]:
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

    def use_keys(self, dmk: bytes, previous_dmk: bytes | None) -> None:
        """Seal from now on under ``dmk``, and open under it or ``previous_dmk`` (a key
        rollover starts, or ends with ``None``). Waits for a running write transaction."""
        cipher = RecordCipher(dmk, previous_dmk)
        with self._write_lock:
            self._cipher = cipher

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
