"""Replaying workload decisions: what a recorded ``workload_attested`` / ``workload_refused``
rested on, kept in the evidence archive, decided again by today's verifiers and policy rules.

Pure: no files, no clock. The archive is a mapping from SHA-256 (lowercase hex) to the bytes
whose digest it is (the caller reads the directory); every item taken from it is checked
against its name. An entry names, in its details, its evidence (``evidence_sha256``), the
collateral set used (``collateral_digest``: the SHA-256 of the set's
:func:`~opencas.attestation.verify.collateral_manifest`, whose lines name each document by its
SHA-256) and, when the CAS kept evidence, its *decision context* (``context_sha256``): the
canonical JSON of what the decision was checked against besides them, none of it secret
(:func:`decision_context`).

A decision is replayed in the order the CAS made it: the evidence verified as of the recorded
``verified_at`` against the recorded (or the given) collateral, the binding of the request,
the service's existence, the attestation policy. The nonce, the one-time password and the
secrets' imports are not replayed (they depend on state at the time, or on secrets): a decision
refused by them is said to reproduce when everything before them passes again, and one refused
at the nonce cannot be replayed at all.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from opencas.attestation.evidence import Evidence, VerifiedEvidence
from opencas.attestation.verifier import NO_COLLATERAL, CollateralKey, CollateralSource
from opencas.attestation.verify import verifiers_trusting, verify_evidence
from opencas.attestation.workload_policy import WORKLOAD_CHECKS, check_workload
from opencas.audit.chain import Entry
from opencas.crypto.canonical import canonical_json, strict_json_object
from opencas.errors import AttestationRefused, EvidenceError
from opencas.policy.model import AttestationSecurity, Service

CONTEXT_FORMAT = "opencas-workload-decision/v1"
DECISION_EVENTS = frozenset({"workload_attested", "workload_refused"})
ATTESTED = "attested"

_CONTEXT_KEYS = frozenset(
    {"format", "config_id", "report_data", "service", "security", "cas_debug", "simulated_roots"}
)
_MANIFEST_LINE = re.compile(r"([a-z][a-z0-9-]*)\(([^()]*)\) ([0-9a-f]{64})")
_PARAM = re.compile(r"([a-z_]+)=([0-9a-z_-]+)")
# Refused before the evidence was verified: nothing to replay.
_UNREPLAYABLE_CHECKS = frozenset({"nonce"})


def decision_context(
    *,
    config_id: str,
    report_data: bytes,
    service: Service | None,
    security: AttestationSecurity | None,
    cas_debug: bool,
    simulated_roots: frozenset[str],
) -> bytes:
    """The canonical JSON of what a workload decision was checked against besides its evidence
    and collateral: the report data the request needed bound, the service's attestation-relevant
    settings (``None`` when there was no such service), its session's attestation security
    without its one-time password secret, whether the CAS ran in debug mode, and the simulated
    collateral roots its verifier trusted. It holds no secret."""
    return canonical_json(
        {
            "format": CONTEXT_FORMAT,
            "config_id": config_id,
            "report_data": report_data.hex(),
            "service": None if service is None else _service_form(service),
            "security": None if security is None else _security_form(security),
            "cas_debug": cas_debug,
            "simulated_roots": sorted(simulated_roots),
        }
    )


def _service_form(service: Service) -> dict[str, Any]:
    return {
        "name": service.name,
        "platforms": list(service.platforms),
        "attestation": [
            variant.model_dump(mode="json", exclude_defaults=True)
            for variant in service.attestation
        ],
    }


def _security_form(security: AttestationSecurity) -> dict[str, Any]:
    return {
        "mode": security.mode,
        "tolerate": list(security.tolerate),
        "ignore_advisories": list(security.ignore_advisories),
    }


@dataclass(frozen=True)
class _Context:
    report_data: bytes
    service: Service | None
    security: AttestationSecurity | None
    cas_debug: bool
    simulated_roots: frozenset[str]


def _parse_context(data: bytes) -> _Context:
    """The decision context in ``data``; ``ValueError`` saying what is wrong with it."""
    document = strict_json_object(data, "decision context")
    if set(document) != _CONTEXT_KEYS or document["format"] != CONTEXT_FORMAT:
        raise ValueError(f"it is not a {CONTEXT_FORMAT} document")
    try:
        service = (
            None
            if document["service"] is None
            else Service.model_validate_json(json.dumps(document["service"]))
        )
        security = (
            None
            if document["security"] is None
            else AttestationSecurity.model_validate_json(json.dumps(document["security"]))
        )
    except ValidationError as exc:
        raise ValueError(
            f"its service or security does not validate ({exc.error_count()})"
        ) from exc
    roots = document["simulated_roots"]
    if not isinstance(roots, list) or not all(isinstance(root, str) for root in roots):
        raise ValueError("simulated_roots must be a list of key hashes")
    if not isinstance(document["cas_debug"], bool) or not isinstance(document["report_data"], str):
        raise ValueError("cas_debug must be true or false, report_data hex")
    return _Context(
        bytes.fromhex(document["report_data"]),
        service,
        security,
        document["cas_debug"],
        frozenset(roots),
    )


def parse_manifest(data: bytes) -> dict[CollateralKey, str]:
    """The collateral keys and document digests a collateral manifest lists; ``ValueError``
    naming the line that is not ``kind(name=value, ...) SHA256``."""
    found: dict[CollateralKey, str] = {}
    for number, line in enumerate(data.decode("ascii").splitlines(), 1):
        match = _MANIFEST_LINE.fullmatch(line)
        if match is None:
            raise ValueError(f"line {number} of the collateral manifest is not a key and digest")
        kind, params, digest = match.groups()
        pairs = [_PARAM.fullmatch(part) for part in params.split(", ")] if params else []
        if any(pair is None for pair in pairs):
            raise ValueError(f"line {number} of the collateral manifest has a malformed key")
        named = {pair.group(1): pair.group(2) for pair in pairs if pair is not None}
        found[CollateralKey.of(kind, **named)] = digest
    return found


class ArchivedCollateral:
    """The collateral set a decision used, from the archive: each document by its digest."""

    def __init__(self, documents: Mapping[CollateralKey, str], archive: Mapping[str, bytes]):
        self._documents = documents
        self._archive = archive

    def __str__(self) -> str:
        return "the collateral set recorded in the evidence archive"

    def collateral(self, key: CollateralKey, at: datetime) -> bytes:
        """The archived document of ``key``; :class:`EvidenceError` when the set lacks it."""
        digest = self._documents.get(key)
        data = None if digest is None else archived(self._archive, digest)
        if data is None:
            raise EvidenceError(
                f"{key} is not in the recorded collateral set, or not in the archive",
                check="collateral",
            )
        return data


def archived(archive: Mapping[str, bytes], digest: str) -> bytes | None:
    """The archive's item ``digest``, or None when it is missing or does not hash to its name."""
    data = archive.get(digest)
    if data is None or hashlib.sha256(data).hexdigest() != digest:
        return None
    return data


