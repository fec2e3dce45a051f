"""Handing the database key to a peer CAS that attested, sealed to the key its evidence binds.

A peer CAS (a new cluster instance, a backup, an upgrade) makes an X25519 key that never leaves
its TEE and asks with a :class:`HandoverRequest`: the key, a fresh request id, the purpose, and
evidence whose report data is :func:`request_binding` of them. A CAS that has the key checks it
(:func:`check_request`: the evidence verifies, binds the request, and the peer passes
:func:`opencas.attestation.peer_admission.admit_peer`), then answers with
:func:`seal_handover`: the key HPKE-sealed to the request's key (info bound to purpose and
request id) and its *own* evidence binding the answer (:func:`answer_binding`). The peer opens it
with :func:`open_handover`, which first checks that evidence with
:func:`opencas.attestation.peer_admission.check_key_source`: a key (and so a database) made by
anyone but this software is refused.

The request and the answer may travel through untrusted hands (the shared database, a file, a
network): each is bound by the evidence of the CAS that made it, and the key inside is sealed.
What an untrusted carrier can do is drop or delay them.

The sealed plaintext is canonical JSON::

    {"format": "opencas-key-handover/v1", "dmk": <base64>, "db_key_injected": bool,
     "cas_key_hash": <hex>, "cluster_id": <text>}

While a database key rollover runs, it also holds ``"previous_dmk": <base64>``, the key the
records not moved yet are still under, so the peer opens every record from the start.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from cryptography.hazmat.primitives.asymmetric import x25519
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from opencas.attestation.evidence import Evidence, VerifiedEvidence
from opencas.attestation.peer_admission import (
    PeerDecision,
    RegisteredUpgrade,
    SoftwareIdentity,
    admit_peer,
    check_key_source,
)
from opencas.attestation.predecessors import PREDECESSORS
from opencas.attestation.verifier import NO_COLLATERAL, CollateralSource
from opencas.attestation.verify import verify_evidence
from opencas.crypto.canonical import canonical_json, canonical_sha512, strict_json_object
from opencas.crypto.encoding import b64_decode, b64_encode
from opencas.crypto.handover_binding import request_binding
from opencas.crypto.hpke_seal import SealedConfigError, hpke_open, hpke_seal
from opencas.crypto.recovery import recovery_public_der
from opencas.errors import CasError, EvidenceError
from opencas.platform.base import EvidenceProvider

ANSWER_FORMAT = "opencas-key-handover-answer/v1"
HANDED_KEY_FORMAT = "opencas-key-handover/v1"
_INFO_PREFIX = b"opencas-key-handover/v1\x00"
DMK_SIZE = 32

HandoverPurpose = Literal["join", "backup", "upgrade"]
_Base64 = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[A-Za-z0-9+/]+={0,2}$")]
_RequestId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)
_Model = TypeVar("_Model", bound=BaseModel)


class HandoverRefused(CasError, code="handover-refused", http_status=403):
    """A key handover was refused; ``check`` names why (``evidence``, ``binding``, a
    :data:`opencas.attestation.peer_admission.PeerCheck`, ``sealed``); ``request_id`` the
    request refused, when it was well-formed enough to name one."""

    def __init__(self, check: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.check = check
        self.request_id = request_id

    def to_json(self) -> dict[str, object]:
        """The error body, with ``check``."""
        return {**super().to_json(), "check": self.check}


class HandoverRequest(BaseModel):
    """What a peer CAS asks with (see the module docstring)."""

    model_config = _STRICT

    format: Literal["opencas-key-handover-request/v1"] = "opencas-key-handover-request/v1"
    purpose: HandoverPurpose
    request_id: _RequestId
    public_key: _Base64
    evidence: dict[str, Any]


class HandoverAnswer(BaseModel):
    """What the CAS with the key answers: the sealed key and the evidence that binds it."""

    model_config = _STRICT

    format: Literal["opencas-key-handover-answer/v1"] = "opencas-key-handover-answer/v1"
    request_id: _RequestId
    kem: Literal["X25519"]
    sealed: Annotated[str, Field(min_length=1, max_length=4096)]
    evidence: dict[str, Any]


@dataclass(frozen=True)
class HandoverSecret:
    """What is handed over: the database key, whether it was injected, and whose it is."""

    dmk: bytes = field(repr=False)
    db_key_injected: bool
    cas_key_hash: str
    cluster_id: str
    previous_dmk: bytes | None = field(default=None, repr=False)
    """The key a running rollover moves records away from; ``None`` when none runs."""


def answer_binding(request: HandoverRequest, sealed_b64: str) -> bytes:
    """The 64 bytes an answer's evidence binds: the request it answers and what it sealed."""
    return canonical_sha512(
        {
            "format": ANSWER_FORMAT,
            "purpose": request.purpose,
            "request_id": request.request_id,
            "public_key": request.public_key,
            "sealed": sealed_b64,
        }
    )


