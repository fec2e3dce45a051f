"""Backups: another CAS, on its own machine, registered by the owner to receive the database key
in every snapshot, and the restore of a snapshot there.

**The backup machine.** ``cas backup`` runs a CAS in *backup mode*: no database, one X25519 key
made on its first start and kept sealed to that machine (``<database>.backup-key``), and one
route that answers a verifier's nonce with a key handover request (purpose ``backup``, the nonce
as request id) bound by the machine's evidence (:func:`backup_request`).

**Registering.** The owner's ``casctl register-backup URL`` fetches that request, checks it, and
hands it to the primary (:func:`register_backup`), which never takes the client's word: it
verifies the evidence itself, checks that it binds the request, and admits the backup only by
:func:`opencas.attestation.peer_admission.admit_backup` (same software family, an equal or higher
security version, an equal or better TCB). The registration (record ``backups/<name>``) keeps
the backup's attested key and what its evidence showed.

**Snapshots.** Every snapshot then carries, for each registered backup, the database key sealed
to that backup's key with :func:`opencas.service.key_handover.seal_handover`, bound by the
primary's evidence (:func:`wrapped_keys`).

**Restoring.** ``cas restore SNAPSHOT`` on a backup machine (:func:`restore`) finds the key
sealed for its own backup key, checks the primary's evidence with
:func:`opencas.service.key_handover.open_handover` (a key made by other software is refused),
opens the snapshot with it, and creates the database from the snapshot's records, its commit
counter continuing from the snapshot's, the state saying ``restored_from``; it writes the audit
log's lines up to the snapshot's audit head, takes the id of the instance that wrote the
snapshot (so its audit chain goes on), and seals the database key to this machine. On a machine
whose key the snapshot does not hold it refuses (:class:`RestoreRefused`) and says so.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, BinaryIO, Final

from cryptography.hazmat.primitives.asymmetric import ec, x25519
from pydantic import BaseModel, ConfigDict, Field

from opencas.attestation.peer_admission import (
    BACKUP_NAME_PATTERN,
    MAX_BACKUP_URL_LENGTH,
    admit_backup,
)
from opencas.audit.chain import line_hash
from opencas.collateral.configured import CasCollateral
from opencas.config.availability import AvailabilityConfig
from opencas.crypto.encoding import b64_decode, b64_encode
from opencas.crypto.keys import generate_ecdsa_key
from opencas.crypto.pem import certificate_pem
from opencas.crypto.recovery import recovery_key_hash, recovery_public_der
from opencas.crypto.snapshot_format import (
    AUDIT_LOG_TABLE,
    MAX_BACKUPS,
    Record,
    SnapshotFormatError,
    SnapshotHeader,
    WrappedKey,
    check_audit_line,
    read_header_from,
    stream_records,
)
from opencas.crypto.x509 import create_ca_certificate, issue_tls_certificate
from opencas.durable_files import DraftFile, publish_file
from opencas.errors import CasError, ConflictError, InvalidRequest, KeyStoreError, NotFoundError
from opencas.platform.base import Platform
from opencas.policy.caller import Caller
from opencas.service.audit import actor_of, state_change
from opencas.service.cas import Cas, create_store_with_key, load_platform, store_exists
from opencas.service.cas_records import RestoredFromRecord, read_state, write_state
from opencas.service.identity import utc_now_text, write_instance_id
from opencas.service.key_handover import (
    HandoverRefused,
    HandoverRequest,
    HandoverSecret,
    open_handover,
    own_identity,
    parse_answer,
    request_for,
    seal_handover,
    verified_request,
)
from opencas.service.key_rollover import key_id
from opencas.service.provisioning import require_owner
from opencas.service.records import decode_record, read_record, write_record
from opencas.store import DatabaseLock, KeyStoreContents, key_store_path, save_key_store
from opencas.store.base import Reader, Transaction
from opencas.store.records import RecordTransaction

log = logging.getLogger("opencas")

_TABLE: Final = "backups"
NAME_PATTERN: Final = BACKUP_NAME_PATTERN
MAX_URL_LENGTH: Final = MAX_BACKUP_URL_LENGTH
#: The largest snapshot ``cas restore`` reads (one frame at a time).
MAX_SNAPSHOT_BYTES: Final = 8 * 1024**3
_PRIVATE_KEY_SIZE: Final = 32


class RestoreRefused(CasError, code="restore-refused"):
    """A snapshot cannot be restored here: this machine is not a registered backup of its CAS,
    the snapshot is damaged, or a database exists already; the message says which."""


class BackupRecord(BaseModel):
    """A registered backup: its name and address, its attested key, and what its evidence
    showed when the owner registered it (record ``backups/<name>``)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    url: Annotated[str, Field(max_length=MAX_URL_LENGTH)]
    key_hash: str
    public_key: str
    request_id: str
    platform: str
    measurement: str
    isv_svn: int | None
    tcb_status: str
    basis: str
    registered_at: str
    registered_by: str


