"""Backups end to end with real ``cas`` processes on separate simulated machines: a primary, a
backup registered by the owner, a snapshot, the primary's machine gone, the restore on the
backup; workloads get the same secrets there, the audit log verifies across the move, and a
client that attested the primary accepts the restored CAS unless it saw a later commit. A
machine that is not a registered backup cannot restore, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from opencas.audit.chain import line_hash
from opencas.testing import CasProcess, SelfProvisionedCas, run_casctl, start_self_provisioned_cas

PROGRAM = """\
import hashlib, os
print("secret-sha256", hashlib.sha256(os.environ["APP_SECRET"].encode()).hexdigest())
"""

SESSION = """\
name: backed-up
version: "0.3"
services:
  - name: app
    environment:
      APP_SECRET: "$$CAS::secret$$"
    attestation:
      simulated_measurement: "{measurement}"
secrets:
  - name: secret
    kind: ascii
security:
  attestation:
    tolerate: [simulated]
"""
LATER_SESSION = 'name: later\nversion: "0.3"\nsecrets:\n  - name: s\n    kind: ascii\n'
EXIT_REFUSED = 4
EXIT_FRESHNESS = 5


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> tuple[str | None, str | None]:
    """The databases of the primary and of the backup machine (None: SQLite)."""
    if request.param == "sqlite":
        return None, None
    return request.getfixturevalue("postgres_url"), request.getfixturevalue("second_postgres_url")


@pytest.fixture
def primary(tmp_path: Path, backend: tuple[str | None, str | None]) -> Iterator[SelfProvisionedCas]:
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    extra = f'[backup]\ndirectory = "{snapshots}"\n'
    cas = start_self_provisioned_cas(
        tmp_path / "primary", database_url=backend[0], extra_config=extra
    )
    yield cas
    cas.stop()


@pytest.fixture
def backup(tmp_path: Path, backend: tuple[str | None, str | None]) -> Iterator[CasProcess]:
    """A machine of its own running ``cas backup``."""
    process = CasProcess(tmp_path / "backup", database_url=backend[1])
    process.start("backup")
    yield process
    process.stop()


def _casctl(home: Path, *args: str) -> str:
    done = run_casctl(home, list(args))
    assert done.returncode == 0, done.stderr
    return done.stdout


def _register(primary: SelfProvisionedCas, backup: CasProcess, name: str = "standby") -> None:
    home = primary.owner_directory
    _casctl(home, "attest", primary.url, "--only-for-testing-debug")
    said = _casctl(home, "register-backup", backup.url, "--name", name, "--only-for-testing-debug")
    assert said.startswith(f"registered backup {name} at {backup.url}: key ")


def _snapshot(primary: SelfProvisionedCas, tmp_path: Path) -> Path:
    said = _casctl(primary.owner_directory, "snapshot")
    return tmp_path / "snapshots" / said.split()[1]


def _workload(home: Path, cas: str, program: Path) -> str:
    ran = run_casctl(
        home,
        ["run", "--cas", cas, "--config-id", "backed-up/app", "--", sys.executable, str(program)],
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.strip()


def test_a_snapshot_restored_on_the_registered_backup_is_the_same_cas(
    tmp_path: Path, primary: SelfProvisionedCas, backup: CasProcess
) -> None:
    program = tmp_path / "app.py"
    program.write_text(PROGRAM)
    operator = tmp_path / "operator"
    _casctl(operator, "attest", primary.url, "--alias", "prod", "--only-for-testing-debug")
    measurement = _casctl(operator, "measure", "--", sys.executable, str(program)).strip()
    session = tmp_path / "session.yaml"
    session.write_text(SESSION.format(measurement=measurement))
    _casctl(operator, "session", "create", str(session))
    before = _workload(operator, "prod", program)

    _register(primary, backup)
    listed = json.loads(_casctl(primary.owner_directory, "list-backups", "--json"))
    assert [(each["name"], each["url"]) for each in listed] == [("standby", backup.url)]
    snapshot = _snapshot(primary, tmp_path)
    # The client saw the primary at the snapshot's commit.
    _casctl(operator, "attest", primary.url, "--alias", "prod", "--only-for-testing-debug")
    cluster_id = primary.verified.report.cluster_id
    owner_home = primary.owner_directory
    primary.process.kill()
    shutil.rmtree(primary.process.directory)  # the primary's machine is gone

    backup.stop()
    backup.start("restore", str(snapshot))
    attested = _casctl(
        operator, "attest", backup.url, "--alias", "prod", "--only-for-testing-debug"
    )
    assert "restored:          at " in attested
    shown = json.loads(_casctl(operator, "cas", "show", "prod", "--json"))
    assert shown["cluster_id"] == cluster_id
    assert _workload(operator, "prod", program) == before

    # The audit log verifies from the primary's first entry across the move.
    _casctl(owner_home, "attest", backup.url, "--alias", "restored", "--only-for-testing-debug")
    log = tmp_path / "audit.jsonl"
    _casctl(owner_home, "audit", "fetch", "--cas", "restored", "-o", str(log))
    verified = run_casctl(owner_home, ["audit", "verify", str(log), "--cas", "restored"])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert events.index("backup_registered") < events.index("restored")
    assert events.count("cas_started") >= 2
    restored = next(
        json.loads(line) for line in log.read_text().splitlines() if '"restored"' in line
    )
    assert restored["details"]["backup"] == "standby"
    assert restored["subject"] in snapshot.name
    # The restored run's first entries say from which head of the primary's log it goes on:
    # the last entry the snapshot carried, which the new run's start entry follows.
    lines = log.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if json.loads(line)["event"] == "restored")
    assert json.loads(lines[at - 1])["event"] == "cas_started"
    continued = lines[at - 2]
    assert restored["details"]["audit_head"] == line_hash(continued.encode())
    assert restored["details"]["audit_seq"] == json.loads(continued)["seq"]
    assert json.loads(lines[at - 1])["prev"] == line_hash(continued.encode())

    # The restored CAS keeps the registration, and its owner manages it there.
    _casctl(owner_home, "unregister-backup", "standby", "--cas", "restored")
    assert "no backups are registered" in _casctl(owner_home, "list-backups", "--cas", "restored")


def test_a_client_that_saw_a_later_commit_detects_an_older_restored_snapshot(
    tmp_path: Path, primary: SelfProvisionedCas, backup: CasProcess
) -> None:
    _register(primary, backup)
    snapshot = _snapshot(primary, tmp_path)
    primary.client.create_session(LATER_SESSION)
    client = tmp_path / "client"
    _casctl(client, "attest", primary.url, "--alias", "prod", "--only-for-testing-debug")
    primary.process.kill()

    backup.stop()
    backup.start("restore", str(snapshot))
    refused = run_casctl(
        client, ["attest", backup.url, "--alias", "prod", "--only-for-testing-debug"]
    )
    assert refused.returncode == EXIT_FRESHNESS, refused.stderr
    assert "was restored at" in refused.stderr
    assert "the changes after the snapshot are lost" in refused.stderr
    # A client that never saw the primary takes the restored CAS as it is.
    _casctl(tmp_path / "newcomer", "attest", backup.url, "--only-for-testing-debug")


def test_a_machine_that_is_not_a_registered_backup_cannot_restore(
    tmp_path: Path, primary: SelfProvisionedCas, backup: CasProcess
) -> None:
    _register(primary, backup)
    snapshot = _snapshot(primary, tmp_path)

    stranger = CasProcess(tmp_path / "stranger")
    stranger.start("backup")  # a backup machine, never registered
    stranger.stop()
    refused = stranger.run("restore", str(snapshot), "--no-serve")
    assert refused.returncode == EXIT_REFUSED, refused.stderr
    assert "is not registered as a backup of that CAS" in refused.stderr
    assert "only for the backups: standby" in refused.stderr
    assert not (stranger.directory / "cas.db").exists()

    bystander = CasProcess(tmp_path / "bystander")  # never ran as a backup
    refused = bystander.run("restore", str(snapshot), "--no-serve")
    assert refused.returncode == EXIT_REFUSED, refused.stderr
    assert "this machine is not a registered backup" in refused.stderr

    # The registered backup's key store does not move: copied elsewhere it does not unseal.
    copied = CasProcess(tmp_path / "copied")
    shutil.copy2(backup.directory / "cas.db.backup-key", copied.directory / "cas.db.backup-key")
    refused = copied.run("restore", str(snapshot), "--no-serve")
    assert refused.returncode == 1, refused.stderr
    assert "cannot be unsealed on this machine" in refused.stderr

    backup.stop()
    restored = backup.run("restore", str(snapshot), "--no-serve")
    assert restored.returncode == 0, restored.stderr
    again = backup.run("restore", str(snapshot), "--no-serve")
    assert again.returncode == EXIT_REFUSED
    assert "exists already" in again.stderr


def test_a_backup_below_the_primarys_security_version_is_refused_at_registration(
    tmp_path: Path,
) -> None:
    primary = start_self_provisioned_cas(
        tmp_path / "primary", platform_config="simulated_security_version = 2\n"
    )
    try:
        home = primary.owner_directory
        _casctl(home, "attest", primary.url, "--only-for-testing-debug")
        for version in (1, 2, 3):
            backup = CasProcess(
                tmp_path / f"backup-{version}",
                platform_config=f"simulated_security_version = {version}\n",
            )
            backup.start("backup")
            try:
                done = run_casctl(
                    home,
                    [
                        "register-backup",
                        backup.url,
                        "--name",
                        f"at-{version}",
                        "--only-for-testing-debug",
                    ],
                )
            finally:
                backup.stop()
            if version < 2:
                assert done.returncode == EXIT_REFUSED, done.stderr
                assert (
                    "backup refused (security-version): the backup's security version 1 is "
                    "below this CAS's 2"
                ) in done.stderr
            else:
                assert done.returncode == 0, done.stderr
                assert done.stdout.startswith(f"registered backup at-{version} at ")
        listed = json.loads(_casctl(home, "list-backups", "--json"))
        assert [(each["name"], each["isv_svn"]) for each in listed] == [("at-2", 2), ("at-3", 3)]
    finally:
        primary.stop()