def _info(request: HandoverRequest) -> bytes:
    return _INFO_PREFIX + canonical_json(
        {"purpose": request.purpose, "request_id": request.request_id}
    )


def make_request(
    platform: EvidenceProvider, purpose: HandoverPurpose
) -> tuple[x25519.X25519PrivateKey, HandoverRequest]:
    """A new request key and the request that asks for the key with it.

    Keep the private key in memory only: whoever holds it opens the answer. Raises
    :class:`PlatformError` when the platform cannot produce evidence.
    """
    key = x25519.X25519PrivateKey.generate()
    return key, request_for(platform, purpose, key, secrets.token_hex(16))


def request_for(
    platform: EvidenceProvider,
    purpose: HandoverPurpose,
    key: x25519.X25519PrivateKey,
    request_id: str,
) -> HandoverRequest:
    """The request that asks with ``key`` (kept by the caller: a backup keeps its key sealed to
    its machine) under ``request_id`` (32 lowercase hex digits; a verifier's nonce), bound by
    fresh evidence of ``platform``. Raises ``ValueError`` for another request id,
    :class:`PlatformError` when the platform cannot produce evidence."""
    public = b64_encode(recovery_public_der(key))
    try:
        return HandoverRequest(
            purpose=purpose,
            request_id=request_id,
            public_key=public,
            evidence=platform.evidence(request_binding(purpose, request_id, public)).to_json(),
        )
    except ValidationError as exc:
        raise ValueError(f"a request id is 32 lowercase hex digits, not {request_id!r}") from exc


def parse_request(data: bytes | str) -> HandoverRequest:
    """``data`` as a request; :class:`HandoverRefused` (``format``) naming what is wrong."""
    return _parse(data, HandoverRequest, "key handover request")


def parse_answer(data: bytes | str) -> HandoverAnswer:
    """``data`` as an answer; :class:`HandoverRefused` (``format``) naming what is wrong."""
    return _parse(data, HandoverAnswer, "key handover answer")


def _parse(data: bytes | str, model: type[_Model], what: str) -> _Model:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        return model.model_validate(strict_json_object(raw, what))
    except (ValueError, ValidationError) as exc:
        first = str(exc).strip().splitlines()
        raise HandoverRefused("format", f"the {what} is malformed: {' '.join(first[:3])}") from None


def document_text(document: HandoverRequest | HandoverAnswer) -> str:
    """The canonical JSON text of a request or answer, as it travels."""
    return canonical_json(document.model_dump(mode="json")).decode("utf-8")


def _verified(
    evidence: dict[str, Any], at: datetime, collateral: CollateralSource, who: str
) -> VerifiedEvidence:
    try:
        return verify_evidence(Evidence.from_json(evidence), at=at, collateral=collateral)
    except EvidenceError as exc:
        raise HandoverRefused(
            "evidence", f"the {who}'s evidence does not verify: {exc.message}"
        ) from exc


def own_identity(
    platform: EvidenceProvider, *, at: datetime, collateral: CollateralSource = NO_COLLATERAL
) -> SoftwareIdentity:
    """This CAS's identity, from evidence of its own platform verified as a peer's would be.

    Raises :class:`HandoverRefused` (``evidence``) when its own evidence does not verify.
    """
    evidence = platform.evidence(bytes(64))
    return SoftwareIdentity.of(_verified(evidence.to_json(), at, collateral, "CAS's own"))


def check_request(
    request: HandoverRequest,
    own: SoftwareIdentity,
    upgrades: Sequence[RegisteredUpgrade] = (),
    *,
    at: datetime,
    collateral: CollateralSource = NO_COLLATERAL,
) -> PeerDecision:
    """The admission decision for ``request``, once its evidence verified and binds it.

    Raises :class:`HandoverRefused` when the evidence does not verify (``evidence``), does not
    bind the request (``binding``), or the peer is not admitted (the decision's check).
    """
    decision = admit_peer(verified_request(request, at=at, collateral=collateral), own, upgrades)
    if not decision.admitted:
        raise HandoverRefused(decision.check or "software", decision.reason)
    return decision


def verified_request(
    request: HandoverRequest, *, at: datetime, collateral: CollateralSource = NO_COLLATERAL
) -> VerifiedEvidence:
    """The verified evidence of ``request``, once it verified and binds the request.

    Raises :class:`HandoverRefused` when the evidence does not verify (``evidence``) or does
    not bind the request (``binding``).
    """
    verified = _verified(request.evidence, at, collateral, "peer")
    if verified.report_data != request_binding(
        request.purpose, request.request_id, request.public_key
    ):
        raise HandoverRefused(
            "binding", "the peer's evidence does not bind its request: the request was changed"
        )
    return verified


