"""Attestation evidence as it travels, and what a verifier concluded from it.

:class:`Evidence` is the opaque, typed blob a platform produces (a simulated statement, an SGX
DCAP quote, a TDX quote, an SNP report). :class:`VerifiedEvidence` is the verifier's normalised
answer: the same fields whatever the platform, so that policy decisions never look at raw quotes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from opencas.crypto.canonical import member_mismatch
from opencas.crypto.encoding import b64_decode, b64_encode
from opencas.errors import EvidenceError

#: The largest evidence blob accepted (decoded). Real quotes with their certification data are a
#: few KiB; the bound keeps a hostile peer from making a verifier decode megabytes.
MAX_EVIDENCE_BYTES = 64 * 1024

# An evidence type is a short lowercase identifier ("simulated", "sgx-dcap", ...); anything else
# is rejected before dispatch so that error messages never echo arbitrary input at length.
_TYPE_SHAPE = re.compile(r"[a-z][a-z0-9-]{0,31}")
_MAX_BASE64_CHARS = 4 * ((MAX_EVIDENCE_BYTES + 2) // 3)
_WIRE_KEYS = frozenset({"type", "data"})


@dataclass(frozen=True)
class Evidence:
    """Platform evidence: its ``type`` (which verifier reads it) and its raw ``data``."""

    type: str
    data: bytes

    def to_json(self) -> dict[str, str]:
        """The wire form: ``{"type": type, "data": standard base64 of data}``."""
        return {"type": self.type, "data": b64_encode(self.data)}

    @classmethod
    def from_json(cls, obj: object) -> Evidence:
        """Parse the wire form strictly.

        ``obj`` must be a dict with exactly the keys ``type`` and ``data``; ``type`` a short
        lowercase identifier, ``data`` standard base64 of at most :data:`MAX_EVIDENCE_BYTES`
        bytes. Anything else raises :class:`EvidenceError` naming the offending field.
        """
        if not isinstance(obj, dict):
            raise EvidenceError("evidence must be a JSON object with the keys 'type' and 'data'")
        mismatch = member_mismatch(obj, _WIRE_KEYS)
        if mismatch is not None:
            raise EvidenceError(f"evidence has the wrong fields ({mismatch})")
        evidence_type = obj["type"]
        if not isinstance(evidence_type, str) or not _TYPE_SHAPE.fullmatch(evidence_type):
            raise EvidenceError(
                "evidence field 'type' must be a short lowercase identifier such as 'simulated'"
            )
        data = obj["data"]
        if not isinstance(data, str):
            raise EvidenceError("evidence field 'data' must be a base64 string")
        if len(data) > _MAX_BASE64_CHARS:
            raise EvidenceError(
                f"evidence field 'data' is larger than the limit of {MAX_EVIDENCE_BYTES} bytes"
            )
        try:
            raw = b64_decode(data)
        except ValueError as exc:
            raise EvidenceError(f"evidence field 'data' is not valid base64 ({exc})") from exc
        if len(raw) > MAX_EVIDENCE_BYTES:
            raise EvidenceError(
                f"evidence field 'data' is larger than the limit of {MAX_EVIDENCE_BYTES} bytes"
            )
        return cls(type=evidence_type, data=raw)


@dataclass(frozen=True)
class VerifiedEvidence:
    """What verified evidence proves, normalised across platforms.

    ``measurement`` is lowercase hex (MRENCLAVE, MRTD, MEASUREMENT or the simulated measurement),
    ``report_data`` the 64 bytes the evidence binds, ``debug`` whether the TEE runs in debug mode
    (its memory readable from outside), ``platform_key_hash`` the key hash of the key that vouches
    for the evidence, ``tcb_status`` the platform's TCB verdict and ``advisories`` the security
    advisories that apply to it.

    The remaining fields exist only on some platforms and keep their defaults elsewhere: for SGX
    ``mrsigner`` (lowercase hex), ``isv_prod_id`` and ``isv_svn`` (simulated evidence that
    states a security version reports it as ``isv_svn`` too); for TDX ``rtmrs``, the
    runtime measurement registers RTMR0, RTMR1, ... in order (lowercase hex); for SNP
    ``host_data`` (lowercase hex).

    ``measurements`` holds every measurement-like field the TEE reports, by its name in
    ``docs/attestation.md`` (lowercase hex for byte strings, decimal for numbers): SGX
    ``mrenclave``, ``mrsigner``, ``isvprodid``, ``isvsvn``, ``attributes``; TDX ``mrtd``,
    ``rtmr0``..``rtmr3``, ``mrseam``, ``mrsignerseam``, ``mrconfigid``, ``mrowner``,
    ``mrownerconfig``, ``td_attributes``, ``xfam``; SNP ``measurement``, ``host_data``,
    ``id_key_digest``, ``author_key_digest``, ``family_id``, ``image_id``, ``policy``,
    ``vmpl``, ``guest_svn``.
    ``platform_id`` identifies the machine: Intel ``fmspc`` and, where the PCK certificate
    carries them, ``ppid``, ``pce_id`` and ``cpusvn``; AMD ``chip_id`` (absent when the report
    masks it), ``product``, ``reported_tcb`` and ``signing_key`` (``vcek`` or ``vlek``), with
    ``current_tcb``, ``committed_tcb``, ``launch_tcb``, ``current_firmware``,
    ``committed_firmware``, ``platform_info`` and, for a VLEK, the provider's ``csp_id``; simulated
    evidence its ``machine_id`` (the platform key hash).
    ``collateral_not_before`` / ``collateral_not_after`` bound the window in which the
    collateral used is valid (``None`` for evidence that needs none),
    ``tcb_evaluation_number`` is Intel's TCB evaluation data number of that collateral,
    ``collateral_digest`` the digest of the collateral documents used (set by
    :func:`opencas.attestation.verify.verify_evidence`), and ``verifier`` names the verifier
    and its version, so a decision can be replayed.
    """

    platform: str
    measurement: str
    report_data: bytes
    debug: bool
    platform_key_hash: str
    tcb_status: str
    advisories: tuple[str, ...]
    mrsigner: str | None = None
    isv_prod_id: int | None = None
    isv_svn: int | None = None
    rtmrs: tuple[str, ...] = ()
    host_data: str | None = None
    measurements: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    platform_id: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    collateral_not_before: datetime | None = None
    collateral_not_after: datetime | None = None
    tcb_evaluation_number: int | None = None
    collateral_digest: str | None = None
    verifier: str = ""
