"""The database key rollover of a CAS: the windows between its durable steps, where a crash
leaves the key store and the database out of step, and what the next start does with them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from opencas.config.availability import load_availability_config
from opencas.config.owner import parse_owner_config
from opencas.config.owner_identity import OwnerIdentity
from opencas.errors import ConfigError, ConflictError, ForbiddenError, LeaseLost
from opencas.policy.caller import Caller
from opencas.service import key_rollover
from opencas.service.cas import Cas, open_cas
from opencas.service.key_rollover import (
    RolloverRecord,
    read_rollover,
    resume_key_rollover,
    rollover_status,
    start_key_rollover,
)
from opencas.service.provisioning import provision
from opencas.service.records import write_record
from opencas.store import KeyStoreContents, key_store_path, load_key_store, save_key_store
from opencas.store.records import RekeyedPage, RowidPosition, parse_position
from opencas.testing import write_config

OWNER = OwnerIdentity("a1" * 32, None)
OWNER_CALLER = Caller(OWNER.key_hash)
NEW_KEY = bytes(range(7, 39))


@pytest.fixture
def synchronous(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the batches in the caller's thread, so a test sees the rollover finished."""
    monkeypatch.setattr(key_rollover, "run_in_background", key_rollover.run_batches)


def _provisioned(cas: Cas) -> None:
    provision(
        cas, OWNER, parse_owner_config("", "owner.toml", "toml").config, self_provisioned=True
    )
    with cas.store.transaction() as txn:
        for number in range(30):
            txn.put("sessions", f"s{number}", f"value {number}".encode())


def _key_store(cas: Cas) -> KeyStoreContents:
    return load_key_store(key_store_path(cas.config.database_path), cas.platform.unseal)


def _reopen(cas: Cas) -> Cas:
    cas.close()
    return open_cas(load_availability_config(cas.config.source))


def _events(cas: Cas) -> list[tuple[str, str]]:
    lines = cas.config.audit_log_path.read_text().splitlines()
    return [(entry["event"], entry["actor"]) for entry in map(json.loads, lines)]


def _values(cas: Cas) -> list[bytes | None]:
    return [cas.store.get("sessions", f"s{number}") for number in range(30)]


def test_the_owner_rolls_the_key_over_and_the_key_store_keeps_only_the_new_key(
    cas: Cas, synchronous: None
) -> None:
    _provisioned(cas)
    old = _key_store(cas).dmk
    record = start_key_rollover(cas, OWNER_CALLER)
    assert record.state == "running"
    finished = rollover_status(cas, OWNER_CALLER)
    assert finished is not None
    assert finished.state == "finished"
    # Records written since the start (this record, the audit head) moved with their write.
    assert 0 < finished.moved <= record.total
    contents = _key_store(cas)
    assert contents.previous_dmk is None
    assert contents.dmk not in (old, b"")
    assert cas.database_key == contents.dmk
    assert ("key_rollover_started", OWNER_CALLER.key_hash) in _events(cas)
    assert ("key_rollover_finished", "cas") in _events(cas)
    cas = _reopen(cas)
    try:
        assert _values(cas) == [f"value {n}".encode() for n in range(30)]
    finally:
        cas.close()


def test_only_the_owner_may_roll_the_key_over(cas: Cas) -> None:
    _provisioned(cas)
    with pytest.raises(ForbiddenError):
        start_key_rollover(cas, Caller("b2" * 32))
    with pytest.raises(ForbiddenError):
        rollover_status(cas, Caller("b2" * 32))
    assert _key_store(cas).previous_dmk is None


def test_a_second_start_while_one_runs_is_refused(
    cas: Cas, monkeypatch: pytest.MonkeyPatch
) -> None:
    _provisioned(cas)
    monkeypatch.setattr(key_rollover, "run_in_background", lambda cas: None)
    start_key_rollover(cas, OWNER_CALLER)
    with pytest.raises(ConflictError, match="running already"):
        start_key_rollover(cas, OWNER_CALLER)