@dataclass(frozen=True)
class Replayed:
    """One decision replayed: its entry, the outcome recorded and the one found now.

    An outcome is ``attested`` or the check that refused it (``tcb``, ``measurement``, ...).
    ``found`` is None when the decision could not be replayed; ``reason`` then says why, and
    otherwise what the replay's refusal said (empty when it attests).
    """

    seq: int
    line: int
    subject: str
    recorded: str
    found: str | None
    reason: str

    @property
    def differs(self) -> bool:
        """Whether the decision was replayed and came out otherwise."""
        return self.found is not None and self.found != self.recorded


def recorded_outcome(entry: Entry) -> str:
    """The outcome an entry records: ``attested`` or the check that refused."""
    if entry.event == "workload_attested":
        return ATTESTED
    return str(entry.details.get("check", "unknown"))


def replay_decision(
    entry: Entry,
    line: int,
    archive: Mapping[str, bytes],
    collateral: CollateralSource | None = None,
) -> Replayed:
    """Decide the workload decision ``entry`` (on ``line`` of its log) again.

    Its evidence and context come from ``archive``; its collateral from ``collateral`` when
    given (a newer set, say), else from the set the entry names in the archive.
    """
    recorded = recorded_outcome(entry)

    def cannot(reason: str) -> Replayed:
        return Replayed(entry.seq, line, entry.subject, recorded, None, reason)

    details = entry.details
    if recorded in _UNREPLAYABLE_CHECKS:
        return cannot(f"refused at the {recorded} check, before its evidence was verified")
    evidence_sha = str(details.get("evidence_sha256"))
    data = archived(archive, evidence_sha)
    if data is None:
        return cannot(f"its evidence {evidence_sha} is not in the archive (or is damaged there)")
    context_sha = details.get("context_sha256")
    context_data = None if context_sha is None else archived(archive, str(context_sha))
    if context_data is None:
        return cannot("its decision context was not kept (or is damaged in the archive)")
    try:
        context = _parse_context(context_data)
        at = datetime.fromisoformat(str(details.get("verified_at")))
        source = collateral or _recorded_collateral(details, archive)
    except (ValueError, UnicodeDecodeError) as exc:
        return cannot(str(exc))
    evidence = Evidence(str(details.get("evidence_type")), data)
    found, reason = _decide(evidence, at, source, context)
    if found == ATTESTED and recorded not in WORKLOAD_CHECKS and recorded != ATTESTED:
        later = details.get("session_hash") is not None and recorded not in ("binding", "service")
        if later:
            # Refused by a check after the policy (otp, import): replay stops before it.
            found = recorded
            reason = f"the {recorded} check is not replayed; every check before it passes again"
    return Replayed(entry.seq, line, entry.subject, recorded, found, reason)


def _recorded_collateral(
    details: Mapping[str, Any], archive: Mapping[str, bytes]
) -> CollateralSource:
    digest = details.get("collateral_digest")
    if digest is None:
        return NO_COLLATERAL
    manifest = archived(archive, str(digest))
    if manifest is None:
        raise ValueError(f"its collateral set {digest} is not in the archive (or is damaged)")
    return ArchivedCollateral(parse_manifest(manifest), archive)


def _decide(
    evidence: Evidence, at: datetime, collateral: CollateralSource, context: _Context
) -> tuple[str, str]:
    """The outcome of the replayed checks, and what refused it (empty when attested)."""
    verifiers = verifiers_trusting(context.simulated_roots)
    try:
        verified: VerifiedEvidence = verify_evidence(
            evidence, at=at, collateral=collateral, verifiers=verifiers
        )
    except EvidenceError as exc:
        return exc.check or "evidence", exc.message
    if verified.report_data != context.report_data:
        return "binding", "the evidence does not bind the request's config id, nonce and key"
    if context.service is None or context.security is None:
        return "service", "there was no such service"
    try:
        check_workload(verified, context.service, context.security, cas_debug=context.cas_debug)
    except AttestationRefused as exc:
        return exc.check, exc.message
    return ATTESTED, ""
