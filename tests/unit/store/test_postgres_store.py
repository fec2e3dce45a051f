"""What only the PostgreSQL store has: versioned migrations, its URL, its sessions' settings."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from opencas.database_url import redact_url
from opencas.errors import StoreError
from opencas.store import PostgresStore, Transaction
from opencas.store.postgres import SCHEMA_VERSION

DMK = bytes(range(32))


def _nothing(tx: Transaction) -> None:
    return None


def _one(url: str, sql: str) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql).fetchone()


def test_create_records_every_migration(postgres_url: str) -> None:
    PostgresStore.create(postgres_url, DMK, _nothing).close()
    assert SCHEMA_VERSION >= 1
    assert _one(postgres_url, "SELECT array_agg(version ORDER BY version) FROM schema_version")[
        0
    ] == list(range(1, SCHEMA_VERSION + 1))
    assert _one(postgres_url, "SELECT value FROM meta WHERE name = 'format'")[0] == (
        "opencas-store/2"
    )
    assert PostgresStore.exists(postgres_url)


def test_a_newer_schema_is_refused_clearly(postgres_url: str) -> None:
    PostgresStore.create(postgres_url, DMK, _nothing).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1}, newer than"):
        PostgresStore.open(postgres_url, DMK)


def test_an_empty_database_is_not_a_store(postgres_url: str) -> None:
    assert not PostgresStore.exists(postgres_url)
    with pytest.raises(StoreError, match="holds no OpenCAS store"):
        PostgresStore.open(postgres_url, DMK)


def test_a_store_is_not_created_twice(postgres_url: str) -> None:
    PostgresStore.create(postgres_url, DMK, lambda tx: tx.put("t", "a", b"1")).close()
    with pytest.raises(StoreError, match="already holds an OpenCAS store"):
        PostgresStore.create(postgres_url, DMK, _nothing)
    with PostgresStore.open(postgres_url, DMK) as store:
        assert store.get("t", "a") == b"1"


def test_before_publish_raising_leaves_nothing(postgres_url: str) -> None:
    def refuse() -> None:
        raise OSError("key store not written")

    with pytest.raises(OSError, match="key store not written"):
        PostgresStore.create(postgres_url, DMK, _nothing, before_publish=refuse)
    assert not PostgresStore.exists(postgres_url)


def test_sessions_commit_synchronously(postgres_url: str) -> None:
    with (
        PostgresStore.create(postgres_url, DMK, _nothing) as store,
        store._pool.connection() as conn,
    ):
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)


def test_an_unreachable_database_is_named_without_its_password() -> None:
    url = "postgresql://cas:hunter2-secret@127.0.0.1:1/cas"
    with pytest.raises(StoreError) as caught:
        PostgresStore.open(url, DMK, pool_size=1)
    assert "hunter2" not in str(caught.value)
    assert "postgresql://cas:***@127.0.0.1:1/cas" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://cas:pw@db.example:5432/cas", "postgresql://cas:***@db.example:5432/cas"),
        (
            "postgres://cas:p%40ss@[::1]/cas?sslmode=require",
            "postgres://cas:***@[::1]/cas?sslmode=require",
        ),
        ("postgresql://cas@db/cas", "postgresql://cas@db/cas"),
        ("postgresql:///cas?host=/run/postgresql", "postgresql:///cas?host=/run/postgresql"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_snapshot_reads_repeatably_and_leaves_the_connection_read_write(
    postgres_url: str,
) -> None:
    with PostgresStore.create(postgres_url, DMK, lambda tx: tx.put("t", "a", b"1")) as store:
        for round_ in range(1, 4):
            with store.snapshot() as view:
                conn = view._rows._conn  # type: ignore[attr-defined]
                # The level is in the BEGIN itself: no SET TRANSACTION follows it.
                assert conn.execute("SHOW transaction_isolation").fetchone() == ("repeatable read",)
                assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
                assert view.get("t", "a") == str(round_).encode()
            # The connection goes back to the pool out of any transaction.
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            with store.transaction() as tx:
                tx.put("t", "a", str(round_ + 1).encode())
            with store._pool.connection() as other, other.transaction():
                assert other.execute("SHOW transaction_read_only").fetchone() == ("off",)
        assert store.get("t", "a") == b"4"
