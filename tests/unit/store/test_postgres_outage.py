"""A PostgreSQL store whose database goes away fails closed, and recovers by itself.

The database is cut by a proxy in front of it (the server, which other tests share, keeps
running): every pooled connection dies at once, as after a server restart.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from opencas.errors import DatabaseUnavailable
from opencas.store import PostgresStore, Transaction
from opencas.store.postgres import CONNECT_TIMEOUT_SECONDS

DMK = bytes(range(32))
# A refusal must come within the pool's wait for a connection (and a retry of the read).
REFUSED_WITHIN = 2 * CONNECT_TIMEOUT_SECONDS + 5


def _read_when_back(store: PostgresStore, within: float = 60.0) -> bytes | None:
    deadline = time.monotonic() + within
    while True:
        try:
            return store.get("t", "a")
        except DatabaseUnavailable:
            if time.monotonic() > deadline:
                raise


def _record(tx: Transaction) -> None:
    tx.put("t", "a", b"before")


def test_a_cut_database_is_refused_as_unavailable_then_served_again(
    postgres_proxy: tuple[Any, str],
) -> None:
    proxy, url = postgres_proxy
    store = PostgresStore.create(url, DMK, _record)
    try:
        assert store.get("t", "a") == b"before"
        proxy.cut()
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable) as refused:
            store.get("t", "a")
        assert time.monotonic() - started < REFUSED_WITHIN
        assert refused.value.http_status == 503
        assert refused.value.code == "database-unavailable"
        assert "reading t/a" in refused.value.message
        with pytest.raises(DatabaseUnavailable), store.transaction() as txn:
            txn.put("t", "a", b"lost")
        with pytest.raises(DatabaseUnavailable):
            store.guards.add_proof("key", "jti", time.time() + 60)
        proxy.restore()
        # Served again without a restart, once the pool has reconnected (it retries with a
        # growing delay while the database is away).
        assert _read_when_back(store) == b"before"
        with store.transaction() as txn:
            txn.put("t", "a", b"after")
        assert store.get("t", "a") == b"after"
        assert store.guards.add_proof("key", "jti", time.time() + 60)
    finally:
        store.close()


def test_the_first_read_after_every_connection_died_is_served(
    postgres_proxy: tuple[Any, str],
) -> None:
    proxy, url = postgres_proxy
    store = PostgresStore.create(url, DMK, _record)
    try:
        assert store.get("t", "a") == b"before"
        # Every pooled connection dies, and the database is back before the next request: as
        # after a server restart between two requests.
        proxy.cut()
        proxy.restore()
        assert store.get("t", "a") == b"before"
        assert store.state().counter == 1
    finally:
        store.close()
