"""Replaying workload decisions from the audit log and its evidence archive: kept decisions
reproduce, and newer collateral that revokes a machine's TCB changes exactly its attestations."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opencas.attestation.evidence import Evidence
from opencas.attestation.simulated import create_simulated_evidence
from opencas.attestation.simulated_collateral import create_simulated_collateral
from opencas.attestation.verifier import CollateralKey
from opencas.attestation.workload_binding import ConfigId, workload_report_data
from opencas.audit.archive import ArchiveReader, EvidenceArchive, archive_path
from opencas.audit.chain import parse_entry
from opencas.audit.replay import DECISION_EVENTS, Replayed, replay_decision
from opencas.cli.casctl import cli
from opencas.collateral.given import command_line_source
from opencas.config.availability import load_availability_config
from opencas.config.owner import parse_owner_config
from opencas.config.owner_identity import OwnerIdentity
from opencas.crypto.keys import key_hash
from opencas.errors import AuditLogError, CasError, EvidenceError
from opencas.policy.caller import Caller
from opencas.service.cas import Cas, open_cas
from opencas.service.nonces import NonceStore
from opencas.service.provisioning import provision
from opencas.service.sessions import create_session
from opencas.service.workloads import WorkloadRequest, attest_workload
from opencas.testing import write_config

OWNER = OwnerIdentity("a1" * 32, None)
AUTHOR = Caller("b2" * 32)
GOOD = "11" * 32
ROOT = Ed25519PrivateKey.generate()
MACHINE_A = Ed25519PrivateKey.generate()
MACHINE_B = Ed25519PrivateKey.generate()
AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DATA = Path(__file__).resolve().parents[2] / "data"
PHALA = DATA / "phala-dcap-qvl"
#: Inside the window of the SGX vector's collateral (2025-06-19T10:56:11Z .. 2025-07-19T10:01Z).
DCAP_AT = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)

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


def machine(key: Ed25519PrivateKey) -> str:
    return key_hash(key.public_key())


def simulated_collateral(statuses: dict[str, str], number: int = 1) -> bytes:
    return create_simulated_collateral(
        ROOT,
        issue_date=AT - timedelta(days=1),
        next_update=AT + timedelta(days=30),
        tcb_evaluation_number=number,
        machines=statuses,
    )


UP_TO_DATE = {machine(MACHINE_A): "UpToDate", machine(MACHINE_B): "UpToDate"}
A_REVOKED = {machine(MACHINE_A): "Revoked", machine(MACHINE_B): "UpToDate"}


def open_test_cas(tmp_path: Path, *, keep: bool) -> Cas:
    """A CAS that trusts ROOT's simulated collateral (its bundle says both machines are up to
    date), provisioned with ``keep_evidence`` as asked and holding the session ``hello``."""
    path = write_config(tmp_path, 18085, 18770)
    with path.open("a") as file:
        file.write(
            f'\n[collateral]\nbundle = "bundle"\nfetch = false\n'
            f'simulated_roots = ["{key_hash(ROOT.public_key())}"]\n'
        )
    bundle = tmp_path / "bundle" / "simulated"
    bundle.mkdir(parents=True)
    (bundle / "collateral.json").write_bytes(simulated_collateral(UP_TO_DATE))
    cas = open_cas(load_availability_config(path))
    cas.clock = lambda: AT
    owner_config = f"[audit_log]\nkeep_evidence = {'true' if keep else 'false'}\n"
    config = parse_owner_config(owner_config, "owner.toml", "toml").config
    provision(cas, OWNER, config, self_provisioned=True)
    create_session(cas, SESSION, AUTHOR)
    return cas


def public_key_text() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def request(
    nonces: NonceStore,
    platform: Ed25519PrivateKey,
    measurement: str = GOOD,
    *,
    nonce: str | None = None,
) -> WorkloadRequest:
    """A simulated workload's request, its evidence by ``platform``."""
    public_key = public_key_text()
    config_id = ConfigId.parse("hello/app")
    nonce = nonce or nonces.issue()
    report_data = workload_report_data(config_id, nonce, public_key)
    evidence = create_simulated_evidence(platform, measurement, report_data)
    return WorkloadRequest(config_id, nonce, public_key, evidence.to_json())


