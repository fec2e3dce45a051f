"""The CAS attestation report: its model, its binding to evidence and its verification."""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from opencas.attestation.evidence import Evidence, VerifiedEvidence
from opencas.attestation.report import (
    AUDIT_GENESIS_HEAD,
    CasExpectations,
    CasReport,
    check_cas_policy,
    cluster_of,
    report_data,
    report_json,
    report_time,
    verify_cas_attestation,
)
from opencas.attestation.simulated import create_simulated_evidence
from opencas.crypto.canonical import canonical_json
from opencas.crypto.keys import key_hash
from opencas.errors import AttestationRefused, EvidenceError

NONCE = "0123456789abcdef0123456789abcdef"
MEASUREMENT = "5e" * 32
#: The time the evidence is verified as of (simulated evidence does not depend on it).
AT = datetime.datetime(2026, 11, 29, 14, 0, tzinfo=datetime.UTC)
NOT_BEFORE = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
NOT_AFTER = datetime.datetime(2036, 1, 1, tzinfo=datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str = "OpenCAS CA") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A P-384 CA key and its self-signed CA certificate."""
    key = ec.generate_private_key(ec.SECP384R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA384())
    )
    return key, certificate


def make_tls(
    ca_key: ec.EllipticCurvePrivateKey, ca_certificate: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server key and its certificate issued by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("cas.example"))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("cas.example")]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return key, certificate


def pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class Bundle:
    """Everything a CAS holds to answer ``GET /v1/attest``, built for one test."""

    platform_key: Ed25519PrivateKey
    ca_key: ec.EllipticCurvePrivateKey
    ca_certificate: x509.Certificate
    tls_key: ec.EllipticCurvePrivateKey
    tls_certificate: x509.Certificate

    def report(self, **changes: Any) -> dict[str, Any]:
        report: dict[str, Any] = {
            "version": 1,
            "cas_version": "0.1.0",
            "instance_id": "3f0c9a8e-5d3b-4c1e-9d7a-0b1c2d3e4f50",
            "cluster_id": "9a0b1c2d-0000-4000-8000-000000000001",
            "time": "2026-11-29T14:00:00Z",
            "nonce": NONCE,
            "cas_key_hash": key_hash(self.ca_key),
            "tls_key_hash": key_hash(self.tls_key),
            "software_measurement": MEASUREMENT,
            "platform": "simulated",
            "mode": "debug",
            "provisioned": True,
            "self_provisioned": False,
            "provisioned_at": "2026-11-01T09:30:00Z",
            "owner_identity_hash": "a1" * 32,
            "owner_config_sha256": "b2" * 32,
            "db_key_injected": False,
            "state": {"counter": 12, "digest": "d4" * 32},
            "audit": {"seq": 7, "head": "c3" * 32},
            "recovery": {"configured": False, "threshold": None, "key_hashes": []},
            "recovered": False,
        }
        report.update(changes)
        return report

    def response(
        self,
        report: dict[str, Any] | None = None,
        measurement: str = MEASUREMENT,
        tls_certificate: x509.Certificate | None = None,
    ) -> dict[str, Any]:
        """A response whose evidence binds ``report`` (by default, :meth:`report`)."""
        report = self.report() if report is None else report
        bound = report_data(CasReport.model_validate(report))
        evidence = create_simulated_evidence(self.platform_key, measurement, bound)
        return {
            "report": report,
            "evidence": evidence.to_json(),
            "certificate_chain": [
                pem(tls_certificate or self.tls_certificate),
                pem(self.ca_certificate),
            ],
        }

    @property
    def tls_der(self) -> bytes:
        return self.tls_certificate.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    ca_key, ca_certificate = make_ca()
    tls_key, tls_certificate = make_tls(ca_key, ca_certificate)
    return Bundle(Ed25519PrivateKey.generate(), ca_key, ca_certificate, tls_key, tls_certificate)


def expect(**changes: Any) -> CasExpectations:
    arguments: dict[str, Any] = {"nonce": NONCE, "allow_debug": True}
    arguments.update(changes)
    return CasExpectations(**arguments)


def refused(
    response: object, expectations: CasExpectations, peer: bytes | None = None
) -> AttestationRefused:
    with pytest.raises(AttestationRefused) as info:
        verify_cas_attestation(response, expectations, peer, at=AT)
    return info.value


def test_happy_path(bundle: Bundle) -> None:
    response = bundle.response()
    verified = verify_cas_attestation(response, expect(), bundle.tls_der, at=AT)
    assert verified.report == CasReport.model_validate(response["report"])
    assert report_json(verified.report) == response["report"]
    assert verified.evidence.measurement == MEASUREMENT
    assert verified.evidence.platform_key_hash == key_hash(bundle.platform_key)
    assert verified.ca_certificate_pem == pem(bundle.ca_certificate).encode()
    assert verified.tls_certificate_pem == pem(bundle.tls_certificate).encode()


def test_happy_path_without_peer_certificate(bundle: Bundle) -> None:
    verify_cas_attestation(bundle.response(), expect(), None, at=AT)


def test_unprovisioned_report_verifies(bundle: Bundle) -> None:
    report = bundle.report(
        provisioned=False,
        provisioned_at=None,
        owner_identity_hash=None,
        owner_config_sha256=None,
        audit={"seq": 0, "head": AUDIT_GENESIS_HEAD},
    )
    response = bundle.response(report)
    verified = verify_cas_attestation(
        response, expect(allow_unprovisioned=True), bundle.tls_der, at=AT
    )
    assert verified.report.audit.head == AUDIT_GENESIS_HEAD
    assert refused(response, expect()).check == "unprovisioned"
    owner_expected = expect(allow_unprovisioned=True, owner_identity_hash="aa" * 32)
    assert refused(response, owner_expected).check == "unprovisioned"


def test_expected_owner_and_config(bundle: Bundle) -> None:
    report = bundle.report()
    response = bundle.response(report)
    assert report["provisioned"] is True
    owner, config = str(report["owner_identity_hash"]), str(report["owner_config_sha256"])
    both = expect(owner_identity_hash=owner, owner_config_sha256=config)
    verified = verify_cas_attestation(response, both, bundle.tls_der, at=AT)
    assert verified.report.owner_identity_hash == owner
    wrong_owner = expect(owner_identity_hash="ab" * 32, owner_config_sha256=config)
    problem = refused(response, wrong_owner)
    assert problem.check == "owner-identity"
    assert owner in str(problem)
    wrong_config = expect(owner_identity_hash=owner, owner_config_sha256="cd" * 32)
    assert refused(response, wrong_config).check == "owner-config"


def test_report_data_is_sha512_of_canonical_json(bundle: Bundle) -> None:
    report = bundle.report()
    expected = hashlib.sha512(canonical_json(report)).digest()
    assert report_data(CasReport.model_validate(report)) == expected


def test_a_report_of_a_cas_before_cluster_ids_still_binds(bundle: Bundle) -> None:
    # Reports of CAS versions before cluster ids have no such member; they hash without it,
    # and name the CAS by their instance id.
    old = {name: value for name, value in bundle.report().items() if name != "cluster_id"}
    parsed = CasReport.model_validate(old)
    assert report_data(parsed) == hashlib.sha512(canonical_json(old)).digest()
    assert report_json(parsed) == old
    assert cluster_of(parsed) == old["instance_id"]
    assert cluster_of(CasReport.model_validate(bundle.report())) == bundle.report()["cluster_id"]


def test_a_restored_cas_reports_its_snapshot_and_binds_it(bundle: Bundle) -> None:
    restored = {
        **bundle.report(),
        "restored_from": {
            "snapshot_id": "0f" * 8,
            "state_counter": 41,
            "audit_seq": 17,
            "taken_at": "2026-11-29T13:00:00Z",
            "restored_at": "2026-11-29T13:30:00Z",
        },
    }
    parsed = CasReport.model_validate(restored)
    assert parsed.restored_from is not None
    assert parsed.restored_from.state_counter == 41
    assert report_json(parsed) == restored
    assert report_data(parsed) == hashlib.sha512(canonical_json(restored)).digest()
    assert CasReport.model_validate(bundle.report()).restored_from is None
    with pytest.raises(ValueError, match="snapshot_id"):
        CasReport.model_validate(
            {**restored, "restored_from": {**restored["restored_from"], "snapshot_id": "x"}}
        )


# One different but well-formed value per field. A changed value that the model refuses
# (version, provisioned) fails as "format", which is as good as "binding": both refuse.
CHANGED_VALUES: dict[str, Any] = {
    "version": 2,
    "cas_version": "0.1.1",
    "instance_id": "another-instance",
    "cluster_id": "another-cluster",
    "time": "2026-11-29T14:00:01Z",
    "nonce": "ff" * 16,
    "cas_key_hash": "d4" * 32,
    "tls_key_hash": "e5" * 32,
    "software_measurement": "6f" * 32,
    "platform": "tdx",
    "mode": "production",
    "provisioned": False,
    "self_provisioned": True,
    "provisioned_at": "2026-11-01T09:30:01Z",
    "owner_identity_hash": "a2" * 32,
    "owner_config_sha256": None,
    "db_key_injected": True,
    "state": {"counter": 13, "digest": "d5" * 32},
    "audit": {"seq": 8, "head": "c3" * 32},
    "recovery": {"configured": True, "threshold": 1, "key_hashes": ["e5" * 32]},
    "recovered": True,
    # Added to a report that had none: a restore claimed after the evidence was made.
    "restored_from": {
        "snapshot_id": "0f" * 8,
        "state_counter": 13,
        "audit_seq": 8,
        "taken_at": "2026-11-29T13:00:00Z",
        "restored_at": "2026-11-29T13:30:00Z",
    },
}


def test_changed_values_cover_every_field() -> None:
    assert set(CHANGED_VALUES) == set(CasReport.model_fields)


@pytest.mark.parametrize(("field", "value"), sorted(CHANGED_VALUES.items()))
def test_changing_any_report_field_fails(bundle: Bundle, field: str, value: Any) -> None:
    response = bundle.response()
    assert response["report"].get(field) != value
    response["report"][field] = value
    error = refused(response, expect(allow_db_key_injected=True), bundle.tls_der)
    assert error.check in {"binding", "format"}


@pytest.mark.parametrize("part", ["seq", "head"])
def test_changing_audit_head_fails(bundle: Bundle, part: str) -> None:
    response = bundle.response()
    response["report"]["audit"][part] = 0 if part == "seq" else AUDIT_GENESIS_HEAD
    assert refused(response, expect(), bundle.tls_der).check == "binding"


def test_evidence_of_another_report_fails(bundle: Bundle) -> None:
    response = bundle.response()
    other = bundle.response(bundle.report(time="2026-11-29T15:00:00Z"))
    response["evidence"] = other["evidence"]
    error = refused(response, expect(), bundle.tls_der)
    assert error.check == "binding"
    assert "changed in transit" in error.message


def test_wrong_nonce(bundle: Bundle) -> None:
    error = refused(bundle.response(), expect(nonce="00" * 16), bundle.tls_der)
    assert error.check == "nonce"


def test_evidence_measurement_differs_from_report(bundle: Bundle) -> None:
    response = bundle.response(measurement="77" * 32)
    error = refused(response, expect(), bundle.tls_der)
    assert error.check == "binding"
    assert "77" * 32 in error.message


def test_evidence_platform_differs_from_report(bundle: Bundle) -> None:
    response = bundle.response(bundle.report(platform="tdx"))
    assert refused(response, expect(), bundle.tls_der).check == "binding"


def test_debug_evidence_in_production_mode_fails(bundle: Bundle) -> None:
    response = bundle.response(bundle.report(mode="production"))
    error = refused(response, expect(), bundle.tls_der)
    assert error.check == "binding"
    assert "debug mode" in error.message


def test_debug_without_allow(bundle: Bundle) -> None:
    error = refused(bundle.response(), expect(allow_debug=False), bundle.tls_der)
    assert error.check == "debug-mode"
    assert "--only-for-testing-debug" in error.message


def test_measurement_mismatch(bundle: Bundle) -> None:
    expected = frozenset({"01" * 32, "02" * 32})
    error = refused(bundle.response(), expect(measurements=expected), bundle.tls_der)
    assert error.check == "measurement"
    assert MEASUREMENT in error.message
    assert "01" * 32 in error.message
    assert "02" * 32 in error.message


def test_measurement_any_of_matches(bundle: Bundle) -> None:
    expected = frozenset({"01" * 32, MEASUREMENT})
    verify_cas_attestation(bundle.response(), expect(measurements=expected), bundle.tls_der, at=AT)


def test_ca_certificate_does_not_carry_reported_cas_key(bundle: Bundle) -> None:
    response = bundle.response(bundle.report(cas_key_hash="d4" * 32))
    assert refused(response, expect(), bundle.tls_der).check == "cas-key"


def test_expected_cas_key_hash(bundle: Bundle) -> None:
    pinned = key_hash(bundle.ca_key)
    verify_cas_attestation(bundle.response(), expect(cas_key_hash=pinned), bundle.tls_der, at=AT)
    error = refused(bundle.response(), expect(cas_key_hash="d4" * 32), bundle.tls_der)
    assert error.check == "cas-key-hash"


def test_db_key_injected(bundle: Bundle) -> None:
    response = bundle.response(bundle.report(db_key_injected=True))
    error = refused(response, expect(), bundle.tls_der)
    assert error.check == "db-key-injected"
    assert "--allow-cas-owner-secret-access" in error.message
    verify_cas_attestation(response, expect(allow_db_key_injected=True), bundle.tls_der, at=AT)


def test_recovered_cas_is_refused_unless_allowed(bundle: Bundle) -> None:
    recovery = {"configured": True, "threshold": 2, "key_hashes": ["e5" * 32, "f6" * 32]}
    response = bundle.response(bundle.report(recovery=recovery, recovered=True))
    error = refused(response, expect(), bundle.tls_der)
    assert error.check == "recovered"
    assert "--allow-recovered" in error.message
    verified = verify_cas_attestation(response, expect(allow_recovered=True), bundle.tls_der, at=AT)
    assert verified.report.recovery.key_hashes == ["e5" * 32, "f6" * 32]


@pytest.mark.parametrize(
    ("recovery", "problem"),
    [
        ({"configured": False, "threshold": 1, "key_hashes": []}, "not configured"),
        ({"configured": True, "threshold": 3, "key_hashes": ["e5" * 32]}, "threshold of 1"),
        ({"configured": True, "threshold": None, "key_hashes": ["e5" * 32]}, "threshold of 1"),
    ],
)
def test_contradictory_recovery_claims_are_malformed(
    bundle: Bundle, recovery: dict[str, Any], problem: str
) -> None:
    response = bundle.response()
    response["report"]["recovery"] = recovery
    error = refused(response, expect(), bundle.tls_der)
    assert error.check == "format"
    assert problem in error.message


def test_tls_certificate_not_issued_by_ca(bundle: Bundle) -> None:
    # A rogue CA with the same name issues a certificate for the reported TLS key's holder.
    rogue_key, rogue_ca = make_ca()
    rogue_tls_key, rogue_tls = make_tls(rogue_key, rogue_ca)
    report = bundle.report(tls_key_hash=key_hash(rogue_tls_key))
    response = bundle.response(report, tls_certificate=rogue_tls)
    error = refused(response, expect(), None)
    assert error.check == "tls-certificate"
    assert "not issued by" in error.message


def test_tls_certificate_does_not_carry_reported_tls_key(bundle: Bundle) -> None:
    response = bundle.response(bundle.report(tls_key_hash="e5" * 32))
    assert refused(response, expect(), bundle.tls_der).check == "tls-certificate"


def test_peer_certificate_mismatch(bundle: Bundle) -> None:
    _, other_tls = make_tls(bundle.ca_key, bundle.ca_certificate)
    peer = other_tls.public_bytes(serialization.Encoding.DER)
    error = refused(bundle.response(), expect(), peer)
    assert error.check == "tls-certificate"
    assert "does not carry the TLS key" in error.message


def _certificate_for(
    key: ec.EllipticCurvePrivateKey, issuer_key: ec.EllipticCurvePrivateKey, issuer_name: x509.Name
) -> bytes:
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("cas.example"))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .sign(issuer_key, hashes.SHA384())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


def test_peer_with_reissued_certificate_for_the_same_key_is_accepted(bundle: Bundle) -> None:
    # The CAS reissues its TLS certificate (same key) when the owner changes its subject.
    reissued = _certificate_for(bundle.tls_key, bundle.ca_key, bundle.ca_certificate.subject)
    assert reissued != bundle.tls_der
    assert verify_cas_attestation(bundle.response(), expect(), reissued, at=AT).report.tls_key_hash


def test_peer_with_the_right_key_from_another_issuer_is_refused(bundle: Bundle) -> None:
    stranger = ec.generate_private_key(ec.SECP384R1())
    forged = _certificate_for(bundle.tls_key, stranger, bundle.ca_certificate.subject)
    assert refused(bundle.response(), expect(), forged).check == "tls-certificate"
    assert refused(bundle.response(), expect(), b"not DER").check == "tls-certificate"


def _malformed_responses(bundle: Bundle) -> list[object]:
    good = bundle.response()
    cases: list[object] = [None, "text", 5, [], [good]]
    missing = dict(good)
    del missing["evidence"]
    cases.append(missing)
    cases.append({**good, "extra": 1})
    for key, value in [
        ("report", "not a dict"),
        ("report", {}),
        ("report", {**good["report"], "extra": 1}),
        ("report", {**good["report"], "version": True}),
        ("report", {**good["report"], "nonce": "ABCDEF"}),
        ("report", {**good["report"], "time": "2026-11-29T14:00:00+00:00"}),
        ("report", {**good["report"], "time": "2026-02-30T14:00:00Z"}),
        ("report", {**good["report"], "audit": {"seq": -1, "head": "00" * 32}}),
        ("report", {**good["report"], "audit": None}),
        ("report", {**good["report"], "provisioned": False}),
        ("evidence", "not a dict"),
        ("evidence", {"type": "simulated", "data": "not base64!"}),
        ("evidence", {"type": "simulated", "data": base64.b64encode(b"{}").decode()}),
        ("evidence", {**good["evidence"], "type": "tdx"}),
        ("evidence", {**good["evidence"], "type": "no such type"}),
        ("certificate_chain", None),
        ("certificate_chain", []),
        ("certificate_chain", good["certificate_chain"][:1]),
        ("certificate_chain", [*good["certificate_chain"], good["certificate_chain"][1]]),
        ("certificate_chain", [1, 2]),
        ("certificate_chain", ["not pem", good["certificate_chain"][1]]),
        ("certificate_chain", [good["certificate_chain"][0], "é"]),
        ("certificate_chain", ["".join(good["certificate_chain"]), good["certificate_chain"][1]]),
        ("certificate_chain", list(reversed(good["certificate_chain"]))),
    ]:
        case = copy.deepcopy(good)
        case[key] = value
        cases.append(case)
    return cases


def test_malformed_bodies_are_refused_cleanly(bundle: Bundle) -> None:
    for response in _malformed_responses(bundle):
        with pytest.raises((AttestationRefused, EvidenceError)):
            verify_cas_attestation(response, expect(), bundle.tls_der, at=AT)


@pytest.mark.parametrize(
    "response",
    [
        None,
        [],
        {"report": {}, "evidence": {}},
        {"report": 1, "evidence": 1, "certificate_chain": 1},
    ],
)
def test_malformed_shape_is_a_format_refusal(response: object) -> None:
    error = refused(response, expect())
    assert error.check == "format"


def test_evidence_not_base64_is_evidence_error(bundle: Bundle) -> None:
    response = bundle.response()
    response["evidence"]["data"] = "%%%"
    with pytest.raises(EvidenceError, match="base64"):
        verify_cas_attestation(response, expect(), bundle.tls_der, at=AT)


def test_inconsistent_provisioning_claims_are_refused(bundle: Bundle) -> None:
    with pytest.raises(ValidationError, match="unprovisioned CAS cannot report"):
        CasReport.model_validate(bundle.report(provisioned=False))
    with pytest.raises(ValidationError, match="must report provisioned_at"):
        CasReport.model_validate(bundle.report(provisioned_at=None))


def test_report_is_strict(bundle: Bundle) -> None:
    with pytest.raises(ValidationError):
        CasReport.model_validate(bundle.report(db_key_injected=1))
    with pytest.raises(ValidationError):
        CasReport.model_validate(bundle.report(audit={"seq": "7", "head": "c3" * 32}))


def test_expectations_refuse_malformed_values() -> None:
    with pytest.raises(ValueError, match="nonce"):
        CasExpectations(nonce="ABC")
    with pytest.raises(ValueError, match="measurement"):
        CasExpectations(nonce=NONCE, measurements=frozenset({"XY"}))
    with pytest.raises(ValueError, match="CAS key hash"):
        CasExpectations(nonce=NONCE, cas_key_hash="short")


def test_report_time() -> None:
    when = datetime.datetime(
        2026, 11, 29, 15, 0, 0, 123, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
    )
    assert report_time(when) == "2026-11-29T14:00:00Z"
    with pytest.raises(ValueError, match="timezone"):
        report_time(datetime.datetime(2026, 11, 29, 14, 0, 0))


def test_evidence_type_round_trip_keeps_bytes(bundle: Bundle) -> None:
    response = bundle.response()
    evidence = Evidence.from_json(response["evidence"])
    assert evidence.to_json() == response["evidence"]


def sgx_claims(**changes: Any) -> VerifiedEvidence:
    """What a production SGX CAS's evidence could prove (as a DCAP verifier reports it)."""
    claims: dict[str, Any] = {
        "platform": "sgx-dcap",
        "measurement": MEASUREMENT,
        "report_data": bytes(64),
        "debug": False,
        "platform_key_hash": "e5" * 32,
        "tcb_status": "UpToDate",
        "advisories": (),
        "mrsigner": "5a" * 32,
        "isv_prod_id": 41,
        "isv_svn": 3,
    }
    claims.update(changes)
    return VerifiedEvidence(**claims)


