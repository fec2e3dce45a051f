"""The audit log writer: entries chained, signed, written and made durable before they count.

:class:`AuditLog` is one per open CAS. :meth:`AuditLog.append` writes an entry and returns a
:class:`Durable` ticket; the caller answers only once the ticket says the entry is durable. A
background thread syncs the sink for every entry written since its last sync at once (group
commit), so concurrent operations share one fsync. An operation can announce its entry before it
has one (:meth:`AuditLog.expect`, as an attestation does when it is queued): while announced
entries are still to come, a sync waits for them, up to :data:`COMMIT_DELAY`, so that they share
its fsync instead of each paying for one.

An operation that changes state records its entry inside its store transaction through
:meth:`AuditLog.operation`: the entry is durable before the transaction commits, and the
transaction writes the new head. While such an operation runs no other entry is written, so
when it fails the very next entry says so (``prev_failed``) and takes its ``seq``.

If the sink fails, the entry's operation fails with :class:`AuditLogError`, and so does every
later one until the CAS restarts: after a failed write, what the sink holds is not known. An
operation that changes where the log goes hands its entry the new sink
(:meth:`Operation.record`); the old one is closed by the sync thread once it is done with it.

**A shared chain.** Several instances of one CAS (on PostgreSQL) write one chain, kept in the
database (:class:`SharedChain`). An entry's ``seq`` and ``prev`` are then known only once it is
appended under the database's head, so :meth:`AuditLog.append` queues it and the background
thread appends everything queued since its last append as one batch, in one transaction (group
commit per instance); once that committed, it writes the batch's lines to the sink, syncs it and
only then says the entries are durable. A state-changing operation appends its entry inside its
own store transaction, so the entry commits with the change or not at all (no ``prev_failed``
is ever needed), and its line goes to the sink after the commit, before the operation answers.
The database is the durable copy of the cluster's log; each instance's sink holds the entries
that instance wrote.

**Following the owner config.** The owner config sets the log's mode and sink, and any instance
may change it. The shared chain's head carries the hash of the owner config whose settings the
entries after it follow; an owner config change moves it with its entry. Every append reads it
with the head: when it is not the one this writer follows, the writer takes the settings up
from the store (:class:`ConfigSource`) before it chains anything, so every entry after a
change in the chain was written under the settings it made, whichever instance wrote it. A
writer that writes nothing (its mode is ``disabled``, or it is idle) looks at the committed
owner config every :data:`FOLLOW_SECONDS` as well.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opencas.audit.chain import (
    ALWAYS_SIGNED,
    GENESIS,
    START_EVENT,
    ChainedBatch,
    Head,
    PendingEntry,
    chain_batch,
    next_entry,
)
from opencas.audit.sinks import Sink
from opencas.errors import AuditLogError, CasError

log = logging.getLogger("opencas")

AuditLogMode = Literal["disabled", "unsigned", "signed"]

#: The longest a sync waits for announced entries. An fsync costs far more CPU than the wait
#: (it was about one fsync per attestation without it, under load); the wait is bounded so an
#: announced entry that never comes costs an answer no more than this.
COMMIT_DELAY = 0.002
#: In a shared chain, how often a writer looks whether the committed owner config changed the
#: log's settings, when no append of its own showed it first: the longest an instance whose
#: mode is ``disabled`` goes on writing nothing after another instance turned the log on.
FOLLOW_SECONDS: Final = 1.0
#: How often one batch takes changed settings up before it is appended; past that (the owner
#: config changing faster than a batch can be appended) the batch fails.
_FOLLOW_ATTEMPTS: Final = 5


class Durable:
    """A ticket for one entry: :meth:`wait` returns once the entry is durable, or raises.

    In a shared chain, :attr:`head` is the entry's own only once it is durable (it was the
    writer's last head when the entry was queued).
    """

    def __init__(self, head: Head, future: Future[None] | None) -> None:
        self.head = head
        self.future = future

    def wait(self) -> Head:
        """Block until the entry is durable; its head. Raises :class:`AuditLogError` (or, in a
        shared chain, the store's error when the database could not take it)."""
        if self.future is not None:
            self.future.result()
        return self.head


class Expected:
    """An entry announced to the log (:meth:`AuditLog.expect`) and not yet written.

    :meth:`release` it once the entry is written (``append(..., expected=...)`` does) or will
    not come; releasing twice is harmless.
    """

    __slots__ = ("_audit", "released")

    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit
        self.released = False

    def release(self) -> None:
        """The entry is written, or will not be: a sync no longer waits for it."""
        self._audit._release(self)


Extend = Callable[[Head, str], tuple[ChainedBatch, str]]
"""Chains a batch onto a shared chain's head, whose later entries follow the owner config of the
given hash; the batch and the hash of the owner config its later entries follow."""


class SharedChain(Protocol):
    """A chain several writers append to, kept where each of them reaches it (a database).

    Each append locks the chain's head, calls ``extend`` with it and the hash of the owner
    config the head names (see the module docstring), stores what it chained and moves the
    head, atomically; it raises a :class:`CasError` when it cannot (or what ``extend`` raised),
    and then stores nothing.
    """

    def head(self) -> Head:
        """The committed head of the chain."""
        ...

    def append(self, extend: Extend) -> Head:
        """Append in a transaction of its own; the new head once committed."""
        ...

    def append_in_transaction(self, extend: Extend) -> Head:
        """Append inside the store transaction the calling thread has open."""
        ...


@dataclass(frozen=True)
class Settings:
    """What an owner config sets for the log, as a writer takes it up."""

    version: str
    """The owner config's hash (empty before provisioning)."""
    mode: AuditLogMode
    sink: Sink | None = None
    """Where entries go from now on, holding every entry so far; ``None``: where they went."""


class ConfigSource(Protocol):
    """Where a writer of a shared chain learns the committed owner config's settings."""

    def version(self) -> str:
        """The hash of the committed owner config (empty before provisioning)."""
        ...

    def follow(self) -> Settings:
        """The committed owner config's settings, with a new sink when it changes where the log
        goes. Raises :class:`AuditLogError` when that sink cannot take the log, and the store's
        error when the store cannot be read."""
        ...


class _SettingsMoved(Exception):
    """The shared chain's head names owner config ``version``, not the one this writer follows:
    the append is abandoned (nothing stored) to take the settings up first."""

    def __init__(self, version: str) -> None:
        super().__init__(version)
        self.version = version


@dataclass(frozen=True)
class StartInfo:
    """What the ``cas_started`` entry of this run carries, made when it is written."""

    details: Callable[[str], Mapping[str, Any]]
    """The details for a start entry whose ``prev`` is the given hash (its report's nonce)."""


class AuditLog:
    """The writer of one CAS's audit log (see the module docstring)."""

    def __init__(
        self,
        sink: Sink,
        signer: Ed25519PrivateKey,
        *,
        mode: AuditLogMode,
        head: Head = GENESIS,
        prev_failed: bool = False,
        start: StartInfo,
        clock: Callable[[], str],
        shared: SharedChain | None = None,
        source: ConfigSource | None = None,
        version: str = "",
    ) -> None:
        self._shared = shared
        # In a shared chain: where the owner config's settings come from, the hash of the one
        # followed now, and a value of the head row that was found to name no owner config the
        # store holds (an older database, or a row someone wrote), which is then overwritten.
        self._source = source
        self._version = version
        self._tolerated: str | None = None
        self._next_follow = time.monotonic() + FOLLOW_SECONDS
        self._sink = sink
        self._signer = signer
        self._mode: AuditLogMode = mode
        self._head = head
        self._prev_failed = prev_failed
        self._start = start
        self._clock = clock
        self._started = False
        self._broken: AuditLogError | None = None
        self._lock = threading.RLock()
        self._sync = threading.Condition()
        self._written = 0
        self._synced = 0
        self._waiting: deque[tuple[int, Future[None]]] = deque()
        self._expected = 0
        self._gathering = False
        self._retired: list[Sink] = []
        self._closing = False
        # The shared chain's queue: entries waiting for the next batch, with their tickets.
        self._pending: list[tuple[PendingEntry, Durable, Future[None]]] = []
        # The sink is written by the appending thread and by state-changing operations.
        self._sink_lock = threading.Lock()
        # The highest head this writer saw in the shared chain: the database's must not go back.
        self._seen = head
        # Serialises taking changed settings up (the appending thread, a state change, the poll).
        self._follow_lock = threading.Lock()
        target = self._sync_forever if shared is None else self._append_forever
        self._syncer = threading.Thread(target=target, name="audit-sync", daemon=True)
        self._syncer.start()

    @property
    def head(self) -> Head:
        """The last entry written (durable once its ticket says so)."""
        with self._lock:
            return self._head

    @property
    def source(self) -> ConfigSource | None:
        """Where a writer of a shared chain learns the owner config's settings (else None)."""
        return self._source

    @property
    def shared(self) -> bool:
        """Whether this log writes a chain that several instances share (see the module)."""
        return self._shared is not None

    def current_head(self) -> Head:
        """The head of the log as of now: in a shared chain, the database's (another instance
        may have appended since this one did); else :attr:`head`."""
        if self._shared is None:
            return self.head
        return self._shared.head()

    @property
    def mode(self) -> AuditLogMode:
        """The mode in force: ``signed``, ``unsigned`` or ``disabled``."""
        return self._mode

    def expect(self) -> Expected:
        """Announce an entry that an operation will append soon (it must release the result).

        Until it is released, a sync of entries already written waits for it, up to
        :data:`COMMIT_DELAY`, so that both share one fsync.
        """
        with self._sync:
            self._expected += 1
        return Expected(self)

    def _release(self, expected: Expected) -> None:
        with self._sync:
            if expected.released:
                return
            expected.released = True
            self._expected -= 1
            if self._expected == 0 and self._gathering:
                self._sync.notify_all()

    def append(
        self,
        event: str,
        *,
        actor: str,
        subject: str,
        details: Mapping[str, Any],
        expected: Expected | None = None,
    ) -> Durable:
        """Write an entry for an operation that changes nothing stored; wait on the ticket.

        Nothing is written while the log is disabled. ``expected``, the entry's announcement,
        is released. Raises :class:`AuditLogError` when the log cannot take the entry.
        """
        try:
            with self._lock:
                if self._mode == "disabled":
                    return Durable(self._head, None)
                return self._write(event, actor, subject, details, expected)
        finally:
            if expected is not None:
                expected.release()

    @contextlib.contextmanager
    def operation(self) -> Iterator[Operation]:
        """A state-changing operation: record its entry with :meth:`Operation.record` inside the
        store transaction; if anything raises after that, its entry is marked failed."""
        operation = Operation(self)
        try:
            yield operation
        except BaseException:
            if operation.recorded and self._shared is None:
                self._prev_failed = True
                log.warning("audit: the operation of seq %d failed", self._head.seq)
            if operation.replaced is not None:
                with self._lock:
                    self._retire(self._use_sink(operation.replaced))
            if operation.previous is not None:
                with self._follow_lock:
                    self._adopt(operation.previous)
            raise
        else:
            if operation.replaced is not None:
                self._retire(operation.replaced)
            if operation.committed is not None:
                self._appended(operation.committed[1])
                self._copy_committed(operation.committed[0])
        finally:
            if operation.locked:
                self._lock.release()

    def _copy_committed(self, line: bytes) -> None:
        """Write the line of a state-changing entry that committed (shared chain) to the sink
        and sync it; :class:`AuditLogError` when the sink fails (the change did commit)."""
        if self._broken is not None:
            raise self._broken
        try:
            with self._sink_lock:
                self._sink.write(line)
                self._sink.sync()
        except OSError as exc:
            raise self._break(exc) from exc

    def _use_sink(self, sink: Sink) -> Sink:
        """Write to ``sink`` from now on (the lock is held); the sink it replaces."""
        with self._sync, self._sink_lock:
            replaced, self._sink = self._sink, sink
        return replaced

    def _retire(self, sink: Sink) -> None:
        """Close ``sink`` once the sync thread is done with it."""
        with self._sync:
            self._retired.append(sink)
            self._sync.notify_all()

    def _sign(self, event: str) -> bool:
        return event in ALWAYS_SIGNED or self._mode == "signed"

    def change_mode(self, mode: AuditLogMode) -> None:
        """Use ``mode`` from now on (the owner config changed it; its entry is written)."""
        with self._lock:
            self._mode = mode

    def _write(
        self,
        event: str,
        actor: str,
        subject: str,
        details: Mapping[str, Any],
        expected: Expected | None = None,
    ) -> Durable:
        """Write one entry (the lock is held); writes ``cas_started`` first in a new run."""
        if self._broken is not None:
            raise self._broken
        if not self._started and event != START_EVENT:
            self._started = True
            # In a shared chain the start entry's details are made once its place is known.
            start = {} if self._shared is not None else self._start.details(self._head.hash)
            self._write(START_EVENT, "cas", "", start)
        self._started = True
        sign = self._sign(event)
        if self._shared is not None:
            return self._queue(self._pending_entry(event, actor, subject, details, sign))
        _, line, head = next_entry(
            self._head,
            time=self._clock(),
            event=event,
            actor=actor,
            subject=subject,
            details=details,
            prev_failed=self._prev_failed,
            sign=self._signer.sign if sign else None,
        )
        try:
            self._sink.write(line)
        except OSError as exc:
            raise self._break(exc) from exc
        self._head, self._prev_failed = head, False
        future: Future[None] = Future()
        with self._sync:
            self._written += 1
            self._waiting.append((self._written, future))
            if expected is not None:
                self._release(expected)
            # A sync gathering entries wakes only once the last announced one is written.
            if not self._gathering:
                self._sync.notify_all()
        return Durable(head, future)

    def _pending_entry(
        self,
        event: str,
        actor: str,
        subject: str,
        details: Mapping[str, Any] | Callable[[str], Mapping[str, Any]],
        sign: bool,
    ) -> PendingEntry:
        if event == START_EVENT:
            # Bound to its place, which only the append decides.
            details = self._start.details
        return PendingEntry(event, actor, subject, details, self._clock(), sign)

    def _queue(self, entry: PendingEntry) -> Durable:
        """Queue ``entry`` for the next batch of the shared chain; its ticket."""
        future: Future[None] = Future()
        ticket = Durable(self._head, future)
        with self._sync:
            self._pending.append((entry, ticket, future))
            self._sync.notify_all()
        return ticket

    def write_start(self) -> Durable | None:
        """Write this run's ``cas_started`` entry now, unless the log is disabled."""
        with self._lock:
            if self._mode == "disabled" or self._started:
                return None
            self._started = True
            if self._shared is not None:
                return self._queue(self._pending_entry(START_EVENT, "cas", "", {}, True))
            return self._write(START_EVENT, "cas", "", self._start.details(self._head.hash))

    def _extend(self, head: Head, pending: list[PendingEntry]) -> tuple[ChainedBatch, list[int]]:
        """Chain onto the shared chain's ``head`` (its row is locked) the entries of ``pending``
        that the mode in force writes, signed as it says; the batch, and the index in
        ``pending`` of each entry in it."""
        seen = self._seen
        if head.seq < seen.seq or (head.seq == seen.seq and head.hash != seen.hash):
            raise AuditLogError(
                f"the database's audit log went back: its head is seq {head.seq}, but this "
                f"instance saw seq {seen.seq} {seen.hash} in it; restore the database's "
                "audit_entries and audit_head (a database from before was put back?)"
            )
        # Decided here, not when the entry was queued: an entry follows the settings in force
        # where it lands in the chain.
        kept = [
            index
            for index, entry in enumerate(pending)
            if self._mode != "disabled" or entry.event in ALWAYS_SIGNED
        ]
        entries = [replace(pending[at], signed=self._sign(pending[at].event)) for at in kept]
        failed = self._prev_failed and head == self._head
        try:
            batch = chain_batch(head, entries, sign=self._signer.sign, prev_failed=failed)
        except ValueError as exc:
            raise AuditLogError(f"an audit entry cannot be written: {exc}") from exc
        return batch, kept

    def _moved(self, version: str) -> bool:
        """Whether a head row naming owner config ``version`` is not the one followed now."""
        return version not in (self._version, self._tolerated)

    def _follow(self, version: str | None) -> None:
        """Take the committed owner config's settings up: the head row named ``version``, or
        (``None``) the committed owner config is not the one followed. Raises the store's error
        (nothing changes) or :class:`AuditLogError` (the log is broken: this instance cannot
        write where the owner config says)."""
        assert self._source is not None
        with self._follow_lock:
            if version is not None and not self._moved(version):
                return  # another thread took them up meanwhile
            try:
                settings = self._source.follow()
            except AuditLogError as exc:
                self._broken = AuditLogError(
                    f"the owner config moved the audit log to a sink this instance cannot write "
                    f"({exc.message}); operations that must be logged are refused until the CAS "
                    "restarts"
                )
                log.error("audit: %s", self._broken.message)
                raise self._broken from exc
            if settings.version != self._version:
                log.info(
                    "audit: following the owner config %s: mode %s%s",
                    settings.version or "(none)",
                    settings.mode,
                    ", a new sink" if settings.sink is not None else "",
                )
            self._adopt(settings)
            # A head row naming no owner config the store holds (written before migration 5,
            # or by someone with the database) is overwritten by the next append, not followed.
            self._tolerated = version if version != settings.version else None

    def _adopt(self, settings: Settings) -> Settings:
        """Use ``settings`` from now on (``_follow_lock`` held); the settings they replace."""
        with self._lock:
            previous = Settings(self._version, self._mode)
            self._mode, self._version = settings.mode, settings.version
            if settings.sink is not None:
                self._retire(self._use_sink(settings.sink))
        return previous

    def _poll(self) -> None:
        """Every :data:`FOLLOW_SECONDS`, take the committed owner config's settings up when they
        are not the ones followed (an instance writing nothing learns of a change so)."""
        if self._source is None or time.monotonic() < self._next_follow:
            return
        self._next_follow = time.monotonic() + FOLLOW_SECONDS
        try:
            if self._source.version() != self._version:
                self._follow(None)
        except CasError as exc:
            log.debug("audit: the owner config cannot be read now: %s", exc.message)

    def _appended(self, head: Head) -> None:
        with self._sync:
            if head.seq > self._seen.seq:
                self._seen = head
            self._head, self._prev_failed = head, False

    def _append_forever(self) -> None:
        """The shared chain's appending thread: each round, every queued entry as one batch."""
        assert self._shared is not None
        while True:
            with self._sync:
                while not self._pending and not self._closing and not self._retired:
                    if self._source is None:
                        self._sync.wait()
                        continue
                    remaining = self._next_follow - time.monotonic()
                    if remaining <= 0:
                        break
                    self._sync.wait(remaining)
                if self._pending and self._expected and not self._closing:
                    self._gather()  # announced entries join this batch
                batch, self._pending = self._pending, []
                retired, self._retired = self._retired, []
                closing = self._closing
            if not batch:
                _close_all(retired)
                if closing:
                    return
                self._poll()
                continue
            self._append_batch(batch)
            _close_all(retired)
            self._poll()

    def _append_following(self, extend: Extend) -> None:
        """Append with ``extend``, taking changed settings up first as often as the head row
        shows them (up to :data:`_FOLLOW_ATTEMPTS` times)."""
        assert self._shared is not None
        for _ in range(_FOLLOW_ATTEMPTS):
            try:
                self._shared.append(extend)
                return
            except _SettingsMoved as moved:
                self._follow(moved.version)
        raise AuditLogError(
            f"the owner config changed the audit log's settings {_FOLLOW_ATTEMPTS} times while "
            "one batch of entries waited to be appended; the entries were not written"
        )

    def _append_batch(self, batch: list[tuple[PendingEntry, Durable, Future[None]]]) -> None:
        assert self._shared is not None
        entries = [entry for entry, _, _ in batch]
        chained: list[tuple[ChainedBatch, list[int]]] = []

        def extend(head: Head, version: str) -> tuple[ChainedBatch, str]:
            if self._moved(version):
                raise _SettingsMoved(version)
            chained.clear()
            chained.append(self._extend(head, entries))
            return chained[0][0], self._version

        failure: BaseException | None = self._broken
        if failure is None:
            try:
                self._append_following(extend)
            except CasError as exc:
                failure = exc
                log.warning("audit: a batch of %d entries was not appended: %s", len(batch), exc)
            except Exception as exc:  # the tickets must end, whatever went wrong
                log.exception("audit: a batch of %d entries was not appended", len(batch))
                failure = AuditLogError(f"the audit log cannot take entries ({exc})")
        heads: dict[int, Head] = {}
        if failure is None:
            done, kept = chained[0]
            heads = dict(zip(kept, done.heads, strict=True))
            try:
                with self._sink_lock:
                    for line in done.lines:
                        self._sink.write(line)
                    self._sink.sync()
            except OSError as exc:
                failure = self._break(exc)
            if done.head is not None:
                self._appended(done.head)
        for index, (_, ticket, future) in enumerate(batch):
            if failure is None:
                # An entry the mode in force dropped (the log was disabled) keeps its head.
                ticket.head = heads.get(index, ticket.head)
                future.set_result(None)
            else:
                future.set_exception(failure)

    def _break(self, exc: OSError) -> AuditLogError:
        self._broken = AuditLogError(
            f"the audit log cannot take entries ({exc.strerror or exc}); operations that must be "
            "logged are refused until the CAS restarts"
        )
        log.error("audit: %s", self._broken.message)
        return self._broken

    def _sync_forever(self) -> None:
        while True:
            with self._sync:
                while self._written == self._synced and not self._closing and not self._retired:
                    self._sync.wait()
                if self._written != self._synced and self._expected and not self._closing:
                    self._gather()
                retired, self._retired = self._retired, []
                if self._written == self._synced:
                    _close_all(retired)
                    if self._closing:
                        return
                    continue
                target, sink = self._written, self._sink
            failure: AuditLogError | None = None
            try:
                sink.sync()
            except OSError as exc:
                # Not under the writer's lock: a writer may hold it while it waits for this sync.
                failure = self._break(exc)
            with self._sync:
                self._synced = target
                while self._waiting and self._waiting[0][0] <= target:
                    _, future = self._waiting.popleft()
                    if failure is None:
                        future.set_result(None)
                    else:
                        future.set_exception(failure)
            _close_all(retired)

    def _gather(self) -> None:
        """Hold back the sync (``_sync`` held) while announced entries are still to come, up to
        :data:`COMMIT_DELAY`."""
        deadline = time.monotonic() + COMMIT_DELAY
        self._gathering = True
        try:
            while self._expected and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._sync.wait(remaining)
        finally:
            self._gathering = False

    def close(self) -> None:
        """Sync what was written, stop the sync thread and close the sink."""
        with self._sync:
            self._closing = True
            self._sync.notify_all()
        self._syncer.join()
        _close_all([*self._retired, self._sink])


def _close_all(sinks: list[Sink]) -> None:
    for sink in sinks:
        sink.close()


class Operation:
    """One state-changing operation's access to the log (see :meth:`AuditLog.operation`)."""

    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit
        self.recorded = False
        self.locked = False
        self.replaced: Sink | None = None
        self.committed: tuple[bytes, Head] | None = None
        """In a shared chain, the line and head of the entry appended in the transaction: they
        count (the line goes to the sink) once the operation ended without an error."""
        self.previous: Settings | None = None
        """In a shared chain, the settings the operation's own replaced (restored if it fails)."""

    def record(
        self,
        event: str,
        *,
        actor: str,
        subject: str,
        details: Mapping[str, Any],
        sink: Sink | None = None,
        settings: Settings | None = None,
    ) -> Head | None:
        """Write the operation's entry and wait until it is durable; the head to store.

        Call it once, inside the store transaction, after every check passed. Returns ``None``
        while the log is disabled (the stored head stays). No other entry is written until the
        operation ends. With ``sink`` (an operation that changes where the log goes), this
        entry and every later one go to ``sink``; if the operation fails, the sink before it
        comes back. ``settings`` (an operation that changes the owner config) are, in a shared
        chain, what the entries after this one follow, and what the chain's head names from
        this entry on; if the operation fails, the settings before it come back. Raises
        :class:`AuditLogError` when the log cannot take the entry.
        """
        audit = self._audit
        if audit._shared is not None:
            return self._record_shared(
                audit._shared, event, actor, subject, details, sink, settings
            )
        audit._lock.acquire()
        try:
            if sink is not None:
                self.replaced = audit._use_sink(sink)
            force = event in ALWAYS_SIGNED
            if audit.mode == "disabled" and not force:
                audit._lock.release()
                return None
            ticket = audit._write(event, actor, subject, details)
            self.recorded = True
            self.locked = True
        except BaseException:
            if not self.recorded:
                audit._lock.release()
            raise
        return ticket.wait()

    def _record_shared(
        self,
        shared: SharedChain,
        event: str,
        actor: str,
        subject: str,
        details: Mapping[str, Any],
        sink: Sink | None,
        settings: Settings | None,
    ) -> Head | None:
        """:meth:`record` in a shared chain: append the entry in the open store transaction
        (its head row stays locked until the transaction ends).

        The entry goes through the head row even while this instance's mode is ``disabled``:
        the row may show that another instance turned the log on.
        """
        audit = self._audit
        with audit._lock:
            if sink is not None:
                self.replaced = audit._use_sink(sink)
            if audit._broken is not None:
                raise audit._broken
            start = None
            if not audit._started and (audit.mode != "disabled" or event in ALWAYS_SIGNED):
                audit._started = True
                start = audit._queue(audit._pending_entry(START_EVENT, "cas", "", {}, True))
            introduced = audit._started
            entry = audit._pending_entry(event, actor, subject, details, audit._sign(event))
        if start is not None:
            # Before this entry: this instance's entries follow its start entry in the chain.
            start.wait()
        chained: list[ChainedBatch] = []

        def extend(head: Head, version: str) -> tuple[ChainedBatch, str]:
            if audit._moved(version):
                audit._follow(version)
            if settings is not None:
                with audit._follow_lock:
                    self.previous = audit._adopt(settings)
            chained.clear()
            chained.append(audit._extend(head, [entry])[0])
            if chained[0].lines and not introduced:
                # Its start entry cannot be appended while this transaction holds the head row.
                raise AuditLogError(
                    "another instance turned the audit log on while this change was being "
                    "written; try again"
                )
            return chained[0], audit._version

        head = shared.append_in_transaction(extend)
        if not chained[0].lines:
            return None  # the mode in force is disabled
        self.recorded = True
        self.committed = (chained[0].lines[0], head)
        return head