# --- on the primary ------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if re.fullmatch(NAME_PATTERN, name) is None:
        raise InvalidRequest(
            f"a backup name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter "
            f"or digit; {name[:80]!r} is not",
        )


def _check_url(url: str) -> None:
    if len(url) > MAX_URL_LENGTH or re.fullmatch(r"https://[^\s/?#]+/?", url) is None:
        raise InvalidRequest(
            f"a backup URL is https://HOST:PORT of at most {MAX_URL_LENGTH} characters"
        )


def read_backups(source: Reader) -> list[BackupRecord]:
    """Every registered backup, by name."""
    return [
        backup
        for name in source.list_keys(_TABLE)
        if (backup := read_record(source, BackupRecord, _TABLE, name)) is not None
    ]


def register_backup(
    cas: Cas, caller: Caller, name: str, url: str, request: HandoverRequest
) -> BackupRecord:
    """Register the CAS whose key handover ``request`` (fetched from it by the owner's casctl)
    is given as backup ``name`` at ``url`` (owner only); logged as ``backup_registered``.

    The request's evidence is verified here, must bind the request, and must show a CAS that
    :func:`opencas.attestation.peer_admission.admit_backup` admits. Raises
    :class:`HandoverRefused` naming the failed check, ``InvalidRequest`` for a bad name or URL,
    ``ConflictError`` when the name or the key is registered already (``backup-exists``) or
    :data:`MAX_BACKUPS` are (``backup-limit``).
    """
    require_owner(cas, caller)
    _check_name(name)
    _check_url(url)
    if request.purpose != "backup":
        raise HandoverRefused("binding", f"the request is for '{request.purpose}', not 'backup'")
    now = cas.clock()
    verified = verified_request(request, at=now, collateral=cas.collateral)
    own = own_identity(cas.platform, at=now, collateral=cas.collateral)
    decision = admit_backup(verified, own)
    if not decision.admitted:
        log.warning("refused to register backup %s (%s): %s", name, decision.check, decision.reason)
        raise HandoverRefused(decision.check or "software", decision.reason)
    record = BackupRecord(
        name=name,
        url=url.rstrip("/"),
        key_hash=recovery_key_hash(b64_decode(request.public_key)),
        public_key=request.public_key,
        request_id=request.request_id,
        platform=verified.platform,
        measurement=verified.measurement,
        isv_svn=verified.isv_svn,
        tcb_status=verified.tcb_status,
        basis=decision.basis or "same-software",
        registered_at=utc_now_text(),
        registered_by=actor_of(caller),
    )
    with state_change(cas.audit_log) as entry, cas.store.transaction() as txn:
        _check_new(txn, record)
        write_record(txn, _TABLE, name, record)
        entry.record(
            txn,
            "backup_registered",
            actor=record.registered_by,
            subject=name,
            details={
                "url": record.url,
                "key_hash": record.key_hash,
                "platform": record.platform,
                "measurement": record.measurement,
                "isv_svn": record.isv_svn,
                "tcb_status": record.tcb_status,
                "basis": record.basis,
                "reason": decision.reason,
            },
        )
    log.info("registered backup %s at %s: %s", name, record.url, decision.reason)
    return record