def production_report(bundle: Bundle) -> CasReport:
    return CasReport.model_validate(bundle.report(platform="sgx-dcap", mode="production"))


def policy_refusal(
    bundle: Bundle, verified: VerifiedEvidence, **expected: Any
) -> AttestationRefused:
    with pytest.raises(AttestationRefused) as info:
        check_cas_policy(production_report(bundle), verified, expect(**expected))
    return info.value


def test_an_expected_signer_accepts_its_enclaves_at_or_above_the_svn(bundle: Bundle) -> None:
    report = production_report(bundle)
    for svn in (None, 0, 3):
        check_cas_policy(report, sgx_claims(), expect(mrsigner="5a" * 32, isv_svn=svn))
    check_cas_policy(report, sgx_claims(), expect(mrsigner="5a" * 32, isv_prod_id=41))


@pytest.mark.parametrize(
    ("expected", "named"),
    [
        ({"mrsigner": "6b" * 32}, "MRSIGNER"),
        ({"mrsigner": "5a" * 32, "isv_prod_id": 40}, "ISVPRODID 41, not 40"),
        ({"mrsigner": "5a" * 32, "isv_svn": 4}, "ISVSVN 3, below the expected 4"),
    ],
)
def test_another_signer_product_or_a_lower_svn_is_refused(
    bundle: Bundle, expected: dict[str, Any], named: str
) -> None:
    error = policy_refusal(bundle, sgx_claims(), **expected)
    assert error.check == "signer"
    assert named in str(error)


