"""The CAS attestation report and its verification (DESIGN.md §5).

``GET /v1/attest?nonce=<hex>`` answers ``{"report": {...}, "evidence": {"type", "data"},
"certificate_chain": [tls_certificate_pem, ca_certificate_pem]}``. The report's canonical JSON
(RFC 8785) hashed with SHA-512 is the report data inside the evidence, so every claim in the
report is bound to the platform's quote.

This module is pure: :func:`verify_cas_attestation` takes the parsed response, what the caller
expects and the certificate the TLS connection presented, and returns a decision — no network,
no files, no clock.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

from cryptography import x509
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from opencas.attestation.evidence import Evidence, VerifiedEvidence
from opencas.attestation.verifier import NO_COLLATERAL, CollateralSource
from opencas.attestation.verify import verify_evidence
from opencas.attestation.workload_policy import TCB_TOLERATIONS
from opencas.crypto.canonical import canonical_sha512, member_mismatch
from opencas.crypto.pem import (
    CERTIFICATE_ERRORS,
    certificate_pem,
    load_certificate_chain_pem,
    parse_eagerly,
)
from opencas.crypto.x509 import certificate_key_hash, verify_issued_by
from opencas.errors import AttestationRefused
from opencas.sources.problems import joined_key, render, validation_problems

REPORT_VERSION = 1
#: The audit head of an empty log.
AUDIT_GENESIS_HEAD = "0" * 64

_HASH_SHAPE = r"^[0-9a-f]{64}$"
#: The casctl flag that tolerates each TCB finding in a CAS's evidence (SCONE's flags).
_TOLERATION_FLAGS = {
    "insecure-configuration": "-C",
    "outdated-tcb": "-G",
    "software-hardening-needed": "-S",
}
#: The TCB findings a client may tolerate in a CAS's evidence.
CAS_TOLERATIONS = frozenset(_TOLERATION_FLAGS)

_HEX_SHAPE = r"^(?:[0-9a-f]{2})+$"
_TIME_SHAPE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z")
_MAX_CERTIFICATE_PEM_CHARS = 16 * 1024
_RESPONSE_KEYS = frozenset({"report", "evidence", "certificate_chain"})


def _rfc3339_utc(text: str) -> str:
    if not _TIME_SHAPE.fullmatch(text):
        raise ValueError("must be an RFC 3339 UTC time such as 2026-11-29T14:00:00Z")
    try:
        datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"is not a valid date and time ({exc})") from exc
    return text


def _version_one(value: int) -> int:
    if value != REPORT_VERSION:
        raise ValueError(f"this client understands report version {REPORT_VERSION} only")
    return value


_Hash = Annotated[str, Field(pattern=_HASH_SHAPE)]
_Hex = Annotated[str, Field(pattern=_HEX_SHAPE)]
_Time = Annotated[str, Field(max_length=40), AfterValidator(_rfc3339_utc)]


class AuditHead(BaseModel):
    """The head of the CAS's audit log: the sequence number and hash of its latest entry."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    seq: Annotated[int, Field(ge=0, le=2**53 - 1)]
    head: _Hash


class StoreStateClaim(BaseModel):
    """The CAS store's commit counter (one more for every commit that changed a record) and a
    commitment to the digest over all its records."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    counter: Annotated[int, Field(ge=0, le=2**53 - 1)]
    digest: _Hash


class RestoredClaim(BaseModel):
    """The snapshot a CAS was restored from (``cas restore``) on a registered backup: its id,
    the commit and audit sequence it was taken at and when, and when it was restored."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    snapshot_id: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    state_counter: Annotated[int, Field(ge=0, le=2**53 - 1)]
    audit_seq: Annotated[int, Field(ge=0, le=2**53 - 1)]
    taken_at: _Time
    restored_at: _Time


