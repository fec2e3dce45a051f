"""The verifier seam: the registry, the verification time and the collateral source."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from hashlib import sha256

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opencas.attestation.evidence import Evidence, VerifiedEvidence
from opencas.attestation.simulated import SimulatedVerifier, create_simulated_evidence
from opencas.attestation.verifier import NO_COLLATERAL, CollateralKey, CollateralSource, Verifier
from opencas.attestation.verify import VERIFIERS, verify_evidence
from opencas.errors import EvidenceError

AT = datetime(2026, 11, 29, 14, 0, tzinfo=UTC)
MEASUREMENT = "ab" * 32
REPORT_DATA = bytes(range(64))


class Documents:
    """A collateral source that serves fixed documents and records what it was asked."""

    def __init__(self, documents: Mapping[str, bytes]) -> None:
        self.documents = documents
        self.asked: list[tuple[CollateralKey, datetime]] = []

    def collateral(self, key: CollateralKey, at: datetime) -> bytes:
        self.asked.append((key, at))
        return self.documents[key.param("name")]


class NeedsCollateral:
    """A verifier of a made-up type that reads its collateral and reports the time it was given."""

    def verify(
        self, evidence: Evidence, *, at: datetime, collateral: CollateralSource
    ) -> VerifiedEvidence:
        document = collateral.collateral(CollateralKey.of("made-up", name="measurement"), at)
        return VerifiedEvidence(
            platform=evidence.type,
            measurement=document.hex(),
            report_data=evidence.data,
            debug=False,
            platform_key_hash="00" * 32,
            tcb_status=at.isoformat(),
            advisories=(),
        )


def test_the_registry_holds_the_simulated_verifier() -> None:
    assert isinstance(VERIFIERS["simulated"], SimulatedVerifier)
    with pytest.raises(TypeError):
        VERIFIERS["tdx"] = NeedsCollateral()  # type: ignore[index]


def test_simulated_evidence_needs_no_collateral() -> None:
    evidence = create_simulated_evidence(Ed25519PrivateKey.generate(), MEASUREMENT, REPORT_DATA)
    verified = verify_evidence(evidence, at=AT)
    assert verified.measurement == MEASUREMENT
    source = Documents({})
    assert verify_evidence(evidence, at=AT, collateral=source) == verified
    assert source.asked == []
    assert verified.collateral_digest is None


def test_the_dispatcher_passes_time_and_collateral_to_the_verifier() -> None:
    verifier: Verifier = NeedsCollateral()
    source = Documents({"measurement": b"\x01\x02"})
    evidence = Evidence("made-up", bytes(64))
    verified = verify_evidence(evidence, at=AT, collateral=source, verifiers={"made-up": verifier})
    assert verified.measurement == "0102"
    assert verified.tcb_status == AT.isoformat()
    assert source.asked == [(CollateralKey.of("made-up", name="measurement"), AT)]
    document_hash = sha256(bytes([1, 2])).hexdigest()
    key_line = "made-up(name=measurement) " + document_hash + chr(10)
    assert verified.collateral_digest == sha256(key_line.encode()).hexdigest()


def test_without_a_collateral_source_the_collateral_check_fails() -> None:
    with pytest.raises(EvidenceError, match="no collateral source") as failed:
        verify_evidence(
            Evidence("made-up", bytes(64)), at=AT, verifiers={"made-up": NeedsCollateral()}
        )
    assert failed.value.check == "collateral"
    with pytest.raises(EvidenceError) as direct:
        NO_COLLATERAL.collateral(CollateralKey.of("dcap", tee="sgx", fmspc="00" * 6), AT)
    assert direct.value.check == "collateral"


@pytest.mark.parametrize("evidence_type", ["quantum", "opaque-tee"])
def test_types_without_verifier_fail_the_type_check(evidence_type: str) -> None:
    with pytest.raises(EvidenceError) as failed:
        verify_evidence(Evidence(evidence_type, b"\x00"), at=AT)
    assert failed.value.check == "type"
    with pytest.raises(EvidenceError, match="unknown evidence type 'simulated'"):
        verify_evidence(Evidence("simulated", b"\x00"), at=AT, verifiers={})


def test_simulated_failures_name_their_check() -> None:
    key = Ed25519PrivateKey.generate()
    evidence = create_simulated_evidence(key, MEASUREMENT, REPORT_DATA)
    forged = Evidence("simulated", evidence.data.replace(MEASUREMENT.encode(), b"cd" * 32))
    with pytest.raises(EvidenceError) as signature:
        verify_evidence(forged, at=AT)
    assert signature.value.check == "signature"
    with pytest.raises(EvidenceError) as shape:
        verify_evidence(Evidence("simulated", b"{}"), at=AT)
    assert shape.value.check == "format"
    with pytest.raises(EvidenceError) as other_type:
        SimulatedVerifier().verify(Evidence("tdx", evidence.data), at=AT, collateral=NO_COLLATERAL)
    assert other_type.value.check == "type"


def test_collateral_keys_are_canonical_and_hashable() -> None:
    one = CollateralKey.of("dcap", tee="tdx", fmspc="b0c06f000000", ca="platform")
    other = CollateralKey.of("dcap", ca="platform", fmspc="b0c06f000000", tee="tdx")
    assert one == other
    assert {one: 1}[other] == 1
    assert one.param("fmspc") == "b0c06f000000"
    assert str(one) == "dcap(ca=platform, fmspc=b0c06f000000, tee=tdx)"
    with pytest.raises(KeyError):
        one.param("chip_id")
