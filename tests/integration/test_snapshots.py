"""A real ``cas`` with ``[backup] interval`` writes snapshots of its store as it changes, on
SQLite and PostgreSQL, and the owner asks for one with ``casctl snapshot``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from opencas.crypto.snapshot_format import SnapshotHeader, read_header
from opencas.testing import (
    SelfProvisionedCas,
    attest_as_owner,
    run_casctl,
    start_self_provisioned_cas,
)

SESSION = 'name: snapped\nversion: "0.3"\nsecrets:\n  - name: s\n    kind: ascii\n'


@pytest.fixture(params=["sqlite", "postgres"])
def primary(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SelfProvisionedCas]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    extra = f'[backup]\ninterval = 1\ndirectory = "{snapshots}"\n'
    cas = start_self_provisioned_cas(tmp_path / "primary", database_url=url, extra_config=extra)
    yield cas
    cas.stop()


def _headers(directory: Path) -> list[SnapshotHeader]:
    return [read_header(path.read_bytes())[0] for path in sorted(directory.glob("*.ocas-snapshot"))]


def test_snapshots_follow_the_store_and_name_the_cas_commit_and_audit_head(
    tmp_path: Path, primary: SelfProvisionedCas
) -> None:
    primary.client.create_session(SESSION)
    client, verified = attest_as_owner(primary.url, primary.owner, primary.owner_config_path)
    client.close()
    report = verified.report
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        taken = [
            h for h in _headers(tmp_path / "snapshots") if h.state_counter >= report.state.counter
        ]
        if taken:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("no periodic snapshot of the latest commit was written")
    header = taken[0]
    assert header.cluster_id == report.cluster_id
    assert header.cas_key_hash == report.cas_key_hash
    assert header.audit_seq >= 1

    home = primary.owner_directory
    attested = run_casctl(home, ["attest", primary.url, "--only-for-testing-debug"])
    assert attested.returncode == 0, attested.stderr
    asked = run_casctl(home, ["snapshot"])
    assert asked.returncode == 0, asked.stderr
    assert "written: commit" in asked.stdout
    name = asked.stdout.split()[1]
    assert (tmp_path / "snapshots" / name).exists()
    log = (primary.process.directory / "audit.log").read_text().splitlines()
    written = [json.loads(line) for line in log if '"snapshot_written"' in line]
    assert any(entry["actor"] == primary.owner.key_hash for entry in written)
    assert any(entry["actor"] == "cas" for entry in written)
