"""The audit log of a real CAS: kill -9 amid writes, fetching and verifying it with casctl, and
an auditor replaying its decisions offline from the evidence archive copied off the machine."""

from __future__ import annotations

import base64
import json
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opencas.attestation.simulated import create_simulated_evidence
from opencas.attestation.simulated_collateral import create_simulated_collateral
from opencas.attestation.workload_binding import ConfigId, workload_report_data
from opencas.audit.chain import line_hash
from opencas.client import ApiError
from opencas.client.channel import CasUnreachable
from opencas.crypto.keys import key_hash
from opencas.testing import (
    SelfProvisionedCas,
    attest_as_owner,
    run_casctl,
    start_self_provisioned_cas,
)


def session(name: str) -> str:
    return f'name: {name}\nversion: "0.3"\nsecrets:\n  - name: s\n    kind: ascii\n'


def attest_with_casctl(cas: SelfProvisionedCas) -> Path:
    """casctl, as the owner, attests and pins the CAS under the alias ``audited``."""
    home = cas.owner_directory
    attested = run_casctl(
        home,
        [
            "attest",
            cas.url,
            "--only-for-testing-debug",
            "--expect-owner-identity",
            str(cas.owner_certificate_path),
            "--expect-owner-config",
            str(cas.owner_config_path),
            "--alias",
            "audited",
            "--accept-new-instance",
        ],
    )
    assert attested.returncode == 0, attested.stderr
    return home


def fetch(home: Path, output: Path) -> list[bytes]:
    fetched = run_casctl(home, ["audit", "fetch", "--cas", "audited", "-o", str(output)])
    assert fetched.returncode == 0, fetched.stderr
    return output.read_bytes().splitlines()


def test_kill_9_during_session_creates_loses_no_acknowledged_entry(tmp_path: Path) -> None:
    cas = start_self_provisioned_cas(tmp_path)
    acknowledged: list[str] = []
    enough = threading.Event()

    def create(worker: int) -> None:
        for number in range(10_000):
            name = f"w{worker}-{number}"
            try:
                cas.client.create_session(session(name))
            except (ApiError, CasUnreachable, OSError):
                return
            acknowledged.append(name)
            if len(acknowledged) >= 30:
                enough.set()

    writers = [threading.Thread(target=create, args=(worker,)) for worker in range(3)]
    try:
        for writer in writers:
            writer.start()
        assert enough.wait(timeout=300)
        # Killed while creates are in flight: no shutdown, no cas_stopped.
        cas.process.kill()
        for writer in writers:
            writer.join(timeout=120)
        cas.client.close()
        cas.process.start()
        home = attest_with_casctl(cas)
        lines = fetch(home, tmp_path / "fetched.log")
        entries = [json.loads(line) for line in lines]
        created = {entry["subject"] for entry in entries if entry["event"] == "session_created"}
        assert set(acknowledged) <= created
        verified = run_casctl(
            home, ["audit", "verify", str(tmp_path / "fetched.log"), "--cas", "audited"]
        )
        # 10: an entry whose create was cut off by the kill, said so by the next start.
        assert verified.returncode in (0, 10), verified.stdout + verified.stderr
        starts = [entry for entry in entries if entry["event"] == "cas_started"]
        assert len(starts) == 2
    finally:
        cas.process.stop()


def test_the_reported_head_is_the_last_line_of_the_fetched_log(tmp_path: Path) -> None:
    cas = start_self_provisioned_cas(tmp_path)
    try:
        cas.client.create_session(session("one"))
        cas.client.read_session("one")
        home = attest_with_casctl(cas)
        lines = fetch(home, tmp_path / "fetched.log")
        client, verified = attest_as_owner(cas.url, cas.owner, cas.owner_config_path)
        client.close()
        head = verified.report.audit
        assert head.seq == json.loads(lines[-1])["seq"]
        assert head.head == line_hash(lines[-1])
        shown = run_casctl(home, ["cas", "show", "audited", "--json"])
        assert json.loads(shown.stdout)["audit_seq"] >= head.seq - 1
        intact = run_casctl(
            home, ["audit", "verify", str(tmp_path / "fetched.log"), "--cas", "audited"]
        )
        assert intact.returncode == 0, intact.stdout + intact.stderr
        assert "intact" in intact.stdout
        offline = run_casctl(home, ["audit", "verify", str(tmp_path / "fetched.log")])
        assert offline.returncode == 16, offline.stdout + offline.stderr
        # One changed byte: an integrity violation that names its line.
        edited = [*lines[:-1], lines[-1].replace(b'"one"', b'"eno"')]
        (tmp_path / "edited.log").write_bytes(b"".join(line + b"\n" for line in edited))
        broken = run_casctl(
            home, ["audit", "verify", str(tmp_path / "edited.log"), "--cas", "audited"]
        )
        assert broken.returncode == 20, broken.stdout + broken.stderr
        assert f"line {len(lines)}:" in broken.stderr
    finally:
        cas.stop()


