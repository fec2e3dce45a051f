"""Simulated evidence: creation, strict verification and the evidence wire form."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opencas.attestation import verify
from opencas.attestation.evidence import MAX_EVIDENCE_BYTES, Evidence
from opencas.attestation.simulated import (
    FORMAT,
    create_simulated_evidence,
    verify_simulated_evidence,
)
from opencas.attestation.verify import verify_evidence
from opencas.crypto.canonical import canonical_json
from opencas.crypto.keys import key_hash
from opencas.errors import EvidenceError

MEASUREMENT = "ab" * 32
REPORT_DATA = bytes(range(64))
AT = datetime(2026, 11, 29, 14, 0, tzinfo=UTC)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _document(evidence: Evidence) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(evidence.data)
    return document


def _resign(key: Ed25519PrivateKey, body: dict[str, Any]) -> Evidence:
    """Evidence with ``body`` correctly signed, to test checks that come after the signature."""
    signature = key.sign(FORMAT.encode() + b"\x00" + canonical_json(body))
    document = {"body": body, "signature": base64.b64encode(signature).decode()}
    return Evidence("simulated", canonical_json(document))


def test_round_trip(key: Ed25519PrivateKey) -> None:
    evidence = create_simulated_evidence(key, MEASUREMENT, REPORT_DATA)
    verified = verify_simulated_evidence(evidence)
    assert verified.platform == "simulated"
    assert verified.measurement == MEASUREMENT
    assert verified.report_data == REPORT_DATA
    assert verified.debug is True
    assert verified.platform_key_hash == key_hash(key)
    assert verified.tcb_status == "Simulated"
    assert verified.advisories == ()
    assert verify_evidence(evidence, at=AT) == verified


def test_wire_form_round_trip(key: Ed25519PrivateKey) -> None:
    evidence = create_simulated_evidence(key, MEASUREMENT, REPORT_DATA)
    wire = json.loads(json.dumps(evidence.to_json()))
    assert Evidence.from_json(wire) == evidence


@pytest.mark.parametrize("position", [-1, -10, 40])
def test_flipped_byte_fails(key: Ed25519PrivateKey, position: int) -> None:
    evidence = create_simulated_evidence(key, MEASUREMENT, REPORT_DATA)
    data = bytearray(evidence.data)
    data[position] ^= 0x01
    with pytest.raises(EvidenceError):
        verify_simulated_evidence(Evidence("simulated", bytes(data)))


def test_flipped_signature_bit_fails(key: Ed25519PrivateKey) -> None:
    evidence = create_simulated_evidence(key, MEASUREMENT, REPORT_DATA)
    document = _document(evidence)
    signature = bytearray(base64.b64decode(document["signature"]))
    signature[0] ^= 0x80
    document["signature"] = base64.b64encode(signature).decode()
    with pytest.raises(EvidenceError, match="signature does not verify"):
        verify_simulated_evidence(Evidence("simulated", canonical_json(document)))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("measurement", "cd" * 32),
        ("report_data", "00" * 64),
        ("platform_key", base64.b64encode(b"\x01" * 32).decode()),
    ],
)
def test_changed_body_field_fails(key: Ed25519PrivateKey, field: str, value: str) -> None:
    document = _document(create_simulated_evidence(key, MEASUREMENT, REPORT_DATA))
    document["body"][field] = value
    with pytest.raises(EvidenceError):
        verify_simulated_evidence(Evidence("simulated", canonical_json(document)))


def test_other_key_signature_fails(key: Ed25519PrivateKey) -> None:
    document = _document(create_simulated_evidence(key, MEASUREMENT, REPORT_DATA))
    other = Ed25519PrivateKey.generate()
    body = document["body"]
    document["signature"] = base64.b64encode(
        other.sign(FORMAT.encode() + b"\x00" + canonical_json(body))
    ).decode()
    with pytest.raises(EvidenceError, match="signature does not verify"):
        verify_simulated_evidence(Evidence("simulated", canonical_json(document)))


@pytest.mark.parametrize("debug", [False, 1, "true", None])
def test_debug_must_be_true(key: Ed25519PrivateKey, debug: object) -> None:
    body = _document(create_simulated_evidence(key, MEASUREMENT, REPORT_DATA))["body"]
    body["debug"] = debug
    with pytest.raises(EvidenceError, match="'debug' must be true") as refused:
        verify_simulated_evidence(_resign(key, body))
    assert refused.value.check == "debug"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("measurement", "ab" * 65, "measurement"),
        ("measurement", "", "measurement"),
        ("measurement", "abc", "measurement"),
        ("measurement", "AB" * 32, "measurement"),
        ("report_data", "00" * 63, "report_data"),
        ("report_data", "00" * 65, "report_data"),
        ("platform_key", base64.b64encode(b"\x01" * 31).decode(), "platform_key"),
        ("platform_key", "not base64!", "platform_key"),
        ("format", "opencas-simulated-evidence/v2", "format"),
    ],
)
def test_wrong_shapes_and_lengths(
    key: Ed25519PrivateKey, field: str, value: str, reason: str
) -> None:
    body = _document(create_simulated_evidence(key, MEASUREMENT, REPORT_DATA))["body"]
    body[field] = value
    with pytest.raises(EvidenceError, match=reason):
        verify_simulated_evidence(_resign(key, body))


def test_short_signature_fails(key: Ed25519PrivateKey) -> None:
    document = _document(create_simulated_evidence(key, MEASUREMENT, REPORT_DATA))
    document["signature"] = base64.b64encode(b"\x00" * 63).decode()
    with pytest.raises(EvidenceError, match="'signature' must be 64 bytes"):
        verify_simulated_evidence(Evidence("simulated", canonical_json(document)))


def test_extra_and_missing_keys_fail(key: Ed25519PrivateKey) -> None:
    body = _document(create_simulated_evidence(key, MEASUREMENT, REPORT_DATA))["body"]
    with pytest.raises(EvidenceError, match="unexpected extra"):
        verify_simulated_evidence(_resign(key, {**body, "extra": 1}))
    del body["debug"]
    with pytest.raises(EvidenceError, match="missing debug"):
        verify_simulated_evidence(_resign(key, body))


def test_non_canonical_encoding_fails(key: Ed25519PrivateKey) -> None:
    evidence = create_simulated_evidence(key, MEASUREMENT, REPORT_DATA)
    pretty = json.dumps(_document(evidence), indent=2).encode()
    with pytest.raises(EvidenceError, match="canonical"):
        verify_simulated_evidence(Evidence("simulated", pretty))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'"x"',
        b"{",
        b"[" * 100_000,
        b'{"body":NaN,"signature":""}',
        b'{"body":1e400,"signature":""}',
        b'{"body":123456789012345678901234567890,"signature":""}',
        b'{"body":"\\ud800","signature":""}',
        b'{"body":{},"body":{},"signature":""}',
        b"1" * 5000,
    ],
)
def test_garbage_fails_cleanly(data: bytes) -> None:
    with pytest.raises(EvidenceError):
        verify_simulated_evidence(Evidence("simulated", data))


def test_create_refuses_bad_arguments(key: Ed25519PrivateKey) -> None:
    with pytest.raises(ValueError, match="report data"):
        create_simulated_evidence(key, MEASUREMENT, b"\x00" * 32)
    with pytest.raises(ValueError, match="measurement"):
        create_simulated_evidence(key, "XYZ", REPORT_DATA)


def test_unknown_type_is_refused() -> None:
    with pytest.raises(EvidenceError, match="unknown evidence type 'quantum'"):
        verify_evidence(Evidence("quantum", b"{}"), at=AT)


@pytest.mark.parametrize("evidence_type", ["cca", "nitro"])
def test_known_unsupported_types(evidence_type: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "KNOWN_UNSUPPORTED_TYPES", frozenset({"cca", "nitro"}))
    with pytest.raises(EvidenceError, match=f"'{evidence_type}' is not supported by this build"):
        verify_evidence(Evidence(evidence_type, b"\x00"), at=AT)


def test_simulated_verifier_refuses_other_types(key: Ed25519PrivateKey) -> None:
    evidence = create_simulated_evidence(key, MEASUREMENT, REPORT_DATA)
    with pytest.raises(EvidenceError, match="not simulated evidence"):
        verify_simulated_evidence(Evidence("tdx", evidence.data))


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ("not a dict", "JSON object"),
        ([], "JSON object"),
        ({"type": "simulated"}, "missing data"),
        ({"type": "simulated", "data": "", "extra": 1}, "unexpected extra"),
        ({"type": "Simulated!", "data": ""}, "'type'"),
        ({"type": 5, "data": ""}, "'type'"),
        ({"type": "simulated", "data": 5}, "'data'"),
        ({"type": "simulated", "data": "not base64!"}, "'data' is not valid base64"),
        ({"type": "simulated", "data": "QQ"}, "'data' is not valid base64"),
        (
            {"type": "simulated", "data": base64.b64encode(b"\0" * (MAX_EVIDENCE_BYTES + 1))},
            "'data'",
        ),
        (
            {
                "type": "simulated",
                "data": base64.b64encode(b"\0" * (MAX_EVIDENCE_BYTES + 1)).decode(),
            },
            "larger than the limit",
        ),
    ],
)
def test_evidence_from_json_is_strict(obj: object, reason: str) -> None:
    with pytest.raises(EvidenceError, match=reason):
        Evidence.from_json(obj)


def test_evidence_at_size_limit_is_accepted() -> None:
    data = b"\x00" * MAX_EVIDENCE_BYTES
    wire = {"type": "simulated", "data": base64.b64encode(data).decode()}
    assert Evidence.from_json(wire).data == data


def test_a_security_version_is_signed_and_reported(key: Ed25519PrivateKey) -> None:
    evidence = create_simulated_evidence(key, MEASUREMENT, REPORT_DATA, 2)
    assert _document(evidence)["body"]["security_version"] == 2
    assert verify_simulated_evidence(evidence).isv_svn == 2
    assert (
        verify_simulated_evidence(create_simulated_evidence(key, MEASUREMENT, REPORT_DATA)).isv_svn
        is None
    )
    body = _document(evidence)["body"]
    body["security_version"] = 3
    changed = {**_document(evidence), "body": body}
    with pytest.raises(EvidenceError, match="signature"):
        verify_simulated_evidence(Evidence("simulated", canonical_json(changed)))


@pytest.mark.parametrize("version", [0, -1, 65536, "2", True, 2.5])
def test_a_security_version_out_of_shape_is_refused(
    key: Ed25519PrivateKey, version: object
) -> None:
    body = _document(create_simulated_evidence(key, MEASUREMENT, REPORT_DATA))["body"]
    with pytest.raises(EvidenceError, match=r"'security_version' must be an integer in 1\.\.65535"):
        verify_simulated_evidence(_resign(key, {**body, "security_version": version}))
    with pytest.raises(ValueError, match="security version"):
        create_simulated_evidence(key, MEASUREMENT, REPORT_DATA, -1)