def attest(
    cas: Cas,
    nonces: NonceStore,
    platform: Ed25519PrivateKey,
    measurement: str = GOOD,
    *,
    nonce: str | None = None,
) -> str:
    """One workload's attestation: ``attested`` or the check that refused it."""
    try:
        attest_workload(cas, nonces, request(nonces, platform, measurement, nonce=nonce))
    except CasError as exc:
        return str(getattr(exc, "check", exc.code))
    return "attested"


def decisions(log: Path) -> Iterator[tuple[int, object]]:
    for number, line in enumerate(log.read_bytes().splitlines(), 1):
        entry = parse_entry(line)
        if entry.event in DECISION_EVENTS:
            yield number, entry


def replayed(log: Path, collateral: Path | None = None) -> list[Replayed]:
    archive = ArchiveReader(archive_path(log))
    source = command_line_source(collateral) if collateral else None
    return [
        replay_decision(entry, number, archive, source)  # type: ignore[arg-type]
        for number, entry in decisions(log)
    ]


@pytest.fixture
def kept(tmp_path: Path) -> tuple[Path, list[str]]:
    """A closed CAS's log after five decisions by two machines, evidence kept; the outcomes."""
    cas = open_test_cas(tmp_path, keep=True)
    nonces = NonceStore()
    try:
        outcomes = [
            attest(cas, nonces, MACHINE_A),
            attest(cas, nonces, MACHINE_B),
            attest(cas, nonces, MACHINE_A, "22" * 32),
            attest(cas, nonces, MACHINE_A),
            attest(cas, nonces, MACHINE_B, "22" * 32),
        ]
    finally:
        cas.close()
    return cas.config.audit_log_path, outcomes


def casctl(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["audit", "replay", *map(str, args)])
    return result.exit_code, result.output


def test_a_log_whose_evidence_was_kept_reproduces_every_decision(
    kept: tuple[Path, list[str]],
) -> None:
    log, outcomes = kept
    assert outcomes == ["attested", "attested", "measurement", "attested", "measurement"]
    results = replayed(log)
    assert [result.recorded for result in results] == outcomes
    assert [result.found for result in results] == outcomes
    code, output = casctl(log, "--evidence", archive_path(log))
    assert code == 0, output
    assert "5 decisions: 5 reproduced, 0 differ, 0 not replayed" in output


def test_collateral_that_revokes_a_machine_changes_exactly_its_attestations(
    kept: tuple[Path, list[str]], tmp_path: Path
) -> None:
    log, _ = kept
    newer = tmp_path / "newer.json"
    newer.write_bytes(simulated_collateral(A_REVOKED, number=2))
    results = replayed(log, newer)
    differ = [(result.recorded, result.found) for result in results if result.differs]
    # Machine A's two attestations; its refusal for the measurement stays one (that rule comes
    # before the TCB's), and machine B is not affected.
    assert differ == [("attested", "tcb"), ("attested", "tcb")]
    assert [result.differs for result in results] == [True, False, False, True, False]
    code, output = casctl(log, "--evidence", archive_path(log), "--collateral", newer)
    assert code == 30, output
    changed = [line for line in output.splitlines() if ": was attested, now refused (tcb)" in line]
    assert len(changed) == 2
    assert f"seq {results[0].seq} hello/app" in changed[0]
    assert "5 decisions: 3 reproduced, 2 differ, 0 not replayed" in output


def test_entries_record_the_collateral_set_and_the_context_in_the_archive(
    kept: tuple[Path, list[str]],
) -> None:
    log, _ = kept
    archive = ArchiveReader(archive_path(log))
    _, entry = next(decisions(log))
    details = entry.details  # type: ignore[attr-defined]
    assert details["tcb_status"] == "UpToDate"
    assert details["tcb_evaluation_number"] == 1
    manifest = archive[details["collateral_digest"]].decode()
    assert manifest.startswith("simulated() ")
    context = json.loads(archive[details["context_sha256"]])
    assert context["service"]["attestation"] == [{"simulated_measurement": [GOOD]}]
    assert context["simulated_roots"] == [key_hash(ROOT.public_key())]
    # Each decision has its evidence and its context (which binds its request); all five share
    # one collateral document and its manifest.
    assert len(archive) == 5 + 5 + 1 + 1


