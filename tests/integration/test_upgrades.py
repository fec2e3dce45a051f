"""Upgrading a CAS to a registered build with real processes, on SQLite (the new build opens the
database directly) and on PostgreSQL (it attests to a running instance): an unregistered build
gets nothing and says why, the registered one serves the same CAS and migrates its store, and
the old build then refuses the migrated store."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

import opencas
from opencas.platform.measurement import measure_directory
from opencas.testing import CasProcess, SelfProvisionedCas, attest_as_owner, run_casctl
from opencas.testing import start_self_provisioned_cas as start_cas

WAIT = 90.0
SESSION = 'name: kept\nversion: "0.3"\nsecrets:\n  - name: token\n    kind: ascii\n'
# What a release that reshapes records adds: migration 2 (it writes one record of its own).
MIGRATION_2 = """

def _release_2(txn: Transaction) -> None:
    txn.put("release-2", "migrated", b"{}")


STORE_MIGRATIONS = (*STORE_MIGRATIONS, StoreMigration(2, "release 2", _release_2))
STORE_SCHEMA_VERSION = len(STORE_MIGRATIONS)
"""


def _build(tmp_path: Path, name: str, predecessor: str) -> tuple[Path, str]:
    """A copy of the opencas package as the next release would be: it names the running build
    as its predecessor and adds store migration 2. Returns its root and measurement."""
    root = tmp_path / name
    package = root / "opencas"
    shutil.copytree(
        Path(opencas.__file__).parent,
        package,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    predecessors = package / "attestation" / "predecessors.py"
    text = predecessors.read_text(encoding="utf-8")
    assert "] = ()" in text
    predecessors.write_text(text.replace("] = ()", f'] = ("{predecessor}",)'), encoding="utf-8")
    with (package / "service" / "store_migrations.py").open("a", encoding="utf-8") as migrations:
        migrations.write(MIGRATION_2)
    return root, measure_directory(package)


def _serve_as(process: CasProcess, root: Path, wait: bool) -> CasProcess:
    argv = [
        "env",
        f"PYTHONPATH={root}",
        sys.executable,
        "-m",
        "opencas.cli.cas",
        "-c",
        str(process.config_path),
        "serve",
    ]
    return process.start_command(argv, wait=wait)


def _exit_code(process: CasProcess) -> int:
    assert process.process is not None
    try:
        return process.process.wait(WAIT)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def _audit_events(directory: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (directory / "audit.log").open(encoding="utf-8")]


def test_on_sqlite_a_registered_build_takes_over_and_an_unregistered_one_is_refused(
    tmp_path: Path,
) -> None:
    cas = start_cas(tmp_path / "cas")
    process = cas.process
    old = cas.verified.report.software_measurement
    root, new = _build(tmp_path, "next", old)
    try:
        created = cas.client.create_session(SESSION)
        home = cas.owner_directory
        attested = run_casctl(home, ["attest", cas.url, "--only-for-testing-debug"])
        assert attested.returncode == 0, attested.stderr
        listed = run_casctl(home, ["list-upgrades"])
        assert (listed.returncode, listed.stdout.strip()) == (0, "no upgrades are registered")
    finally:
        cas.stop()

    # Not registered: it unseals the key store (a simulated machine's sealing allows it) but
    # serves nothing, and says why.
    _serve_as(process, root, wait=False)
    assert _exit_code(process) == 3
    log = process.log()
    assert "this build may not serve the CAS" in log
    assert new in log
    assert old in log
    assert "casctl register-upgrade" in log

    cas = _restart_old(process, cas)
    try:
        registered = run_casctl(home, ["register-upgrade", "--measurement", new])
        assert registered.returncode == 0, registered.stderr
        assert f"registered: measurement {new}" in registered.stdout
        listed = run_casctl(home, ["list-upgrades", "--json"])
        assert [entry["measurement"] for entry in json.loads(listed.stdout)] == [new]
    finally:
        cas.stop()

    _serve_as(process, root, wait=True)
    try:
        client, verified = attest_as_owner(process.url, cas.owner, cas.owner_config_path)
        with client:
            assert verified.report.software_measurement == new
            assert verified.report.cas_key_hash == cas.verified.report.cas_key_hash
            assert client.read_session("kept").hash == created.hash
    finally:
        process.stop()
    upgraded = [e for e in _audit_events(process.directory) if e["event"] == "software_upgraded"]
    assert len(upgraded) == 1
    assert upgraded[0]["details"] == {
        "previous": old,
        "basis": "registered-upgrade",
        "store_schema_before": 1,
        "store_schema_after": 2,
    }
    assert any(e["event"] == "upgrade_registered" for e in _audit_events(process.directory))

    # The old build refuses the store the new one migrated.
    refused = process.run("show-identification")
    assert refused.returncode == 1
    assert "record schema version 2" in refused.stderr
    assert new in refused.stderr


def _restart_old(process: CasProcess, before: SelfProvisionedCas) -> SelfProvisionedCas:
    process.start()
    client, verified = attest_as_owner(process.url, before.owner, before.owner_config_path)
    return SelfProvisionedCas(
        process, before.owner, before.owner_directory, before.owner_config_path, verified, client
    )


def test_on_postgresql_a_registered_build_joins_by_attesting_and_an_unregistered_one_is_refused(
    tmp_path: Path, postgres_url: str
) -> None:
    first = start_cas(tmp_path / "first", database_url=postgres_url)
    joined = CasProcess(tmp_path / "next", database_url=postgres_url)
    late = CasProcess(tmp_path / "late", database_url=postgres_url)
    try:
        old = first.verified.report.software_measurement
        root, new = _build(tmp_path, "next-build", old)
        created = first.client.create_session(SESSION)

        _serve_as(joined, root, wait=False)
        assert _exit_code(joined) == 3
        log = joined.log()
        assert "refused this instance the database key" in log
        assert "no registered upgrade names it" in log
        assert not (joined.directory / "cas.db.key-store").exists()

        entry = first.client.register_upgrade(new)
        assert [each.upgrade_id for each in first.client.list_upgrades()] == [entry.upgrade_id]
        _serve_as(joined, root, wait=True)
        assert "handed over the database key" in joined.log()
        client, verified = attest_as_owner(joined.url, first.owner, first.owner_config_path)
        with client:
            assert verified.report.software_measurement == new
            assert verified.report.cluster_id == first.verified.report.cluster_id
            assert client.read_session("kept").hash == created.hash
        events = _audit_events(first.process.directory)
        admitted = [e for e in events if e["event"] == "instance_admitted"]
        assert [e["details"]["basis"] for e in admitted] == ["registered-upgrade"]  # type: ignore[index]
        # The new build migrated the store past what the old instance reads: it stops being
        # ready, and says why, rather than read records shaped by a newer build.
        with httpx.Client(verify=False, timeout=10) as probe:
            answer = probe.get(f"{first.url}/readyz")
        assert answer.status_code == 503
        assert "record schema version 2" in answer.text
        # The old build gets no key once the new one took over, not even from the instance of
        # its own build that still runs: it is checked against the build the store records.
        joined.stop()
        _serve_as(late, Path(opencas.__file__).parent.parent, wait=False)
        assert _exit_code(late) == 3
        assert "refused this instance the database key" in late.log()
        assert not (late.directory / "cas.db.key-store").exists()
        refused = [
            e for e in _audit_events(first.process.directory) if e["event"] == "instance_refused"
        ]
        assert "no registered upgrade names it" in str(refused[-1]["details"]["reason"])  # type: ignore[index]
    finally:
        late.stop()
        joined.stop()
        first.stop()
