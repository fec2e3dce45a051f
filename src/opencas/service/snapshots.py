"""Snapshots of the store: every record as of one commit, encrypted under the database key and
written to the ``[backup]`` target, every ``interval`` seconds or when the owner asks.

A snapshot is read inside one store snapshot (one transaction's view: SQLite's read
transaction, PostgreSQL's REPEATABLE READ), so its records, commit counter and audit head agree.
The file format is :mod:`opencas.crypto.snapshot_format`. A snapshot also carries this
instance's audit log up to the committed audit head, and the database key sealed for every
registered backup (:mod:`opencas.service.backups`), which alone can restore it. Each snapshot
written is logged (``snapshot_written``, naming the backups it can be restored on).

The periodic snapshots are singleton work (:mod:`opencas.service.leadership`): on PostgreSQL
one instance at a time writes them, under the lease ``snapshots``. Its snapshot is published
(renamed into the directory, or handed to the command) only after a transaction fenced by the
lease recorded it as ``snapshots/last``; a leader deposed while it wrote one has that
transaction refused by the database and publishes nothing. The record also tells the next
leader which commit the last snapshot holds, so a takeover does not repeat it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from pydantic import BaseModel, ConfigDict

from opencas.attestation.report import AUDIT_GENESIS_HEAD
from opencas.audit.chain import line_hash
from opencas.config.availability import BackupSettings
from opencas.crypto.snapshot_format import AUDIT_LOG_TABLE, Record, SnapshotHeader, encode_snapshot
from opencas.errors import CasError, ConflictError, LeaseLost
from opencas.policy.caller import Caller
from opencas.service.audit import actor_of, record_read
from opencas.service.backups import wrapped_keys
from opencas.service.cas import Cas
from opencas.service.cas_records import read_audit_head
from opencas.service.identity import utc_now_text
from opencas.service.key_rollover import key_id
from opencas.service.leadership import LEASE_SECONDS, Leadership
from opencas.service.provisioning import require_owner
from opencas.service.records import read_record, write_record
from opencas.store.base import Reader
from opencas.store.records import RecordReader

log = logging.getLogger("opencas")

SNAPSHOT_SUFFIX = ".ocas-snapshot"
#: The lease under which one instance at a time writes the periodic snapshots.
LEASE_NAME: Final = "snapshots"
_TABLE: Final = "snapshots"
_LAST: Final = "last"


class LastSnapshot(BaseModel):
    """The last periodic snapshot published (``snapshots/last``)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str
    snapshot_id: str
    state_counter: int
    """The commit the snapshot holds (recording it is the commit after)."""
    instance_id: str
    taken_at: str


def read_last_snapshot(source: Reader) -> LastSnapshot | None:
    """The last periodic snapshot published, or ``None`` before the first."""
    return read_record(source, LastSnapshot, _TABLE, _LAST)


class SnapshotFailed(CasError, code="snapshot-failed", http_status=503):
    """A snapshot could not be written to, or shipped by, the ``[backup]`` target."""


@dataclass(frozen=True)
class Written:
    """A snapshot written: its header, its file name and its size in bytes."""

    header: SnapshotHeader
    name: str
    size: int


def snapshot_name(header: SnapshotHeader) -> str:
    """The file name of a snapshot: CAS id, commit counter (16 digits) and snapshot id."""
    return f"{header.cluster_id}-{header.state_counter:016}-{header.snapshot_id}{SNAPSHOT_SUFFIX}"