def test_a_signer_is_refused_for_evidence_without_one(bundle: Bundle) -> None:
    error = refused(bundle.response(), expect(mrsigner="5a" * 32))
    assert error.check == "signer"
    assert "'simulated', which has none" in str(error)


@pytest.mark.parametrize(
    ("status", "flags", "tolerate"),
    [
        ("SWHardeningNeeded", "-S", {"software-hardening-needed"}),
        ("ConfigurationNeeded", "-C", {"insecure-configuration"}),
        (
            "ConfigurationAndSWHardeningNeeded",
            "-C (insecure-configuration), -S",
            {"insecure-configuration", "software-hardening-needed"},
        ),
        ("OutOfDate", "-G", {"outdated-tcb"}),
    ],
)
def test_tcb_findings_need_their_flags(
    bundle: Bundle, status: str, flags: str, tolerate: set[str]
) -> None:
    claims = sgx_claims(tcb_status=status, advisories=("INTEL-SA-00615",))
    error = policy_refusal(bundle, claims)
    assert error.check == "tcb"
    assert flags in str(error)
    assert "INTEL-SA-00615" in str(error)
    check_cas_policy(production_report(bundle), claims, expect(tolerate=frozenset(tolerate)))


def test_a_revoked_or_unknown_tcb_is_never_accepted(bundle: Bundle) -> None:
    everything = frozenset({"insecure-configuration", "outdated-tcb", "software-hardening-needed"})
    for status in ("Revoked", "SomethingNew"):
        error = policy_refusal(bundle, sgx_claims(tcb_status=status), tolerate=everything)
        assert error.check == "tcb"


def test_expectations_refuse_what_could_never_match() -> None:
    with pytest.raises(ValueError, match="needs the expected MRSIGNER"):
        expect(isv_svn=1)
    with pytest.raises(ValueError, match="unknown tolerations"):
        expect(tolerate=frozenset({"debug-mode"}))
    with pytest.raises(ValueError, match="between 0 and 65535"):
        expect(mrsigner="5a" * 32, isv_prod_id=70000)