class RecoveryClaim(BaseModel):
    """Whether the owner config names recovery keys: their key hashes and the threshold."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    configured: bool
    threshold: Annotated[int, Field(ge=1, le=16)] | None
    key_hashes: Annotated[list[_Hash], Field(max_length=16)]

    @model_validator(mode="after")
    def _consistent(self) -> RecoveryClaim:
        """A threshold and keys exactly when configured, and no more shares than keys."""
        if not self.configured:
            if self.threshold is not None or self.key_hashes:
                raise ValueError("recovery that is not configured has no threshold or keys")
        elif self.threshold is None or not 1 <= self.threshold <= len(self.key_hashes):
            raise ValueError("configured recovery needs a threshold of 1 to the number of keys")
        return self


class CasReport(BaseModel):
    """The claims a CAS makes about itself, bound to its platform evidence (DESIGN.md §5).

    Every field is required and typed strictly (no coercion): hashes are 64 lowercase hex
    digits, times RFC 3339 UTC (``2026-11-29T14:00:00Z``), the nonce and the measurement
    lowercase hex. An unprovisioned CAS carries no provisioning time and no owner hashes.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    version: Annotated[int, AfterValidator(_version_one)]
    cas_version: Annotated[str, Field(min_length=1, max_length=64)]
    instance_id: Annotated[str, Field(min_length=1, max_length=128)]
    cluster_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    """The CAS's own id, which every instance of it reports; absent from the reports of CAS
    versions before it, whose ``instance_id`` is that id (:func:`cluster_of`)."""
    time: _Time
    nonce: Annotated[_Hex, Field(max_length=128)]
    cas_key_hash: _Hash
    tls_key_hash: _Hash
    software_measurement: Annotated[_Hex, Field(max_length=512)]
    platform: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,31}$")]
    mode: Literal["production", "debug"]
    provisioned: bool
    self_provisioned: bool
    provisioned_at: _Time | None
    owner_identity_hash: _Hash | None
    owner_config_sha256: _Hash | None
    db_key_injected: bool
    state: StoreStateClaim
    audit: AuditHead
    recovery: RecoveryClaim
    recovered: bool
    restored_from: RestoredClaim | None = None
    """The snapshot this CAS was restored from, if it was; absent from the reports of CAS
    versions before restores, and from the report of a CAS never restored."""

    @model_validator(mode="after")
    def _provisioning_is_consistent(self) -> CasReport:
        """Refuse claims that contradict each other about provisioning."""
        if not self.provisioned:
            stray = [
                name
                for name in ("provisioned_at", "owner_identity_hash", "owner_config_sha256")
                if getattr(self, name) is not None
            ]
            if self.self_provisioned:
                stray.insert(0, "self_provisioned")
            if stray:
                raise ValueError(f"an unprovisioned CAS cannot report {', '.join(stray)}")
        elif self.provisioned_at is None or self.owner_identity_hash is None:
            raise ValueError("a provisioned CAS must report provisioned_at and owner_identity_hash")
        return self


def report_time(when: datetime) -> str:
    """Format ``when`` as a report time: RFC 3339 UTC to the second, e.g. 2026-11-29T14:00:00Z.

    Raises ``ValueError`` for a naive datetime (its time zone would be a guess).
    """
    if when.tzinfo is None:
        raise ValueError("report times must be timezone-aware")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def report_json(report: CasReport) -> dict[str, object]:
    """The report as JSON, as the CAS sends it: without ``cluster_id`` or ``restored_from``
    when it has none (a report of a CAS version before them, or of a CAS never restored), so
    that such a report hashes as its CAS hashed it."""
    shown = report.model_dump(mode="json")
    for optional in ("cluster_id", "restored_from"):
        if shown[optional] is None:
            del shown[optional]
    return shown


def report_data(report: CasReport) -> bytes:
    """The 64 bytes the evidence must bind: SHA-512 over the report's canonical JSON."""
    return canonical_sha512(report_json(report))


def cluster_of(report: CasReport) -> str:
    """The id of the CAS (every instance of it) that made ``report``: its ``cluster_id``, or
    for a CAS version before cluster ids its ``instance_id``, which was that id."""
    return report.cluster_id if report.cluster_id is not None else report.instance_id


