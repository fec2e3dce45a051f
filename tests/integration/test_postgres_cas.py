"""A real `cas` process on PostgreSQL: restarts, and acknowledged writes surviving kill -9."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg

from opencas.store import PostgresStore
from opencas.testing import CasProcess, attest_as_owner, start_self_provisioned_cas


def _session(name: str) -> str:
    return f'name: {name}\nversion: "0.3"\nsecrets:\n  - name: token\n    kind: ascii\n'


def test_sessions_live_in_postgres_across_a_restart(tmp_path: Path, postgres_url: str) -> None:
    cas = start_self_provisioned_cas(tmp_path, database_url=postgres_url)
    try:
        created = cas.client.create_session(_session("kept"))
        counter = cas.verified.report.state.counter
        cas.client.close()
        assert cas.process.stop() == 0
        cas.process.start()
        client, verified = attest_as_owner(cas.url, cas.owner, cas.owner_config_path)
        with client:
            read = client.read_session("kept")
        assert read.hash == created.hash
        assert verified.report.state.counter > counter
    finally:
        cas.process.stop()
    # The store is in PostgreSQL, sealed; the directory holds only the key store and the lock.
    assert not cas.process.database.exists()
    assert (cas.process.directory / "cas.db.key-store").exists()
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT value FROM records WHERE tbl = 'sessions'").fetchall()
    assert rows
    assert all(b"kept" not in bytes(value) for (value,) in rows)


def test_acknowledged_writes_survive_kill_9(tmp_path: Path, postgres_url: str) -> None:
    cas = start_self_provisioned_cas(tmp_path, database_url=postgres_url)
    acknowledged: list[str] = []
    enough = threading.Event()

    def write() -> None:
        number = 0
        while True:
            name = f"s{number}"
            try:
                cas.client.create_session(_session(name))
            except Exception:
                return  # the CAS was killed under this request
            acknowledged.append(name)
            number += 1
            if number >= 5:
                enough.set()

    writer = threading.Thread(target=write)
    try:
        writer.start()
        assert enough.wait(120)
        # No clean shutdown: the process dies while writes are under way.
        cas.process.kill()
        writer.join(60)
        assert not writer.is_alive()
        cas.process.start()
        client, _ = attest_as_owner(cas.url, cas.owner, cas.owner_config_path)
        with client:
            for name in acknowledged:
                assert client.read_session(name).revision == 1
        assert "record-damaged" not in cas.process.log()
    finally:
        cas.client.close()
        cas.process.stop()
    assert len(acknowledged) >= 5


def test_an_emptied_database_is_not_replaced_by_a_new_cas(
    tmp_path: Path, postgres_url: str
) -> None:
    cas = CasProcess(tmp_path / "cas", database_url=postgres_url)
    try:
        cas.start()
        assert cas.stop() == 0
    finally:
        cas.stop()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for table in ("schema_version", "meta", "records", "record_index", "commit_state"):
            conn.execute(f"DROP TABLE {table}")
    refused = cas.run("show-identification")
    assert refused.returncode != 0
    assert "is missing but its key store" in refused.stderr
    assert not PostgresStore.exists(postgres_url)
