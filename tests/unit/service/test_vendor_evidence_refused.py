"""Real vendor evidence that does not bind the request is refused, for the CAS and for workloads.

A real quote or report from tests/data/ is served through a stand-in for the TEE's files, so it
comes out of the real platform code as the CAS's own evidence or a workload's. Its report data is
whatever the vendor put there, never the SHA-512 of this CAS's report nor the binding of this
workload's request: it must be refused as ``binding``. Each test first shows the evidence itself
verifies at its pinned time against its collateral (an in-test source), so the refusal is the
binding and not an expired certificate, a bad signature or a missing verifier.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from opencas.attestation.evidence import Evidence
from opencas.attestation.report import CasExpectations, report_data, verify_cas_attestation
from opencas.attestation.verifier import CollateralKey
from opencas.attestation.verify import verify_evidence
from opencas.attestation.workload_binding import ConfigId, workload_report_data
from opencas.config.availability import AvailabilityConfig, load_availability_config
from opencas.crypto.encoding import b64_encode
from opencas.crypto.keys import generate_ecdsa_key, public_key_der
from opencas.errors import AttestationRefused, EvidenceError
from opencas.platform.base import Platform
from opencas.platform.choice import open_platform
from opencas.runtime.exchange import fetch_configuration
from opencas.service.cas import Cas, open_cas
from opencas.service.nonces import NonceStore
from opencas.service.workloads import WorkloadRequest, attest_workload
from opencas.testing import InProcessCas
from opencas.testing_tee import FakeConfigfsTsm, fake_gramine

DATA = Path(__file__).resolve().parents[2] / "data"
SNP = DATA / "trustee" / "snp"
PHALA = DATA / "phala-dcap-qvl"
#: Inside the VCEK's validity (2023-01-24 .. 2030-01-24).
SNP_AT = datetime(2025, 6, 1, tzinfo=UTC)
#: Inside the windows of both DCAP collateral sets (2025-06-19T10:56:11Z .. 2025-07-19T10:00:35Z).
DCAP_AT = datetime(2025, 7, 1, tzinfo=UTC)
CONFIG_ID = ConfigId.parse("hello/app")


@dataclass(frozen=True)
class Vector:
    """A vendor's evidence, how a platform serves it, when and against what it verifies."""

    name: str
    evidence: Evidence
    at: datetime
    documents: dict[str, bytes]

    def collateral(self, key: CollateralKey, at: datetime) -> bytes:
        """The in-test collateral source: the vector's own documents, by key kind."""
        if key.kind not in self.documents:
            raise EvidenceError(f"the test has no collateral {key}", check="collateral")
        return self.documents[key.kind]


def _certificates(path: Path) -> list[bytes]:
    pattern = rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n"
    return re.findall(pattern, path.read_bytes(), re.S)


def snp_vector() -> Vector:
    ask, ark, _ = _certificates(SNP / "milan_ask_ark_asvk.pem")
    return Vector(
        "snp",
        Evidence("snp", (SNP / "test-report.bin").read_bytes()),
        SNP_AT,
        {"amd-vcek": (SNP / "test-vcek.der").read_bytes(), "amd-chain": ask + ark},
    )


def dcap_vector(evidence_type: str, quote: str) -> Vector:
    return Vector(
        evidence_type,
        Evidence(evidence_type, (PHALA / quote).read_bytes()),
        DCAP_AT,
        {"dcap": (PHALA / f"{quote}_collateral.json").read_bytes()},
    )


VECTORS = [dcap_vector("sgx-dcap", "sgx_quote"), dcap_vector("tdx", "tdx_quote"), snp_vector()]


