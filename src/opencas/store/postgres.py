"""The PostgreSQL state store: untrusted shared storage behind the same contract as SQLite.

PostgreSQL only holds the raw rows of :mod:`opencas.store.records`; every value is encrypted and
authenticated by the CAS exactly as in the SQLite file, and every row read back is checked, so
someone with full access to the database can destroy records but not read, change, move or roll
them back unnoticed. Schema (migration 1; migration 2 adds the guards' tables of
:mod:`opencas.store.guards`, migration 3 the cluster's tables of :mod:`opencas.store.cluster`,
migration 4 the cluster's audit log of :mod:`opencas.store.audit_entries`, migration 5 the owner
config its settings follow)::

    schema_version(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ)   one row per migration
    meta(name TEXT PRIMARY KEY, value TEXT)                  plaintext: format, created_at
    records(tbl TEXT, key BYTEA, version BIGINT, value BYTEA)    PRIMARY KEY (tbl, key)
    record_index(tbl TEXT, key BYTEA, value BYTEA)               PRIMARY KEY (tbl, key)
    commit_state(name TEXT PRIMARY KEY, value BYTEA)             one row, "state"

Concurrency: connections come from a pool. Every write transaction begins by locking the state
row (``SELECT ... FOR UPDATE``), so write transactions run one at a time across every process
sharing the database, and (at READ COMMITTED) each statement after the lock sees every commit
before it: the commit counter and digest never fork. Reads outside a transaction and snapshots
run in REPEATABLE READ READ ONLY transactions, so a record and its index entry are always read
from one committed state. ``synchronous_commit`` is on for every connection: a commit is durable
once acknowledged.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from opencas.database_url import redact_url
from opencas.errors import (
    DatabaseKeyStale,
    DatabaseUnavailable,
    LeaseLost,
    RecordDamagedError,
    StoreError,
)
from opencas.store.audit_entries import AUDIT_SETTINGS, AUDIT_TABLES, AuditEntries
from opencas.store.base import StoreState, Transaction
from opencas.store.cluster import (
    CLUSTER_TABLES,
    ClusterRows,
    Lease,
    check_fence,
    write_fenced_state,
)
from opencas.store.guards import GUARD_TABLES, PostgresGuards
from opencas.store.postgres_reads import repeatable_read
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
    read_keys,
    read_record,
    read_state,
)

STORE_FORMAT = "opencas-store/2"
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10
#: Seconds to wait for a pooled connection (or a new one) before the operation fails.
CONNECT_TIMEOUT_SECONDS = 10.0
#: Seconds any one statement may run, the wait for the state row's lock included.
STATEMENT_TIMEOUT_SECONDS = 30
#: How long a connection may go without an answer from the server before it counts as lost. A
#: statement timeout is enforced by the server, so it cannot end the wait for a server that is
#: gone or a network that was cut; TCP keepalives and ``tcp_user_timeout`` do.
LOST_CONNECTION_SECONDS = 10
TCP_SETTINGS: dict[str, object] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": LOST_CONNECTION_SECONDS * 1000,
}
_T = TypeVar("_T")
# Taken by a migration, so that two processes opening a new database never migrate it at once.
_MIGRATION_LOCK = int.from_bytes(b"OCASmigr", "big") & (2**63 - 1)

#: Migration N is ``MIGRATIONS[N - 1]``; the schema version is the number of them applied.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE meta (name TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE records (tbl TEXT NOT NULL, key BYTEA NOT NULL, version BIGINT NOT NULL, "
        "value BYTEA NOT NULL, PRIMARY KEY (tbl, key))",
        "CREATE TABLE record_index (tbl TEXT NOT NULL, key BYTEA NOT NULL, value BYTEA NOT NULL, "
        "PRIMARY KEY (tbl, key))",
        "CREATE TABLE commit_state (name TEXT NOT NULL PRIMARY KEY, value BYTEA NOT NULL)",
    ),
    GUARD_TABLES,
    CLUSTER_TABLES,
    AUDIT_TABLES,
    AUDIT_SETTINGS,
)
SCHEMA_VERSION = len(MIGRATIONS)


def _do_nothing() -> None:
    return None


class _PostgresRows:
    """The raw rows of :mod:`opencas.store.records` on one PostgreSQL connection."""

    def __init__(
        self, conn: psycopg.Connection[Any], shown: str, fence: Lease | None = None
    ) -> None:
        self._conn = conn
        self._shown = shown
        self._fence = fence

    @property
    def name(self) -> str:
        return self._shown

    def failing(self, action: str) -> contextlib.AbstractContextManager[None]:
        return _postgres_errors(self._shown, action)

    def _one(self, sql: str, parameters: Sequence[object]) -> Any:
        return self._conn.execute(sql, parameters).fetchone()

    def record(self, table: str, record_id: bytes) -> tuple[object, object] | None:
        row = self._one(
            "SELECT version, value FROM records WHERE tbl = %s AND key = %s", (table, record_id)
        )
        return None if row is None else (row[0], row[1])

    def index_entry(self, table: str, record_id: bytes) -> object | None:
        row = self._one(
            "SELECT value FROM record_index WHERE tbl = %s AND key = %s", (table, record_id)
        )
        return None if row is None else row[0]

    def stored(
        self, table: str, record_id: bytes
    ) -> tuple[tuple[object, object] | None, object | None]:
        # One round trip for both rows: the record's version is never NULL, so a NULL says the
        # record row is missing.
        row = self._one(
            "SELECT r.version, r.value, i.value FROM (SELECT 1) AS one "
            "LEFT JOIN records r ON r.tbl = %s AND r.key = %s "
            "LEFT JOIN record_index i ON i.tbl = %s AND i.key = %s",
            (table, record_id, table, record_id),
        )
        return (None if row[0] is None else (row[0], row[1])), row[2]

    def index_entries(self, table: str | None) -> Iterator[tuple[object, object, object]]:
        if table is None:
            cursor = self._conn.execute("SELECT tbl, key, value FROM record_index")
        else:
            cursor = self._conn.execute(
                "SELECT tbl, key, value FROM record_index WHERE tbl = %s", (table,)
            )
        return iter(cursor)

    def records(self) -> Iterator[tuple[object, object, object, object]]:
        return iter(self._conn.execute("SELECT tbl, key, version, value FROM records"))

    def state(self) -> object | None:
        row = self._one("SELECT value FROM commit_state WHERE name = 'state'", ())
        return None if row is None else row[0]

    def rekey_rows(self, after: WalkPosition | None, limit: int) -> list[WalkedRow]:
        # The index's order: the values are a heap in insertion order found through their own
        # primary-key index already. The comparison and the order are the primary key's own
        # (its collation), so the page is read from the index, not by sorting the table. The
        # record rows come in the same statement: one round trip per page, not one per record.
        if isinstance(after, RowidPosition):
            raise StoreError(f"{after} is no position in the record index of {self._shown}")
        start = ("", b"") if after is None else (after.table, after.record_id)
        cursor = self._conn.execute(
            "SELECT i.tbl, i.key, i.value, r.version, r.value FROM record_index AS i "
            "LEFT JOIN records AS r ON r.tbl = i.tbl AND r.key = i.key "
            "WHERE (i.tbl, i.key) > (%s, %s) ORDER BY i.tbl, i.key LIMIT %s",
            (*start, limit),
        )
        # ``records.version`` is NOT NULL: no version means no record row.
        return [
            WalkedRow(
                IndexPosition(table, record_id),
                table,
                record_id,
                sealed,
                None if version is None else (version, value),
            )
            for table, record_id, sealed, version, value in cursor.fetchall()
        ]

    def index_size(self) -> int:
        row = self._one("SELECT count(*) FROM record_index", ())
        return 0 if row is None else int(row[0])

    def write_record(
        self, table: str, record_id: bytes, version: int, envelope: bytes, entry: bytes
    ) -> None:
        self._conn.execute(
            "INSERT INTO records (tbl, key, version, value) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (tbl, key) DO UPDATE SET version = excluded.version, "
            "value = excluded.value",
            (table, record_id, version, envelope),
        )
        self._conn.execute(
            "INSERT INTO record_index (tbl, key, value) VALUES (%s, %s, %s) "
            "ON CONFLICT (tbl, key) DO UPDATE SET value = excluded.value",
            (table, record_id, entry),
        )

    def delete_record(self, table: str, record_id: bytes) -> bool:
        cursor = self._conn.execute(
            "DELETE FROM records WHERE tbl = %s AND key = %s", (table, record_id)
        )
        deleted = cursor.rowcount > 0
        self._conn.execute(
            "DELETE FROM record_index WHERE tbl = %s AND key = %s", (table, record_id)
        )
        return deleted

    def upgrade_tables(self) -> bool:
        # The migrations of :data:`MIGRATIONS` run when the store is opened, under an advisory
        # lock, before any instance reads a row.
        return False

    def write_state(self, sealed: bytes) -> None:
        if self._fence is not None:
            if not write_fenced_state(self._conn, self._fence, sealed):
                raise _lease_lost(self._fence)
            return
        self._conn.execute(
            "INSERT INTO commit_state (name, value) VALUES ('state', %s) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (sealed,),
        )

    def lock_state(self) -> object | None:
        """Wait for, and hold until the transaction ends, the lock on the state row; the
        sealed state it holds (``None`` without one)."""
        row = self._one("SELECT value FROM commit_state WHERE name = 'state' FOR UPDATE", ())
        return None if row is None else row[0]


def _check_state_opens(shown: str, cipher: RecordCipher, sealed: object | None) -> None:
    """:class:`DatabaseKeyStale` unless ``sealed`` (the state row) opens under ``cipher``.

    Another instance that rolled the database key over moves the state to the new key with its
    first commit; an instance still holding only the old key must neither commit (it would
    seal under a key that is being retired) nor answer "not found" for records it cannot see.
    """
    if sealed is None:
        return
    try:
        cipher.open_state(sealed)
    except RecordDamagedError:
        raise DatabaseKeyStale(
            f"database {shown}: the commit state does not open under this instance's database "
            "key: another instance rolled the key over (this instance asks for the new key by "
            "itself; retry shortly), or the state was damaged"
        ) from None


def _lease_lost(fence: Lease) -> LeaseLost:
    return LeaseLost(
        f"the lease {fence.name!r} of {fence.holder} (token {fence.token}) "
        "expired or was taken over: this instance no longer leads that work"
    )


@contextlib.contextmanager
def _postgres_errors(shown: str, action: str) -> Iterator[None]:
    try:
        yield
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"database {shown}: {action} failed: {_first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise StoreError(f"database {shown}: {action} failed: {_first_line(exc)}") from exc
    except PoolTimeout as exc:
        raise DatabaseUnavailable(
            f"database {shown}: {action} failed: no connection within "
            f"{CONNECT_TIMEOUT_SECONDS:g} seconds ({_first_line(exc)})"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _configure(conn: psycopg.Connection[Any]) -> None:
    # Every session is made durable and bounded the same way, whatever the server's defaults.
    conn.execute("SET synchronous_commit = on")
    conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_SECONDS * 1000}")
    conn.execute("SET TIME ZONE 'UTC'")


def _schema_version(conn: psycopg.Connection[Any]) -> int | None:
    """The schema version of the database, or ``None`` when it holds no OpenCAS schema."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return None
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return 0 if row is None else int(row[0])


