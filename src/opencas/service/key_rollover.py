"""Rolling the database key over: a new key, every record moved to it online, the old one gone.

The steps, each durable before the next, so that a ``kill -9`` anywhere leaves a state that
:func:`resume_key_rollover` carries on from at the next start:

1. The key store is rewritten holding the new key and the previous one (format v2), before
   anything is sealed under the new key.
2. The *start* transaction: the store seals under the new key from then on; the record
   ``key-rollover/progress`` says ``running`` (with the new key's id), the key-check record and
   the recovery split move to the new key, and the audit log says ``key_rollover_started``.
3. Batches of at most ``[limits] key_rollover_batch`` records, each one transaction that moves
   them and advances the record's cursor. The CAS serves meanwhile: a record is under exactly
   one key at every commit, and writes go to the new key. A batch is bounded by time as well
   (:data:`BATCH_SHARE` of the lease): it ends early once that much time went by, and the next
   batch is sized from the time per record the last one took, so a machine too slow for a batch
   of the configured size within the lease still moves records at every commit.
4. The *finish* transaction: the record says ``finished``; ``key_rollover_finished`` is logged.
5. The key store is rewritten with the new key alone. A copy of the old key store (or an old
   CAS version holding it) opens nothing of the database any more.

A crash between 1 and 2 is resumed by doing step 2 as the CAS itself (the owner's request was
never answered); between 4 and 5 by doing step 5.

**Several instances (PostgreSQL).** Steps 2 to 4 are singleton work under the lease
``key-rollover`` (:mod:`opencas.service.leadership`): the start, every batch and the finish
commit fenced by its token, so an instance deposed in the middle (paused, cut off, past its
lease) cannot commit a batch after another took over. The other instances find at once that
their key no longer opens the commit state; each asks for the key again
(:func:`refresh_database_key`, through :mod:`opencas.service.cluster`), gets the new key and the
previous one sealed to its attested key, writes them to its own key store and follows the
rollover: it takes the lease over when the leader stops renewing it, and once the rollover is
finished it destroys the previous key in its own key store (step 5) too.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict

from opencas.errors import (
    ConflictError,
    DatabaseKeyStale,
    DatabaseUnavailable,
    KeyStoreError,
    LeaseLost,
)
from opencas.policy.caller import Caller
from opencas.service.audit import actor_of, state_change
from opencas.service.cas import Cas
from opencas.service.cas_records import read_owner_config
from opencas.service.cluster import join_cluster
from opencas.service.identity import utc_now_text
from opencas.service.leadership import LEASE_SECONDS, Leadership
from opencas.service.provisioning import require_owner
from opencas.service.records import read_record, write_record
from opencas.service.recovery import split_again
from opencas.store import (
    KeyStoreContents,
    PostgresStore,
    key_store_path,
    load_key_store,
    save_key_store,
)
from opencas.store.base import Reader
from opencas.store.records import RekeyedPage, index_size, rekey_page

log = logging.getLogger("opencas")

_TABLE: Final = "key-rollover"
_PROGRESS: Final = "progress"
DMK_SIZE: Final = 32
#: The lease under which one instance at a time starts, moves and finishes a rollover.
LEASE_NAME: Final = "key-rollover"
#: How often an instance that follows another's rollover looks whether it finished, or its
#: leader stopped renewing the lease.
FOLLOW_SECONDS: Final = 1.0
#: How long an instance whose key was rolled over elsewhere waits for the new key.
REFRESH_TIMEOUT_SECONDS: Final = 20.0
#: The share of the lease one batch may take: a batch that outlasts the lease is refused and
#: redone, and the rest is left to its writes and its commit, which come after the last record
#: is read and take about as long again on a slow database.
BATCH_SHARE: Final = 0.25


class RolloverRecord(BaseModel):
    """The stored progress of the last key rollover (``key-rollover/progress``)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    state: Literal["running", "finished"]
    key_id: str
    """:func:`key_id` of the new key."""
    previous_key_id: str
    started_at: str
    finished_at: str | None = None
    total: int
    """Records in the store when the rollover started."""
    moved: int = 0
    damaged: int = 0
    """Records left under the old key because they were damaged (unreadable) already."""
    cursor: str | None = None
    """Where the next batch starts, a position of the store's walk
    (:func:`opencas.store.records.position_text`); ``None``: from the start."""
    cursor_table: str | None = None
    cursor_id: str | None = None
    """The cursor of builds that walked every backend in record-id order (the hex of the id the
    next batch started after). Read only: a record that has them starts the walk again."""