def test_a_crash_after_the_key_store_was_written_and_before_the_start_committed(
    cas: Cas, synchronous: None
) -> None:
    _provisioned(cas)
    old = _key_store(cas)
    # What step 1 leaves: the key store holds both keys, the database knows of no rollover.
    save_key_store(
        key_store_path(cas.config.database_path),
        KeyStoreContents(NEW_KEY, old.db_key_injected, old.dmk),
        cas.platform.seal,
    )
    cas = _reopen(cas)
    try:
        assert read_rollover(cas.store) is None
        resume_key_rollover(cas)
        record = read_rollover(cas.store)
        assert record is not None
        assert record.state == "finished"
        assert _key_store(cas) == KeyStoreContents(NEW_KEY, old.db_key_injected)
        assert ("key_rollover_started", "cas") in _events(cas)
        assert _values(cas) == [f"value {n}".encode() for n in range(30)]
    finally:
        cas.close()


def test_a_crash_after_the_finish_committed_and_before_the_old_key_was_destroyed(
    cas: Cas, synchronous: None
) -> None:
    _provisioned(cas)
    old = _key_store(cas).dmk
    start_key_rollover(cas, OWNER_CALLER)
    new = _key_store(cas)
    # What step 4 leaves: the database says finished, the key store still holds the old key.
    save_key_store(
        key_store_path(cas.config.database_path),
        KeyStoreContents(new.dmk, new.db_key_injected, old),
        cas.platform.seal,
    )
    cas = _reopen(cas)
    try:
        finished = len([e for e in _events(cas) if e[0] == "key_rollover_finished"])
        resume_key_rollover(cas)
        assert _key_store(cas).previous_dmk is None
        assert len([e for e in _events(cas) if e[0] == "key_rollover_finished"]) == finished
        assert _values(cas) == [f"value {n}".encode() for n in range(30)]
    finally:
        cas.close()


def test_rollover_limits_are_validated(tmp_path: Path) -> None:
    config = write_config(tmp_path, 18081, 18766, limits={"key_rollover_batch": 0})
    with pytest.raises(ConfigError, match="key_rollover_batch"):
        load_availability_config(config)
    config = write_config(tmp_path, 18081, 18766, limits={"key_rollover_pause": 11.0})
    with pytest.raises(ConfigError, match="key_rollover_pause"):
        load_availability_config(config)


class _SlowClock:
    """A monotonic clock on which every reading is ``step`` seconds after the one before: the
    batch's own reading of it is all that makes time pass, so a test needs no sleep."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _pages_of(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The (limit, rows visited) of every batch the rollover runs from now on."""
    pages: list[tuple[int, int]] = []
    real = key_rollover.rekey_page

    def counted(txn: Any, after: Any, limit: int, out_of_time: Any) -> RekeyedPage:
        page = real(txn, after, limit, out_of_time)
        pages.append((limit, page.visited))
        return page

    monkeypatch.setattr(key_rollover, "rekey_page", counted)
    return pages


def _start_without_batches(cas: Cas, monkeypatch: pytest.MonkeyPatch) -> RolloverRecord:
    with monkeypatch.context() as scoped:
        scoped.setattr(key_rollover, "run_in_background", lambda cas: None)
        return start_key_rollover(cas, OWNER_CALLER)


def _finished_and_readable(cas: Cas, record: RolloverRecord | None) -> None:
    assert record is not None
    assert record.state == "finished"
    assert _key_store(cas).previous_dmk is None
    assert _values(cas) == [f"value {n}".encode() for n in range(30)]


def test_a_batch_ends_once_its_share_of_the_lease_went_by_and_the_next_is_sized_to_fit(
    cas: Cas, monkeypatch: pytest.MonkeyPatch
) -> None:
    _provisioned(cas)
    started = _start_without_batches(cas, monkeypatch)
    pages = _pages_of(monkeypatch)
    # A lease of 8 s leaves a batch 2 s; each row takes 0.25 s on this clock.
    record = key_rollover.run_batches(cas, clock=_SlowClock(0.25), lease_seconds=8.0)
    _finished_and_readable(cas, record)
    assert cas.config.key_rollover_batch == 1000
    assert pages[0] == (1000, 8)
    assert all(limit <= 8 and 1 <= visited <= limit for limit, visited in pages[1:-1])
    assert sum(visited for _, visited in pages) >= started.total
    assert len(pages) >= started.total // 8


