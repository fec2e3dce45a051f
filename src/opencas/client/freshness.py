"""Freshness: is the CAS we attest now the one we attested before, and did its state not go back?

Pure decision over what casctl remembered and what the CAS reports now.
"""

from __future__ import annotations

from opencas.attestation.report import CasReport, cluster_of
from opencas.client.state import PinnedCas
from opencas.errors import AttestationRefused


class FreshnessError(AttestationRefused, code="freshness"):
    """The CAS is another CAS than the one pinned, or its audit sequence or store commit
    counter went back."""


def check_freshness(
    pinned: PinnedCas | None, report: CasReport, *, accept_new_instance: bool
) -> None:
    """Refuse a CAS that replaced, or rolled back, the one remembered as ``pinned``.

    Every instance of one CAS is that CAS: the pin is its cluster id and CAS key hash, and the
    commit counter is the cluster's, so another instance of it passes and one whose state is
    behind what any instance showed does not. Each instance keeps an audit chain of its own, so
    its audit sequence is compared with what that instance showed before.
    """
    if pinned is None:
        return
    cluster = cluster_of(report)
    replaced = pinned.cluster != cluster or pinned.cas_key_hash != report.cas_key_hash
    if (replaced or _newly_restored(pinned, report)) and accept_new_instance:
        return
    if replaced:
        raise FreshnessError(
            "freshness",
            "this CAS is not the one you attested before: it was CAS "
            f"{pinned.cluster} with CAS key hash {pinned.cas_key_hash}, now it is CAS "
            f"{cluster} with CAS key hash {report.cas_key_hash}. If the CAS was "
            "replaced on purpose, attest again with --accept-new-instance",
        )
    if _newly_restored(pinned, report):
        _check_restored(pinned, report)
        return
    seen = pinned.audit_seq_of(report.instance_id)
    if report.audit.seq < seen:
        raise FreshnessError(
            "freshness",
            f"the CAS state went back: the audit sequence of instance {report.instance_id} is "
            f"{report.audit.seq}, but {seen} was seen before (a restored old database?)",
        )
    if report.state.counter < pinned.state_counter:
        raise FreshnessError(
            "freshness",
            f"the CAS state went back: its store commit counter is {report.state.counter}, but "
            f"{pinned.state_counter} was seen before (a restored old database?)",
        )


def _newly_restored(pinned: PinnedCas, report: CasReport) -> bool:
    restored = report.restored_from
    return restored is not None and restored.snapshot_id != pinned.restored_from


def _check_restored(pinned: PinnedCas, report: CasReport) -> None:
    restored = report.restored_from
    assert restored is not None
    if restored.state_counter < pinned.state_counter:
        raise FreshnessError(
            "freshness",
            f"the CAS was restored at {restored.restored_at} from snapshot "
            f"{restored.snapshot_id}, taken at {restored.taken_at} at store commit "
            f"{restored.state_counter}, but commit {pinned.state_counter} was seen before: the "
            "changes after the snapshot are lost. To accept it as it is, attest again with "
            "--accept-new-instance",
        )