def key_id(dmk: bytes) -> str:
    """A name of the database key ``dmk`` that tells nothing about it: 32 hex digits."""
    return hashlib.sha256(b"opencas-database-key-id/v1\0" + dmk).hexdigest()[:32]


def read_rollover(source: Reader) -> RolloverRecord | None:
    """The progress of the last key rollover, or ``None`` when there never was one."""
    return read_record(source, RolloverRecord, _TABLE, _PROGRESS)


def rollover_status(cas: Cas, caller: Caller) -> RolloverRecord | None:
    """The progress of the running or last key rollover (owner only)."""
    require_owner(cas, caller)
    return read_rollover(cas.store)


def start_key_rollover(cas: Cas, caller: Caller) -> RolloverRecord:
    """Make a new database key and start moving every record to it (owner only); the batches
    run in the background (:func:`run_in_background`). Raises :class:`ConflictError`
    (``key-rollover-running``) while one runs."""
    require_owner(cas, caller)
    path = key_store_path(cas.config.database_path)
    leader = Leadership(cas, LEASE_NAME)
    with _STARTING:
        # The lease first: a rollover another instance runs holds it; and the state must open
        # under this instance's key, or it would seal a new key store around a retired key.
        cas.store.state()
        if not leader.take():
            raise ConflictError(
                "another instance of this CAS runs a database key rollover; wait for it to "
                "finish (casctl upgrade-status --wait shows its progress)",
                code="key-rollover-running",
            )
        contents = load_key_store(path, cas.platform.unseal)
        if contents.previous_dmk is not None:
            record = read_rollover(cas.store)
            if record is not None and record.key_id == key_id(contents.dmk):
                raise ConflictError(
                    "a database key rollover is running already; wait for it to finish "
                    "(casctl upgrade-status --wait shows its progress)",
                    code="key-rollover-running",
                )
            # An earlier start wrote the key store and failed before its commit: finish it.
            new, previous = contents.dmk, contents.previous_dmk
        else:
            new, previous = secrets.token_bytes(DMK_SIZE), contents.dmk
            save_key_store(
                path, KeyStoreContents(new, contents.db_key_injected, previous), cas.platform.seal
            )
        record = _begin(cas, new, previous, actor_of(caller), leader)
    run_in_background(cas)
    return record


_STARTING = threading.Lock()


def _begin(cas: Cas, new: bytes, previous: bytes, actor: str, leader: Leadership) -> RolloverRecord:
    """Step 2: seal under ``new`` from now on, in one transaction with the record that says so
    (fenced by ``leader``'s lease)."""
    cas.store.use_keys(new, previous)
    cas.database_key, cas.previous_key = new, previous
    with state_change(cas.audit_log) as entry, leader.transaction() as txn:
        record = RolloverRecord(
            state="running",
            key_id=key_id(new),
            previous_key_id=key_id(previous),
            started_at=utc_now_text(),
            total=index_size(txn),
        )
        write_record(txn, _TABLE, _PROGRESS, record)
        # The commit state moves to the new key with this commit; the key-check record with
        # the batch that reaches it.
        txn_split = split_again(txn, cas, read_owner_config(txn))
        entry.record(
            txn,
            "key_rollover_started",
            actor=actor,
            subject=record.key_id,
            details={
                "previous_key_id": record.previous_key_id,
                "records": record.total,
                "recovery_split_again": txn_split,
            },
        )
    log.info(
        "database key rollover started: key %s replaces %s, %d records to move",
        record.key_id,
        record.previous_key_id,
        record.total,
    )
    return record


def resume_key_rollover(cas: Cas) -> None:
    """At start: carry an interrupted rollover on from wherever it stopped (see the module's
    steps), in the background when records remain to be moved."""
    path = key_store_path(cas.config.database_path)
    contents = load_key_store(path, cas.platform.unseal)
    if contents.previous_dmk is None:
        return
    record = read_rollover(cas.store)
    if record is None or record.key_id != key_id(contents.dmk):
        leader = Leadership(cas, LEASE_NAME)
        if (record is not None and record.state == "running") or not leader.take():
            # Another instance's rollover runs: this key store's new key was never used.
            log.warning(
                "this instance's interrupted key rollover never started, and another instance "
                "runs one; it follows that one"
            )
        else:
            log.warning("a database key rollover was interrupted before it started; starting it")
            _begin(cas, contents.dmk, contents.previous_dmk, "cas", leader)
    elif record.state == "finished":
        _forget_previous(cas)
        return
    else:
        log.info(
            "resuming the database key rollover to key %s: %d of %d records moved",
            record.key_id,
            record.moved,
            record.total,
        )
    run_in_background(cas)