def _migrate(conn: psycopg.Connection[Any], shown: str, start: int) -> None:
    """Apply every migration after ``start`` (inside the caller's transaction)."""
    if start == 0:
        conn.execute(
            "CREATE TABLE schema_version (version INTEGER NOT NULL PRIMARY KEY, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
    for number in range(start + 1, SCHEMA_VERSION + 1):
        with _postgres_errors(shown, f"applying migration {number}"):
            for statement in MIGRATIONS[number - 1]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))


def _check_version(version: int | None, shown: str) -> int:
    if version is None:
        raise StoreError(f"database {shown} holds no OpenCAS store (no schema_version table)")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"database {shown} has schema version {version}, newer than this cas supports "
            f"({SCHEMA_VERSION}); use a newer cas"
        )
    if version < 1:
        raise StoreError(f"database {shown} is not a complete OpenCAS store (no migration)")
    return version


def _bring_up_to_date(conn: psycopg.Connection[Any], shown: str) -> None:
    """Apply (inside the caller's transaction, under the migration lock) every migration the
    database lacks; :class:`StoreError` when it holds no store or a newer schema."""
    version = _check_version(_schema_version(conn), shown)
    if version < SCHEMA_VERSION:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        _migrate(conn, shown, _check_version(_schema_version(conn), shown))


