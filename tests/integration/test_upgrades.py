"""Upgrading a CAS to a registered build with real processes, on SQLite (the new build opens the
database directly or, where the key store is sealed to the old build, attests to the running
one) and on PostgreSQL (it attests to a running instance): an unregistered build gets nothing
and says why, the registered one serves the same CAS and migrates its store, and the old build
then refuses the migrated store."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

import opencas
from opencas.platform.measurement import measure_directory
from opencas.testing import CasProcess, SelfProvisionedCas, attest_as_owner, run_casctl
from opencas.testing import start_self_provisioned_cas as start_cas

WAIT = 90.0
#: A simulated machine that seals to the build's measurement, as Gramine SGX's MRENCLAVE key.
SEALED_TO_BUILD = 'simulated_sealing = "measurement"\n'
EXPORTING = (
    'name: kept\nversion: "0.3"\nsecrets:\n  - name: ca\n    kind: x509-ca\n'
    "    export_public: true\n"
)
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


def _beside(process: CasProcess, name: str) -> CasProcess:
    """Another process on the same config, database and ports, logging to ``name``.log."""
    other = CasProcess(
        process.directory,
        api_port=process.api_port,
        enclave_port=process.enclave_port,
        platform_config=process.platform_config,
    )
    other.log_path = process.directory / f"{name}.log"
    return other


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {WAIT} s"
        time.sleep(0.1)


def test_on_sqlite_sealed_to_the_build_the_new_build_gets_the_key_from_the_running_one(
    tmp_path: Path,
) -> None:
    cas = start_cas(tmp_path / "cas", platform_config=SEALED_TO_BUILD)
    process = cas.process
    old = cas.verified.report.software_measurement
    root, new = _build(tmp_path, "next", old)
    key_store = process.database.with_name("cas.db.key-store")
    pending = process.database.with_name("cas.db.key-store.next")
    old_key_store = key_store.read_bytes()
    newcomer = _beside(process, "next")
    home = cas.owner_directory
    try:
        created = cas.client.create_session(EXPORTING)
        values = cas.client.session_values("kept")
        # Not registered: the running build refuses it the key, and both say why.
        _serve_as(newcomer, root, wait=False)
        assert _exit_code(newcomer) == 3
        log = newcomer.log()
        assert "refused this build the database key" in log
        assert "no registered upgrade names it" in log
        assert not pending.exists()
        refused = [e for e in _audit_events(process.directory) if e["event"] == "instance_refused"]
        assert len(refused) == 1
        assert new in str(refused[0]["details"]["reason"])  # type: ignore[index]

        cas.client.register_upgrade(new)
        # Registered: it gets the key and waits; killed there, the old build starts as before.
        _serve_as(newcomer, root, wait=False)
        _wait_for(lambda: "waits for the running instance" in newcomer.log(), "key handed over")
        assert pending.exists()
        newcomer.kill()
        assert cas.stop() == 0
        cas = _restart_old(process, cas)
        assert cas.client.read_session("kept").hash == created.hash
        assert key_store.read_bytes() == old_key_store

        _serve_as(newcomer, root, wait=False)
        _wait_for(lambda: newcomer.log().count("waits for the running instance") == 2, "wait")
        admitted = [
            e for e in _audit_events(process.directory) if e["event"] == "instance_admitted"
        ]
        assert [e["details"]["basis"] for e in admitted] == ["registered-upgrade"] * 2  # type: ignore[index]
        assert cas.client.read_session("kept").hash == created.hash
    finally:
        cas.stop()
        if newcomer.process is not None and newcomer.process.poll() is not None:
            newcomer.process = None
    # The old build stopped: the new one takes over and serves the same CAS.
    try:
        newcomer.wait_healthy(WAIT)
        client, verified = attest_as_owner(newcomer.url, cas.owner, cas.owner_config_path)
        with client:
            assert verified.report.software_measurement == new
            assert verified.report.cas_key_hash == cas.verified.report.cas_key_hash
            assert client.read_session("kept").hash == created.hash
            assert client.session_values("kept") == values
        assert not pending.exists()
        assert key_store.read_bytes() != old_key_store
        attested = run_casctl(home, ["attest", newcomer.url, "--only-for-testing-debug"])
        assert attested.returncode == 0, attested.stderr
        alias = newcomer.url.removeprefix("https://")
        audit_log = str(process.directory / "audit.log")
        verified_log = run_casctl(home, ["audit", "verify", audit_log, "--cas", alias])
        assert verified_log.returncode == 0, verified_log.stdout + verified_log.stderr
        # The old build, started while the new one serves, is refused the key by it.
        late = _beside(process, "late")
        late.start(wait=False)
        assert _exit_code(late) == 3
        assert "refused this build the database key" in late.log()
    finally:
        newcomer.stop()
    upgraded = [e for e in _audit_events(process.directory) if e["event"] == "software_upgraded"]
    assert [e["details"]["basis"] for e in upgraded] == ["registered-upgrade"]  # type: ignore[index]

    # A crash after the takeover committed, before the new key store was in place: the old
    # build refuses the migrated store, the new one starts and puts its key store in place.
    new_key_store = key_store.read_bytes()
    key_store.rename(pending)
    key_store.write_bytes(old_key_store)
    refused_store = process.run("show-identification")
    assert refused_store.returncode == 1
    assert "record schema version 2" in refused_store.stderr
    _serve_as(newcomer, root, wait=True)
    try:
        assert key_store.read_bytes() == new_key_store
        assert not pending.exists()
    finally:
        newcomer.stop()
    # And the old build cannot unseal the new build's key store.
    cannot = process.run("show-identification")
    assert cannot.returncode == 1
    assert f"sealed to the build with measurement {new}" in cannot.stderr