def _check_new(txn: Transaction, record: BackupRecord) -> None:
    registered = read_backups(txn)
    for backup in registered:
        if backup.name == record.name:
            raise ConflictError(
                f"a backup named {record.name!r} is registered already; unregister it first",
                code="backup-exists",
            )
        if backup.key_hash == record.key_hash:
            raise ConflictError(
                f"this backup (key {record.key_hash[:16]}…) is registered already as "
                f"{backup.name!r}",
                code="backup-exists",
            )
    if len(registered) >= MAX_BACKUPS:
        raise ConflictError(
            f"{MAX_BACKUPS} backups are registered, the most a CAS keeps; unregister one first",
            code="backup-limit",
        )


def list_backups(cas: Cas, caller: Caller) -> list[BackupRecord]:
    """The registered backups (owner only)."""
    require_owner(cas, caller)
    return read_backups(cas.store)


def unregister_backup(cas: Cas, caller: Caller, name: str) -> BackupRecord:
    """Remove the backup ``name`` (owner only), so that later snapshots no longer carry the
    key for it; logged as ``backup_unregistered``. Snapshots already written still open there.
    Raises ``NotFoundError`` (``unknown-backup``) when no backup has that name."""
    require_owner(cas, caller)
    _check_name(name)
    with state_change(cas.audit_log) as entry, cas.store.transaction() as txn:
        data = txn.get(_TABLE, name)
        if data is None:
            raise NotFoundError(f"no backup named {name!r} is registered", code="unknown-backup")
        record = decode_record(BackupRecord, _TABLE, name, data)
        txn.delete(_TABLE, name)
        entry.record(
            txn,
            "backup_unregistered",
            actor=actor_of(caller),
            subject=name,
            details={"url": record.url, "key_hash": record.key_hash},
        )
    log.info("unregistered backup %s", name)
    return record


def wrapped_keys(cas: Cas, reader: Reader) -> tuple[WrappedKey, ...]:
    """The database key sealed for each backup registered in ``reader`` (a snapshot's view),
    each bound by this CAS's evidence. Raises :class:`PlatformError` when the platform cannot
    produce evidence."""
    backups = read_backups(reader)
    if not backups:
        return ()
    secret = HandoverSecret(
        cas.database_key,
        read_state(reader).db_key_injected,
        cas.identity.cas_key_hash,
        cas.identity.cluster_id,
    )
    wrapped = []
    for backup in backups:
        request = _registered_request(backup.request_id, backup.public_key)
        answer = seal_handover(request, secret, cas.platform)
        wrapped.append(WrappedKey(backup.name, backup.key_hash, answer.model_dump(mode="json")))
    return tuple(wrapped)


def _registered_request(request_id: str, public_key: str) -> HandoverRequest:
    # The request as registered; its evidence was checked at registration and is not needed
    # again to seal to, or open with, its key.
    return HandoverRequest(
        purpose="backup", request_id=request_id, public_key=public_key, evidence={}
    )


# --- on the backup machine -----------------------------------------------------------------------


def backup_key_path(database: Path) -> Path:
    """Where a backup machine keeps its sealed backup key: ``<database>.backup-key``."""
    return database.with_name(database.name + ".backup-key")


