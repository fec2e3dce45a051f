"""One entry point for evidence verification, dispatching on the evidence type."""

from __future__ import annotations

from collections.abc import Callable

from opencas.attestation.evidence import Evidence, VerifiedEvidence
from opencas.attestation.simulated import EVIDENCE_TYPE as SIMULATED
from opencas.attestation.simulated import verify_simulated_evidence
from opencas.errors import EvidenceError

_VERIFIERS: dict[str, Callable[[Evidence], VerifiedEvidence]] = {
    SIMULATED: verify_simulated_evidence,
}

#: Evidence types OpenCAS knows but this build cannot verify yet.
KNOWN_UNSUPPORTED_TYPES = frozenset({"sgx-dcap", "tdx", "snp"})


def verify_evidence(evidence: Evidence) -> VerifiedEvidence:
    """Verify ``evidence`` with the verifier for its type and return what it proves.

    Raises :class:`EvidenceError` when the evidence does not verify, when its type is known but
    not supported by this build, or when its type is unknown. Whether what it proves is
    acceptable (measurement, debug mode, TCB status) is for the caller's policy to decide.
    """
    verifier = _VERIFIERS.get(evidence.type)
    if verifier is not None:
        return verifier(evidence)
    if evidence.type in KNOWN_UNSUPPORTED_TYPES:
        raise EvidenceError(f"evidence type '{evidence.type}' is not supported by this build")
    known = ", ".join(sorted({*_VERIFIERS, *KNOWN_UNSUPPORTED_TYPES}))
    shown = evidence.type if len(evidence.type) <= 40 else evidence.type[:40] + "..."
    raise EvidenceError(f"unknown evidence type {shown!r} (known types: {known})")