@dataclass(frozen=True)
class CasExpectations:
    """What the caller accepts from a CAS.

    ``nonce`` is the lowercase hex nonce the caller sent; ``measurements`` the accepted
    software measurements (empty: any); ``cas_key_hash`` the pinned CAS key hash, if any.
    ``allow_debug`` and ``allow_db_key_injected`` accept a debug-mode CAS and a CAS whose
    database key was injected from outside; both are for testing only. ``allow_recovered``
    accepts a CAS that was recovered from recovery shares (its key was rebuilt outside a TEE's
    sealing). ``allow_unprovisioned``
    accepts a CAS without an owner; ``owner_identity_hash`` and ``owner_config_sha256``, when
    set, must equal what the report says was provisioned.

    For a CAS in an SGX enclave, ``mrsigner`` accepts the enclaves of one signer (with
    ``isv_prod_id`` equal and ``isv_svn`` at least the given values); with ``measurements`` as
    well, both must hold. ``tolerate`` names the TCB findings accepted (``insecure-configuration``,
    ``outdated-tcb``, ``software-hardening-needed``: casctl's ``-C``, ``-G`` and ``-S``); the
    advisories of a tolerated status are accepted with it. ``verification_time`` is when the
    evidence is verified as of (None: now), for evidence checked later against the collateral of
    its day.
    """

    nonce: str
    allow_debug: bool = False
    measurements: frozenset[str] = frozenset()
    mrsigner: str | None = None
    isv_prod_id: int | None = None
    isv_svn: int | None = None
    tolerate: frozenset[str] = frozenset()
    verification_time: datetime | None = None
    cas_key_hash: str | None = None
    allow_db_key_injected: bool = False
    allow_unprovisioned: bool = False
    owner_identity_hash: str | None = None
    owner_config_sha256: str | None = None
    allow_recovered: bool = False

    def __post_init__(self) -> None:
        """Refuse expectations that could never match a valid report (``ValueError``)."""
        if not re.fullmatch(_HEX_SHAPE, self.nonce):
            raise ValueError("the expected nonce must be lowercase hex")
        for measurement in self.measurements:
            if not re.fullmatch(_HEX_SHAPE, measurement):
                raise ValueError(f"expected measurement {measurement!r} is not lowercase hex")
        if self.cas_key_hash is not None and not re.fullmatch(_HASH_SHAPE, self.cas_key_hash):
            raise ValueError("the expected CAS key hash must be 64 lowercase hex digits")
        for name in ("owner_identity_hash", "owner_config_sha256", "mrsigner"):
            value = getattr(self, name)
            if value is not None and not re.fullmatch(_HASH_SHAPE, value):
                raise ValueError(f"the expected {name} must be 64 lowercase hex digits")
        if (self.isv_prod_id is not None or self.isv_svn is not None) and self.mrsigner is None:
            raise ValueError("an expected ISVPRODID or ISVSVN needs the expected MRSIGNER")
        for name in ("isv_prod_id", "isv_svn"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 0xFFFF:
                raise ValueError(f"the expected {name} must be between 0 and 65535")
        unknown = self.tolerate - CAS_TOLERATIONS
        if unknown:
            raise ValueError(
                f"unknown tolerations {sorted(unknown)}; known: {sorted(CAS_TOLERATIONS)}"
            )


@dataclass(frozen=True)
class VerifiedCas:
    """A CAS that passed verification: its report, its evidence and its certificates (PEM)."""

    report: CasReport
    evidence: VerifiedEvidence
    ca_certificate_pem: bytes
    tls_certificate_pem: bytes


def _format_error(message: str) -> AttestationRefused:
    return AttestationRefused("format", f"the CAS's attestation response is malformed: {message}")


def _describe_validation_error(error: ValidationError) -> str:
    problems = validation_problems(
        error.errors(include_url=False)[:5],
        source="",
        text_path=lambda loc: ("report", *loc),
        key=joined_key,
    )
    more = error.error_count() - len(problems)
    suffix = f" (and {more} more)" if more > 0 else ""
    return "; ".join(render(problem) for problem in problems) + suffix


def _parse_report(value: object) -> CasReport:
    if not isinstance(value, dict):
        raise _format_error("'report' must be a JSON object")
    try:
        return CasReport.model_validate(value)
    except ValidationError as exc:
        raise _format_error(_describe_validation_error(exc)) from exc


def _parse_certificate(value: object, name: str) -> x509.Certificate:
    if not isinstance(value, str) or len(value) > _MAX_CERTIFICATE_PEM_CHARS:
        raise _format_error(f"the {name} certificate must be a PEM string")
    if not value.isascii():
        raise _format_error(f"the {name} certificate is not a valid PEM certificate")
    try:
        certificates = load_certificate_chain_pem(value.encode("ascii"))
    except ValueError as exc:
        raise _format_error(f"the {name} certificate is not a valid PEM certificate") from exc
    if len(certificates) != 1:
        raise _format_error(f"the {name} certificate must be exactly one PEM certificate")
    try:
        certificate_key_hash(certificates[0])
    except ValueError as exc:
        raise _format_error(f"the {name} certificate has a key of an unsupported type") from exc
    return certificates[0]


def _parse_response(
    response: object,
) -> tuple[CasReport, Evidence, x509.Certificate, x509.Certificate]:
    if not isinstance(response, dict):
        raise _format_error("the body must be a JSON object")
    mismatch = member_mismatch(response, _RESPONSE_KEYS)
    if mismatch is not None:
        raise _format_error(f"wrong fields ({mismatch})")
    report = _parse_report(response["report"])
    evidence = Evidence.from_json(response["evidence"])
    chain = response["certificate_chain"]
    if not isinstance(chain, list) or len(chain) != 2:
        raise _format_error(
            "'certificate_chain' must be a list of two PEM certificates: TLS, then CA"
        )
    tls_certificate = _parse_certificate(chain[0], "TLS")
    ca_certificate = _parse_certificate(chain[1], "CA")
    return report, evidence, tls_certificate, ca_certificate


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        verify_issued_by(certificate, issuer)
    except ValueError:
        return False
    return True


def _check_binding(
    report: CasReport, verified: VerifiedEvidence, expectations: CasExpectations
) -> None:
    """The evidence binds this report, for this nonce, on the platform and code it claims."""
    if not hmac.compare_digest(verified.report_data, report_data(report)):
        raise AttestationRefused(
            "binding",
            "the report does not match the report data in the evidence: the report or the "
            "evidence was changed in transit, or they do not belong together",
        )
    if report.nonce != expectations.nonce:
        raise AttestationRefused(
            "nonce",
            f"the report answers nonce {report.nonce[:32]}, not the nonce "
            f"{expectations.nonce[:32]} that was sent: it may be a replay of an older answer",
        )
    if verified.measurement != report.software_measurement:
        raise AttestationRefused(
            "binding",
            f"the report claims software measurement {report.software_measurement} but the "
            f"evidence measures {verified.measurement}",
        )
    if verified.platform != report.platform:
        raise AttestationRefused(
            "binding",
            f"the report claims platform '{report.platform}' but the evidence comes from "
            f"platform '{verified.platform}'",
        )
    if verified.debug and report.mode != "debug":
        raise AttestationRefused(
            "binding",
            f"the report claims {report.mode} mode but the evidence comes from a TEE in debug mode",
        )


def check_cas_policy(
    report: CasReport, verified: VerifiedEvidence, expectations: CasExpectations
) -> None:
    """Return if what the bound ``report`` and its ``verified`` evidence say is acceptable.

    Raises :class:`AttestationRefused` naming the first check that fails: ``debug-mode``,
    ``measurement``, ``signer``, ``tcb``.
    """
    if report.mode == "debug" and not expectations.allow_debug:
        why = "debug TEE" if verified.debug else "debug configuration"
        raise AttestationRefused(
            "debug-mode",
            f"the CAS runs in debug mode ({why} on platform '{report.platform}', so its secrets "
            "are not protected); pass --only-for-testing-debug to accept it for testing",
        )
    if expectations.measurements and report.software_measurement not in expectations.measurements:
        expected = ", ".join(sorted(expectations.measurements))
        raise AttestationRefused(
            "measurement",
            f"the CAS runs software with measurement {report.software_measurement}, which is "
            f"not one of the expected measurements ({expected})",
        )
    _check_signer(verified, expectations)
    _check_tcb(verified, expectations)


def _check_signer(verified: VerifiedEvidence, expectations: CasExpectations) -> None:
    """An expected enclave signer signed the CAS's enclave, at the expected product and SVN."""
    if expectations.mrsigner is None:
        return
    if verified.mrsigner is None:
        raise AttestationRefused(
            "signer",
            f"an enclave signer (MRSIGNER) was expected, but the CAS's evidence is "
            f"'{verified.platform}', which has none",
        )
    problems = []
    if verified.mrsigner != expectations.mrsigner:
        problems.append(f"MRSIGNER {verified.mrsigner}, not {expectations.mrsigner}")
    if expectations.isv_prod_id is not None and verified.isv_prod_id != expectations.isv_prod_id:
        problems.append(f"ISVPRODID {verified.isv_prod_id}, not {expectations.isv_prod_id}")
    if expectations.isv_svn is not None and (verified.isv_svn or 0) < expectations.isv_svn:
        problems.append(f"ISVSVN {verified.isv_svn}, below the expected {expectations.isv_svn}")
    if problems:
        raise AttestationRefused(
            "signer",
            "the CAS's enclave has " + "; ".join(problems) + ": it is not the expected CAS",
        )


def _check_tcb(verified: VerifiedEvidence, expectations: CasExpectations) -> None:
    """The platform's TCB status is up to date, or its findings are tolerated."""
    needed = TCB_TOLERATIONS.get(verified.tcb_status)
    if needed is None:
        raise AttestationRefused(
            "tcb",
            f"the CAS's platform has TCB status '{verified.tcb_status[:40]}', which is never "
            "accepted",
        )
    missing = [item for item in needed if item not in expectations.tolerate]
    if missing:
        flags = ", ".join(f"{_TOLERATION_FLAGS[item]} ({item})" for item in missing)
        advisories = ", ".join(verified.advisories[:5]) or "none"
        raise AttestationRefused(
            "tcb",
            f"the CAS's platform has TCB status '{verified.tcb_status}' (advisories: "
            f"{advisories}); pass {flags} to accept it",
        )


def _check_certificates(
    report: CasReport,
    expectations: CasExpectations,
    tls_certificate: x509.Certificate,
    ca_certificate: x509.Certificate,
    peer_certificate_der: bytes | None,
) -> None:
    """The certificates carry the reported keys, and the connection uses the reported one."""
    ca_key_hash = certificate_key_hash(ca_certificate)
    if ca_key_hash != report.cas_key_hash:
        raise AttestationRefused(
            "cas-key",
            f"the CA certificate carries key {ca_key_hash}, not the CAS key "
            f"{report.cas_key_hash} that the report names",
        )
    if expectations.cas_key_hash is not None and report.cas_key_hash != expectations.cas_key_hash:
        raise AttestationRefused(
            "cas-key-hash",
            f"the CAS key hash is {report.cas_key_hash}, not the expected "
            f"{expectations.cas_key_hash}: this is a different CAS",
        )
    if report.db_key_injected and not expectations.allow_db_key_injected:
        raise AttestationRefused(
            "db-key-injected",
            "the CAS's database key was injected from outside, so someone outside the CAS may "
            "read its sessions and secrets; pass --allow-cas-owner-secret-access to accept it",
        )
    _check_recovered(report, expectations)
    tls_key_hash = certificate_key_hash(tls_certificate)
    if tls_key_hash != report.tls_key_hash:
        raise AttestationRefused(
            "tls-certificate",
            f"the TLS certificate carries key {tls_key_hash}, not the TLS key "
            f"{report.tls_key_hash} that the report names",
        )
    if not _issued_by(tls_certificate, ca_certificate):
        raise AttestationRefused(
            "tls-certificate",
            "the TLS certificate was not issued by the CAS's CA certificate",
        )
    if peer_certificate_der is not None:
        _check_peer(report, ca_certificate, peer_certificate_der)


def _check_recovered(report: CasReport, expectations: CasExpectations) -> None:
    if report.recovered and not expectations.allow_recovered:
        raise AttestationRefused(
            "recovered",
            "the CAS was recovered from recovery shares: its database key left the TEE and was "
            "rebuilt from the shares of its recovery-key holders, who together could read its "
            "sessions and secrets; pass --allow-recovered to accept it",
        )


def _check_peer(report: CasReport, ca_certificate: x509.Certificate, peer_der: bytes) -> None:
    # The key, not the certificate bytes, is what the report binds: the CAS reissues its
    # certificate (same key) when the owner changes its subject, and a connection opened just
    # before may still present the previous one.
    mismatch = AttestationRefused(
        "tls-certificate",
        "the TLS connection presented a certificate that does not carry the TLS key the report "
        "names, or was not issued by the CAS key; something between you and the CAS may be "
        "intercepting the connection",
    )
    try:
        peer = parse_eagerly(x509.load_der_x509_certificate(peer_der))
        peer_key_hash = certificate_key_hash(peer)
    except CERTIFICATE_ERRORS:
        raise mismatch from None
    if peer_key_hash != report.tls_key_hash or not _issued_by(peer, ca_certificate):
        raise mismatch


def _check_provisioning(report: CasReport, expectations: CasExpectations) -> None:
    """The CAS has the owner and owner config the caller expects."""
    if not report.provisioned:
        if not expectations.allow_unprovisioned:
            raise AttestationRefused(
                "unprovisioned",
                "the CAS is not provisioned: it has no owner yet, so anyone who reaches it first "
                "can take it; provision it, or pass --allow-unprovisioned",
            )
        if expectations.owner_identity_hash or expectations.owner_config_sha256:
            raise AttestationRefused(
                "unprovisioned",
                "an owner identity or owner config was expected, but the CAS is not provisioned",
            )
        return
    expected_owner = expectations.owner_identity_hash
    if expected_owner is not None and report.owner_identity_hash != expected_owner:
        raise AttestationRefused(
            "owner-identity",
            f"the CAS was provisioned by owner {report.owner_identity_hash}, not by the expected "
            f"owner {expected_owner}",
        )
    expected_config = expectations.owner_config_sha256
    if expected_config is not None and report.owner_config_sha256 != expected_config:
        raise AttestationRefused(
            "owner-config",
            f"the CAS's owner config has SHA-256 {report.owner_config_sha256}, not "
            f"{expected_config} of the expected owner config",
        )


def verify_cas_attestation(
    response: object,
    expectations: CasExpectations,
    peer_certificate_der: bytes | None,
    *,
    at: datetime,
    collateral: CollateralSource = NO_COLLATERAL,
) -> VerifiedCas:
    """Decide whether the ``GET /v1/attest`` answer ``response`` proves an acceptable CAS.

    ``response`` is the parsed JSON body; ``peer_certificate_der`` the certificate the TLS
    connection presented (None when the caller did not connect over TLS, e.g. in tests); ``at`` the
    time to verify the evidence as of; ``collateral`` where the evidence's verifier gets what it
    checks the evidence against (none is needed for simulated evidence). The checks run in this
    order, and the first failure raises :class:`AttestationRefused` whose ``check`` names it:
    ``format`` (body shape), then evidence verification (:class:`EvidenceError`, whose ``check``
    names its step), ``binding`` (evidence binds this report), ``nonce``, ``binding`` (evidence
    measurement and platform equal the report's; debug evidence implies debug mode), ``debug-mode``,
    ``measurement``, ``signer`` (SGX: MRSIGNER, ISVPRODID, ISVSVN), ``tcb`` (the TCB status, or its
    tolerated findings), ``cas-key`` (CA certificate carries the reported CAS key), ``cas-key-hash``
    (the expected CAS key), ``db-key-injected``, ``recovered`` (recovered from shares),
    ``tls-certificate`` (the TLS certificate carries the reported TLS key and is issued by the CA
    certificate; the TLS connection presented that certificate), then ``unprovisioned``,
    ``owner-identity`` and ``owner-config``. On success it returns the report, the verified
    evidence and the two certificates as PEM, for the caller to pin.
    """
    report, evidence, tls_certificate, ca_certificate = _parse_response(response)
    verified = verify_evidence(evidence, at=at, collateral=collateral)
    _check_binding(report, verified, expectations)
    check_cas_policy(report, verified, expectations)
    _check_certificates(report, expectations, tls_certificate, ca_certificate, peer_certificate_der)
    _check_provisioning(report, expectations)
    return VerifiedCas(
        report=report,
        evidence=verified,
        ca_certificate_pem=certificate_pem(ca_certificate),
        tls_certificate_pem=certificate_pem(tls_certificate),
    )
