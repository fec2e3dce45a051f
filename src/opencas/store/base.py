"""The state-store contract that every backend (SQLite now, PostgreSQL later) fulfils.

A store holds *records*: opaque byte values addressed by ``(table, key)``. Each record has a
version, 1 when it is inserted and one more on every update. The store encrypts and
authenticates every value itself; callers hand it plaintext bytes. A record whose stored bytes do
not authenticate under its own table, key and version is reported with
:class:`opencas.errors.RecordDamagedError`, never returned.

Table names beginning with ``_`` are reserved for the store's own records.

Every commit that changes a record advances the store's authenticated *state*
(:mod:`opencas.store.state`): a commit counter and a digest over every record's table, key,
version and stored bytes. A record older than the state, or deleted behind the store's back, is
reported as damaged like any other.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from opencas.errors import RecordDamagedError


@dataclass(frozen=True)
class StoreState:
    """What the attestation report says of the store: its commit counter, and a commitment to
    its digest (64 hex digits) that changes with every commit."""

    counter: int
    digest: str


@runtime_checkable
class Transaction(Protocol):
    """A unit of work: every change inside it is committed together or not at all.

    Reads inside a transaction see its own uncommitted writes. A transaction object is valid only
    inside the ``with`` block that produced it.
    """

    def get(self, table: str, key: str) -> bytes | None:
        """The value of ``table``/``key``, or ``None`` when there is no such record."""
        ...

    def get_versioned(self, table: str, key: str) -> tuple[bytes, int] | None:
        """The value and version of ``table``/``key``, or ``None`` when there is no such record."""
        ...

    def put(self, table: str, key: str, value: bytes) -> int:
        """Insert or replace ``table``/``key``; return its new version (1 on insert, else +1)."""
        ...

    def delete(self, table: str, key: str) -> bool:
        """Remove ``table``/``key``; return whether a record was there."""
        ...

    def list_keys(self, table: str, prefix: str = "") -> list[str]:
        """The keys of ``table`` that start with ``prefix``, sorted by code point."""
        ...


@runtime_checkable
class Reader(Protocol):
    """What can be read: a store, a transaction, or a snapshot."""

    def get(self, table: str, key: str) -> bytes | None:
        """The value of ``table``/``key``, or ``None``."""
        ...

    def get_versioned(self, table: str, key: str) -> tuple[bytes, int] | None:
        """The value and version of ``table``/``key``, or ``None``."""
        ...

    def list_keys(self, table: str, prefix: str = "") -> list[str]:
        """The keys of ``table`` that start with ``prefix``, sorted by code point."""
        ...


@runtime_checkable
class Store(Protocol):
    """An encrypted, durable record store.

    Reads outside a transaction see the latest committed state. A transaction commits when its
    ``with`` block ends normally and rolls back when the block raises; once the block has exited
    normally, the changes are durable.
    """

    def get(self, table: str, key: str) -> bytes | None:
        """The committed value of ``table``/``key``, or ``None`` when there is no such record."""
        ...

    def get_versioned(self, table: str, key: str) -> tuple[bytes, int] | None:
        """The committed value and version of ``table``/``key``, or ``None``."""
        ...

    def list_keys(self, table: str, prefix: str = "") -> list[str]:
        """The committed keys of ``table`` that start with ``prefix``, sorted by code point."""
        ...

    @property
    def damaged_records(self) -> tuple[RecordDamagedError, ...]:
        """The records found damaged when the store was opened; reading one raises."""
        ...

    def state(self) -> StoreState:
        """The committed state: commit counter and digest commitment."""
        ...

    def transaction(self) -> contextlib.AbstractContextManager[Transaction]:
        """Start a write transaction; commit on normal exit, roll back on exception."""
        ...

    def snapshot(self) -> contextlib.AbstractContextManager[Reader]:
        """A read-only view in which every read sees the same committed state."""
        ...

    def use_keys(self, dmk: bytes, previous_dmk: bytes | None) -> None:
        """Seal what is written from now on under ``dmk``; open records under it or, while a key
        rollover moves them, under ``previous_dmk``."""
        ...

    def close(self) -> None:
        """Release the store's resources; the store must not be used afterwards."""
        ...
