"""Several collateral sources tried in order: the first with a current document gives it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from opencas.attestation.verifier import CollateralKey, CollateralSource
from opencas.collateral.validity import document_window
from opencas.errors import EvidenceError


class SourceChain:
    """A collateral source that asks each of ``sources`` in turn."""

    def __init__(self, sources: Sequence[CollateralSource]) -> None:
        self.sources = tuple(sources)

    def __str__(self) -> str:
        return ", then ".join(str(source) for source in self.sources) or "no collateral source"

    def collateral(self, key: CollateralKey, at: datetime) -> bytes:
        """The first document current at ``at``; else the first document any source had.

        So an outdated bundle does not hide a current document that a later source (a PCCS)
        can give, and an outdated document still reaches the verifier, which says why it is
        refused. When no source has one, raises :class:`EvidenceError` (``check="collateral"``)
        that lists why each source failed, in order.
        """
        failures: list[str] = []
        outdated: bytes | None = None
        for source in self.sources:
            try:
                data = source.collateral(key, at)
            except EvidenceError as exc:
                failures.append(exc.message)
                continue
            if _current(key, data, at):
                return data
            if outdated is None:
                outdated = data
        if outdated is not None:
            return outdated
        tried = "; ".join(failures) if failures else "no collateral source is configured"
        raise EvidenceError(f"no source has the collateral {key}: {tried}", check="collateral")


def _current(key: CollateralKey, data: bytes, at: datetime) -> bool:
    try:
        return document_window(key, data).covers(at)
    except ValueError:
        return False  # not even of its kind; the verifier names what is wrong with it