def backup_key(
    config: AvailabilityConfig, platform: Platform, *, create: bool
) -> x25519.X25519PrivateKey:
    """This machine's backup key, unsealed; made and sealed on first use when ``create``.

    Raises :class:`RestoreRefused` when there is none and ``create`` is false (this machine was
    never started as a backup), :class:`KeyStoreError` when it cannot be read, unsealed or
    written.
    """
    path = backup_key_path(config.database_path)
    if not path.exists():
        if not create:
            raise RestoreRefused(
                f"this machine is not a registered backup: it has no backup key {path}. Run "
                "'cas backup' here, register it with 'casctl register-backup' on the CAS it "
                "backs up, and restore a snapshot taken after that"
            )
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        raw = x25519.X25519PrivateKey.generate().private_bytes_raw()
        publish_file(path, platform.seal(raw))
    try:
        raw = platform.unseal(path.read_bytes())
    except OSError as exc:
        raise KeyStoreError(f"cannot read the backup key {path}: {exc.strerror or exc}") from exc
    except Exception as exc:
        raise KeyStoreError(
            f"the backup key {path} cannot be unsealed on this machine ({exc}); it was made on "
            "another machine"
        ) from exc
    if len(raw) != _PRIVATE_KEY_SIZE:
        raise KeyStoreError(f"the backup key {path} is not an X25519 key")
    return x25519.X25519PrivateKey.from_private_bytes(raw)


def backup_key_hash(key: x25519.X25519PrivateKey) -> str:
    """The key hash by which registrations and snapshots name a backup's key."""
    return recovery_key_hash(recovery_public_der(key))


def backup_request(platform: Platform, key: x25519.X25519PrivateKey, nonce: str) -> HandoverRequest:
    """The answer of a backup to a verifier's ``nonce`` (32 lowercase hex digits): a key
    handover request for its backup key under that request id, bound by fresh evidence.
    Raises ``ValueError`` for another nonce."""
    return request_for(platform, "backup", key, nonce)


def backup_tls_chain(hostnames: Sequence[str]) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """A TLS certificate chain (PEM, leaf first) and its key, made for one run in backup mode.

    A backup's TLS identity carries no trust: what it serves is bound by its evidence to the
    verifier's nonce, so the chain is new at every start and never kept.
    """
    ca_key = generate_ecdsa_key("P-256")
    ca_certificate = create_ca_certificate(ca_key, "OpenCAS backup")
    tls_key = generate_ecdsa_key("P-256")
    leaf = issue_tls_certificate(ca_key, ca_certificate, tls_key.public_key(), hostnames)
    return certificate_pem(leaf) + certificate_pem(ca_certificate), tls_key


@dataclass(frozen=True)
class Restored:
    """What :func:`restore` did: the snapshot it restored, and which backup key opened it."""

    header: SnapshotHeader
    backup_name: str
    backup_key_hash: str
    restored_at: str
    audit_lines: int


def restore(config: AvailabilityConfig, snapshot: Path) -> Restored:
    """Create this machine's CAS from the snapshot file ``snapshot`` (see the module docstring).

    The file is read one frame at a time (memory bounded by a frame, not by the snapshot):
    each frame is authenticated before its records go into the new store's one transaction,
    and the audit log's lines into a file beside the log's place; neither appears unless every
    frame checked, the last included. Raises :class:`RestoreRefused` naming the problem: this
    machine is not a registered backup of the snapshot's CAS (no backup key, or none the
    snapshot holds a key for), the key or the snapshot does not open or check, or a database or
    audit log is here already.
    """
    platform = load_platform(config)
    _require_nothing_here(config)
    key = backup_key(config, platform, create=False)
    with _open_snapshot(snapshot) as file:
        try:
            header, header_sha256 = read_header_from(file)
        except SnapshotFormatError as exc:
            raise RestoreRefused(f"{snapshot} cannot be restored: {exc}") from exc
        wrapped = _wrapped_for_this_machine(header, key)
        secret = _open_wrapped(config, platform, key, wrapped)
        _check_secret(header, secret)
        audit_log = config.audit_log_path
        audit_log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lines = _RestoredLines(DraftFile(audit_log))
        try:
            frames = _Frames(file, header_sha256)
            _create_restored(config, platform, snapshot, header, secret, lines, frames)
        finally:
            lines.draft.discard()
    log.info(
        "restored snapshot %s of CAS %s (commit %d, audit seq %d) as backup %s",
        header.snapshot_id,
        header.cluster_id,
        header.state_counter,
        header.audit_seq,
        wrapped.name,
    )
    return Restored(header, wrapped.name, backup_key_hash(key), lines.restored_at, lines.count)


