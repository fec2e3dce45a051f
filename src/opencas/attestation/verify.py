"""One entry point for evidence verification: the registry of verifiers, by evidence type.

Every evidence type this build verifies has one :class:`~opencas.attestation.verifier.Verifier`
in :data:`VERIFIERS`; :func:`verify_evidence` looks it up and runs it. A verifier for a real TEE
is added there, next to the simulated one, without touching its callers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from types import MappingProxyType

from opencas.attestation.dcap import EVIDENCE_TYPES as DCAP_TYPES
from opencas.attestation.dcap import DcapVerifier
from opencas.attestation.evidence import Evidence, VerifiedEvidence
from opencas.attestation.simulated import EVIDENCE_TYPE as SIMULATED
from opencas.attestation.simulated import SimulatedVerifier
from opencas.attestation.snp import EVIDENCE_TYPE as SNP
from opencas.attestation.snp import SnpVerifier
from opencas.attestation.verifier import NO_COLLATERAL, CollateralKey, CollateralSource, Verifier
from opencas.errors import EvidenceError

# One DCAP verifier serves SGX and TDX, so both share its caches.
_DCAP = DcapVerifier()

#: The verifier of each evidence type this build supports.
VERIFIERS: Mapping[str, Verifier] = MappingProxyType(
    {SIMULATED: SimulatedVerifier(), SNP: SnpVerifier(), **dict.fromkeys(DCAP_TYPES, _DCAP)}
)

#: Evidence types OpenCAS knows but this build cannot verify yet (none at present).
KNOWN_UNSUPPORTED_TYPES: frozenset[str] = frozenset()


class RecordingSource:
    """A collateral source that passes requests on and remembers what it handed out."""

    def __init__(self, source: CollateralSource) -> None:
        self.upstream = source
        self.documents: dict[CollateralKey, bytes] = {}

    def collateral(self, key: CollateralKey, at: datetime) -> bytes:
        """The document ``key`` names, from the wrapped source, remembered."""
        document = self.upstream.collateral(key, at)
        self.documents[key] = document
        return document

    def digest(self) -> str:
        """SHA-256 (lowercase hex) of :func:`collateral_manifest` of every document handed out:
        the same set of documents gives the same digest in any order of requests."""
        return hashlib.sha256(collateral_manifest(self.documents)).hexdigest()


def collateral_manifest(documents: Mapping[CollateralKey, bytes]) -> bytes:
    """What names a set of collateral documents: for each, ``str(key)``, a space and the
    document's SHA-256 (lowercase hex), one line each, the lines sorted. Its SHA-256 is the
    set's ``collateral_digest``."""
    lines = sorted(
        f"{key} {hashlib.sha256(document).hexdigest()}\n" for key, document in documents.items()
    )
    return "".join(lines).encode()


def verifiers_trusting(simulated_roots: frozenset[str]) -> Mapping[str, Verifier]:
    """:data:`VERIFIERS`, with simulated evidence checked against simulated collateral signed
    by one of ``simulated_roots`` (key hashes); :data:`VERIFIERS` itself when there are none."""
    if not simulated_roots:
        return VERIFIERS
    return MappingProxyType({**VERIFIERS, SIMULATED: SimulatedVerifier(simulated_roots)})


def verify_evidence(
    evidence: Evidence,
    *,
    at: datetime,
    collateral: CollateralSource = NO_COLLATERAL,
    verifiers: Mapping[str, Verifier] = VERIFIERS,
) -> VerifiedEvidence:
    """Verify ``evidence`` as of ``at`` with the verifier for its type; return what it proves.

    ``collateral`` is where the verifier gets what it checks the evidence against (none is needed
    for simulated evidence); ``verifiers`` the registry to use. What it proves names, in
    ``collateral_digest``, the collateral documents the verifier used (see
    :class:`RecordingSource`), so the decision can be replayed with the same set. Raises
    :class:`EvidenceError` when the evidence does not verify, or (``check="type"``) when its
    type is known but not supported by this build, or unknown. Whether what it proves is
    acceptable (measurement, debug mode, TCB status) is for the caller's policy to decide.
    """
    verifier = verifiers.get(evidence.type)
    if verifier is not None:
        used = RecordingSource(collateral)
        verified = verifier.verify(evidence, at=at, collateral=used)
        if not used.documents:
            return verified
        return replace(verified, collateral_digest=used.digest())
    if evidence.type in KNOWN_UNSUPPORTED_TYPES:
        raise EvidenceError(
            f"evidence type '{evidence.type}' is not supported by this build", check="type"
        )
    known = ", ".join(sorted({*verifiers, *KNOWN_UNSUPPORTED_TYPES}))
    shown = evidence.type if len(evidence.type) <= 40 else evidence.type[:40] + "..."
    raise EvidenceError(f"unknown evidence type {shown!r} (known types: {known})", check="type")