def seal_handover(
    request: HandoverRequest, secret: HandoverSecret, platform: EvidenceProvider
) -> HandoverAnswer:
    """The answer to ``request`` (checked first with :func:`check_request`): ``secret`` sealed
    to its key, and this CAS's evidence binding the answer.

    Raises ``ValueError`` unless the key is 32 bytes, :class:`HandoverRefused` (``format``) when
    the request's key is not an X25519 key.
    """
    for key in (secret.dmk, secret.previous_dmk or bytes(DMK_SIZE)):
        if len(key) != DMK_SIZE:
            raise ValueError(f"the database key must be {DMK_SIZE} bytes")
    handed: dict[str, object] = {
        "format": HANDED_KEY_FORMAT,
        "dmk": b64_encode(secret.dmk),
        "db_key_injected": secret.db_key_injected,
        "cas_key_hash": secret.cas_key_hash,
        "cluster_id": secret.cluster_id,
    }
    if secret.previous_dmk is not None:
        handed["previous_dmk"] = b64_encode(secret.previous_dmk)
    plaintext = canonical_json(handed)
    try:
        kem, sealed = hpke_seal(b64_decode(request.public_key), plaintext, _info(request))
    except ValueError as exc:
        raise HandoverRefused("format", f"the request's key cannot be sealed to: {exc}") from exc
    if kem != "X25519":
        raise HandoverRefused("format", "the request's key must be an X25519 key")
    sealed_b64 = b64_encode(sealed)
    evidence = platform.evidence(answer_binding(request, sealed_b64))
    return HandoverAnswer(
        request_id=request.request_id, kem="X25519", sealed=sealed_b64, evidence=evidence.to_json()
    )


def open_handover(
    answer: HandoverAnswer,
    request: HandoverRequest,
    key: x25519.X25519PrivateKey,
    own: SoftwareIdentity,
    *,
    at: datetime,
    collateral: CollateralSource = NO_COLLATERAL,
    predecessors: Sequence[str] = PREDECESSORS,
) -> HandoverSecret:
    """The secret in ``answer`` to this CAS's ``request``, opened with the request's ``key``.

    The answer's evidence must verify, bind this request and this sealed key, and come from a
    CAS that :func:`check_key_source` trusts (this build, or one of the ``predecessors`` it
    names). Raises :class:`HandoverRefused` naming the check
    that failed.
    """
    if answer.request_id != request.request_id:
        raise HandoverRefused("binding", "the answer is for another request")
    verified = _verified(answer.evidence, at, collateral, "answering CAS")
    if verified.report_data != answer_binding(request, answer.sealed):
        raise HandoverRefused(
            "binding", "the answering CAS's evidence does not bind this answer: it was changed"
        )
    decision = check_key_source(verified, own, predecessors)
    if not decision.admitted:
        raise HandoverRefused(decision.check or "software", decision.reason)
    try:
        plaintext = hpke_open(key, b64_decode(answer.sealed), _info(request))
        document = strict_json_object(plaintext, "handed-over key")
    except (SealedConfigError, ValueError) as exc:
        raise HandoverRefused("sealed", f"the handed-over key does not open: {exc}") from exc
    return _secret(document)


def _secret(document: dict[str, Any]) -> HandoverSecret:
    expected = {"format", "dmk", "db_key_injected", "cas_key_hash", "cluster_id"}
    if set(document) - {"previous_dmk"} != expected or document["format"] != HANDED_KEY_FORMAT:
        raise HandoverRefused("sealed", "the handed-over key is not in the known format")
    dmk_b64, injected = document["dmk"], document["db_key_injected"]
    cas_key_hash, cluster_id = document["cas_key_hash"], document["cluster_id"]
    if not (
        isinstance(dmk_b64, str)
        and isinstance(injected, bool)
        and isinstance(cas_key_hash, str)
        and isinstance(cluster_id, str)
    ):
        raise HandoverRefused("sealed", "the handed-over key has fields of the wrong type")
    dmk = _handed_key(dmk_b64)
    previous = document.get("previous_dmk")
    return HandoverSecret(
        dmk, injected, cas_key_hash, cluster_id, None if previous is None else _handed_key(previous)
    )


def _handed_key(text: object) -> bytes:
    if not isinstance(text, str):
        raise HandoverRefused("sealed", "the handed-over key has fields of the wrong type")
    try:
        key = b64_decode(text)
    except ValueError:
        raise HandoverRefused("sealed", "the handed-over key is not base64") from None
    if len(key) != DMK_SIZE:
        raise HandoverRefused("sealed", f"the handed-over key is {len(key)} bytes, not 32")
    return key
