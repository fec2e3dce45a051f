"""Group commit: entries written while a sync runs, or announced before it, share one sync."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opencas.audit import log as audit_log_module
from opencas.audit.log import AuditLog, StartInfo


class CountingSink:
    """A sink in memory that records, at each sync, how many lines it had."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.synced_at: list[int] = []
        self.lock = threading.Lock()

    def write(self, line: bytes) -> None:
        with self.lock:
            self.lines.append(line)

    def sync(self) -> None:
        with self.lock:
            self.synced_at.append(len(self.lines))

    def close(self) -> None:
        pass


@pytest.fixture
def sink() -> CountingSink:
    return CountingSink()


@pytest.fixture
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit delay long enough that no scheduling delay of a busy machine outlasts it."""
    monkeypatch.setattr(audit_log_module, "COMMIT_DELAY", 30.0)


@pytest.fixture
def audit(sink: CountingSink) -> Iterator[AuditLog]:
    log = AuditLog(
        sink,
        Ed25519PrivateKey.generate(),
        mode="signed",
        start=StartInfo(lambda prev: {"nonce": prev}),
        clock=lambda: "2026-12-01T00:00:00Z",
    )
    log.write_start()
    yield log
    log.close()


def append(audit: AuditLog, n: int, **kwargs: object) -> None:
    audit.append(
        "workload_attested", actor="anonymous", subject=f"s/{n}", details={}, **kwargs
    ).wait()


@pytest.mark.usefixtures("patient")
def test_an_announced_entry_is_synced_with_the_one_before_it(
    audit: AuditLog, sink: CountingSink
) -> None:
    append(audit, 0)  # the start entry and this one are durable
    before = len(sink.synced_at)
    second = audit.expect()
    first = audit.append("workload_attested", actor="anonymous", subject="s/1", details={})
    # The sync of the first waits for the announced second; both are durable after one sync.
    threading.Timer(0.05, append, (audit, 2), {"expected": second}).start()
    first.wait()
    assert second.released
    assert sink.synced_at[before:] == [len(sink.lines)]
    assert len(sink.lines) == 4


def test_an_announcement_that_never_comes_delays_a_sync_only_briefly(
    audit: AuditLog, sink: CountingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_log_module, "COMMIT_DELAY", 0.2)
    append(audit, 0)
    audit.expect()  # never released
    started = time.monotonic()
    append(audit, 1)
    waited = time.monotonic() - started
    assert sink.synced_at[-1] == len(sink.lines)
    assert 0.19 <= waited < 5.0  # it waited for the announcement, and no longer than the bound


def test_a_released_announcement_no_longer_holds_a_sync(
    audit: AuditLog, sink: CountingSink
) -> None:
    append(audit, 0)
    gone = audit.expect()
    gone.release()
    gone.release()  # twice is harmless: it is counted once
    other = audit.expect()
    other.release()
    ticket = audit.append("workload_attested", actor="anonymous", subject="s/1", details={})
    ticket.wait()
    assert audit._expected == 0  # nothing announced is left behind
    assert sink.synced_at[-1] == len(sink.lines)


def test_appending_to_a_disabled_log_releases_its_announcement(sink: CountingSink) -> None:
    log = AuditLog(
        sink,
        Ed25519PrivateKey.generate(),
        mode="disabled",
        start=StartInfo(lambda prev: {"nonce": prev}),
        clock=lambda: "2026-12-01T00:00:00Z",
    )
    try:
        expected = log.expect()
        log.append(
            "workload_attested", actor="anonymous", subject="s", details={}, expected=expected
        )
        assert expected.released
        assert sink.lines == []
    finally:
        log.close()


@pytest.mark.usefixtures("patient")
def test_many_announced_entries_share_one_sync(audit: AuditLog, sink: CountingSink) -> None:
    append(audit, 0)
    before = len(sink.synced_at)
    announced = [audit.expect() for _ in range(20)]
    tickets = [
        audit.append(
            "workload_attested", actor="anonymous", subject=f"s/{n}", details={}, expected=e
        )
        for n, e in enumerate(announced)
    ]
    for ticket in tickets:
        ticket.wait()
    # Without announcements the sync thread may sync after each entry; with them it waits.
    assert len(sink.synced_at) - before == 1
    assert sink.synced_at[-1] == len(sink.lines)
