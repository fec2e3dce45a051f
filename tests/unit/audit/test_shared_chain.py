"""One audit chain that several instances append to: batches chained onto a shared head, each
instance signing with its own key, group commit per instance, and verifying the result."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from opencas.audit.chain import (
    GENESIS,
    Expectations,
    Head,
    KeyRing,
    Outcome,
    PendingEntry,
    chain_batch,
    check_line,
    line_hash,
    parse_entry,
    start_details,
)
from opencas.audit.log import AuditLog, Extend, StartInfo
from opencas.audit.sinks import FileSink
from opencas.audit.verify import verify_log
from opencas.errors import AuditLogError, DatabaseUnavailable
from opencas.service.audit import audit_key
from opencas.service.cas import Cas
from opencas.store.audit_entries import page_length

TIME = "2026-12-01T12:00:00Z"


class MemoryChain:
    """A shared chain in memory, appended to as the database's head row serialises it."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.heads: list[Head] = []
        self.appends = 0
        self.settings = ""
        """The owner config the head names (``audit_head.owner_config``)."""
        self.fail: Exception | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def head(self) -> Head:
        return self.heads[-1] if self.heads else GENESIS

    def append(self, extend: Extend) -> Head:
        self.entered.set()
        self.gate.wait(30)
        with self._lock:
            if self.fail is not None:
                raise self.fail
            batch, self.settings = extend(self.head(), self.settings)
            self.appends += 1
            self.lines += batch.lines
            self.heads += batch.heads
            return self.head()

    def append_in_transaction(self, extend: Extend) -> Head:
        """Appended, as a transaction that then commits would; :meth:`roll_back` undoes it."""
        return self.append(extend)

    def roll_back(self) -> None:
        """The transaction of the last in-transaction append failed: its entry is gone."""
        with self._lock:
            del self.lines[-1], self.heads[-1]


def pending(event: str = "session_read", subject: str = "one") -> PendingEntry:
    return PendingEntry(event, "ab" * 32, subject, {"n": subject}, TIME, True)


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_a_batch_continues_the_head_it_is_appended_to() -> None:
    key = Ed25519PrivateKey.generate()
    head = Head(41, "cd" * 32)
    made: list[str] = []

    def details(prev: str) -> Mapping[str, Any]:
        made.append(prev)
        return {"bound_to": prev}

    start = PendingEntry("cas_started", "cas", "", details, TIME, False)
    batch = chain_batch(head, [pending(), start, pending(subject="two")], sign=key.sign)
    entries = [parse_entry(line) for line in batch.lines]
    assert [entry.seq for entry in entries] == [42, 43, 44]
    assert entries[0].prev == head.hash
    assert [entry.prev for entry in entries[1:]] == [line_hash(line) for line in batch.lines[:-1]]
    assert batch.heads == [
        Head(e.seq, line_hash(line)) for e, line in zip(entries, batch.lines, strict=True)
    ]
    assert batch.head == batch.heads[-1]
    # The start entry's details are made for its own place, and it is signed in every mode.
    assert made == [line_hash(batch.lines[0])]
    assert entries[1].details == {"bound_to": made[0]}
    assert entries[1].sig is not None
    assert not any(entry.prev_failed for entry in entries)


def test_only_the_first_entry_of_a_batch_says_the_operation_before_failed() -> None:
    key = Ed25519PrivateKey.generate()
    batch = chain_batch(Head(7, "ef" * 32), [pending(), pending()], sign=key.sign, prev_failed=True)
    entries = [parse_entry(line) for line in batch.lines]
    assert [(entry.seq, entry.prev_failed) for entry in entries] == [(7, True), (8, False)]


def test_unsigned_entries_stay_unsigned() -> None:
    unsigned = dataclasses.replace(pending(), signed=False)
    batch = chain_batch(GENESIS, [unsigned], sign=Ed25519PrivateKey.generate().sign)
    assert parse_entry(batch.lines[0]).sig is None


