"""Several `cas` instances of one CAS on one PostgreSQL database: new instances get the database
key only by attesting to a running one, serve the same CAS and write one audit log, whose mode an
owner config change at any of them sets for all, and one that dies leaves the others serving; an
instance of other software is refused and says why."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import opencas
from opencas.attestation.simulated import create_simulated_evidence
from opencas.attestation.workload_binding import ConfigId, workload_report_data
from opencas.audit.chain import ALWAYS_SIGNED, MODE_EVENT
from opencas.audit.log import FOLLOW_SECONDS
from opencas.client.cas_client import CasClient
from opencas.config.owner import OwnerConfig, parse_owner_config
from opencas.testing import (
    DEVELOPMENT_OWNER_CONFIG,
    CasProcess,
    SelfProvisionedCas,
    attest_as_owner,
    run_casctl,
    start_self_provisioned_cas,
)

JOIN_WAIT = 90.0
#: The writers of these tests upload far more sessions than the default 30 a minute.
LIMITS = {"session_uploads_per_minute": 100_000, "session_upload_burst": 10_000}
MEASUREMENT = "5a" * 32
WORKLOAD_SESSION = f"""\
name: load
version: "0.3"
services:
  - name: app
    command: ["app"]
    attestation:
      simulated_measurement: "{MEASUREMENT}"
security:
  attestation:
    tolerate: [simulated]
"""


def _session(name: str) -> str:
    return f'name: {name}\nversion: "0.3"\nsecrets:\n  - name: token\n    kind: ascii\n'


@pytest.fixture
def first(tmp_path: Path, postgres_url: str) -> Iterator[SelfProvisionedCas]:
    """The instance that created the CAS, self-provisioned, serving."""
    cas = start_self_provisioned_cas(tmp_path / "first", database_url=postgres_url, limits=LIMITS)
    try:
        yield cas
    finally:
        cas.client.close()
        cas.process.stop()


def _instance(directory: Path, postgres_url: str, started: list[CasProcess]) -> CasProcess:
    """A new instance with its own directory and only the database URL in common; started."""
    process = CasProcess(directory, database_url=postgres_url, limits=LIMITS)
    started.append(process)
    return process.start()


def _ready(url: str) -> bool:
    with httpx.Client(verify=False, timeout=10) as probe:
        return probe.get(f"{url}/readyz").status_code == 200


def _pin_with_casctl(first: SelfProvisionedCas, url: str, alias: str) -> Path:
    """casctl, as the owner, attests the instance at ``url`` and pins it as ``alias``."""
    home = first.owner_directory
    attested = run_casctl(
        home,
        [
            "attest",
            url,
            "--only-for-testing-debug",
            "--expect-owner-identity",
            str(first.owner_certificate_path),
            "--expect-owner-config",
            str(first.owner_config_path),
            "--alias",
            alias,
            "--accept-new-instance",
        ],
    )
    assert attested.returncode == 0, attested.stderr
    return home


def _fetch_and_verify(home: Path, alias: str, output: Path) -> list[dict[str, object]]:
    """The cluster's log fetched from the instance pinned as ``alias``, verified against it."""
    fetched = run_casctl(home, ["audit", "fetch", "--cas", alias, "-o", str(output)])
    assert fetched.returncode == 0, fetched.stderr
    verified = run_casctl(home, ["audit", "verify", str(output), "--cas", alias])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    entries = [json.loads(line) for line in output.read_bytes().splitlines()]
    # One sequence: 1, 2, 3, ... whichever instance wrote each entry.
    assert [entry["seq"] for entry in entries] == list(range(1, len(entries) + 1))
    return entries


def _audit_certificates(entries: list[dict[str, object]]) -> set[str]:
    starts = [entry for entry in entries if entry["event"] == "cas_started"]
    return {str(entry["details"]["audit_certificate"]) for entry in starts}  # type: ignore[index]


