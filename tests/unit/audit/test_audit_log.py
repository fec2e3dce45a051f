"""The audit log of an in-process CAS: what operations write, and what the verifier says of
every kind of tampering (SCONE's exit codes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from opencas.audit import verify
from opencas.audit.chain import Expectations, Head, Outcome, line_hash
from opencas.audit.verify import _check_chunk, verify_log
from opencas.config.availability import load_availability_config
from opencas.config.owner import parse_owner_config
from opencas.config.owner_identity import OwnerIdentity
from opencas.errors import AuditLogError
from opencas.policy.caller import Caller
from opencas.service.audit import state_change
from opencas.service.cas import Cas, open_cas
from opencas.service.provisioning import provision, update_owner_config
from opencas.service.sessions import create_session, read_session
from opencas.testing import write_config

OWNER = OwnerIdentity("a1" * 32, None)
OWNER_CALLER = Caller(OWNER.key_hash)
AUTHOR = Caller("b2" * 32)


def config(mode: str) -> object:
    return parse_owner_config(f'[audit_log]\nmode = "{mode}"\n', "owner.toml", "toml").config


def session(name: str) -> str:
    return f'name: {name}\nversion: "0.3"\nsecrets:\n  - name: s\n    kind: ascii\n'


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def entries(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in lines(path)]


def reopen(directory: Path) -> Cas:
    return open_cas(load_availability_config(directory / "cas.toml"))


@pytest.fixture
def log(cas: Cas) -> Path:
    """A CAS's log after provisioning, two sessions and a read; the CAS closed."""
    provision(cas, OWNER, config("signed"), self_provisioned=True)  # type: ignore[arg-type]
    create_session(cas, session("one"), AUTHOR)
    create_session(cas, session("two"), AUTHOR)
    read_session(cas, "one", AUTHOR)
    cas.close()
    return cas.config.audit_log_path


@pytest.fixture
def restarted_log(log: Path) -> Path:
    """``log``, and after a restart one more session: seq 6 is the second ``cas_started``."""
    cas = reopen(log.parent)
    create_session(cas, session("three"), AUTHOR)
    cas.close()
    return log


def verdict(path: Path, **expected: object) -> Outcome:
    return verify_log(path, Expectations(**expected), workers=1).outcome  # type: ignore[arg-type]


def write(path: Path, kept: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in kept))
    return path


def test_operations_write_their_entries_in_order(log: Path) -> None:
    found = entries(log)
    assert [entry["event"] for entry in found] == [
        "cas_started",
        "provisioned",
        "session_created",
        "session_created",
        "session_read",
    ]
    assert [entry["seq"] for entry in found] == [1, 2, 3, 4, 5]
    assert all(entry["sig"] for entry in found)
    assert found[2]["actor"] == AUTHOR.key_hash
    assert found[2]["subject"] == "one"
    assert found[1]["actor"] == "cas"  # self-provisioned: from files, by the operator
    # Each entry names the hash of the one before.
    raw = lines(log)
    assert all(json.loads(raw[i])["prev"] == line_hash(raw[i - 1]) for i in range(1, len(raw)))


def test_an_intact_log_with_its_last_entry_verifies(log: Path) -> None:
    last = line_hash(lines(log)[-1])
    assert verdict(log, last=last) == Outcome.INTACT
    assert verdict(log, head=Head(5, last)) == Outcome.INTACT


def test_without_an_end_a_rollback_cannot_be_ruled_out(log: Path) -> None:
    assert verdict(log) == Outcome.ROLLBACK_POSSIBLE


def test_missing_recent_entries(log: Path) -> None:
    raw = lines(log)
    cut = write(log, raw[:-2])
    assert verdict(cut, last=line_hash(raw[-1])) == Outcome.TRUNCATED_RECENT
    assert verdict(cut, head=Head(5, line_hash(raw[-1]))) == Outcome.TRUNCATED_RECENT