def test_a_key_ring_verifies_any_of_its_keys_and_no_other() -> None:
    first, second, stranger = (Ed25519PrivateKey.generate() for _ in range(3))
    ring = KeyRing()
    ring.add(raw(first))
    ring.add(raw(second))
    ring.add(raw(first))  # a restarted instance names its key again
    assert len(ring) == 2
    batch = chain_batch(GENESIS, [pending()], sign=first.sign)
    later = chain_batch(batch.heads[-1], [pending()], sign=second.sign)
    foreign = chain_batch(later.heads[-1], [pending()], sign=stranger.sign)
    assert check_line(batch.lines[0], ring.check).signed
    assert check_line(later.lines[0], ring.check).signed
    with pytest.raises(ValueError, match="does not verify"):
        check_line(foreign.lines[0], ring.check)


@pytest.fixture
def instances(cas: Cas, tmp_path: Path) -> Iterator[tuple[MemoryChain, list[AuditLog]]]:
    """Two writers of one CAS on one shared chain, each with its own certified audit key and
    its own sink file."""
    chain = MemoryChain()
    logs: list[AuditLog] = []
    for name in ("creator", "joined"):
        identity = (
            cas.identity if name == "creator" else dataclasses.replace(cas.identity, scope=name)
        )
        record = audit_key(cas.store, identity)

        def details(prev: str, certificate: str = record.certificate_pem) -> Mapping[str, Any]:
            answer = cas.attest(prev)
            return start_details(
                cas_key_hash=cas.identity.cas_key_hash,
                ca_certificate_pem=cas.identity.ca_certificate_pem.decode("ascii"),
                audit_certificate_pem=certificate,
                report=answer["report"],
                evidence=answer["evidence"],
            )

        logs.append(
            AuditLog(
                FileSink(tmp_path / f"{name}.log"),
                record.load_key(),
                mode="signed",
                start=StartInfo(details),
                clock=lambda: TIME,
                shared=chain,
            )
        )
    try:
        yield chain, logs
    finally:
        for log in logs:
            log.close()


