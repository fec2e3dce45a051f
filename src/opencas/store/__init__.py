"""The encrypted state store: one interface (``base``), one encrypted record layer
(``records``), and two backends of raw rows: SQLite (embedded) and PostgreSQL (shared)."""

from opencas.store.base import Store, Transaction
from opencas.store.keystore import (
    KeyStoreContents,
    key_store_path,
    load_key_store,
    save_key_store,
)
from opencas.store.lock import DatabaseInUse, DatabaseLock, lock_path
from opencas.store.postgres import PostgresStore
from opencas.store.sqlite import SqliteStore, SqliteTransaction

__all__ = [
    "DatabaseInUse",
    "DatabaseLock",
    "KeyStoreContents",
    "PostgresStore",
    "SqliteStore",
    "SqliteTransaction",
    "Store",
    "Transaction",
    "key_store_path",
    "load_key_store",
    "lock_path",
    "save_key_store",
]