def test_only_the_owner_reads_the_log(tmp_path: Path) -> None:
    cas = start_self_provisioned_cas(tmp_path)
    try:
        home = tmp_path / "stranger"
        attested = run_casctl(home, ["attest", cas.url, "--only-for-testing-debug"])
        assert attested.returncode == 0, attested.stderr
        refused = run_casctl(home, ["audit", "fetch", "-o", str(tmp_path / "x.log")])
        assert refused.returncode == 1
        assert "only the CAS owner" in refused.stderr
    finally:
        cas.stop()


# --- replaying decisions -------------------------------------------------------------------------

GOOD = "11" * 32
OTHER = "22" * 32
ROOT = Ed25519PrivateKey.generate()
MACHINE_A = Ed25519PrivateKey.generate()
MACHINE_B = Ed25519PrivateKey.generate()
SESSION = f"""\
name: hello
version: "0.3"
services:
  - name: app
    command: ["app"]
    attestation:
      simulated_measurement: "{GOOD}"
security:
  attestation:
    tolerate: [simulated]
"""


def collateral(statuses: dict[str, str], number: int) -> bytes:
    """Simulated collateral by ROOT, valid around now, with these machines' TCB statuses."""
    now = datetime.now(UTC)
    return create_simulated_collateral(
        ROOT,
        issue_date=now - timedelta(days=1),
        next_update=now + timedelta(days=30),
        tcb_evaluation_number=number,
        machines=statuses,
    )


def machine(key: Ed25519PrivateKey) -> str:
    return key_hash(key.public_key())


def attest(cas: SelfProvisionedCas, platform: Ed25519PrivateKey, measurement: str) -> int:
    """One simulated workload's nonce and attestation over the enclave API; the status code."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    public_key = base64.b64encode(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    url = f"https://127.0.0.1:{cas.process.enclave_port}"
    with httpx.Client(base_url=url, verify=False, timeout=60.0) as client:
        nonce = client.post("/v1/enclave/nonce").json()["nonce"]
        report_data = workload_report_data(ConfigId("hello", "app"), nonce, public_key)
        evidence = create_simulated_evidence(platform, measurement, report_data)
        response = client.post(
            "/v1/enclave/attest",
            json={
                "config_id": "hello/app",
                "nonce": nonce,
                "public_key": public_key,
                "evidence": evidence.to_json(),
            },
        )
    return response.status_code


def test_an_auditor_replays_a_running_cas_and_sees_exactly_the_revoked_machine(
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "simulated").mkdir(parents=True)
    up_to_date = {machine(MACHINE_A): "UpToDate", machine(MACHINE_B): "UpToDate"}
    (bundle / "simulated" / "collateral.json").write_bytes(collateral(up_to_date, 1))
    cas = start_self_provisioned_cas(
        tmp_path / "primary",
        owner_config_text="[audit_log]\nkeep_evidence = true\n",
        extra_config=(
            f'\n[collateral]\nbundle = "{bundle}"\nfetch = false\n'
            f'simulated_roots = ["{key_hash(ROOT.public_key())}"]\n'
        ),
    )
    try:
        cas.client.create_session(SESSION)
        statuses = [
            attest(cas, MACHINE_A, GOOD),
            attest(cas, MACHINE_B, GOOD),
            attest(cas, MACHINE_A, OTHER),
            attest(cas, MACHINE_A, GOOD),
        ]
        assert [status == 200 for status in statuses] == [True, True, False, True]
        home = attest_with_casctl(cas)
        log = tmp_path / "fetched.log"
        fetch(home, log)
        # What an auditor copies from the machine: the archive beside the CAS's log.
        archive = tmp_path / "evidence"
        shutil.copytree(tmp_path / "primary" / "cas" / "audit.log.evidence", archive)
    finally:
        cas.stop()

    same = run_casctl(home, ["audit", "replay", str(log), "--evidence", str(archive)])
    assert same.returncode == 0, same.stdout + same.stderr
    assert "4 decisions: 4 reproduced, 0 differ, 0 not replayed" in same.stdout

    revoked = tmp_path / "revoked.json"
    revoked.write_bytes(collateral({**up_to_date, machine(MACHINE_A): "Revoked"}, 2))
    after = run_casctl(
        home,
        ["audit", "replay", str(log), "--evidence", str(archive), "--collateral", str(revoked)],
    )
    assert after.returncode == 30, after.stdout + after.stderr
    changed = [
        line for line in after.stdout.splitlines() if "was attested, now refused (tcb)" in line
    ]
    assert len(changed) == 2  # machine A's two attestations; B's and the refusal stand
    assert "4 decisions: 2 reproduced, 2 differ, 0 not replayed" in after.stdout