def run_in_background(cas: Cas) -> None:
    """Run the rollover's batches in a thread that :meth:`Cas.close` stops and waits for (one
    such thread per CAS: nothing when it runs already)."""
    with _RUNNING_LOCK:
        if id(cas) in _RUNNING:
            return
        _RUNNING.add(id(cas))
    stop = threading.Event()
    thread = threading.Thread(
        target=_run_logged, args=(cas, stop), name="key-rollover", daemon=True
    )

    def stop_and_wait() -> None:
        stop.set()
        thread.join()

    cas.background_stops.append(stop_and_wait)
    thread.start()


_RUNNING: set[int] = set()
_RUNNING_LOCK = threading.Lock()


def _run_logged(cas: Cas, stop: threading.Event) -> None:
    try:
        run_batches(cas, stop)
    except Exception:
        # The next start resumes from the last committed batch; until then the CAS serves with
        # both keys, which is safe.
        log.exception("the database key rollover stopped; it resumes at the next start")
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(id(cas))


def run_batches(
    cas: Cas,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    lease_seconds: float = LEASE_SECONDS,
) -> RolloverRecord | None:
    """Move records in batches until none is left under the previous key, then finish (steps
    3 to 5); returns the record as it stands when done or stopped.

    Each batch first renews the lease (of ``lease_seconds``). While another instance holds it,
    this one follows: it looks every :data:`FOLLOW_SECONDS` whether the rollover finished (then
    it destroys the previous key in its own key store) or the lease ran out (then it carries
    on). A batch refused because the lease was lost is not committed; this instance follows
    from there. A batch moves one record at least and ends once :data:`BATCH_SHARE` of the
    lease went by on ``clock`` (seconds); the next is sized from its time per record.
    """
    leader = Leadership(cas, LEASE_NAME, lease_seconds)
    try:
        return _run_batches(cas, leader, stop, _BatchTimer(clock, lease_seconds * BATCH_SHARE))
    finally:
        leader.release()


@dataclass
class _BatchTimer:
    """Bounds each batch by time: it says when a running batch is out of time, and how many
    records the next batch should take after one that took ``elapsed`` seconds."""

    clock: Callable[[], float]
    budget: float
    began: float = field(init=False)

    def __post_init__(self) -> None:
        self.began = self.clock()

    def start(self) -> None:
        self.began = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.began

    def out_of_time(self) -> bool:
        return self.elapsed() >= self.budget

    def next_size(self, records: int, elapsed: float, largest: int) -> int:
        """The batch size that takes about the budget at the pace of ``records`` in
        ``elapsed`` seconds: 1 to ``largest``."""
        if elapsed <= 0:
            return largest
        return max(1, min(largest, int(records * self.budget / elapsed)))


def _run_batches(
    cas: Cas, leader: Leadership, stop: threading.Event | None, timer: _BatchTimer
) -> RolloverRecord | None:
    largest = cas.config.key_rollover_batch
    batch = largest
    pause = cas.config.key_rollover_pause

    def wait(seconds: float) -> None:
        if stop is None:
            time.sleep(seconds)
        else:
            stop.wait(seconds)

    while stop is None or not stop.is_set():
        try:
            if not leader.take():
                record = read_rollover(cas.store)
                if record is None or record.state != "running":
                    if record is not None and cas.previous_key is not None:
                        _forget_previous(cas)
                    return record
                wait(FOLLOW_SECONDS)
                continue
            timer.start()
            page, record = _batch(cas, leader, batch, timer.out_of_time)
        except LeaseLost as exc:
            log.warning("a key rollover batch was not committed: %s", exc)
            batch = _resized(batch, timer.next_size(batch, timer.elapsed(), largest), largest)
            continue
        except (DatabaseUnavailable, DatabaseKeyStale) as exc:
            # The database is away, or this instance waits for the new key: try again soon.
            log.info("the database key rollover waits: %s", exc)
            wait(FOLLOW_SECONDS)
            continue
        if record is None or record.state != "running":
            if record is not None and record.state == "finished" and cas.previous_key is not None:
                _forget_previous(cas)
            return record
        if page is not None and page.after is None:
            return _finish(cas, leader)
        if page is not None:
            batch = _resized(
                batch, timer.next_size(page.visited, timer.elapsed(), largest), largest
            )
        if pause and stop is not None:
            stop.wait(pause)
    return None


