"""A store edited behind a stopped CAS: older rows, deleted rows and a restored older database.

Whoever has the disk copies an older row of a session and of its secrets back (to restore a
revoked reader or a rotated secret), deletes a row, or puts a whole older database and key store
back. The CAS refuses the records it did not commit, and casctl sees the whole-database rollback.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from opencas.client import ApiError
from opencas.testing import (
    SelfProvisionedCas,
    attest_as_owner,
    run_casctl,
    start_self_provisioned_cas,
)

VICTIM = "payroll-Distinctive-Victim"
DELETED = "ledger-Distinctive-Deleted"


def _session(name: str, reader: str) -> str:
    return (
        f'name: {name}\nversion: "0.3"\n# readers: {reader}\n'
        "secrets:\n  - name: rotated-Distinctive-Secret\n    kind: ascii\n"
    )


def _row(cas: SelfProvisionedCas, table: str, name: str) -> tuple[object, ...]:
    record_id = cas.process.record_id(table, name)
    with sqlite3.connect(cas.process.database) as db:
        row = db.execute(
            "SELECT tbl, key, version, value FROM records WHERE tbl = ? AND key = ?",
            (table, record_id),
        ).fetchone()
    assert row is not None
    return tuple(row)


def _database_bytes(cas: SelfProvisionedCas) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(cas.process.directory.glob("cas.db*")))


@pytest.fixture
def cas(tmp_path: Path) -> SelfProvisionedCas:
    started = start_self_provisioned_cas(tmp_path)
    try:
        started.client.create_session(_session(VICTIM, "alice, bob"))
        started.client.create_session(_session(DELETED, "carol"))
        # While it runs, the WAL holds the latest writes: no name may be in clear there either.
        raw = _database_bytes(started)
    finally:
        started.stop()
    for name in (VICTIM, DELETED, "rotated-Distinctive-Secret", "alice, bob"):
        assert name.encode() not in raw
        assert name.encode() not in _database_bytes(started)
    return started


def _restart(cas: SelfProvisionedCas) -> SelfProvisionedCas:
    cas.process.start()
    client, verified = attest_as_owner(cas.url, cas.owner, cas.owner_config_path)
    cas.client, cas.verified = client, verified
    return cas


def test_older_and_deleted_rows_are_refused_and_named(cas: SelfProvisionedCas) -> None:
    old_session = _row(cas, "sessions", VICTIM)
    old_secrets = _row(cas, "session-secrets", VICTIM)
    _restart(cas)
    try:
        read = cas.client.read_session(VICTIM)
        cas.client.update_session(
            VICTIM, f'predecessor: "{read.hash}"\n' + _session(VICTIM, "alice")
        )
    finally:
        cas.stop()
    deleted_id = cas.process.record_id("session-secrets", DELETED)
    with sqlite3.connect(cas.process.database) as db:
        db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)", old_session)
        db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)", old_secrets)
        db.execute("DELETE FROM records WHERE tbl = 'session-secrets' AND key = ?", (deleted_id,))
    _restart(cas)
    try:
        log = cas.process.log()
        for named in (
            f"sessions/{VICTIM}",
            f"session-secrets/{VICTIM}",
            f"session-secrets/{DELETED}",
        ):
            assert f"record-damaged at open: stored record {named} is damaged" in log
        with pytest.raises(ApiError) as refused:
            cas.client.read_session(VICTIM)
        assert refused.value.code == "record-damaged"
        assert f"sessions/{VICTIM}" in refused.value.message
    finally:
        cas.stop()


def test_restored_older_database_is_reported_by_casctl(
    cas: SelfProvisionedCas, tmp_path: Path
) -> None:
    backup = tmp_path / "backup"
    backup.mkdir()
    for name in ("cas.db", "cas.db.key-store", "audit.log"):
        shutil.copy2(cas.process.directory / name, backup / name)
    home = cas.owner_directory
    _restart(cas)
    try:
        read = cas.client.read_session(VICTIM)
        cas.client.update_session(
            VICTIM, f'predecessor: "{read.hash}"\n' + _session(VICTIM, "alice")
        )
        attested = run_casctl(home, ["attest", cas.url, "--only-for-testing-debug"])
        assert attested.returncode == 0, attested.stderr
    finally:
        cas.stop()
    for leftover in cas.process.directory.glob("cas.db*"):
        if leftover.name != "cas.db.lock":
            leftover.unlink()
    for name in ("cas.db", "cas.db.key-store"):
        shutil.copy2(backup / name, cas.process.directory / name)
    # The older database under the newer audit log: the log records an update it does not hold.
    refused = cas.process.run("serve", timeout=60)
    assert refused.returncode != 0
    assert "older than its audit log" in refused.stderr
    # With the log taken with it, the CAS starts, and casctl sees that its state went back.
    shutil.copy2(backup / "audit.log", cas.process.directory / "audit.log")
    _restart(cas)
    try:
        again = run_casctl(home, ["attest", cas.url, "--only-for-testing-debug"])
    finally:
        cas.stop()
    assert again.returncode == 5
    assert "went back" in again.stderr
