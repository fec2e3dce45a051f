"""casctl's memory of a CAS: a replaced instance or a state that went back is refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from opencas.attestation.report import AUDIT_GENESIS_HEAD, CasReport
from opencas.client.freshness import FreshnessError, check_freshness
from opencas.client.state import PinnedCas

Pin = Callable[..., PinnedCas]


@pytest.fixture
def pinned(pinned_cas: Pin) -> PinnedCas:
    """The CAS as pinned before: instance-1, audit sequence 5, store commit counter 9."""
    return pinned_cas(audit_seq=5, state_counter=9, enclave_port=None)


def report(**changes: Any) -> CasReport:
    fields: dict[str, Any] = {
        "version": 1,
        "cas_version": "0.1.0",
        "instance_id": "instance-1",
        "time": "2026-11-29T00:00:00Z",
        "nonce": "00" * 16,
        "cas_key_hash": "aa" * 32,
        "tls_key_hash": "bb" * 32,
        "software_measurement": "cc" * 32,
        "platform": "simulated",
        "mode": "debug",
        "provisioned": False,
        "self_provisioned": False,
        "provisioned_at": None,
        "owner_identity_hash": None,
        "owner_config_sha256": None,
        "db_key_injected": False,
        "state": {"counter": 9, "digest": "dd" * 32},
        "audit": {"seq": 5, "head": AUDIT_GENESIS_HEAD},
        "recovery": {"configured": False, "threshold": None, "key_hashes": []},
        "recovered": False,
    }
    fields.update(changes)
    return CasReport.model_validate(fields)


def test_same_instance_is_fresh(pinned: PinnedCas) -> None:
    check_freshness(pinned, report(), accept_new_instance=False)
    check_freshness(None, report(instance_id="other"), accept_new_instance=False)


@pytest.mark.parametrize("change", [{"instance_id": "instance-2"}, {"cas_key_hash": "dd" * 32}])
def test_replaced_instance_is_refused_unless_accepted(
    pinned: PinnedCas, change: dict[str, Any]
) -> None:
    with pytest.raises(FreshnessError, match="not the one you attested before"):
        check_freshness(pinned, report(**change), accept_new_instance=False)
    check_freshness(pinned, report(**change), accept_new_instance=True)


def test_state_that_went_back_is_refused_even_when_new_instances_are_accepted(
    pinned: PinnedCas,
) -> None:
    went_back = report(audit={"seq": 4, "head": "11" * 32})
    for accept in (False, True):
        with pytest.raises(FreshnessError, match="went back"):
            check_freshness(pinned, went_back, accept_new_instance=accept)


def test_store_counter_that_went_back_is_refused_like_the_audit_sequence(
    pinned: PinnedCas,
) -> None:
    went_back = report(state={"counter": 8, "digest": "dd" * 32})
    for accept in (False, True):
        with pytest.raises(FreshnessError, match="store commit counter is 8, but 9"):
            check_freshness(pinned, went_back, accept_new_instance=accept)
    check_freshness(
        pinned, report(state={"counter": 10, "digest": "ee" * 32}), accept_new_instance=False
    )


def test_another_instance_of_the_pinned_cas_is_the_same_cas(pinned_cas: Pin) -> None:
    pinned = pinned_cas(instance_id="instance-1", cluster_id="cas-1", audit_seq=5, state_counter=9)
    check_freshness(
        pinned, report(instance_id="instance-2", cluster_id="cas-1"), accept_new_instance=False
    )
    # Its state is the cluster's: behind what another instance showed is going back.
    with pytest.raises(FreshnessError, match="commit counter is 8"):
        check_freshness(
            pinned,
            report(
                instance_id="instance-2",
                cluster_id="cas-1",
                state={"counter": 8, "digest": "dd" * 32},
            ),
            accept_new_instance=False,
        )


def test_another_cas_is_refused_though_its_instance_id_is_the_pinned_one(
    pinned_cas: Pin,
) -> None:
    pinned = pinned_cas(instance_id="instance-1", cluster_id="cas-1")
    with pytest.raises(FreshnessError, match=r"it was CAS cas-1 .* now it is CAS cas-2"):
        check_freshness(
            pinned, report(instance_id="instance-1", cluster_id="cas-2"), accept_new_instance=False
        )


def test_a_pin_from_before_cluster_ids_names_the_cas_by_its_instance_id(pinned: PinnedCas) -> None:
    # State files written before cluster ids kept the CAS's id as instance_id; the CAS now
    # reports that id as cluster_id and an instance id of its own.
    assert pinned.cluster_id is None
    check_freshness(
        pinned,
        report(instance_id="new-instance", cluster_id="instance-1"),
        accept_new_instance=False,
    )
    with pytest.raises(FreshnessError):
        check_freshness(
            pinned, report(instance_id="instance-1", cluster_id="other"), accept_new_instance=False
        )


def test_each_instance_audit_sequence_is_compared_with_its_own(pinned_cas: Pin) -> None:
    # Each instance keeps an audit chain of its own: a younger instance is not a rollback.
    pinned = pinned_cas(
        instance_id="instance-1",
        cluster_id="cas-1",
        audit_seq=50,
        audit_seqs={"instance-1": 50, "instance-2": 7},
        state_counter=9,
    )
    for instance, seq in (("instance-2", 7), ("instance-3", 1), ("instance-1", 50)):
        check_freshness(
            pinned,
            report(instance_id=instance, cluster_id="cas-1", audit={"seq": seq, "head": "ee" * 32}),
            accept_new_instance=False,
        )
    with pytest.raises(FreshnessError, match="instance instance-2 is 6, but 7"):
        check_freshness(
            pinned,
            report(
                instance_id="instance-2", cluster_id="cas-1", audit={"seq": 6, "head": "ee" * 32}
            ),
            accept_new_instance=False,
        )


def _restored(counter: int, snapshot_id: str = "0f" * 8) -> dict[str, Any]:
    return {
        "snapshot_id": snapshot_id,
        "state_counter": counter,
        "audit_seq": 3,
        "taken_at": "2026-11-28T00:00:00Z",
        "restored_at": "2026-11-29T00:00:00Z",
    }


def test_a_restore_of_what_was_seen_is_the_same_cas(pinned: PinnedCas) -> None:
    # Its audit chain goes on from the snapshot's head (3), below the 5 seen of the primary.
    restored = report(
        restored_from=_restored(9),
        state={"counter": 11, "digest": "dd" * 32},
        audit={"seq": 4, "head": AUDIT_GENESIS_HEAD},
    )
    check_freshness(pinned, restored, accept_new_instance=False)


def test_a_restore_older_than_what_was_seen_is_refused_unless_accepted(pinned: PinnedCas) -> None:
    # The restored CAS's own counter went on past 9; the snapshot's commit 8 decides.
    older = report(restored_from=_restored(8), state={"counter": 12, "digest": "dd" * 32})
    with pytest.raises(FreshnessError, match="at store commit 8, but commit 9 was seen before"):
        check_freshness(pinned, older, accept_new_instance=False)
    check_freshness(pinned, older, accept_new_instance=True)


def test_a_restore_seen_before_is_judged_as_any_cas(pinned: PinnedCas) -> None:
    seen = pinned.model_copy(update={"restored_from": "0f" * 8})
    check_freshness(seen, report(restored_from=_restored(8)), accept_new_instance=False)
    with pytest.raises(FreshnessError, match="commit counter is 8"):
        check_freshness(
            seen,
            report(restored_from=_restored(8), state={"counter": 8, "digest": "dd" * 32}),
            accept_new_instance=False,
        )
    # Another restore, of an older snapshot, is judged by its snapshot again.
    with pytest.raises(FreshnessError, match="was restored"):
        check_freshness(
            seen, report(restored_from=_restored(2, "1e" * 8)), accept_new_instance=False
        )