def config_for(tmp_path: Path, vector: Vector) -> AvailabilityConfig:
    """A CAS config on the platform that serves ``vector`` from a plain directory."""
    path = tmp_path / "cas.toml"
    if vector.evidence.type == "sgx-dcap":
        fake_gramine(tmp_path / "attestation", vector.evidence.data)
        path.write_text(
            '[database]\npath = "cas.db"\n[platform]\nkind = "gramine-sgx"\n'
            'gramine_attestation_dir = "attestation"\n'
        )
        return load_availability_config(path)
    (tmp_path / "report").mkdir()
    path.write_text(
        '[database]\npath = "cas.db"\n[platform]\nkind = "tsm"\ntsm_report_dir = "report"\n'
    )
    config = load_availability_config(path)
    provider = "sev_guest" if vector.evidence.type == "snp" else "tdx_guest"
    entries = FakeConfigfsTsm(provider, vector.evidence.data)
    return replace(config, platform=replace(config.platform, tsm_entries=entries))


@pytest.fixture(params=VECTORS, ids=lambda vector: vector.name)
def vector(request: pytest.FixtureRequest) -> Vector:
    chosen: Vector = request.param
    # What the rest rests on: the vendor's evidence verifies as itself, at its time.
    verified = verify_evidence(chosen.evidence, at=chosen.at, collateral=chosen)
    assert verified.platform == chosen.evidence.type
    return chosen


@pytest.fixture
def tee_cas(tmp_path: Path, vector: Vector) -> Iterator[Cas]:
    cas = open_cas(config_for(tmp_path, vector))
    yield cas
    cas.close()


def test_the_cas_serves_the_vendors_evidence(tee_cas: Cas, vector: Vector) -> None:
    answer = tee_cas.attest("ab" * 16)

    assert answer["evidence"] == vector.evidence.to_json()
    assert answer["report"]["platform"] == vector.evidence.type
    assert answer["report"]["mode"] == "production"


def test_a_cas_whose_evidence_does_not_bind_its_report_is_refused(
    tee_cas: Cas, vector: Vector
) -> None:
    nonce = "ab" * 16
    answer = tee_cas.attest(nonce)
    verified = verify_evidence(vector.evidence, at=vector.at, collateral=vector)
    assert verified.report_data != report_data(tee_cas.report(nonce))

    with pytest.raises(AttestationRefused) as caught:
        verify_cas_attestation(
            answer,
            CasExpectations(nonce=nonce, allow_unprovisioned=True),
            None,
            at=vector.at,
            collateral=vector,
        )

    assert caught.value.check == "binding"
    assert "does not match the report data in the evidence" in caught.value.message


def workload_platform(tmp_path: Path, vector: Vector) -> Platform:
    """The platform a workload on ``vector``'s TEE would open (``casctl run --platform ...``)."""
    settings = config_for(tmp_path, vector).platform
    return open_platform(settings, lambda: "00", lambda message: None)


def test_a_workload_whose_evidence_does_not_bind_its_request_is_refused(
    cas: Cas, tmp_path: Path, vector: Vector
) -> None:
    platform = workload_platform(tmp_path, vector)
    nonces = NonceStore()
    nonce = nonces.issue()
    key = b64_encode(public_key_der(generate_ecdsa_key("P-256").public_key()))
    evidence = platform.evidence(workload_report_data(CONFIG_ID, nonce, key))
    assert evidence == vector.evidence
    cas.collateral = vector
    cas.clock = lambda: vector.at

    with pytest.raises(AttestationRefused) as caught:
        attest_workload(cas, nonces, WorkloadRequest(CONFIG_ID, nonce, key, evidence.to_json()))

    assert caught.value.check == "binding"
    assert "does not bind this config id, nonce and public key" in caught.value.message


def test_casctl_runs_exchange_is_refused_through_the_enclave_api(
    cas: Cas, api: InProcessCas, tmp_path: Path, vector: Vector
) -> None:
    # What casctl run does after opening its platform, against the real enclave API.
    cas.collateral = vector
    cas.clock = lambda: vector.at

    with api.enclave_client() as client, pytest.raises(AttestationRefused) as caught:
        fetch_configuration(client, CONFIG_ID, workload_platform(tmp_path, vector))

    assert caught.value.check == "binding"
