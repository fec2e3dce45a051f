"""Joining through the database: a running member hands the key to an attested newcomer, refuses
other software with its reason, and a newcomer nobody answers gives up saying so."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from opencas.attestation.verifier import NO_COLLATERAL
from opencas.audit.chain import GENESIS
from opencas.audit.log import Durable
from opencas.errors import AuditLogError, KeyStoreError, LeaseLost
from opencas.platform.simulated import SimulatedPlatform
from opencas.service.cluster import ClusterMember, JoinRefused, MemberFacts, join_cluster
from opencas.service.key_handover import HandoverSecret
from opencas.store import PostgresStore
from opencas.store.base import Transaction
from opencas.store.cluster import CLAIM_SECONDS

DMK = bytes(range(32))
SIM = "5e" * 32
SECRET = HandoverSecret(DMK, False, "ab" * 32, "cluster-1")


def _nothing(_: Transaction) -> None:
    return None


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresStore]:
    created = PostgresStore.create(postgres_url, DMK, _nothing)
    try:
        yield created
    finally:
        created.close()


def machine(directory: Path, name: str, measurement: str = SIM) -> SimulatedPlatform:
    return SimulatedPlatform.load_or_create(directory / name / "platform.key", measurement)


@pytest.fixture
def member(store: PostgresStore, tmp_path: Path) -> Iterator[ClusterMember]:
    facts = MemberFacts("running-1", "https://127.0.0.1:1", SECRET, "cd" * 32, "PEM")
    running = ClusterMember(store.cluster, machine(tmp_path, "a"), lambda: facts, NO_COLLATERAL)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _requests_left(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM cluster_join_requests").fetchone()
    assert row is not None
    return int(row[0])


def test_a_newcomer_of_the_same_software_gets_the_key(
    member: ClusterMember, postgres_url: str, tmp_path: Path
) -> None:
    with PostgresStore.cluster_rows(postgres_url) as rows:
        joined = join_cluster(rows, machine(tmp_path, "b"), "new-1", collateral=NO_COLLATERAL)
        alive = rows.instances()
    assert joined.secret == SECRET
    assert joined.answered_by == "running-1"
    # The member announced itself with evidence binding its TLS key.
    assert [row.instance_id for row in alive] == ["running-1"]
    assert alive[0].software_measurement == SIM
    assert _requests_left(postgres_url) == 0


def test_a_newcomer_of_other_software_is_refused_with_the_reason(
    member: ClusterMember, postgres_url: str, tmp_path: Path
) -> None:
    other = "6f" * 32
    with (
        PostgresStore.cluster_rows(postgres_url) as rows,
        pytest.raises(JoinRefused) as refused,
    ):
        join_cluster(rows, machine(tmp_path, "b", other), "new-1", collateral=NO_COLLATERAL)
    assert "running-1" in refused.value.message
    assert "software" in refused.value.message
    assert other in refused.value.message
    assert _requests_left(postgres_url) == 0


def test_a_newcomer_nobody_answers_gives_up_saying_so(
    store: PostgresStore, postgres_url: str, tmp_path: Path
) -> None:
    with (
        PostgresStore.cluster_rows(postgres_url) as rows,
        pytest.raises(KeyStoreError, match="no running instance answered"),
    ):
        join_cluster(rows, machine(tmp_path, "b"), "new-1", collateral=NO_COLLATERAL, timeout=0.5)
    assert _requests_left(postgres_url) == 0


def test_one_instance_claims_a_request_until_its_claim_is_stale(store: PostgresStore) -> None:
    rows = store.cluster
    request_id = secrets.token_hex(16)
    rows.post_request(request_id, "new-1", "{}", 1000.0)
    assert [pending.request_id for pending in rows.pending(1000.0)] == [request_id]
    assert rows.claim(request_id, "a", 1000.0)
    assert not rows.claim(request_id, "b", 1001.0)
    assert rows.pending(1001.0) == []
    # The claimer died before it answered: after the claim's time another instance may.
    later = 1000.0 + CLAIM_SECONDS + 1
    assert [pending.request_id for pending in rows.pending(later)] == [request_id]
    assert rows.claim(request_id, "b", later)
    rows.answer(request_id, None, "software: no", later)
    outcome = rows.outcome(request_id)
    assert outcome is not None
    assert (outcome.refusal, outcome.answered_by) == ("software: no", "b")
    assert not rows.claim(request_id, "c", later + 2 * CLAIM_SECONDS)


def test_a_deposed_lease_holder_cannot_commit(store: PostgresStore) -> None:
    rows = store.cluster
    lease = rows.acquire_lease("snapshots", "a", 30)
    assert lease is not None
    assert rows.acquire_lease("snapshots", "b", 30) is None
    renewed = rows.acquire_lease("snapshots", "a", 30)
    assert renewed is not None
    assert renewed.token == lease.token
    with store.transaction(fence=lease) as txn:
        txn.put("sessions", "by-leader", b"1")
    # The lease runs out (here: given up); another instance takes it with the next token.
    rows.release_lease(lease)
    taken = rows.acquire_lease("snapshots", "b", 30)
    assert taken is not None
    assert taken.token == lease.token + 1
    with pytest.raises(LeaseLost, match="no longer leads"), store.transaction(fence=lease) as txn:
        txn.put("sessions", "by-deposed", b"2")
    assert store.get("sessions", "by-deposed") is None
    assert store.get("sessions", "by-leader") == b"1"


class _Recorded:
    """Stands in for the audit log: keeps each entry, or refuses every one."""

    def __init__(self, *, broken: bool = False) -> None:
        self.entries: list[tuple[str, str, str, dict[str, object]]] = []
        self.broken = broken

    def append(self, event: str, *, actor: str, subject: str, details: dict[str, object]) -> Any:
        if self.broken:
            raise AuditLogError("the audit log cannot take entries (disk full)")
        self.entries.append((event, actor, subject, dict(details)))
        return Durable(GENESIS, None)


def _audited_member(store: PostgresStore, tmp_path: Path, recorded: _Recorded) -> ClusterMember:
    facts = MemberFacts("running-1", "https://127.0.0.1:1", SECRET, "cd" * 32, "PEM")
    running = ClusterMember(
        store.cluster,
        machine(tmp_path, "a"),
        lambda: facts,
        NO_COLLATERAL,
        audit=lambda: recorded,  # type: ignore[arg-type,return-value]
    )
    running.start()
    return running


def test_each_answer_to_a_newcomer_is_in_the_audit_log(
    store: PostgresStore, postgres_url: str, tmp_path: Path
) -> None:
    recorded = _Recorded()
    running = _audited_member(store, tmp_path, recorded)
    try:
        with PostgresStore.cluster_rows(postgres_url) as rows:
            join_cluster(rows, machine(tmp_path, "b"), "new-1", collateral=NO_COLLATERAL)
            with pytest.raises(JoinRefused):
                join_cluster(
                    rows, machine(tmp_path, "c", "6f" * 32), "new-2", collateral=NO_COLLATERAL
                )
    finally:
        running.stop()
    (admitted, actor, subject, details), refused = recorded.entries
    assert (admitted, actor, subject) == ("instance_admitted", "cas", "new-1")
    assert details["basis"] == "same-software"
    assert refused[:3] == ("instance_refused", "cas", "new-2")
    assert refused[3]["check"] == "software"
    assert "6f" * 32 in str(refused[3]["reason"])


def test_no_key_leaves_when_the_audit_log_cannot_say_so(
    store: PostgresStore, postgres_url: str, tmp_path: Path
) -> None:
    running = _audited_member(store, tmp_path, _Recorded(broken=True))
    try:
        with (
            PostgresStore.cluster_rows(postgres_url) as rows,
            pytest.raises(KeyStoreError, match="no running instance answered"),
        ):
            join_cluster(
                rows, machine(tmp_path, "b"), "new-1", collateral=NO_COLLATERAL, timeout=2.0
            )
    finally:
        running.stop()
