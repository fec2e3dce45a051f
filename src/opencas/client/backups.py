"""The owner's side of registering a backup: ask the backup CAS (``cas backup``) for its key
handover request under a fresh nonce and check it, before the primary checks it again.

casctl checks what it can tell its owner: the evidence verifies, binds the request with this
nonce as request id, and is not from a debug TEE unless the owner accepts one. Whether the
backup may have the key (same software family, security version, TCB) is the primary's
decision, made on the evidence itself.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from opencas.attestation.evidence import Evidence, VerifiedEvidence
from opencas.attestation.verifier import NO_COLLATERAL, CollateralSource
from opencas.attestation.verify import verify_evidence
from opencas.client.channel import DEFAULT_TIMEOUT, ApiChannel, MalformedAnswer
from opencas.crypto.handover_binding import REQUEST_FORMAT, request_binding
from opencas.errors import AttestationRefused, EvidenceError

#: The largest answer accepted from a backup: its evidence (a quote, or a report with its
#: certificates) and a key.
MAX_ANSWER_BYTES = 256 * 1024


@dataclass(frozen=True)
class BackupRequest:
    """A backup's request as it answered it, and what its evidence showed."""

    request: dict[str, Any]
    evidence: VerifiedEvidence


def fetch_backup_request(
    url: str,
    *,
    at: datetime,
    allow_debug: bool,
    collateral: CollateralSource = NO_COLLATERAL,
    transport: httpx.BaseTransport | None = None,
) -> BackupRequest:
    """Ask the backup CAS at ``url`` for its request under a fresh nonce and check it.

    The TLS connection is not verified: the backup's certificate carries no trust, and what it
    answers is bound by its evidence to the nonce. Raises :class:`CasUnreachable`,
    :class:`MalformedAnswer`, :class:`EvidenceError` when the evidence does not verify, and
    :class:`AttestationRefused` (``binding``, ``debug-mode``) otherwise.
    """
    nonce = secrets.token_hex(16)
    channel = ApiChannel(url, transport=transport, timeout=DEFAULT_TIMEOUT)
    try:
        response = channel.send("GET", "/v1/backup/request", params={"nonce": nonce})
    finally:
        channel.close()
    if len(response.content) > MAX_ANSWER_BYTES:
        raise MalformedAnswer(f"the backup's answer is larger than {MAX_ANSWER_BYTES} bytes")
    try:
        document = response.json()
        fields = {name: document[name] for name in ("purpose", "request_id", "public_key")}
        evidence = Evidence.from_json(document["evidence"])
    except (ValueError, KeyError, TypeError, EvidenceError) as exc:
        raise MalformedAnswer(f"the backup's answer is not a key handover request: {exc}") from exc
    if document.get("format") != REQUEST_FORMAT or not all(
        isinstance(value, str) for value in fields.values()
    ):
        raise MalformedAnswer("the backup's answer is not a key handover request")
    verified = verify_evidence(evidence, at=at, collateral=collateral)
    if fields["purpose"] != "backup" or fields["request_id"] != nonce:
        raise AttestationRefused(
            "nonce", "the backup answered another request than the one asked for (a replay?)"
        )
    if verified.report_data != request_binding(
        fields["purpose"], fields["request_id"], fields["public_key"]
    ):
        raise AttestationRefused(
            "binding", "the backup's evidence does not bind its request: it was changed"
        )
    if verified.debug and not allow_debug:
        raise AttestationRefused(
            "debug-mode",
            "the backup runs in debug mode (its memory is readable from outside); pass "
            "--only-for-testing-debug to accept it",
        )
    return BackupRequest(document, verified)