def _attest_workload(enclave_url: str, platform_key: Ed25519PrivateKey) -> str:
    """One simulated workload attests at ``enclave_url``; the SHA-256 of its evidence."""

    async def attest() -> str:
        key = ec.generate_private_key(ec.SECP256R1())
        public_key = base64.b64encode(
            key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).decode()
        async with httpx.AsyncClient(base_url=enclave_url, verify=False, timeout=30) as client:
            nonce = (await client.post("/v1/enclave/nonce")).json()["nonce"]
            evidence = create_simulated_evidence(
                platform_key,
                MEASUREMENT,
                workload_report_data(ConfigId("load", "app"), nonce, public_key),
            )
            answer = await client.post(
                "/v1/enclave/attest",
                json={
                    "config_id": "load/app",
                    "nonce": nonce,
                    "public_key": public_key,
                    "evidence": evidence.to_json(),
                },
            )
            answer.raise_for_status()
        return hashlib.sha256(evidence.data).hexdigest()

    return asyncio.run(attest())


@pytest.fixture
def started() -> Iterator[list[CasProcess]]:
    processes: list[CasProcess] = []
    try:
        yield processes
    finally:
        for process in processes:
            process.stop()


def test_new_instances_join_by_attestation_and_serve_the_same_cas(
    first: SelfProvisionedCas, tmp_path: Path, postgres_url: str, started: list[CasProcess]
) -> None:
    second = _instance(tmp_path / "second", postgres_url, started)
    third = _instance(tmp_path / "third", postgres_url, started)
    for joined in (second, third):
        assert "handed over the database key" in joined.log()
        assert (joined.directory / "cas.db.key-store").exists()
    # Any running instance may answer: the third's request may be the second's to answer.
    logs = [first.process.log(), second.log(), third.log()]
    assert sum(log.count("handed the database key to instance") for log in logs) == 2
    reports = {first.url: first.verified.report}
    clients = {first.url: first.client}
    try:
        for joined in (second, third):
            client, verified = attest_as_owner(joined.url, first.owner, first.owner_config_path)
            clients[joined.url] = client
            reports[joined.url] = verified.report
        # One CAS (cluster id, CAS key, owner), three instances, each with a TLS key of its own.
        assert len({report.cluster_id for report in reports.values()}) == 1
        assert len({report.cas_key_hash for report in reports.values()}) == 1
        assert len({report.instance_id for report in reports.values()}) == 3
        assert len({report.tls_key_hash for report in reports.values()}) == 3
        created = clients[first.url].create_session(_session("shared"))
        assert clients[second.url].read_session("shared").hash == created.hash
        updated = clients[third.url].update_session(
            "shared", _session("shared") + f"predecessor: {created.hash}\n"
        )
        assert clients[first.url].read_session("shared").hash == updated.hash
        # A client pinned by attesting the first instance accepts the others: their TLS
        # certificates are issued by the CAS key it pinned.
        with CasClient.pinned_to(third.url, first.verified, first.owner) as pinned:
            assert pinned.read_session("shared").hash == updated.hash
        # One audit log for the cluster, from any instance: the first's write and the third's
        # are in the log the second serves, which verifies as one chain signed by three keys.
        home = _pin_with_casctl(first, second.url, "second")
        entries = _fetch_and_verify(home, "second", tmp_path / "cluster.log")
        written = {(entry["event"], entry["subject"]) for entry in entries}
        assert {("session_created", "shared"), ("session_updated", "shared")} <= written
        assert len(_audit_certificates(entries)) == 3
        admitted = [entry for entry in entries if entry["event"] == "instance_admitted"]
        assert len(admitted) == 2
    finally:
        for url, client in clients.items():
            if url != first.url:
                client.close()
    with psycopg.connect(postgres_url) as conn:
        deadline = time.monotonic() + 30
        while True:
            rows = conn.execute("SELECT instance_id FROM cluster_instances").fetchall()
            if len(rows) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        left = conn.execute("SELECT count(*) FROM cluster_join_requests").fetchone()
    assert {row[0] for row in rows} == {report.instance_id for report in reports.values()}
    assert left == (0,)


