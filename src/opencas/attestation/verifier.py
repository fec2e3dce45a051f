"""The evidence verifier seam: the interface every TEE's verifier implements.

A :class:`Verifier` turns evidence of its type into :class:`VerifiedEvidence`, the claims it
proves, or raises :class:`EvidenceError` whose ``check`` names the step that failed. It is pure:
the verification time is an argument, never read from a clock, so a decision can be replayed with
the time it was made at. What a hardware verifier needs from outside — the collateral it checks a
quote against (for Intel DCAP the PCK certificate chain and CRLs, the TCB info and the QE
identity; for AMD SEV-SNP the VCEK chain) — comes through the :class:`CollateralSource` the
caller passes in, which does the fetching and caching.

Whether what the evidence proves is acceptable is not a verifier's business: that is a policy
decision, made afterwards (:mod:`opencas.attestation.workload_policy` for workloads,
:func:`opencas.attestation.report.verify_cas_attestation` for a CAS).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Protocol

from opencas.attestation.evidence import Evidence, VerifiedEvidence
from opencas.errors import EvidenceError


class CollateralSource(Protocol):
    """Where a verifier gets the documents it checks evidence against (the I/O side)."""

    def collateral(self, evidence: Evidence, at: datetime) -> Mapping[str, bytes]:
        """The collateral that applies to ``evidence`` and is valid at ``at``, by document name.

        Raises :class:`EvidenceError` with ``check="collateral"`` when it cannot be obtained.
        """
        ...


class Verifier(Protocol):
    """Verifies evidence of one platform's types."""

    def verify(
        self, evidence: Evidence, *, at: datetime, collateral: CollateralSource
    ) -> VerifiedEvidence:
        """What ``evidence`` proves, verified as of ``at`` against ``collateral``.

        Raises :class:`EvidenceError` naming the failed check; never decides acceptability.
        """
        ...


class NoCollateral:
    """A collateral source that has none: enough for evidence that needs none (simulated)."""

    def collateral(self, evidence: Evidence, at: datetime) -> Mapping[str, bytes]:
        """Refuse: no collateral is available in this configuration."""
        raise EvidenceError(
            f"no collateral source is configured to verify evidence of type '{evidence.type}'",
            check="collateral",
        )


NO_COLLATERAL = NoCollateral()
