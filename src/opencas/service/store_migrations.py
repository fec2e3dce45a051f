"""Versioned migrations of the records in the store, run by a new build as part of its upgrade.

The backends version their own tables (SQLite ``PRAGMA user_version``, PostgreSQL's
``schema_version`` table); this module versions what is *inside* the encrypted records: which
records exist and what shape they have. The record ``store/schema``
(:class:`StoreSchemaRecord`) holds the number of migrations applied; migration N is
``STORE_MIGRATIONS[N - 1]``, a function of one write transaction. A database from before this
record existed is at version 0.

- :func:`check_store_schema` refuses a store whose version is newer than this build knows: an
  older build never reads records shaped by a newer one. That is what makes an upgrade one-way
  once the new build has migrated the store.
- :func:`migrate_store` applies, inside the caller's transaction, every migration the store
  lacks, and records the build that applied them. A migration runs in the same transaction as
  the change of the serving build (:mod:`opencas.service.upgrades`), so a crash leaves either
  both or neither.

Migrations:

1. ``upgrades/registered``: the upgrades the owner registered (none yet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from pydantic import BaseModel, ConfigDict

from opencas.errors import StoreError
from opencas.service.identity import utc_now_text
from opencas.service.records import read_record, write_record
from opencas.store.base import Reader, Transaction

_TABLE: Final = "store"
_SCHEMA: Final = "schema"
#: The table and key of the registered upgrades (migration 1), read by
#: :mod:`opencas.service.upgrades`.
UPGRADES_TABLE: Final = "upgrades"
REGISTERED_KEY: Final = "registered"


class StoreSchemaRecord(BaseModel):
    """``store/schema``: how many migrations the store has had, and the build that applied the
    last of them."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    version: int
    migrated_by: str
    """The software measurement of the build that applied the last migration."""
    migrated_at: str


@dataclass(frozen=True)
class StoreMigration:
    """One migration: its number, what it does (for the log), and the function that does it."""

    number: int
    summary: str
    apply: Callable[[Transaction], None]


def _registered_upgrades(txn: Transaction) -> None:
    if txn.get(UPGRADES_TABLE, REGISTERED_KEY) is None:
        txn.put(UPGRADES_TABLE, REGISTERED_KEY, b'{"upgrades":[]}')


STORE_MIGRATIONS: tuple[StoreMigration, ...] = (
    StoreMigration(1, "the registered upgrades", _registered_upgrades),
)
#: The store schema this build reads and writes: the number of migrations it knows.
STORE_SCHEMA_VERSION: Final = len(STORE_MIGRATIONS)


def read_store_schema(source: Reader) -> StoreSchemaRecord | None:
    """The ``store/schema`` record, or ``None`` for a store that never had a migration."""
    return read_record(source, StoreSchemaRecord, _TABLE, _SCHEMA)


def store_schema_problem(source: Reader) -> str | None:
    """Why this build must not use the store (its record schema is newer), or ``None``."""
    record = read_store_schema(source)
    if record is None or record.version <= STORE_SCHEMA_VERSION:
        return None
    return (
        f"the store has record schema version {record.version}, migrated by the build with "
        f"measurement {record.migrated_by} at {record.migrated_at}; this build knows versions up "
        f"to {STORE_SCHEMA_VERSION} only, so it must not read or write the store: run the newer "
        "build (an upgrade that migrated the store cannot be undone by starting the old one)"
    )


def check_store_schema(source: Reader) -> int:
    """The store's record schema version; :class:`StoreError` when it is newer than this build
    knows (the message names the build that migrated it)."""
    problem = store_schema_problem(source)
    if problem is not None:
        raise StoreError(problem)
    record = read_store_schema(source)
    return 0 if record is None else record.version


def migrate_store(txn: Transaction, measurement: str) -> tuple[int, int]:
    """Apply every migration the store lacks inside ``txn``, as the build ``measurement``.

    Returns the version before and after. Raises :class:`StoreError` as
    :func:`check_store_schema` does.
    """
    before = check_store_schema(txn)
    for migration in STORE_MIGRATIONS[before:]:
        migration.apply(txn)
    if before != STORE_SCHEMA_VERSION:
        write_record(
            txn,
            _TABLE,
            _SCHEMA,
            StoreSchemaRecord(
                version=STORE_SCHEMA_VERSION, migrated_by=measurement, migrated_at=utc_now_text()
            ),
        )
    return before, STORE_SCHEMA_VERSION