@dataclass(frozen=True)
class _Frames:
    """A snapshot file after its header, and the header's SHA-256 that its frames bind."""

    file: BinaryIO
    header_sha256: str


@dataclass
class _RestoredLines:
    """The audit log's lines a restore has read so far: written to ``draft`` in order, the
    last one's hash kept to check against the snapshot's audit head."""

    draft: DraftFile
    count: int = 0
    last_hash: str | None = None
    restored_at: str = ""

    def add(self, record: Record) -> None:
        check_audit_line(record, self.count)
        self.draft.write(record[3] + b"\n")
        self.count += 1
        self.last_hash = line_hash(record[3])


def _create_restored(
    config: AvailabilityConfig,
    platform: Platform,
    snapshot: Path,
    header: SnapshotHeader,
    secret: HandoverSecret,
    lines: _RestoredLines,
    frames: _Frames,
) -> None:
    """Create the store from ``frames``, with the audit log, the instance id and the key store
    published before the store appears."""
    lines.restored_at = utc_now_text()
    restored_from = RestoredFromRecord(
        snapshot_id=header.snapshot_id,
        state_counter=header.state_counter,
        audit_seq=header.audit_seq,
        taken_at=header.taken_at,
        restored_at=lines.restored_at,
    )

    def populate(txn: Transaction) -> None:
        if not isinstance(txn, RecordTransaction):
            raise TypeError(f"{type(txn).__name__} cannot restore records")
        txn.continue_counter(header.state_counter)
        try:
            for record in stream_records(frames.file, frames.header_sha256, secret.dmk):
                if record[0] == AUDIT_LOG_TABLE:
                    lines.add(record)
                else:
                    table, record_key, version, value = record
                    txn.restore_record(table, record_key, version, value)
        except SnapshotFormatError as exc:
            raise RestoreRefused(f"{snapshot} cannot be restored: {exc}") from exc
        _check_audit_lines(header, lines.last_hash)
        write_state(txn, read_state(txn).model_copy(update={"restored_from": restored_from}))

    def before_publish() -> None:
        # The log and the instance id first: a database that appears has both, and a restore
        # interrupted before it appeared leaves no database (the log must be moved away).
        lines.draft.publish()
        if header.instance_id is not None:
            write_instance_id(config.database_path, header.instance_id)
        save_key_store(
            key_store_path(config.database_path),
            KeyStoreContents(secret.dmk, secret.db_key_injected),
            platform.seal,
        )

    config.database_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = DatabaseLock(config.database_path)
    lock.acquire()
    try:
        _require_nothing_here(config)
        create_store_with_key(config, secret.dmk, populate, before_publish).close()
    finally:
        lock.release()


def _require_nothing_here(config: AvailabilityConfig) -> None:
    if store_exists(config):
        raise RestoreRefused(
            f"a database {config.database_shown} exists already: a restore creates the CAS's "
            "database; restore on a machine that has none, or move it away first"
        )
    audit_log = config.audit_log_path
    if audit_log.exists() and audit_log.stat().st_size > 0:
        raise RestoreRefused(
            f"an audit log {audit_log} exists already: a restore writes the snapshot's; move it "
            "away first"
        )