def test_two_instances_write_one_chain_that_verifies(
    instances: tuple[MemoryChain, list[AuditLog]], tmp_path: Path
) -> None:
    chain, logs = instances

    def write(log: AuditLog, prefix: str) -> None:
        for number in range(30):
            log.append("session_read", actor="cas", subject=f"{prefix}{number}", details={}).wait()

    writers = [threading.Thread(target=write, args=(log, str(n))) for n, log in enumerate(logs)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    for log in logs:
        log.close()
    path = tmp_path / "cluster.log"
    path.write_bytes(b"".join(line + b"\n" for line in chain.lines))
    verdict = verify_log(path, Expectations(last=chain.head().hash), workers=1)
    assert verdict.outcome == Outcome.INTACT, verdict.message
    assert (verdict.entries, verdict.starts, verdict.signed) == (62, 2, 62)
    # Each instance's sink holds exactly the entries it wrote, in chain order.
    own = [(tmp_path / f"{name}.log").read_bytes().splitlines() for name in ("creator", "joined")]
    assert sorted(own[0] + own[1], key=chain.lines.index) == chain.lines
    assert all(line in chain.lines for line in own[0] + own[1])


def test_an_entry_signed_by_a_key_no_start_named_does_not_verify(
    instances: tuple[MemoryChain, list[AuditLog]], tmp_path: Path
) -> None:
    chain, logs = instances
    logs[0].append("session_read", actor="cas", subject="one", details={}).wait()
    outsider = chain_batch(chain.head(), [pending()], sign=Ed25519PrivateKey.generate().sign)
    path = tmp_path / "cluster.log"
    path.write_bytes(b"".join(line + b"\n" for line in [*chain.lines, *outsider.lines]))
    verdict = verify_log(path, Expectations(last=outsider.heads[-1].hash), workers=1)
    assert verdict.outcome == Outcome.INTEGRITY
    assert "line 3" in verdict.message
    assert "does not verify" in verdict.message


def test_entries_queued_while_a_batch_is_appended_go_in_one_batch(
    instances: tuple[MemoryChain, list[AuditLog]],
) -> None:
    chain, (log, _) = instances
    log.write_start().wait()  # type: ignore[union-attr]
    chain.gate.clear()
    chain.entered.clear()
    first = log.append("session_read", actor="cas", subject="first", details={})
    assert chain.entered.wait(10)
    tickets = [
        log.append("session_read", actor="cas", subject=str(n), details={}) for n in range(20)
    ]
    chain.gate.set()
    heads = [ticket.wait() for ticket in [first, *tickets]]
    # The start, the first entry, then the twenty queued behind it: three appends in all.
    assert chain.appends == 3
    assert [head.seq for head in heads] == list(range(2, 23))
    assert heads == chain.heads[1:]


def test_a_batch_the_database_refuses_fails_its_entries_not_the_log(
    instances: tuple[MemoryChain, list[AuditLog]],
) -> None:
    chain, (log, _) = instances
    log.write_start().wait()  # type: ignore[union-attr]
    chain.fail = DatabaseUnavailable("database x: appending to the audit log failed: gone")
    with pytest.raises(DatabaseUnavailable, match="gone"):
        log.append("session_read", actor="cas", subject="lost", details={}).wait()
    chain.fail = None
    head = log.append("session_read", actor="cas", subject="kept", details={}).wait()
    assert head.seq == 2
    assert [parse_entry(line).subject for line in chain.lines] == ["", "kept"]


def test_a_shared_head_that_went_back_is_refused(
    instances: tuple[MemoryChain, list[AuditLog]],
) -> None:
    chain, (log, _) = instances
    for subject in ("one", "two"):
        log.append("session_read", actor="cas", subject=subject, details={}).wait()
    del chain.lines[-2:], chain.heads[-2:]  # someone with the database cut it back
    with pytest.raises(AuditLogError, match="went back"):
        log.append("session_read", actor="cas", subject="three", details={}).wait()


def test_a_state_change_reaches_the_sink_only_once_it_ended_well(
    instances: tuple[MemoryChain, list[AuditLog]], tmp_path: Path
) -> None:
    chain, (log, _) = instances
    sink = tmp_path / "creator.log"
    recorded: list[Head | None] = []

    def failing_change() -> None:
        with log.operation() as operation:
            recorded.append(
                operation.record("session_created", actor="cas", subject="lost", details={})
            )
            chain.roll_back()
            raise RuntimeError("the transaction fails")

    with pytest.raises(RuntimeError):
        failing_change()
    assert recorded[0] is not None
    assert recorded[0].seq == 2
    # The writer did not take the rolled-back entry for the head: the next one takes its seq.
    assert log.append("session_read", actor="cas", subject="next", details={}).wait().seq == 2
    assert b'"lost"' not in sink.read_bytes()
    with log.operation() as operation:
        operation.record("session_created", actor="cas", subject="kept", details={})
        assert b'"kept"' not in sink.read_bytes()
    assert sink.read_bytes().splitlines()[-1] == chain.lines[-1]
    # No entry of a shared chain says the one before failed: it commits with its change.
    assert not any(parse_entry(line).prev_failed for line in chain.lines)


def test_a_page_is_cut_by_count_and_size_but_never_inside_one_seq() -> None:
    rows = [(1, 10), (2, 10), (3, 10), (3, 10), (4, 10)]
    assert page_length(rows, 2, 1000) == 2
    assert page_length(rows, 3, 1000) == 2  # seq 3's two entries go to the next page together
    assert page_length(rows, 4, 1000) == 4
    assert page_length(rows, 1000, 25) == 2
    assert page_length([(1, 500)], 1000, 10) == 1  # one entry always
    assert page_length([(3, 10), (3, 10), (4, 10)], 1, 1000) == 2  # a run at the start: whole