def test_missing_older_entries(restarted_log: Path) -> None:
    raw = lines(restarted_log)
    assert json.loads(raw[5])["event"] == "cas_started"
    cut = write(restarted_log, raw[5:])
    assert verdict(cut, last=line_hash(raw[-1])) == Outcome.TRUNCATED_OLDER
    # Fetched from seq 6 on purpose: naming its predecessor makes it whole.
    assert verdict(cut, last=line_hash(raw[-1]), predecessor=line_hash(raw[4])) == Outcome.INTACT


def test_a_log_without_a_start_entry_cannot_be_tied_to_a_cas(log: Path) -> None:
    raw = lines(log)
    cut = write(log, raw[2:])
    assert verdict(cut, last=line_hash(raw[-1]), predecessor=line_hash(raw[1])) == Outcome.FOREIGN


def test_a_removed_entry_in_the_middle(log: Path) -> None:
    raw = lines(log)
    cut = write(log, raw[:2] + raw[3:])
    found = verify_log(cut, Expectations(last=line_hash(raw[-1])), workers=1)
    assert found.outcome == Outcome.ROLLBACK_OR_MISSING
    assert found.findings[0].line == 3


def test_an_edited_entry_is_an_integrity_violation_naming_its_line(log: Path) -> None:
    raw = lines(log)
    edited = raw[3].replace(b'"subject":"two"', b'"subject":"TWO"')
    assert edited != raw[3]
    changed = write(log, [*raw[:3], edited, *raw[4:]])
    found = verify_log(changed, Expectations(last=line_hash(raw[-1])), workers=1)
    assert found.outcome == Outcome.INTEGRITY
    assert found.findings[0].line == 4
    assert "signature" in found.findings[0].message


def test_reordered_entries_are_an_integrity_violation(log: Path) -> None:
    raw = lines(log)
    swapped = write(log, [*raw[:2], raw[3], raw[2], *raw[4:]])
    assert verdict(swapped, last=line_hash(raw[-1])) in (
        Outcome.INTEGRITY,
        Outcome.ROLLBACK,
        Outcome.ROLLBACK_OR_MISSING,
    )


def test_a_log_of_another_cas(log: Path) -> None:
    last = line_hash(lines(log)[-1])
    assert verdict(log, last=last, cas_key_hash="cd" * 32) == Outcome.FOREIGN


