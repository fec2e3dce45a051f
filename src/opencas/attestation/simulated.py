"""Simulated evidence: a signed statement that stands in for a hardware quote.

For development and tests only. Nothing roots the signing key in hardware: whoever holds a
platform key can claim any measurement, so a verifier learns only "the holder of the key with
this hash said so" — which is why simulated evidence always says ``debug: true`` and is accepted
only where debug evidence is explicitly tolerated.

The evidence bytes are the canonical JSON (RFC 8785) of::

    {"body": {"format": "opencas-simulated-evidence/v1",
              "measurement": <lowercase hex, 1 to 64 bytes>,
              "report_data": <lowercase hex, 64 bytes>,
              "debug": true,
              "platform_key": <standard base64 of the raw 32-byte Ed25519 public key>,
              "security_version": <integer 1 to 65535, only when not 0>},
     "signature": <standard base64 of the 64-byte Ed25519 signature>}

and the signature covers ``b"opencas-simulated-evidence/v1\\x00" + canonical_json(body)``.
The security version stands in for an SGX enclave's ISV SVN (verified evidence reports it as
``isv_svn``); a version of 0 is written by leaving the field out, so that each statement has
one byte string and evidence of machines without a version is what it always was.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from opencas.attestation.evidence import Evidence, VerifiedEvidence
from opencas.attestation.simulated_collateral import (
    SIMULATED_COLLATERAL_KEY,
    parse_simulated_collateral,
    tcb_status_of,
)
from opencas.attestation.verifier import CollateralSource
from opencas.crypto.canonical import canonical_json, member_mismatch, strict_json_object
from opencas.crypto.encoding import b64_decode, b64_encode
from opencas.crypto.keys import key_hash
from opencas.errors import EvidenceError

EVIDENCE_TYPE = "simulated"
FORMAT = "opencas-simulated-evidence/v1"
TCB_STATUS = "Simulated"

#: How simulated evidence names its verifier in what it proves (there is one version of it).
VERIFIER_NAME = "opencas-simulated 1"
REPORT_DATA_SIZE = 64

_SIGNING_PREFIX = FORMAT.encode("ascii") + b"\x00"
_MEASUREMENT_SHAPE = re.compile(r"(?:[0-9a-f]{2}){1,64}")
_REPORT_DATA_SHAPE = re.compile(r"[0-9a-f]{128}")
_BODY_KEYS = frozenset({"format", "measurement", "report_data", "debug", "platform_key"})
_VERSIONED_BODY_KEYS = _BODY_KEYS | {"security_version"}
#: The highest security version simulated evidence states (an ISV SVN is 16 bits).
MAX_SECURITY_VERSION = 65535
_TOP_KEYS = frozenset({"body", "signature"})


def is_simulated_measurement(text: str) -> bool:
    """True when ``text`` can be a simulated measurement: lowercase hex of 1 to 64 bytes."""
    return bool(_MEASUREMENT_SHAPE.fullmatch(text))


def is_security_version(value: object) -> bool:
    """True when ``value`` can be a simulated security version: an integer in 0..65535."""
    return type(value) is int and 0 <= value <= MAX_SECURITY_VERSION


def _signed_bytes(body: dict[str, Any]) -> bytes:
    return _SIGNING_PREFIX + canonical_json(body)


def create_simulated_evidence(
    private_key: Ed25519PrivateKey,
    measurement: str,
    report_data: bytes,
    security_version: int = 0,
) -> Evidence:
    """Create simulated evidence that binds ``report_data`` and claims ``measurement`` at
    ``security_version``.

    ``measurement`` must be lowercase hex of 1 to 64 bytes, ``report_data`` exactly 64 bytes and
    ``security_version`` in 0..65535; otherwise ``ValueError`` (these are the caller's mistakes,
    not the peer's). The result always declares debug mode.
    """
    if not is_simulated_measurement(measurement):
        raise ValueError("measurement must be lowercase hex of 1 to 64 bytes")
    if len(report_data) != REPORT_DATA_SIZE:
        raise ValueError(f"report data must be exactly {REPORT_DATA_SIZE} bytes")
    if not is_security_version(security_version):
        raise ValueError(f"a security version is an integer in 0..{MAX_SECURITY_VERSION}")
    body: dict[str, Any] = {
        "format": FORMAT,
        "measurement": measurement,
        "report_data": report_data.hex(),
        "debug": True,
        "platform_key": b64_encode(private_key.public_key().public_bytes_raw()),
    }
    if security_version:
        body["security_version"] = security_version
    signature = private_key.sign(_signed_bytes(body))
    document = {"body": body, "signature": b64_encode(signature)}
    return Evidence(type=EVIDENCE_TYPE, data=canonical_json(document))


def _parse_document(data: bytes) -> Any:
    try:
        document = strict_json_object(data, "simulated evidence")
    except ValueError as exc:
        raise EvidenceError(str(exc)) from exc
    try:
        canonical = canonical_json(document)
    except ValueError as exc:
        raise EvidenceError(f"simulated evidence is not valid JSON: {exc}") from exc
    # One byte string per statement: a re-encoded but equal document is refused, so evidence
    # bytes can be compared and logged as the identity of what the platform said.
    if canonical != data:
        raise EvidenceError("simulated evidence is not in canonical JSON form (RFC 8785)")
    return document


def _check_keys(value: object, expected: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EvidenceError(f"simulated evidence {where} must be a JSON object")
    mismatch = member_mismatch(value, expected)
    if mismatch is not None:
        raise EvidenceError(f"simulated evidence {where} has the wrong fields ({mismatch})")
    return value


def _decode_fixed(value: object, size: int, field: str) -> bytes:
    if not isinstance(value, str):
        raise EvidenceError(f"simulated evidence field '{field}' must be a base64 string")
    try:
        raw = b64_decode(value)
    except ValueError as exc:
        raise EvidenceError(f"simulated evidence field '{field}' is not valid base64") from exc
    if len(raw) != size:
        raise EvidenceError(
            f"simulated evidence field '{field}' must be {size} bytes, not {len(raw)}"
        )
    return raw


def verify_simulated_evidence(evidence: Evidence) -> VerifiedEvidence:
    """Check simulated evidence and return what it claims.

    Parsing is strict: canonical JSON, exactly the documented keys, exact types and lengths,
    ``debug`` true and a valid Ed25519 signature by the embedded platform key. Any deviation
    raises :class:`EvidenceError` with the reason. The result names the platform key by its key
    hash, which is also the simulated machine's ``platform_id["machine_id"]``; trusting that key
    is the caller's decision.
    """
    if evidence.type != EVIDENCE_TYPE:
        raise EvidenceError(
            f"evidence of type '{evidence.type}' is not simulated evidence", check="type"
        )
    document = _check_keys(_parse_document(evidence.data), _TOP_KEYS, "document")
    raw_body = document["body"]
    versioned = isinstance(raw_body, dict) and "security_version" in raw_body
    body = _check_keys(raw_body, _VERSIONED_BODY_KEYS if versioned else _BODY_KEYS, "body")
    security_version = body.get("security_version")
    if versioned and (not is_security_version(security_version) or security_version == 0):
        raise EvidenceError(
            "simulated evidence field 'security_version' must be an integer in "
            f"1..{MAX_SECURITY_VERSION} (a version of 0 is written by leaving it out)"
        )
    if body["format"] != FORMAT:
        raise EvidenceError(f"simulated evidence field 'format' must be '{FORMAT}'")
    measurement = body["measurement"]
    if not isinstance(measurement, str) or not is_simulated_measurement(measurement):
        raise EvidenceError(
            "simulated evidence field 'measurement' must be lowercase hex of 1 to 64 bytes"
        )
    report_data_hex = body["report_data"]
    if not isinstance(report_data_hex, str) or not _REPORT_DATA_SHAPE.fullmatch(report_data_hex):
        raise EvidenceError(
            f"simulated evidence field 'report_data' must be lowercase hex of "
            f"{REPORT_DATA_SIZE} bytes"
        )
    if body["debug"] is not True:
        raise EvidenceError(
            "simulated evidence field 'debug' must be true: simulated platforms always run "
            "in debug mode",
            check="debug",
        )
    try:
        platform_key = Ed25519PublicKey.from_public_bytes(
            _decode_fixed(body["platform_key"], 32, "platform_key")
        )
    except ValueError as exc:
        raise EvidenceError(
            "simulated evidence field 'platform_key' is not an Ed25519 public key"
        ) from exc
    signature = _decode_fixed(document["signature"], 64, "signature")
    try:
        platform_key.verify(signature, _signed_bytes(body))
    except InvalidSignature as exc:
        raise EvidenceError(
            "simulated evidence signature does not verify: the evidence was changed or was not "
            "signed by its platform key",
            check="signature",
        ) from exc
    platform_key_hash = key_hash(platform_key)
    return VerifiedEvidence(
        platform=EVIDENCE_TYPE,
        measurement=measurement,
        report_data=bytes.fromhex(report_data_hex),
        debug=True,
        platform_key_hash=platform_key_hash,
        tcb_status=TCB_STATUS,
        advisories=(),
        measurements=MappingProxyType({"measurement": measurement}),
        # The platform key is the simulated machine's whole identity, as a chip id is AMD's.
        platform_id=MappingProxyType({"machine_id": platform_key_hash}),
        verifier=VERIFIER_NAME,
        isv_svn=security_version,
    )


class SimulatedVerifier:
    """The :class:`~opencas.attestation.verifier.Verifier` of simulated evidence.

    Without ``roots`` simulated evidence carries everything it is checked against (the platform
    key) and has no time in it: the verification time and the collateral source are not used,
    and the TCB status is ``Simulated``. With ``roots`` (key hashes of simulated collateral
    roots, :mod:`opencas.attestation.simulated_collateral`), the machine's TCB status is the one
    the simulated collateral signed by one of them gives it at the verification time; without
    such collateral, or when it does not list the machine, the evidence does not verify.
    """

    def __init__(self, roots: frozenset[str] = frozenset()) -> None:
        self.roots = roots

    def verify(
        self, evidence: Evidence, *, at: datetime, collateral: CollateralSource
    ) -> VerifiedEvidence:
        """:func:`verify_simulated_evidence` of ``evidence``, its TCB status from collateral
        when roots are configured."""
        verified = verify_simulated_evidence(evidence)
        if not self.roots:
            return verified
        document = collateral.collateral(SIMULATED_COLLATERAL_KEY, at)
        checked = parse_simulated_collateral(document, self.roots)
        status = tcb_status_of(checked, verified.platform_key_hash, at)
        return replace(
            verified,
            tcb_status=status,
            collateral_not_before=checked.not_before,
            collateral_not_after=checked.not_after,
            tcb_evaluation_number=checked.tcb_evaluation_number,
        )
