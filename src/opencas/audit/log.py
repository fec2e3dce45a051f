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
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opencas.audit.chain import ALWAYS_SIGNED, GENESIS, START_EVENT, Head, next_entry
from opencas.audit.sinks import Sink
from opencas.errors import AuditLogError

log = logging.getLogger("opencas")

AuditLogMode = Literal["disabled", "unsigned", "signed"]

#: The longest a sync waits for announced entries. An fsync costs far more CPU than the wait
#: (it was about one fsync per attestation without it, under load); the wait is bounded so an
#: announced entry that never comes costs an answer no more than this.
COMMIT_DELAY = 0.002


class Durable:
    """A ticket for one entry: :meth:`wait` returns once the entry is durable, or raises."""

    def __init__(self, head: Head, future: Future[None] | None) -> None:
        self.head = head
        self.future = future

    def wait(self) -> Head:
        """Block until the entry is durable; its head. Raises :class:`AuditLogError`."""
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
        chain: str = "",
    ) -> None:
        self.chain = chain
        """Which chain of the CAS this log writes: ``""``, or the id of an instance that joined
        the CAS and keeps a chain of its own (the store keeps each chain's head)."""
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
        self._syncer = threading.Thread(target=self._sync_forever, name="audit-sync", daemon=True)
        self._syncer.start()

    @property
    def head(self) -> Head:
        """The last entry written (durable once its ticket says so)."""
        with self._lock:
            return self._head

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
            if operation.recorded:
                self._prev_failed = True
                log.warning("audit: the operation of seq %d failed", self._head.seq)
            if operation.replaced is not None:
                with self._lock:
                    self._retire(self._use_sink(operation.replaced))
            raise
        else:
            if operation.replaced is not None:
                self._retire(operation.replaced)
        finally:
            if operation.recorded:
                self._lock.release()

    def _use_sink(self, sink: Sink) -> Sink:
        """Write to ``sink`` from now on (the lock is held); the sink it replaces."""
        with self._sync:
            replaced, self._sink = self._sink, sink
        return replaced

    def _retire(self, sink: Sink) -> None:
        """Close ``sink`` once the sync thread is done with it."""
        with self._sync:
            self._retired.append(sink)
            self._sync.notify_all()

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
            self._write(START_EVENT, "cas", "", self._start.details(self._head.hash))
        self._started = True
        sign = event in ALWAYS_SIGNED or self._mode == "signed"
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

    def write_start(self) -> Durable | None:
        """Write this run's ``cas_started`` entry now, unless the log is disabled."""
        with self._lock:
            if self._mode == "disabled" or self._started:
                return None
            self._started = True
            return self._write(START_EVENT, "cas", "", self._start.details(self._head.hash))

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
        self.replaced: Sink | None = None

    def record(
        self,
        event: str,
        *,
        actor: str,
        subject: str,
        details: Mapping[str, Any],
        sink: Sink | None = None,
    ) -> Head | None:
        """Write the operation's entry and wait until it is durable; the head to store.

        Call it once, inside the store transaction, after every check passed. Returns ``None``
        while the log is disabled (the stored head stays). No other entry is written until the
        operation ends. With ``sink`` (an operation that changes where the log goes), this
        entry and every later one go to ``sink``; if the operation fails, the sink before it
        comes back. Raises :class:`AuditLogError` when the log cannot take the entry.
        """
        audit = self._audit
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
        except BaseException:
            if not self.recorded:
                audit._lock.release()
            raise
        return ticket.wait()