def write_snapshot(cas: Cas, actor: str = "cas", leader: Leadership | None = None) -> Written:
    """Take a snapshot and write it to the ``[backup]`` target, then log it; raises
    :class:`SnapshotFailed` naming the target when it cannot be written or shipped.

    With ``leader`` (the periodic snapshots), the snapshot is recorded as ``snapshots/last`` in
    a transaction fenced by its lease before it is published; :class:`LeaseLost` (and nothing
    published) when this instance no longer leads them.
    """
    target = cas.config.backup
    if not target.configured:
        raise ConflictError(
            "the availability config has no [backup] directory or command to write snapshots to",
            code="backup-not-configured",
        )
    staging = _staging_directory(cas, target)
    temporary = staging / f".snapshot-{secrets.token_hex(8)}.tmp"
    try:
        with _private_file(temporary) as file:
            header, size = _take(cas, file)
        name = snapshot_name(header)
        if leader is not None:
            _record_published(cas, leader, header, name)
        _deliver(target, temporary, name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    record_read(
        cas.audit_log,
        "snapshot_written",
        actor=actor,
        subject=header.snapshot_id,
        details={
            "name": name,
            "state_counter": header.state_counter,
            "audit_seq": header.audit_seq,
            "audit_head": header.audit_head,
            "bytes": size,
            "target": _target_shown(target),
            "backups": [wrapped.name for wrapped in header.backups],
        },
    )
    log.info("snapshot %s written (commit %d, %d bytes)", name, header.state_counter, size)
    return Written(header, name, size)


def _record_published(cas: Cas, leader: Leadership, header: SnapshotHeader, name: str) -> None:
    """Record the snapshot about to be published, fenced by ``leader``'s lease (renewed first:
    writing a large snapshot may take a good part of it)."""
    if not leader.take():
        raise LeaseLost(f"this instance no longer leads the {LEASE_NAME}; {name} is not published")
    record = LastSnapshot(
        name=name,
        snapshot_id=header.snapshot_id,
        state_counter=header.state_counter,
        instance_id=cas.identity.instance_id,
        taken_at=header.taken_at,
    )
    with leader.transaction() as txn:
        write_record(txn, _TABLE, _LAST, record)


def request_snapshot(cas: Cas, caller: Caller) -> Written:
    """Write a snapshot now (owner only)."""
    require_owner(cas, caller)
    return write_snapshot(cas, actor_of(caller))


def _take(cas: Cas, file: BinaryIO) -> tuple[SnapshotHeader, int]:
    """Write every record of one store snapshot to ``file``; its header and size."""
    with cas.store.snapshot() as reader:
        if not isinstance(reader, RecordReader):
            raise TypeError(f"{type(reader).__name__} is not a snapshot of the record layer")
        head = read_audit_head(reader)
        header = SnapshotHeader(
            snapshot_id=secrets.token_hex(8),
            cluster_id=cas.identity.cluster_id,
            cas_key_hash=cas.identity.cas_key_hash,
            key_id=key_id(cas.database_key),
            state_counter=reader.commit_state().counter,
            audit_seq=0 if head is None else head.seq,
            audit_head=AUDIT_GENESIS_HEAD if head is None else head.hash,
            taken_at=utc_now_text(),
            instance_id=cas.identity.instance_id,
            backups=wrapped_keys(cas, reader),
        )
        records = itertools.chain(reader.every_record(), _audit_lines(cas, header))
        size = 0
        for piece in encode_snapshot(header, records, cas.database_key):
            file.write(piece)
            size += len(piece)
    file.flush()
    os.fsync(file.fileno())
    return header, size


def _audit_lines(cas: Cas, header: SnapshotHeader) -> Iterator[Record]:
    """The lines of this instance's audit log up to the snapshot's audit head, as records of
    :data:`AUDIT_LOG_TABLE`; :class:`SnapshotFailed` when the log does not hold that head."""
    if header.audit_seq == 0:
        return
    path = cas.config.audit_log_path
    try:
        with path.open("rb") as file:
            for number, raw in enumerate(file, 1):
                line = raw.rstrip(b"\n")
                yield AUDIT_LOG_TABLE, str(number), 1, line
                if line_hash(line) == header.audit_head:
                    return
    except OSError as exc:
        raise SnapshotFailed(f"cannot read the audit log {path}: {exc.strerror or exc}") from exc
    raise SnapshotFailed(
        f"the audit log {path} does not hold the audit head seq {header.audit_seq} the store "
        "committed; no snapshot was written"
    )


def _staging_directory(cas: Cas, target: BackupSettings) -> Path:
    # In the target directory, so that the rename publishing it is atomic; for a command,
    # beside the database, whose directory only the CAS reads.
    return target.directory if target.directory is not None else cas.config.database_path.parent


@contextlib.contextmanager
def _private_file(path: Path) -> Iterator[BinaryIO]:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SnapshotFailed(f"cannot write a snapshot in {path.parent}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as file:
        yield file


def _deliver(target: BackupSettings, temporary: Path, name: str) -> None:
    if target.directory is not None:
        final = target.directory / name
        try:
            os.replace(temporary, final)
            fd = os.open(target.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SnapshotFailed(f"cannot write snapshot {final}: {exc.strerror}") from exc
        return
    assert target.command is not None
    shipped = temporary.with_name(name)
    os.replace(temporary, shipped)
    try:
        _ship(target.command, shipped, target.command_timeout)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shipped.unlink()


def _ship(command: tuple[str, ...], path: Path, timeout: float) -> None:
    shown = command[0]
    try:
        # The operator's own command from the availability config, never a request's input.
        done = subprocess.run(  # noqa: S603
            [*command, str(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise SnapshotFailed(
            f"the [backup] command {shown} did not ship the snapshot within {timeout:g} s "
            "([backup] command_timeout) and was stopped"
        ) from exc
    except OSError as exc:
        raise SnapshotFailed(
            f"the [backup] command {shown} could not ship the snapshot: {exc}"
        ) from exc
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [""])[-1][:200]
        raise SnapshotFailed(
            f"the [backup] command {shown} failed with exit code {done.returncode}: {said}"
        )


def _target_shown(target: BackupSettings) -> str:
    if target.directory is not None:
        return str(target.directory)
    assert target.command is not None
    return target.command[0]


def changed_since(counter: int, last: LastSnapshot | None) -> bool:
    """Whether the store at commit ``counter`` holds anything the ``last`` snapshot does not:
    the commit that recorded it is the only one it may be behind by."""
    return last is None or counter > last.state_counter + 1


def run_periodically(cas: Cas) -> None:
    """Every ``[backup] interval`` seconds, write a snapshot when the store changed since the
    last one; in a thread that :meth:`Cas.close` stops. A failed snapshot is logged and tried
    again at the next interval.

    Only the instance holding the lease ``snapshots`` writes them; every instance renews or
    tries to take it at least every third of :data:`LEASE_SECONDS`, so one takes over within
    about a lease after its leader stopped.
    """
    interval = cas.config.backup.interval
    if interval is None:
        return
    stop = threading.Event()
    leader = Leadership(cas, LEASE_NAME)
    tick = min(float(interval), LEASE_SECONDS / 3)

    def loop() -> None:
        due = time.monotonic() + interval
        while not stop.wait(max(0.0, min(tick, due - time.monotonic()))):
            try:
                if not leader.take() or time.monotonic() < due:
                    continue
                due = time.monotonic() + interval
                if changed_since(cas.store.state().counter, read_last_snapshot(cas.store)):
                    write_snapshot(cas, leader=leader)
            except LeaseLost as exc:
                log.warning("a periodic snapshot was not published: %s", exc)
            except Exception:
                log.exception("a periodic snapshot failed; the next is tried in %d s", interval)

    thread = threading.Thread(target=loop, name="snapshots", daemon=True)

    def stop_and_wait() -> None:
        stop.set()
        thread.join()
        try:
            leader.release()
        except CasError as exc:
            log.debug("the snapshots' lease was not released: %s", exc)

    cas.background_stops.append(stop_and_wait)
    thread.start()