def test_a_machine_where_one_record_outlasts_the_lease_still_moves_one_per_batch(
    cas: Cas, monkeypatch: pytest.MonkeyPatch
) -> None:
    _provisioned(cas)
    started = _start_without_batches(cas, monkeypatch)
    pages = _pages_of(monkeypatch)
    record = key_rollover.run_batches(cas, clock=_SlowClock(100.0))
    _finished_and_readable(cas, record)
    assert pages[0] == (1000, 1)
    # Every batch but the last (which finds no row left) moved one record.
    assert set(pages[1:-1]) == {(1, 1)}
    assert pages[-1] == (1, 0)
    assert len(pages) >= started.total


def test_a_batch_refused_for_outlasting_the_lease_is_redone_smaller(
    cas: Cas, monkeypatch: pytest.MonkeyPatch
) -> None:
    _provisioned(cas)
    _start_without_batches(cas, monkeypatch)
    clock = _SlowClock(0.0)
    sizes: list[int] = []
    real = key_rollover._batch

    def first_outlasts_the_lease(
        cas: Cas, leader: Any, batch: int, out_of_time: Any
    ) -> tuple[RekeyedPage | None, RolloverRecord | None]:
        sizes.append(batch)
        if len(sizes) == 1:
            clock.now += 40.0
            raise LeaseLost("the lease 'key-rollover' expired before the commit")
        return real(cas, leader, batch, out_of_time)

    monkeypatch.setattr(key_rollover, "_batch", first_outlasts_the_lease)
    record = key_rollover.run_batches(cas, clock=clock)
    _finished_and_readable(cas, record)
    # 1000 records took 40 s against a budget of 7.5 s (a quarter of the 30 s lease).
    assert sizes[:2] == [1000, int(1000 * 7.5 / 40.0)]


def _rewrite_progress(cas: Cas, **fields: Any) -> None:
    record = read_rollover(cas.store)
    assert record is not None
    with cas.store.transaction() as txn:
        write_record(txn, "key-rollover", "progress", record.model_copy(update=fields))


def test_a_rollover_stored_by_a_build_that_walked_in_id_order_begins_its_walk_again(
    cas: Cas, monkeypatch: pytest.MonkeyPatch
) -> None:
    _provisioned(cas)
    _start_without_batches(cas, monkeypatch)
    # That build's cursor past the last id: taken as a position, it would leave every record
    # under the old key, which is then destroyed.
    _rewrite_progress(cas, cursor_table="sessions", cursor_id="ff" * 32, damaged=2)
    cas = _reopen(cas)
    try:
        pages = _pages_of(monkeypatch)
        with monkeypatch.context() as scoped:
            scoped.setattr(key_rollover, "run_in_background", key_rollover.run_batches)
            resume_key_rollover(cas)
        record = read_rollover(cas.store)
        _finished_and_readable(cas, record)
        assert record is not None
        assert (record.cursor, record.cursor_table, record.cursor_id) == (None, None, None)
        # The walk met every record again, and counted the damaged afresh: there are none.
        assert record.damaged == 0
        assert sum(visited for _, visited in pages) >= record.total
    finally:
        cas.close()


def test_a_batch_out_of_time_stores_where_in_the_table_the_next_begins(
    cas: Cas, monkeypatch: pytest.MonkeyPatch
) -> None:
    _provisioned(cas)
    _start_without_batches(cas, monkeypatch)
    leader = key_rollover.Leadership(cas, key_rollover.LEASE_NAME)
    cursors: list[str | None] = []
    while not cursors or cursors[-1] is not None:
        page, record = key_rollover._batch(cas, leader, 1000, lambda: True)
        assert page is not None
        assert record is not None
        assert page.visited == 1
        cursors.append(record.cursor)
    # Each batch stopped after one row; the next began where it stopped, in rowid order.
    walked = [parse_position(cursor) for cursor in cursors[:-1] if cursor is not None]
    assert all(isinstance(position, RowidPosition) for position in walked)
    assert [position.after for position in walked] == sorted(p.after for p in walked)
    assert len({position.after for position in walked}) == len(walked)
    _finished_and_readable(cas, key_rollover.run_batches(cas))