def _wrapped_for_this_machine(header: SnapshotHeader, key: x25519.X25519PrivateKey) -> WrappedKey:
    own_hash = backup_key_hash(key)
    wrapped = header.wrapped_for(own_hash)
    if wrapped is None:
        names = ", ".join(each.name for each in header.backups) or "none"
        raise RestoreRefused(
            f"snapshot {header.snapshot_id} of CAS {header.cluster_id} cannot be restored on "
            f"this machine: this machine (backup key {own_hash[:16]}…) is not registered as a "
            f"backup of that CAS; the snapshot holds its database key only for the backups: "
            f"{names}. Register this machine with 'casctl register-backup' and restore a "
            "snapshot taken after that"
        )
    return wrapped


def _check_secret(header: SnapshotHeader, secret: HandoverSecret) -> None:
    if (secret.cluster_id, secret.cas_key_hash) != (header.cluster_id, header.cas_key_hash):
        raise RestoreRefused(
            f"the key sealed in snapshot {header.snapshot_id} is for CAS {secret.cluster_id}, "
            f"but its header names CAS {header.cluster_id}: the snapshot was put together"
        )
    if key_id(secret.dmk) != header.key_id:
        raise RestoreRefused(
            f"the key sealed in snapshot {header.snapshot_id} is not the database key it was "
            "taken under"
        )


def _open_snapshot(path: Path) -> BinaryIO:
    """The snapshot file opened for reading; :class:`RestoreRefused` when it cannot be, or is
    larger than :data:`MAX_SNAPSHOT_BYTES`."""
    try:
        file = path.open("rb")
    except OSError as exc:
        raise RestoreRefused(f"cannot read the snapshot {path}: {exc.strerror or exc}") from exc
    if os.fstat(file.fileno()).st_size > MAX_SNAPSHOT_BYTES:
        file.close()
        raise RestoreRefused(f"{path} is larger than {MAX_SNAPSHOT_BYTES} bytes")
    return file


def _open_wrapped(
    config: AvailabilityConfig,
    platform: Platform,
    key: x25519.X25519PrivateKey,
    wrapped: WrappedKey,
) -> HandoverSecret:
    collateral = CasCollateral(config.collateral, lambda: None)
    try:
        answer = parse_answer(json.dumps(wrapped.answer))
        request = _registered_request(answer.request_id, b64_encode(recovery_public_der(key)))
        now = datetime.now(UTC)
        own = own_identity(platform, at=now, collateral=collateral)
        return open_handover(answer, request, key, own, at=now, collateral=collateral)
    except HandoverRefused as exc:
        raise RestoreRefused(
            f"the database key sealed for this backup ({wrapped.name}) cannot be used "
            f"({exc.check}): {exc.message}"
        ) from exc
    finally:
        collateral.close()


def _check_audit_lines(header: SnapshotHeader, last_hash: str | None) -> None:
    if header.audit_seq == 0:
        return
    if last_hash != header.audit_head:
        raise RestoreRefused(
            f"snapshot {header.snapshot_id} does not carry the audit log up to its audit head "
            f"(seq {header.audit_seq}): it was written by a CAS version that did not, or damaged"
        )


def record_restored(cas: Cas, restored: Restored) -> None:
    """Write the ``restored`` audit entry of the CAS :func:`restore` created, now open."""
    header = restored.header
    with state_change(cas.audit_log) as entry, cas.store.transaction() as txn:
        write_state(txn, read_state(txn))
        entry.record(
            txn,
            "restored",
            actor="cas",
            subject=header.snapshot_id,
            details={
                "cluster_id": header.cluster_id,
                "state_counter": header.state_counter,
                "audit_seq": header.audit_seq,
                "audit_head": header.audit_head,
                "taken_at": header.taken_at,
                "restored_at": restored.restored_at,
                "backup": restored.backup_name,
                "backup_key_hash": restored.backup_key_hash,
                "platform": cas.platform.kind,
            },
        )
    log.warning(
        "this CAS was restored from snapshot %s (commit %d, taken %s); the report says "
        "restored_from, and clients that saw a later commit refuse it",
        header.snapshot_id,
        header.state_counter,
        header.taken_at,
    )