def test_a_start_entry_with_a_foreign_certificate(log: Path, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other = open_cas(load_availability_config(write_config(tmp_path / "other", 18082, 18767)))
    other.audit_log.write_start()
    other.close()
    foreign_start = lines(other.config.audit_log_path)[0]
    raw = lines(log)
    mixed = write(log, [foreign_start, *raw[1:]])
    assert verdict(mixed, last=line_hash(raw[-1])) in (Outcome.INTEGRITY, Outcome.FOREIGN)
    # Spliced onto this log, the other CAS's entries are named as foreign.
    spliced = write(log, [*raw, foreign_start])
    found = verify_log(spliced, Expectations(last=line_hash(foreign_start)), workers=1)
    assert Outcome.FOREIGN in {finding.outcome for finding in found.findings}


def test_a_fork_two_entries_with_one_seq_is_a_rollback(log: Path, tmp_path: Path) -> None:
    directory = log.parent
    saved = directory.parent / f"{directory.name}-saved"
    shutil.copytree(directory, saved)
    first = reopen(directory)
    create_session(first, session("three"), AUTHOR)
    first.close()
    grown = lines(log)
    # The database and its log are put back as they were, and the CAS goes on from there.
    shutil.rmtree(directory)
    shutil.copytree(saved, directory)
    second = reopen(directory)
    create_session(second, session("other"), AUTHOR)
    second.close()
    forked = lines(log)
    both = write(saved / "both.log", grown + forked[len(grown) - 2 :])
    assert verdict(both, last=line_hash(forked[-1])) == Outcome.ROLLBACK
    # Against the CAS: a head older than one seen before.
    assert verdict(log, head=Head(7, line_hash(forked[-1])), seen_seq=9) == Outcome.ROLLBACK
    # A checkpoint that names another entry than the file holds.
    assert (
        verdict(log, head=Head(7, line_hash(forked[-1])), checkpoints={6: "ee" * 32})
        == Outcome.ROLLBACK
    )


def fail_after_its_entry(cas: Cas, subject: str) -> None:
    """A state change whose entry is written and whose transaction then fails."""
    with state_change(cas.audit_log) as entry, cas.store.transaction() as txn:
        entry.record(txn, "session_created", actor="cas", subject=subject, details={})
        raise RuntimeError("the commit fails")


def test_a_failed_operation_is_said_by_the_next_entry_with_its_seq(cas: Cas) -> None:
    provision(cas, OWNER, config("signed"), self_provisioned=True)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        fail_after_its_entry(cas, "never")
    create_session(cas, session("after"), AUTHOR)
    cas.close()
    path = cas.config.audit_log_path
    found = entries(path)
    assert [(entry["seq"], entry["prev_failed"]) for entry in found[-2:]] == [(3, False), (3, True)]
    assert verdict(path, last=line_hash(lines(path)[-1])) == Outcome.ONE_FAILED


def test_an_operation_that_never_committed_is_said_at_the_next_start(cas: Cas) -> None:
    provision(cas, OWNER, config("signed"), self_provisioned=True)  # type: ignore[arg-type]
    directory = cas.config.audit_log_path.parent
    cas.close()
    # As if the CAS died between the entry and the commit: the entry is there, the state is not.
    reopened = reopen(directory)
    with pytest.raises(RuntimeError):
        fail_after_its_entry(reopened, "lost")
    reopened.audit.close()  # type: ignore[union-attr]
    reopened.audit = None
    reopened.close()
    again = reopen(directory)
    again.audit_log.write_start()
    again.close()
    path = again.config.audit_log_path
    last = entries(path)[-1]
    assert (last["event"], last["seq"], last["prev_failed"]) == ("cas_started", 4, True)
    assert verdict(path, last=line_hash(lines(path)[-1])) == Outcome.ONE_FAILED


def test_an_unfinished_last_line_is_removed_at_open(log: Path) -> None:
    whole = log.read_bytes()
    log.write_bytes(whole + b'{"actor":"cas","det')
    reopen(log.parent).close()
    assert log.read_bytes() == whole


def test_a_log_that_lost_committed_entries_stops_the_start(log: Path) -> None:
    raw = lines(log)
    write(log, raw[:1])
    with pytest.raises(AuditLogError, match="does not hold the entry seq 4"):
        reopen(log.parent)
    log.unlink()
    with pytest.raises(AuditLogError, match="missing or empty"):
        reopen(log.parent)


def test_an_older_database_under_a_newer_log_stops_the_start(log: Path) -> None:
    directory = log.parent
    saved = directory.parent / f"{directory.name}-old"
    shutil.copytree(directory, saved)
    cas = reopen(directory)
    create_session(cas, session("three"), AUTHOR)
    create_session(cas, session("four"), AUTHOR)
    cas.close()
    newer = log.read_bytes()
    shutil.rmtree(directory)
    shutil.copytree(saved, directory)
    log.write_bytes(newer)
    with pytest.raises(AuditLogError, match="older than its audit log"):
        reopen(directory)


def test_turning_the_log_off_is_a_signed_entry_and_then_nothing(cas: Cas) -> None:
    provision(cas, OWNER, config("signed"), self_provisioned=True)  # type: ignore[arg-type]
    update_owner_config(cas, OWNER_CALLER, config("disabled"))  # type: ignore[arg-type]
    create_session(cas, session("unlogged"), AUTHOR)
    head = cas.report("00" * 16).audit
    cas.close()
    path = cas.config.audit_log_path
    last = entries(path)[-1]
    assert last["event"] == "audit_log_mode_changed"
    assert last["details"]["from"] == "signed"  # type: ignore[index]
    assert last["details"]["to"] == "disabled"  # type: ignore[index]
    assert last["sig"]
    assert (head.seq, head.head) == (last["seq"], line_hash(lines(path)[-1]))
    assert verdict(path, last=head.head) == Outcome.INTACT


def test_turning_it_back_on_starts_with_the_start_entry(cas: Cas) -> None:
    provision(cas, OWNER, config("disabled"), self_provisioned=True)  # type: ignore[arg-type]
    create_session(cas, session("unlogged"), AUTHOR)
    update_owner_config(cas, OWNER_CALLER, config("unsigned"))  # type: ignore[arg-type]
    create_session(cas, session("logged"), AUTHOR)
    cas.close()
    path = cas.config.audit_log_path
    found = entries(path)
    assert [entry["event"] for entry in found] == [
        "cas_started",
        "provisioned",
        "audit_log_mode_changed",
        "session_created",
    ]
    # Unsigned: only what ties the log to its CAS, and the switch itself, are signed.
    assert [bool(entry["sig"]) for entry in found] == [True, True, True, False]
    assert verdict(path, last=line_hash(lines(path)[-1])) == Outcome.INTACT


def test_the_report_carries_the_head(log: Path) -> None:
    cas = reopen(log.parent)
    try:
        head = cas.report("00" * 16).audit
    finally:
        cas.close()
    assert head.seq == 5
    assert head.head == line_hash(lines(log)[-1])


def test_a_sink_that_fails_fails_the_operation_and_changes_nothing(cas: Cas) -> None:
    provision(cas, OWNER, config("signed"), self_provisioned=True)  # type: ignore[arg-type]

    def broken(line: bytes) -> None:
        raise OSError(28, "No space left on device")

    cas.audit_log._sink.write = broken  # type: ignore[method-assign]
    with pytest.raises(AuditLogError, match="No space left"):
        create_session(cas, session("refused"), AUTHOR)
    assert cas.store.get("sessions", "refused") is None
    with pytest.raises(AuditLogError):
        create_session(cas, session("still-refused"), AUTHOR)


def test_verifying_on_several_processes_finds_the_same(log: Path) -> None:
    raw = lines(log)
    many = write(log, [*raw[:3], raw[3].replace(b'"two"', b'"owt"'), *raw[4:]])
    one = verify_log(many, Expectations(last=line_hash(raw[-1])), workers=1)
    two = verify_log(many, Expectations(last=line_hash(raw[-1])), workers=2)
    assert (one.outcome, one.findings) == (two.outcome, two.findings)


def _dies_in_a_worker(chunk: Any) -> Any:
    """The line checker, except that a worker process dies on the log's second chunk."""
    # The verifying process is named in the environment: a worker started from a fork server
    # imports this module afresh.
    if str(os.getpid()) != os.environ["VERIFYING_PROCESS"] and chunk.first_line > 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return _check_chunk(chunk)


@pytest.mark.timeout(60)
def test_a_worker_that_dies_does_not_hang_the_verification(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = lines(log)
    monkeypatch.setattr(verify, "CHUNK_BYTES", 1)  # one chunk per line
    monkeypatch.setattr(verify, "_check_chunk", _dies_in_a_worker)
    monkeypatch.setenv("VERIFYING_PROCESS", str(os.getpid()))
    warnings: list[str] = []
    found = verify_log(log, Expectations(last=line_hash(raw[-1])), workers=2, warn=warnings.append)
    assert found.outcome == Outcome.INTACT
    assert found.entries == len(raw)
    assert len(warnings) == 1
    assert "ended abruptly" in warnings[0]


@pytest.mark.timeout(60)
def test_workers_start_from_a_fork_server_while_other_threads_run(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = lines(log)
    monkeypatch.setattr(verify, "CHUNK_BYTES", 1)
    methods: list[str] = []
    real = verify.multiprocessing.get_context

    def recorded(method: str) -> Any:
        methods.append(method)
        return real(method)

    monkeypatch.setattr(verify.multiprocessing, "get_context", recorded)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        found = verify_log(log, Expectations(last=line_hash(raw[-1])), workers=2)
    finally:
        stop.set()
        other.join()
    assert methods == ["forkserver"]
    assert found.outcome == Outcome.INTACT
    assert found.entries == len(raw)