class PostgresStore:
    """The PostgreSQL implementation of :class:`opencas.store.base.Store`; safe to share by
    threads, and by processes on other machines that open the same database.

    Obtain one with :meth:`open` or :meth:`create`.
    """

    def __init__(
        self,
        url: str,
        cipher: RecordCipher,
        pool: ConnectionPool[psycopg.Connection[Any]],
        dmk: bytes,
        damaged: tuple[RecordDamagedError, ...] = (),
    ) -> None:
        self._shown = redact_url(url)
        self._cipher = cipher
        self.guards = PostgresGuards(pool, dmk, self._failing)
        """The guards' state every instance on this database shares (nonces, proofs, ...)."""
        self.cluster = ClusterRows(pool.connection, self._failing)
        """The rows through which the instances find each other and hand over the key."""
        self.audit_entries = AuditEntries(
            pool.connection, self._transaction_connection, self._failing
        )
        """The cluster's audit log: one chain that every instance appends to."""
        self._pool = pool
        self._damaged = damaged
        self._closed = False
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"PostgresStore({self._shown!r})"

    @property
    def damaged_records(self) -> tuple[RecordDamagedError, ...]:
        """The records found damaged when the store was opened (reading one raises)."""
        return self._damaged

    @staticmethod
    def _pool_for(url: str, max_size: int) -> ConnectionPool[psycopg.Connection[Any]]:
        shown = redact_url(url)
        pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=POOL_MIN_SIZE,
            max_size=max_size,
            kwargs={"autocommit": True, "connect_timeout": int(CONNECT_TIMEOUT_SECONDS)}
            | TCP_SETTINGS,
            configure=_configure,
            timeout=CONNECT_TIMEOUT_SECONDS,
            name="opencas-store",
            open=False,
        )
        try:
            with _postgres_errors(shown, "connecting"):
                pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)
        except BaseException:
            pool.close()
            raise
        return pool

    @staticmethod
    def exists(url: str) -> bool:
        """Whether the database at ``url`` holds an OpenCAS store (any schema version).

        Raises :class:`StoreError` when the database cannot be reached.
        """
        shown = redact_url(url)
        with (
            _postgres_errors(shown, "connecting"),
            psycopg.connect(url, autocommit=True, connect_timeout=10) as conn,
        ):
            return _schema_version(conn) is not None

    @staticmethod
    @contextlib.contextmanager
    def cluster_rows(url: str) -> Iterator[ClusterRows]:
        """The cluster's rows at ``url`` without the database key, for an instance that has
        none yet, after the migrations this build knows were applied (they need no key).

        Raises :class:`StoreError` as :meth:`open` does for the database and its schema.
        """
        shown = redact_url(url)
        with (
            _postgres_errors(shown, "connecting"),
            psycopg.connect(url, autocommit=True, connect_timeout=10) as conn,
        ):
            _configure(conn)
            with _postgres_errors(shown, "reading the schema version"), conn.transaction():
                _bring_up_to_date(conn, shown)
            lock = threading.Lock()

            @contextlib.contextmanager
            def one_connection() -> Iterator[psycopg.Connection[Any]]:
                with lock:
                    yield conn

            def failing(action: str) -> contextlib.AbstractContextManager[None]:
                return _postgres_errors(shown, action)

            yield ClusterRows(one_connection, failing)

    @classmethod
    def open(
        cls,
        url: str,
        dmk: bytes,
        pool_size: int = POOL_MAX_SIZE,
        previous_dmk: bytes | None = None,
    ) -> PostgresStore:
        """Open the OpenCAS store in the PostgreSQL database at ``url`` with the key ``dmk``.

        Applies the migrations this build knows that the database lacks. Raises
        :class:`StoreError` (naming the database, never its password) when it cannot be reached,
        holds no OpenCAS store, or has a schema newer than this build; :class:`KeyStoreError`
        when ``dmk`` is not its key; ``ValueError`` unless ``dmk`` is 32 bytes. Every record is
        checked as :meth:`opencas.store.sqlite.SqliteStore.open` does, and ``previous_dmk`` is
        the key a running rollover moves records away from, as there.
        """
        cipher = RecordCipher(dmk, previous_dmk)
        pool = cls._pool_for(url, pool_size)
        shown = redact_url(url)
        try:
            with pool.connection() as conn:
                with _postgres_errors(shown, "reading the schema version"), conn.transaction():
                    _bring_up_to_date(conn, shown)
                    _check_format(conn, shown)
                rows = _PostgresRows(conn, shown)
                with _postgres_errors(shown, "checking every record"), repeatable_read(conn):
                    check_key(rows, cipher)
                    damaged = check_records(rows, cipher)
        except BaseException:
            pool.close()
            raise
        return cls(url, cipher, pool, dmk, damaged)

    @classmethod
    def create(
        cls,
        url: str,
        dmk: bytes,
        populate: Callable[[Transaction], None],
        before_publish: Callable[[], None] = _do_nothing,
        pool_size: int = POOL_MAX_SIZE,
    ) -> PostgresStore:
        """Create the OpenCAS store in the (empty) database at ``url``, then open it.

        The schema, the initial state and what ``populate`` writes are one transaction;
        ``before_publish`` runs (the caller writes the sealed key store there) before it
        commits. So a crash leaves either no store or a complete one. Raises
        :class:`StoreError` when the database already holds an OpenCAS store or cannot be
        reached; exceptions from ``populate`` and ``before_publish`` propagate unchanged and
        leave nothing behind.
        """
        cipher = RecordCipher(dmk)
        shown = redact_url(url)
        with (
            _postgres_errors(shown, "connecting"),
            psycopg.connect(url, autocommit=True, connect_timeout=10) as conn,
        ):
            _configure(conn)
            with conn.transaction():
                with _postgres_errors(shown, "creating the schema"):
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                    if _schema_version(conn) is not None:
                        raise StoreError(
                            f"database {shown} already holds an OpenCAS store; "
                            "refusing to create it again"
                        )
                    _migrate(conn, shown, 0)
                    conn.execute(
                        "INSERT INTO meta (name, value) VALUES ('format', %s), ('created_at', %s)",
                        (STORE_FORMAT, datetime.now(UTC).isoformat(timespec="seconds")),
                    )
                tx = RecordTransaction(_PostgresRows(conn, shown), cipher)
                try:
                    tx.initialise()
                    populate(tx)
                    tx.finish()
                except BaseException:
                    tx.abandon()
                    raise
                before_publish()
        return cls.open(url, dmk, pool_size)

    @contextlib.contextmanager
    def _failing(self, action: str) -> Iterator[None]:
        """A block whose database errors become :class:`StoreError` (or
        :class:`DatabaseUnavailable`); after a lost connection, the idle connections are checked.

        A server restart or a cut network kills every pooled connection, and the pool finds out
        only when each is next used: checking them at the first failure means the requests after
        it get fresh connections instead of failing one by one.
        """
        self._check_open()
        try:
            with _postgres_errors(self._shown, action):
                yield
        except DatabaseUnavailable:
            with contextlib.suppress(Exception):
                self._pool.check()
            raise

    def _read(self, action: str, read: Callable[[_PostgresRows], _T]) -> _T:
        """``read`` in one read-only transaction, tried once more on a fresh connection when the
        first attempt lost its connection (a read changes nothing, so a second try is safe).

        A read that finds nothing, or a record that does not open, is checked against the
        commit state of the same snapshot: :class:`DatabaseKeyStale` when the state does not
        open either (the key was rolled over elsewhere), so a stale key never reads as "not
        found". A record found and opened needs no such check: it is the committed one.
        """
        try:
            with self._read_only(action) as rows:
                return self._checked(rows, read)
        except DatabaseUnavailable as exc:
            # No connection within the timeout: trying again would only wait as long again.
            if not isinstance(exc.__cause__, psycopg.OperationalError):
                raise
        with self._read_only(action) as rows:
            return self._checked(rows, read)

    def _checked(self, rows: _PostgresRows, read: Callable[[_PostgresRows], _T]) -> _T:
        cipher = self._cipher
        try:
            result = read(rows)
        except RecordDamagedError:
            with rows.failing("reading the commit state"):
                _check_state_opens(self._shown, cipher, rows.state())
            raise
        if result is None:
            with rows.failing("reading the commit state"):
                _check_state_opens(self._shown, cipher, rows.state())
        return result

    def _transaction_connection(self) -> psycopg.Connection[Any] | None:
        """The connection of the write transaction this thread has open, or None."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "connection", None)
        return conn

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"database {self._shown} is closed")

    @contextlib.contextmanager
    def _read_only(self, action: str) -> Iterator[_PostgresRows]:
        """One REPEATABLE READ, read-only transaction on a pooled connection."""
        with self._failing(action), self._pool.connection() as conn, repeatable_read(conn):
            yield _PostgresRows(conn, self._shown)

    def get(self, table: str, key: str) -> bytes | None:
        """The committed value of ``table``/``key``, or ``None``.

        Raises :class:`RecordDamagedError` when the stored value does not authenticate.
        """
        found = self.get_versioned(table, key)
        return None if found is None else found[0]

    def get_versioned(self, table: str, key: str) -> tuple[bytes, int] | None:
        """The committed value and version of ``table``/``key``, or ``None``."""
        check_table(table)
        return self._read(
            f"reading {table}/{key}", lambda rows: read_record(rows, self._cipher, table, key)
        )

    def list_keys(self, table: str, prefix: str = "") -> list[str]:
        """The committed keys of ``table`` that start with ``prefix``, sorted by code point."""
        check_table(table)
        return self._read(
            f"listing {table}", lambda rows: read_keys(rows, self._cipher, table, prefix)
        )

    def state(self) -> StoreState:
        """The committed state: its commit counter and a commitment to its digest."""
        committed = self._read(
            "reading the commit state", lambda rows: read_state(rows, self._cipher)
        )
        return StoreState(committed.counter, self._cipher.state_keys.commitment(committed))

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[RecordReader]:
        """A consistent read-only view: every read inside sees the same committed state."""
        with self._read_only("reading a snapshot") as rows:
            yield RecordReader(rows, self._cipher)

    @contextlib.contextmanager
    def transaction(self, fence: Lease | None = None) -> Iterator[RecordTransaction]:
        """A write transaction: committed durably on normal exit, rolled back on exception.

        Transactions run one at a time across every process sharing the database (each waits
        for the state row's lock); they do not nest, and opening one inside another in the same
        thread raises ``RuntimeError`` instead of deadlocking. With ``fence`` (a lease from
        :meth:`ClusterRows.acquire_lease`), the lease is checked first in the same transaction
        and held until it ends, and the commit state is written only while it still holds (the
        database refuses the write of a leader deposed meanwhile, its lease run out by the
        server's clock): :class:`LeaseLost` when it expired or another holder took it, before
        or during the transaction; nothing of it is committed then.
        """
        if getattr(self._local, "in_transaction", False):
            raise RuntimeError("a transaction is already open in this thread; they do not nest")
        self._check_open()
        self._local.in_transaction = True
        try:
            with (
                self._failing("a transaction"),
                self._pool.connection() as conn,
                conn.transaction(),
            ):
                rows = _PostgresRows(conn, self._shown, fence)
                _check_state_opens(self._shown, self._cipher, rows.lock_state())
                self._local.connection = conn
                if fence is not None and not check_fence(conn, fence):
                    raise _lease_lost(fence)
                tx = RecordTransaction(rows, self._cipher)
                try:
                    yield tx
                    tx.finish()
                except BaseException:
                    tx.abandon()
                    raise
        finally:
            self._local.in_transaction = False
            self._local.connection = None

    def use_keys(self, dmk: bytes, previous_dmk: bytes | None) -> None:
        """Seal from now on under ``dmk``, and open under it or ``previous_dmk`` (see
        :meth:`opencas.store.sqlite.SqliteStore.use_keys`).

        The guards move to ``dmk`` too, so that every instance, restarted since or not, keys
        them alike once it has the new key; their rows live for minutes, and a nonce issued
        just before the move is refused after it (the workload asks for another)."""
        self._cipher = RecordCipher(dmk, previous_dmk)
        self.guards.use_key(dmk)

    def key_opens_state(self) -> bool:
        """Whether this instance's database key opens the committed state (``False``: another
        instance rolled the key over); ``True`` when the database cannot be reached, which is
        not a question of keys."""
        try:
            self.state()
        except DatabaseKeyStale:
            return False
        except DatabaseUnavailable:
            return True
        return True

    def close(self) -> None:
        """Close every pooled connection (waiting for those in use); idempotent."""
        if getattr(self._local, "in_transaction", False):
            raise RuntimeError("cannot close the store inside one of its transactions")
        if self._closed:
            return
        self._closed = True
        self._pool.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _check_format(conn: psycopg.Connection[Any], shown: str) -> None:
    row = conn.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
    if row is None or row[0] != STORE_FORMAT:
        raise StoreError(f"database {shown} is not a complete OpenCAS store (unknown format)")