def _other_software(tmp_path: Path) -> Path:
    """A copy of the opencas package with one more file: the same code, another measurement."""
    root = tmp_path / "other-software"
    shutil.copytree(
        Path(opencas.__file__).parent,
        root / "opencas",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    (root / "opencas" / "patched.txt").write_text("not the cluster's build\n", encoding="utf-8")
    return root


def test_an_instance_of_other_software_gets_no_key_and_says_why(
    first: SelfProvisionedCas, tmp_path: Path, postgres_url: str
) -> None:
    stranger = CasProcess(tmp_path / "stranger", database_url=postgres_url)
    argv = [
        "env",
        f"PYTHONPATH={_other_software(tmp_path)}",
        sys.executable,
        "-m",
        "opencas.cli.cas",
        "-c",
        str(stranger.config_path),
        "serve",
    ]
    stranger.start_command(argv, wait=False)
    assert stranger.process is not None
    try:
        code = stranger.process.wait(JOIN_WAIT)
    except subprocess.TimeoutExpired:
        stranger.kill()
        raise
    log = stranger.log()
    assert code == 3, log
    assert "refused this instance the database key" in log
    assert "software" in log
    assert first.verified.report.software_measurement in log
    assert not (stranger.directory / "cas.db.key-store").exists()
    assert "refused instance" in first.process.log()
    # The refusal is in the answering instance's audit log, durable before the answer.
    entries = [json.loads(line) for line in (first.process.directory / "audit.log").open()]
    refused = [entry for entry in entries if entry["event"] == "instance_refused"]
    assert len(refused) == 1, entries
    assert refused[0]["details"]["check"] == "software"
    # The cluster serves on, unchanged.
    assert first.client.whoami() == first.owner.key_hash


def test_a_killed_instance_leaves_the_others_serving_every_acknowledged_write(
    first: SelfProvisionedCas, tmp_path: Path, postgres_url: str, started: list[CasProcess]
) -> None:
    first.client.create_session(WORKLOAD_SESSION)
    second = _instance(tmp_path / "second", postgres_url, started)
    third = _instance(tmp_path / "third", postgres_url, started)
    clients = {first.url: first.client}
    for instance in (second, third):
        clients[instance.url], _ = attest_as_owner(
            instance.url, first.owner, first.owner_config_path
        )
    enclaves = {
        first.url: f"https://127.0.0.1:{first.process.enclave_port}",
        second.url: f"https://127.0.0.1:{second.enclave_port}",
        third.url: f"https://127.0.0.1:{third.enclave_port}",
    }
    updated: list[str] = []  # the hash of every acknowledged session update
    attested: list[str] = []  # the evidence hash of every acknowledged attestation
    lock = threading.Lock()
    enough = threading.Event()
    stop = threading.Event()
    failures: list[BaseException] = []

    def acknowledge(into: list[str], value: str) -> None:
        with lock:
            into.append(value)
            if len(updated) >= 15 and len(attested) >= 15:
                enough.set()

    def update(url: str, name: str) -> None:
        client = clients[url]
        try:
            current = client.create_session(_session(name)).hash
        except Exception as exc:
            failures.append(exc)
            return
        while not stop.is_set():
            text = _session(name) + f"predecessor: {current}\n"
            try:
                current = client.update_session(name, text).hash
            except Exception as exc:
                if url != second.url:
                    failures.append(exc)
                return  # the killed instance's writers stop at the kill
            acknowledge(updated, current)

    def attest(url: str) -> None:
        platform_key = Ed25519PrivateKey.generate()
        while not stop.is_set():
            try:
                digest = _attest_workload(enclaves[url], platform_key)
            except Exception as exc:
                if url != second.url:
                    failures.append(exc)
                return
            acknowledge(attested, digest)

    writers = [
        threading.Thread(target=work, args=args)
        for url, name in ((first.url, "a"), (second.url, "b"), (third.url, "c"))
        for work, args in ((update, (url, name)), (attest, (url,)))
    ]
    try:
        for writer in writers:
            writer.start()
        assert enough.wait(120), failures
        # Killed amid session updates and attestations: no shutdown, no cas_stopped.
        second.kill()
        # The others go on acknowledging writes while the second is gone.
        with lock:
            before = len(updated) + len(attested)
        deadline = time.monotonic() + 60
        while len(updated) + len(attested) < before + 12 and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        for writer in writers:
            writer.join(60)
        assert not failures, failures
        assert len(updated) + len(attested) >= before + 12
        assert _ready(first.url)
        assert _ready(third.url)
        # The killed instance comes back with its own key store: no join needed.
        second.start()
        assert second.log().count("asking the running instances") == 1
        client, _ = attest_as_owner(second.url, first.owner, first.owner_config_path)
        with client:
            assert client.read_session("b").revision >= 1
        # Every acknowledged write is in the cluster's log, fetched from the restarted
        # instance, and the log verifies as one chain, intact (exit 0): a state change's entry
        # is appended in the change's own transaction, so a kill between the two leaves
        # neither, and no entry after the restart says that an operation failed (exit 10, as
        # each instance's own file chain did when a kill fell between an entry's fsync and its
        # change's commit).
        home = _pin_with_casctl(first, second.url, "second")
        entries = _fetch_and_verify(home, "second", tmp_path / "cluster.log")
    finally:
        stop.set()
        for url, client in clients.items():
            if url != first.url:
                client.close()
    logged_updates = {
        entry["details"]["hash"]  # type: ignore[index]
        for entry in entries
        if entry["event"] == "session_updated"
    }
    logged_attestations = {
        entry["details"]["evidence_sha256"]  # type: ignore[index]
        for entry in entries
        if entry["event"] == "workload_attested"
    }
    assert set(updated) <= logged_updates
    assert set(attested) <= logged_attestations
    # Three instances' keys; four starts (the second twice), and the second never stopped.
    assert len(_audit_certificates(entries)) == 3
    assert sum(entry["event"] == "cas_started" for entry in entries) == 4
    first.process.stop()
    for process in (first.process, second, third):
        process.stop()
        assert "record-damaged" not in process.log()


def _mode_config_text(mode: str) -> str:
    """The owner config the first instance was provisioned with, but the audit log's mode."""
    return DEVELOPMENT_OWNER_CONFIG + f'[audit_log]\nmode = "{mode}"\n'


def _owner_config_with_mode(mode: str) -> OwnerConfig:
    return parse_owner_config(_mode_config_text(mode), "owner-config.toml", "toml").config


def _stored_entries(postgres_url: str) -> list[dict[str, object]]:
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT line FROM audit_entries ORDER BY position").fetchall()
    return [json.loads(row[0]) for row in rows]


def test_an_owner_config_change_at_one_instance_sets_the_audit_mode_of_every_instance(
    first: SelfProvisionedCas, tmp_path: Path, postgres_url: str, started: list[CasProcess]
) -> None:
    second = _instance(tmp_path / "second", postgres_url, started)
    third = _instance(tmp_path / "third", postgres_url, started)
    clients = {"first": first.client}
    for name, instance in (("second", second), ("third", third)):
        clients[name], _ = attest_as_owner(instance.url, first.owner, first.owner_config_path)

    def write_and_read(phase: str, names: tuple[str, ...]) -> None:
        """A state change (a session created) and a read through each named instance, at once
        after the change: no instance restarted or waited for anything."""
        for name in names:
            clients[name].create_session(_session(f"{phase}-{name}"))
            clients[name].read_session(f"{phase}-{name}")

    try:
        # Each change goes through another instance than the ones that write after it.
        clients["first"].update_owner_config(_owner_config_with_mode("unsigned"))
        write_and_read("unsigned", ("second", "third"))
        clients["third"].update_owner_config(_owner_config_with_mode("disabled"))
        write_and_read("disabled", ("first", "second"))
        clients["second"].update_owner_config(_owner_config_with_mode("signed"))
        write_and_read("signed", ("first", "third"))
        # An instance that changes nothing (the first's reads do not go through the head row
        # while it is disabled) takes the change up within FOLLOW_SECONDS by itself.
        clients["second"].update_owner_config(_owner_config_with_mode("disabled"))
        clients["first"].read_session("signed-first")  # not logged: the log is off
        clients["third"].update_owner_config(_owner_config_with_mode("unsigned"))
        changed = time.monotonic()
        deadline = changed + FOLLOW_SECONDS + 30
        while True:
            clients["first"].read_session("unsigned-second")
            reads = [
                entry
                for entry in _stored_entries(postgres_url)
                if (entry["event"], entry["subject"]) == ("session_read", "unsigned-second")
            ]
            if len(reads) == 2:  # the second's own read, and the first's after the change
                break
            assert time.monotonic() < deadline, "the first instance never took the change up"
            time.sleep(0.1)
        followed_within = time.monotonic() - changed
        # What casctl is to expect of the CAS now.
        first.owner_config_path.write_text(_mode_config_text("unsigned"), encoding="utf-8")
        home = _pin_with_casctl(first, second.url, "second")
        entries = _fetch_and_verify(home, "second", tmp_path / "cluster.log")
    finally:
        for name, client in clients.items():
            if name != "first":
                client.close()
    # Along the chain, every entry follows the mode of the last change before it, whichever
    # instance wrote either.
    mode = "signed"
    subjects: dict[str, list[tuple[str, bool]]] = {}
    for entry in entries:
        if entry["event"] == MODE_EVENT:
            mode = str(entry["details"]["to"])  # type: ignore[index]
            continue
        signed = entry["sig"] is not None
        subjects.setdefault(str(entry["subject"]), []).append((str(entry["event"]), signed))
        if entry["event"] in ALWAYS_SIGNED:
            assert signed
        elif mode == "disabled":
            pytest.fail(f"an entry while the log was disabled: {entry}")
        else:
            assert signed == (mode == "signed"), (mode, entry)
    # (The second's session was read once more at the end, by the first.)
    assert subjects["unsigned-second"] == [
        ("session_created", False),
        *[("session_read", False)] * 2,
    ]
    assert subjects["unsigned-third"] == [("session_created", False), ("session_read", False)]
    for name in ("first", "second"):
        assert f"disabled-{name}" not in subjects
    for name in ("first", "third"):
        assert subjects[f"signed-{name}"] == [("session_created", True), ("session_read", True)]
    changes = [entry for entry in entries if entry["event"] == MODE_EVENT]
    assert [entry["details"]["to"] for entry in changes] == [  # type: ignore[index]
        "unsigned",
        "disabled",
        "signed",
        "disabled",
        "unsigned",
    ]
    # The poll's bound, with room for a loaded machine.
    assert followed_within < FOLLOW_SECONDS + 10
    # Each instance took up a change another one made.
    for log in (first.process.log(), second.log(), third.log()):
        assert "following the owner config" in log


def _served_dns_names(port: int) -> set[str]:
    """The DNS names of the TLS certificate that the listener on ``port`` presents now."""
    pem = ssl.get_server_certificate(("127.0.0.1", port))
    certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return set(names.value.get_values_for_type(x509.DNSName))


def test_an_owner_config_change_reaches_the_evidence_archive_and_tls_names_of_the_others(
    first: SelfProvisionedCas, tmp_path: Path, postgres_url: str, started: list[CasProcess]
) -> None:
    first.client.create_session(WORKLOAD_SESSION)
    second = _instance(tmp_path / "second", postgres_url, started)
    enclave = f"https://127.0.0.1:{second.enclave_port}"
    archive = second.directory / "audit.log.evidence"
    platform_key = Ed25519PrivateKey.generate()
    _attest_workload(enclave, platform_key)
    assert not archive.exists() or not any(archive.iterdir())  # not kept: the config says not
    assert "cas-follow.example" not in _served_dns_names(second.api_port)

    text = (
        '[api_identity]\ncommon_name = "localhost"\nalt_names = ["cas-follow.example"]\n\n'
        "[audit_log]\nkeep_evidence = true\n"
    )
    first.client.update_owner_config(parse_owner_config(text, "owner-config.toml", "toml").config)

    # The second instance answered nothing of this change and is not restarted.
    deadline = time.monotonic() + FOLLOW_SECONDS + 30
    kept: set[str] = set()
    while not kept:
        digest = _attest_workload(enclave, platform_key)
        kept = {path.name for path in archive.iterdir()} if archive.exists() else set()
        if kept:
            assert digest in kept, (digest, kept)
        assert time.monotonic() < deadline, "the second instance never kept evidence"
        time.sleep(0.1)
    while "cas-follow.example" not in _served_dns_names(second.api_port):
        assert time.monotonic() < deadline, "the second instance never took the new names up"
        time.sleep(0.1)
    assert "cas-follow.example" in _served_dns_names(second.enclave_port)