def test_a_damaged_archive_item_is_not_replayed(kept: tuple[Path, list[str]]) -> None:
    log, _ = kept
    _, entry = next(decisions(log))
    evidence = archive_path(log) / entry.details["evidence_sha256"]  # type: ignore[attr-defined]
    evidence.write_bytes(evidence.read_bytes() + b" ")
    first = replayed(log)[0]
    assert first.found is None
    assert "not in the archive (or is damaged there)" in first.reason
    code, output = casctl(log, "--evidence", archive_path(log))
    assert code == 31, output


def test_an_edited_log_is_not_replayed(kept: tuple[Path, list[str]]) -> None:
    log, _ = kept
    text = log.read_bytes()
    log.write_bytes(text.replace(b'"tcb_status":"UpToDate"', b'"tcb_status":"OutOfDate"', 1))
    code, output = casctl(log, "--evidence", archive_path(log))
    assert code == 20, output
    assert "not replayed: the log does not verify" in output


def test_without_keep_evidence_nothing_is_archived_and_nothing_replays(tmp_path: Path) -> None:
    cas = open_test_cas(tmp_path, keep=False)
    try:
        assert attest(cas, NonceStore(), MACHINE_A) == "attested"
    finally:
        cas.close()
    log = cas.config.audit_log_path
    assert not archive_path(log).exists()
    archive_path(log).mkdir()
    (result,) = replayed(log)
    assert result.found is None
    assert "context_sha256" not in log.read_text()


def test_a_refusal_at_the_nonce_cannot_be_replayed(tmp_path: Path) -> None:
    cas = open_test_cas(tmp_path, keep=True)
    try:
        assert attest(cas, NonceStore(), MACHINE_A, nonce="ab" * 32) == "nonce"
    finally:
        cas.close()
    (result,) = replayed(cas.config.audit_log_path)
    assert result.found is None
    assert "before its evidence was verified" in result.reason


def test_an_archive_that_cannot_take_the_evidence_fails_the_decision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cas = open_test_cas(tmp_path, keep=True)

    def full(self: EvidenceArchive, data: bytes) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(EvidenceArchive, "put", full)
    try:
        before = cas.audit_log.head
        nonces = NonceStore()
        attempt = request(nonces, MACHINE_A)
        with pytest.raises(AuditLogError, match="No space left on device"):
            attest_workload(cas, nonces, attempt)
        assert cas.audit_log.head == before  # no entry for an answer that was not given
    finally:
        cas.close()


class _Vector:
    """The SGX vector's collateral, for every DCAP key (its quote names one platform)."""

    def __init__(self) -> None:
        self.data = (PHALA / "sgx_quote_collateral.json").read_bytes()

    def collateral(self, key: CollateralKey, at: datetime) -> bytes:
        if key.kind != "dcap":
            raise EvidenceError(f"no {key}", check="collateral")
        return self.data


def test_a_real_dcap_decision_replays_at_its_pinned_time(tmp_path: Path) -> None:
    cas = open_test_cas(tmp_path, keep=True)
    cas.clock = lambda: DCAP_AT
    cas.collateral = _Vector()
    nonces = NonceStore()
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    public_key = base64.b64encode(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    quote = Evidence("sgx-dcap", (PHALA / "sgx_quote").read_bytes())
    request = WorkloadRequest(
        ConfigId.parse("hello/app"), nonces.issue(), public_key, quote.to_json()
    )
    try:
        # The quote verifies at its pinned time, but binds the vendor's report data.
        with pytest.raises(CasError) as refused:
            attest_workload(cas, nonces, request)
        assert getattr(refused.value, "check", None) == "binding"
    finally:
        cas.close()
    log = cas.config.audit_log_path
    (result,) = replayed(log)
    assert (result.recorded, result.found) == ("binding", "binding")
    _, entry = next(decisions(log))
    assert entry.details["collateral_digest"] is not None  # type: ignore[attr-defined]
    # Replayed against collateral for another platform, the same decision cannot verify.
    (other,) = replayed(log, PHALA / "tdx_quote_collateral.json")
    assert (other.recorded, other.found) == ("binding", "collateral")