def _resized(batch: int, size: int, largest: int) -> int:
    """``size``; logged when it falls to half of ``largest`` or less, which says the machine
    or the database is slow (the sizes in between follow the noise of the timing)."""
    if size < batch and size <= largest // 2:
        log.info(
            "key rollover batches take long here: the next moves at most %d records (of %d)",
            size,
            largest,
        )
    return size


def _batch(
    cas: Cas, leader: Leadership, batch: int, out_of_time: Callable[[], bool]
) -> tuple[RekeyedPage | None, RolloverRecord | None]:
    """Step 3, one batch in one fenced transaction: the page moved and the record after it
    (no page when no rollover runs). The page ends early once ``out_of_time``."""
    with leader.transaction() as txn:
        record = read_rollover(txn)
        if record is None or record.state != "running":
            return None, record
        # A walk from the start (the first, or one begun again because an earlier build walked
        # in record-id order, or crashed between the last batch and the finish) passes over
        # the records moved before and meets every damaged one again.
        damaged = 0 if record.cursor is None else record.damaged
        page = rekey_page(txn, record.cursor, batch, out_of_time)
        record = record.model_copy(
            update={
                "moved": record.moved + page.moved,
                "damaged": damaged + page.damaged,
                "cursor": page.after,
                "cursor_table": None,
                "cursor_id": None,
            }
        )
        write_record(txn, _TABLE, _PROGRESS, record)
    return page, record


def _finish(cas: Cas, leader: Leadership) -> RolloverRecord:
    """Steps 4 and 5: record the rollover as finished, then destroy the previous key."""
    with state_change(cas.audit_log) as entry, leader.transaction() as txn:
        record = read_rollover(txn)
        assert record is not None
        record = record.model_copy(update={"state": "finished", "finished_at": utc_now_text()})
        write_record(txn, _TABLE, _PROGRESS, record)
        entry.record(
            txn,
            "key_rollover_finished",
            actor="cas",
            subject=record.key_id,
            details={
                "previous_key_id": record.previous_key_id,
                "moved": record.moved,
                "damaged": record.damaged,
            },
        )
    _forget_previous(cas)
    log.info(
        "database key rollover finished: %d records moved to key %s, the previous key is destroyed",
        record.moved,
        record.key_id,
    )
    return record


def _forget_previous(cas: Cas) -> None:
    """Step 5: the key store keeps the new key alone; the store opens nothing under the old."""
    path = key_store_path(cas.config.database_path)
    contents = load_key_store(path, cas.platform.unseal)
    save_key_store(
        path, KeyStoreContents(contents.dmk, contents.db_key_injected), cas.platform.seal
    )
    cas.store.use_keys(contents.dmk, None)
    cas.database_key, cas.previous_key = contents.dmk, None


def refresh_database_key(cas: Cas) -> None:
    """Get the current database key from the other instances after one of them rolled it
    over, keep it in this instance's key store, and follow the rollover while it runs.

    The key comes as it comes to a newcomer (:func:`opencas.service.cluster.join_cluster`):
    sealed to a key this instance's evidence binds, from an instance whose evidence shows the
    same software. It is used only once it opens the commit state and belongs to this CAS.
    Raises :class:`KeyStoreError` when it does not, :class:`JoinRefused` when refused.
    """
    store = cas.store
    if not isinstance(store, PostgresStore):
        return
    joined = join_cluster(
        store.cluster,
        cas.platform,
        cas.identity.instance_id,
        collateral=cas.collateral,
        clock=cas.clock,
        timeout=REFRESH_TIMEOUT_SECONDS,
    )
    secret = joined.secret
    if secret.cas_key_hash != cas.identity.cas_key_hash:
        raise KeyStoreError(
            f"the key handed over by instance {joined.answered_by} is for CAS "
            f"{secret.cas_key_hash}, not this one ({cas.identity.cas_key_hash})"
        )
    old = (cas.database_key, cas.previous_key)
    store.use_keys(secret.dmk, secret.previous_dmk)
    if not store.key_opens_state():
        store.use_keys(*old)
        raise KeyStoreError(
            f"the key handed over by instance {joined.answered_by} does not open the commit state"
        )
    contents = KeyStoreContents(secret.dmk, secret.db_key_injected, secret.previous_dmk)
    save_key_store(key_store_path(cas.config.database_path), contents, cas.platform.seal)
    cas.database_key, cas.previous_key = secret.dmk, secret.previous_dmk
    log.info(
        "the database key was rolled over by another instance: instance %s handed over key %s%s",
        joined.answered_by,
        key_id(secret.dmk),
        "" if secret.previous_dmk is None else " (the rollover runs; this instance follows it)",
    )
    if secret.previous_dmk is not None:
        run_in_background(cas)
