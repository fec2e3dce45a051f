"""Several `cas` instances of one CAS on one PostgreSQL database: new instances get the database
key only by attesting to a running one, serve the same CAS, and one that dies leaves the others
serving; an instance of other software is refused and says why."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

import opencas
from opencas.audit.chain import line_hash
from opencas.client.cas_client import CasClient
from opencas.testing import (
    CasProcess,
    SelfProvisionedCas,
    attest_as_owner,
    run_casctl,
    start_self_provisioned_cas,
)

JOIN_WAIT = 90.0


def _session(name: str) -> str:
    return f'name: {name}\nversion: "0.3"\nsecrets:\n  - name: token\n    kind: ascii\n'


@pytest.fixture
def first(tmp_path: Path, postgres_url: str) -> Iterator[SelfProvisionedCas]:
    """The instance that created the CAS, self-provisioned, serving."""
    cas = start_self_provisioned_cas(tmp_path / "first", database_url=postgres_url)
    try:
        yield cas
    finally:
        cas.client.close()
        cas.process.stop()


def _instance(directory: Path, postgres_url: str, started: list[CasProcess]) -> CasProcess:
    """A new instance with its own directory and only the database URL in common; started."""
    process = CasProcess(directory, database_url=postgres_url)
    started.append(process)
    return process.start()


def _ready(url: str) -> bool:
    with httpx.Client(verify=False, timeout=10) as probe:
        return probe.get(f"{url}/readyz").status_code == 200


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
    second = _instance(tmp_path / "second", postgres_url, started)
    third = _instance(tmp_path / "third", postgres_url, started)
    clients = {}
    for instance in (second, third):
        clients[instance.url], _ = attest_as_owner(
            instance.url, first.owner, first.owner_config_path
        )
    acknowledged: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()
    stop = threading.Event()

    def write(client: CasClient, prefix: str) -> None:
        number = 0
        while not stop.is_set():
            name = f"{prefix}{number}"
            try:
                client.create_session(_session(name))
            except Exception:
                if prefix == "b":
                    return  # the instance was killed under this request
                raise
            with lock:
                acknowledged.append(name)
                if len(acknowledged) >= 15:
                    enough.set()
            number += 1

    writers = [
        threading.Thread(target=write, args=(first.client, "a")),
        threading.Thread(target=write, args=(clients[second.url], "b")),
        threading.Thread(target=write, args=(clients[third.url], "c")),
    ]
    try:
        for writer in writers:
            writer.start()
        assert enough.wait(120)
        second.kill()
        # The others go on acknowledging writes while the second is gone.
        with lock:
            before = len(acknowledged)
        deadline = time.monotonic() + 60
        while len(acknowledged) < before + 6 and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        for writer in writers:
            writer.join(60)
        assert len(acknowledged) >= before + 6
        assert _ready(first.url)
        assert _ready(third.url)
        for name in acknowledged:
            assert clients[third.url].read_session(name).revision == 1
        # The killed instance comes back with its own key store: no join needed.
        second.start()
        assert second.log().count("asking the running instances") == 1
        client, _ = attest_as_owner(second.url, first.owner, first.owner_config_path)
        with client:
            assert client.read_session(acknowledged[-1]).revision == 1
    finally:
        stop.set()
        for client in clients.values():
            client.close()
    cas_key_hash = first.verified.report.cas_key_hash
    first.process.stop()
    for process in (first.process, second, third):
        process.stop()
        assert "record-damaged" not in process.log()
        # Each instance's audit chain verifies on its own, the killed one's too.
        log_file = process.directory / "audit.log"
        last = line_hash(log_file.read_bytes().splitlines()[-1])
        verified = run_casctl(
            tmp_path / "auditor",
            ["audit", "verify", str(log_file), "--cas-key-hash", cas_key_hash, "--last", last],
        )
        assert verified.returncode == 0, verified.stderr
