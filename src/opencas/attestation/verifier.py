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

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from opencas.attestation.evidence import Evidence, VerifiedEvidence
from opencas.errors import EvidenceError


@dataclass(frozen=True)
class CollateralKey:
    """Names one collateral document a verifier needs, independent of where it comes from.

    ``kind`` says what the document is and ``params`` (sorted name/value pairs) which one:

    - ``dcap``: the DCAP collateral set of one platform, as one JSON object in the format of
      ``docs/attestation.md`` (dcap-qvl's ``QuoteCollateralV3``); params ``tee`` (``sgx`` or
      ``tdx``), ``fmspc`` (12 lowercase hex digits) and ``ca`` (``processor`` or ``platform``,
      the PCK CA that issued the quote's PCK certificate).
    - ``amd-vcek``: the DER VCEK of one AMD chip at one reported TCB; params ``product``
      (``milan``, ``genoa``, ``turin``), ``chip_id`` (lowercase hex: the report's 64-byte chip
      id, or on Turin its first 8 bytes, the hardware id AMD's KDS names Turin chips by) and
      ``tcb`` (16 lowercase hex digits, the reported TCB's 8 bytes as the report stores them;
      which byte is which SPL depends on the product, and Turin's byte 0 is its FMC SPL).
    - ``amd-vlek``: the DER VLEK of the cloud provider whose host signed a report; params
      ``product`` and ``tcb`` (as for ``amd-vcek``). A report does not name its VLEK: the
      source holds the VLEKs it is configured with, one per product and reported TCB.
    - ``amd-chain``: the PEM AMD certificate chain of one product (ASK or ASVK, then ARK);
      params ``product`` and ``signer`` (``vcek`` or ``vlek``).

    Keys are hashable, so sources and verifiers can cache by them.
    """

    kind: str
    params: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, kind: str, **params: str) -> CollateralKey:
        """The key of ``kind`` with ``params``, in a canonical (sorted) order."""
        return cls(kind=kind, params=tuple(sorted(params.items())))

    def param(self, name: str) -> str:
        """The value of parameter ``name``; ``KeyError`` when the key has none."""
        for key, value in self.params:
            if key == name:
                return value
        raise KeyError(name)

    def __str__(self) -> str:
        return self.kind + "(" + ", ".join(f"{k}={v}" for k, v in self.params) + ")"


class CollateralSource(Protocol):
    """Where a verifier gets the documents it checks evidence against (the I/O side)."""

    def collateral(self, key: CollateralKey, at: datetime) -> bytes:
        """The document ``key`` names, as one that can be valid at ``at``.

        A source may return a document that turns out not to be valid at ``at``: validity is
        the verifier's decision, never the source's. Raises :class:`EvidenceError` with
        ``check="collateral"`` when it cannot be obtained, saying from where it tried.
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

    def collateral(self, key: CollateralKey, at: datetime) -> bytes:
        """Refuse: no collateral is available in this configuration."""
        raise EvidenceError(
            f"no collateral source is configured, so the collateral {key} cannot be obtained",
            check="collateral",
        )


NO_COLLATERAL = NoCollateral()
