"""A recovery-key holder's part: open their share and seal it to an attested CAS on a new machine.

The share never leaves this process in the clear: it is opened with the holder's private key and
at once HPKE-sealed to the request key that the new machine's evidence binds, after that evidence
was verified and found acceptable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric import x25519

from opencas.attestation.evidence import Evidence, VerifiedEvidence
from opencas.attestation.verifier import CollateralSource
from opencas.attestation.verify import verify_evidence
from opencas.crypto.encoding import b64_decode, b64_encode
from opencas.crypto.recovery import (
    SHARE_INFO_PREFIX,
    TRANSFER_INFO_PREFIX,
    RecoveryShareError,
    load_recovery_key,
    open_share,
    recovery_key_hash,
    recovery_public_der,
    seal_share,
)
from opencas.crypto.recovery_documents import (
    TRANSFER_FORMAT,
    RequestDocument,
    ShareDocument,
    TransferDocument,
    request_report_data,
)
from opencas.errors import AttestationRefused, ClientError


@dataclass(frozen=True)
class RequestChecks:
    """What the holder accepts of the new machine: debug (simulated) TEEs, and measurements
    (empty: any)."""

    allow_debug: bool = False
    measurements: frozenset[str] = frozenset()


def check_request(
    request: RequestDocument, checks: RequestChecks, *, at: datetime, collateral: CollateralSource
) -> VerifiedEvidence:
    """The verified evidence of ``request``, if it binds the request key and is acceptable.

    Raises :class:`EvidenceError` when the evidence does not verify and
    :class:`AttestationRefused` (``binding``, ``debug-mode``, ``measurement``) when it does not
    bind the key or is not what ``checks`` accept.
    """
    verified = verify_evidence(Evidence.from_json(request.evidence), at=at, collateral=collateral)
    if verified.report_data != request_report_data(request.public_key):
        raise AttestationRefused(
            "binding", "the request's evidence does not bind its key: the request was changed"
        )
    if verified.debug and not checks.allow_debug:
        raise AttestationRefused(
            "debug-mode",
            f"the new machine runs in debug mode (platform '{verified.platform}'), so a share "
            "sealed to it is not protected; pass --only-for-testing-debug to accept it for testing",
        )
    if checks.measurements and verified.measurement not in checks.measurements:
        raise AttestationRefused(
            "measurement",
            f"the new machine runs software with measurement {verified.measurement}, which is "
            "not one of the expected measurements",
        )
    return verified


def transfer_share(
    share: ShareDocument, private_key: x25519.X25519PrivateKey, request: RequestDocument
) -> TransferDocument:
    """Open ``share`` with ``private_key`` and seal it to the key of ``request`` (checked first).

    Raises :class:`ClientError` when the key is not the one the share was sealed to, or the
    share does not open.
    """
    holder = recovery_key_hash(recovery_public_der(private_key))
    if holder != share.key_hash:
        raise ClientError(
            f"share {share.index} is sealed to recovery key {share.key_hash}, not to this key "
            f"({holder}); give the key the share was made for"
        )
    label = share.label()
    try:
        piece = open_share(private_key, b64_decode(share.sealed), label, SHARE_INFO_PREFIX)
        recipient = b64_decode(request.public_key)
        load_recovery_key(recipient)
    except (RecoveryShareError, ValueError) as exc:
        raise ClientError(str(exc)) from exc
    sealed = seal_share(recipient, piece, label, TRANSFER_INFO_PREFIX)
    return TransferDocument(
        format=TRANSFER_FORMAT,
        cas_key_hash=share.cas_key_hash,
        split_id=share.split_id,
        threshold=share.threshold,
        index=share.index,
        key_hash=share.key_hash,
        recipient=recovery_key_hash(recipient),
        sealed=b64_encode(sealed),
    )
