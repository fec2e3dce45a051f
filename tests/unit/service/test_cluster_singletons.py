"""Singleton work on several instances of one CAS on PostgreSQL: periodic snapshots and key
rollover batches run under a lease whose token fences every commit, so a deposed leader cannot
commit; and a key rolled over by one instance reaches the others, which open every record under
it, during the rollover and after it, running or restarted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from opencas.config.availability import load_availability_config
from opencas.config.owner import parse_owner_config
from opencas.config.owner_identity import OwnerIdentity
from opencas.errors import DatabaseKeyStale, LeaseLost
from opencas.policy.caller import Caller
from opencas.service import key_rollover
from opencas.service.cas import Cas, open_cas
from opencas.service.key_rollover import (
    LEASE_NAME,
    key_id,
    read_rollover,
    refresh_database_key,
    run_batches,
    start_key_rollover,
)
from opencas.service.leadership import Leadership
from opencas.service.provisioning import provision
from opencas.service.snapshots import read_last_snapshot, write_snapshot
from opencas.store import PostgresStore, key_store_path, load_key_store
from opencas.store.base import Transaction
from opencas.store.cluster import Lease
from opencas.testing import write_config

OWNER = OwnerIdentity("a1" * 32, None)
OWNER_CALLER = Caller(OWNER.key_hash)
DMK = bytes(range(32))
RECORDS = 40


def _nothing(_: Transaction) -> None:
    return None


def _server_time(url: str) -> float:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT extract(epoch from clock_timestamp())").fetchone()
    assert row is not None
    return float(row[0])


def _until_expired(url: str, lease: Lease) -> None:
    """Wait until the database server's clock is past the lease's expiry."""
    deadline = time.monotonic() + 30
    while _server_time(url) <= lease.expires_at:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _put_after_expiry(store: PostgresStore, lease: Lease, url: str) -> None:
    with store.transaction(fence=lease) as txn:
        # The check at the start passed; the lease runs out before the commit.
        txn.put("sessions", "late", b"1")
        _until_expired(url, lease)


def test_the_database_refuses_the_commit_of_a_leader_deposed_during_its_transaction(
    postgres_url: str,
) -> None:
    with PostgresStore.create(postgres_url, DMK, _nothing) as store:
        lease = store.cluster.acquire_lease("snapshots", "a", 0.5)
        assert lease is not None
        before = store.state().counter
        with pytest.raises(LeaseLost, match="no longer leads"):
            _put_after_expiry(store, lease, postgres_url)
        assert store.get("sessions", "late") is None
        assert store.state().counter == before
        # The next holder gets the next token and commits.
        taken = store.cluster.acquire_lease("snapshots", "b", 30)
        assert taken is not None
        assert taken.token == lease.token + 1
        with store.transaction(fence=taken) as txn:
            txn.put("sessions", "by-next", b"2")
        assert store.get("sessions", "by-next") == b"2"


@dataclass
class Cluster:
    """Instances of one CAS on one PostgreSQL database, opened in this process."""

    url: str
    root: Path
    opened: list[Cas] = field(default_factory=list)

    def config_path(self, name: str, extra: str, limits: dict[str, float] | None) -> Path:
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        return write_config(
            directory, 18081, 18766, database_url=self.url, extra=extra, limits=limits
        )

    def open(self, name: str, extra: str = "", limits: dict[str, float] | None = None) -> Cas:
        cas = open_cas(load_availability_config(self.config_path(name, extra, limits)))
        self.opened.append(cas)
        cas.start_cluster_member(refresh_key=lambda: refresh_database_key(cas))
        return cas

    def close(self, cas: Cas) -> None:
        self.opened.remove(cas)
        cas.close()


@pytest.fixture
def cluster(postgres_url: str, tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(postgres_url, tmp_path)
    try:
        yield made
    finally:
        for cas in reversed(made.opened):
            cas.close()


def _first(cluster: Cluster, extra: str = "", limits: dict[str, float] | None = None) -> Cas:
    first = cluster.open("first", extra, limits)
    provision(
        first, OWNER, parse_owner_config("", "owner.toml", "toml").config, self_provisioned=True
    )
    with first.store.transaction() as txn:
        for number in range(RECORDS):
            txn.put("sessions", f"s{number}", f"value {number}".encode())
    return first


def _values(cas: Cas) -> list[bytes | None]:
    return [cas.store.get("sessions", f"s{number}") for number in range(RECORDS)]


EXPECTED = [f"value {number}".encode() for number in range(RECORDS)]


def _wait_for(condition: object, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {seconds:g} s")
        time.sleep(0.05)


def test_a_snapshot_of_a_deposed_leader_is_not_published(cluster: Cluster, tmp_path: Path) -> None:
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    first = _first(cluster, f'[backup]\ndirectory = "{snapshots}"\n')
    second = cluster.open("second")
    leading = Leadership(first, "snapshots", seconds=0.5)
    assert leading.take()
    other = Leadership(second, "snapshots")
    assert not other.take()
    written = write_snapshot(first, leader=leading)
    last = read_last_snapshot(first.store)
    assert last is not None
    assert (last.name, last.instance_id) == (written.name, first.identity.instance_id)
    # The first instance stalls past its lease; the second takes the snapshots over.
    assert leading.lease is not None
    _until_expired(cluster.url, leading.lease)
    assert other.take()
    # The deposed leader's next snapshot is refused: nothing published, nothing recorded.
    with pytest.raises(LeaseLost):
        write_snapshot(first, leader=leading)
    assert [path.name for path in snapshots.iterdir()] == [written.name]
    assert read_last_snapshot(second.store) == last


def test_a_rollover_batch_of_a_deposed_leader_is_not_committed_and_another_finishes_it(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _first(cluster)
    second = cluster.open("second")
    monkeypatch.setattr(key_rollover, "run_in_background", lambda cas: None)
    started = start_key_rollover(first, OWNER_CALLER)
    # The second instance finds its key stale and fetches the new one (and the old one: the
    # rollover runs).
    _wait_for(lambda: second.previous_key is not None, "the new key reaching the second instance")
    assert key_id(second.database_key) == started.key_id
    deposed = Leadership(first, LEASE_NAME)
    assert deposed.take()
    lease = deposed.lease
    # The lease runs out (here: given up) while the first instance still believes it leads.
    deposed.release()
    deposed.lease = lease
    successor = Leadership(second, LEASE_NAME)
    assert successor.take()
    assert successor.lease is not None
    assert lease is not None
    assert successor.lease.token == lease.token + 1
    with pytest.raises(LeaseLost):
        key_rollover._batch(first, deposed, 5, lambda: False)
    record = read_rollover(second.store)
    assert record is not None
    assert (record.state, record.moved) == ("running", 0)
    successor.release()
    finished = run_batches(second)
    assert finished is not None
    assert finished.state == "finished"
    assert finished.key_id == started.key_id
    assert second.previous_key is None
    # The first instance follows: it sees the finish and destroys the old key in its own store.
    assert run_batches(first) == finished
    for cas in (first, second):
        contents = load_key_store(key_store_path(cas.config.database_path), cas.platform.unseal)
        assert key_id(contents.dmk) == started.key_id
        assert contents.previous_dmk is None
        assert _values(cas) == EXPECTED


def test_a_key_rolled_over_on_one_instance_reaches_the_others_running_or_stopped(
    cluster: Cluster,
) -> None:
    # Small, paced batches: the rollover runs for about ten seconds.
    first = _first(cluster, limits={"key_rollover_batch": 2, "key_rollover_pause": 0.5})
    second = cluster.open("second")
    stopped = cluster.open("stopped")
    cluster.close(stopped)
    old = first.database_key
    record = start_key_rollover(first, OWNER_CALLER)

    def second_has_the_key() -> bool:
        return key_id(second.database_key) == record.key_id

    _wait_for(second_has_the_key, "the new key reaching the second instance")
    # It got the old key with it, and writes while the rollover runs.
    assert second.previous_key == old
    running = read_rollover(second.store)
    assert running is not None
    assert running.state == "running"
    with second.store.transaction() as txn:
        txn.put("sessions", "during", b"written by the second instance")

    def finished() -> bool:
        done = read_rollover(first.store)
        return done is not None and done.state == "finished" and second.previous_key is None

    _wait_for(finished, "the rollover finishing on both instances")
    assert _values(second) == EXPECTED
    assert first.store.get("sessions", "during") == b"written by the second instance"
    kept = load_key_store(key_store_path(second.config.database_path), second.platform.unseal)
    assert kept.previous_dmk is None
    # The old key opens nothing any more: an instance that was stopped meanwhile asks again.
    restarted = cluster.open("stopped")
    assert restarted.database_key not in (old, b"")
    assert key_id(restarted.database_key) == record.key_id
    assert _values(restarted) == EXPECTED
    assert restarted.identity.instance_id == stopped.identity.instance_id
    assert restarted.identity.tls_key_hash == stopped.identity.tls_key_hash


def test_an_instance_with_a_stale_key_answers_neither_not_found_nor_commits(
    postgres_url: str,
) -> None:
    new_key = bytes(range(1, 33))
    with (
        PostgresStore.create(postgres_url, DMK, _nothing) as leader,
        PostgresStore.open(postgres_url, DMK) as stale,
    ):
        with leader.transaction() as txn:
            txn.put("sessions", "kept", b"1")
        leader.use_keys(new_key, DMK)
        with leader.transaction() as txn:
            txn.put("sessions", "new", b"2")  # the state moves to the new key here
        assert not stale.key_opens_state()
        with pytest.raises(DatabaseKeyStale):
            stale.get("sessions", "new")
        with pytest.raises(DatabaseKeyStale), stale.transaction() as txn:
            txn.put("sessions", "under-the-old-key", b"3")
        assert stale.get("sessions", "kept") == b"1"  # found and opened: it is the committed one
        stale.use_keys(new_key, DMK)
        assert stale.key_opens_state()
        assert stale.get("sessions", "new") == b"2"
