"""The CAS's audit log: its key, opening its file against the head the store committed, the
entries operations write, and reading it back for the owner.

The head the store keeps is that of the last entry whose operation committed (it is written in
that operation's transaction). Opening the log checks that the file still holds that entry; a
state-changing entry after it is one whose operation never committed (the CAS stopped between
the two), and the next entry says so.

On PostgreSQL the log is one chain for every instance of the CAS, kept in the database
(:mod:`opencas.store.audit_entries`); each instance signs with an audit key of its own, certified
by the CAS key, and its sink holds the entries it wrote. A database whose log was kept in the
creating instance's file until now gets that file's entries moved in when that instance opens it.
An owner config change made at any instance reaches the others' writers through the chain's
head (:class:`OwnerConfigFollower`): each takes the new mode and sink up before it appends
again, and within :data:`opencas.audit.log.FOLLOW_SECONDS` when it appends nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opencas.audit.chain import GENESIS, STATE_EVENTS, Head, line_hash, parse_entry, start_details
from opencas.audit.log import (
    AuditLog,
    AuditLogMode,
    Operation,
    Settings,
    SharedChain,
    StartInfo,
)
from opencas.audit.sinks import FileSink, NetworkSink, Sink, cut_partial_line, lines_backwards
from opencas.config.owner import OwnerConfig, owner_config_sha256
from opencas.crypto.pem import certificate_pem, private_key_pem
from opencas.crypto.x509 import (
    CA_VALIDITY,
    CertificateUse,
    Issuer,
    build_certificate,
    common_name_subject,
    key_usage,
)
from opencas.errors import AuditLogError
from opencas.policy.caller import Caller
from opencas.service.cas_records import (
    AuditHeadRecord,
    AuditKeyRecord,
    read_audit_checkpoints,
    read_audit_head,
    read_audit_key,
    read_owner_config,
    read_state,
    write_audit_head,
    write_audit_key,
)
from opencas.service.identity import CasIdentity, utc_now_text
from opencas.store.audit_entries import AuditEntries
from opencas.store.base import Store, Transaction
from opencas.store.postgres import PostgresStore

log = logging.getLogger("opencas")

#: At most this many entries, and about this many bytes, in one page of ``GET /v1/audit``.
MAX_PAGE_ENTRIES = 1000
MAX_PAGE_BYTES = 4 * 1024 * 1024


def actor_of(caller: Caller) -> str:
    """How an entry names ``caller``: its key hash, or ``anonymous``."""
    return caller.key_hash or "anonymous"


def mode_of(config: OwnerConfig | None) -> AuditLogMode:
    """The audit log mode an owner config sets (``signed`` before provisioning)."""
    return "signed" if config is None else config.audit_log.mode


def _sink_settings(config: OwnerConfig | None) -> tuple[str, str | None, str | None]:
    if config is None:
        return ("file", None, None)
    section = config.audit_log
    return (section.sink, section.url, section.server_ca_certificate)


def open_sink(path: Path, config: OwnerConfig | None) -> Sink:
    """The sink the owner ``config`` names, on the log file at ``path``.

    Raises :class:`AuditLogError` when the file cannot be opened.
    """
    sink, url, ca_certificate_pem = _sink_settings(config)
    try:
        if sink == "network" and url is not None:
            return NetworkSink(path, url, ca_certificate_pem)
        return FileSink(path)
    except OSError as exc:
        raise AuditLogError(f"cannot open the audit log {path}: {exc.strerror or exc}") from exc


def next_sink(path: Path, current: OwnerConfig | None, new: OwnerConfig) -> Sink | None:
    """The sink for ``new``, when it changes where the log goes, already holding every entry
    written so far; None when ``new`` keeps the sink of ``current``.

    A network sink is tried here, before the operation: a server that cannot take the log
    refuses the owner config (:class:`AuditLogError`) and nothing changes.
    """
    if _sink_settings(current) == _sink_settings(new):
        return None
    sink = open_sink(path, new)
    try:
        if isinstance(sink, NetworkSink):
            sink.probe()
        else:
            sink.sync()
    except OSError as exc:
        sink.close()
        raise AuditLogError(
            f"the owner config's audit log sink cannot take the log ({exc.strerror or exc}); "
            "the owner config was not changed"
        ) from exc
    return sink


def settings_of(config: OwnerConfig | None, sink: Sink | None = None) -> Settings:
    """The audit log settings ``config`` makes (its hash and mode), with ``sink`` to write to."""
    version = "" if config is None else owner_config_sha256(config)
    return Settings(version, mode_of(config), sink)


class OwnerConfigFollower:
    """The committed owner config's audit log settings, for this instance's writer of the
    cluster's chain (:class:`opencas.audit.log.ConfigSource`): its hash, mode, and a sink of
    its own on ``path`` when the config moves the log.

    It remembers the config it last gave or was told of (:meth:`took`), to know whether a
    committed one changes where the log goes. ``on_change`` is told of each committed config
    that another instance made, after the writer took its settings up, so that the rest of what
    an owner config sets (the evidence archive, the TLS certificate's names) follows it too; it
    must not block, nor open a store transaction (a state change may be appending).
    """

    def __init__(
        self,
        store: Store,
        path: Path,
        config: OwnerConfig | None,
        on_change: Callable[[OwnerConfig | None], None] | None = None,
    ) -> None:
        self._store = store
        self._path = path
        self._config = config
        self._on_change = on_change
        self._lock = threading.Lock()

    def version(self) -> str:
        """The hash of the committed owner config (empty before provisioning), from the state
        record, which the store authenticates."""
        return read_state(self._store).owner_config_sha256 or ""

    def follow(self) -> Settings:
        """The committed owner config's settings; a new sink, already holding the log, when it
        moves the log. :class:`AuditLogError` when that sink cannot take the log."""
        with self._store.snapshot() as view:
            config = read_owner_config(view)
        with self._lock:
            sink = None if config is None else next_sink(self._path, self._config, config)
            changed = config != self._config
            self._config = config
        if changed and self._on_change is not None:
            self._on_change(config)
        return settings_of(config, sink)

    def took(self, config: OwnerConfig) -> None:
        """This instance committed ``config`` itself (and moved its sink as it says)."""
        with self._lock:
            self._config = config


def took_config(audit: AuditLog, config: OwnerConfig) -> None:
    """Tell ``audit``'s follower of the owner config this instance committed, if it has one."""
    if isinstance(audit.source, OwnerConfigFollower):
        audit.source.took(config)


def audit_key(store: Store, identity: CasIdentity) -> AuditKeyRecord:
    """The audit key record of this instance, made (and certified by the CAS key) the first
    time it is needed: each instance that joined the CAS signs with a key of its own."""
    with store.transaction() as txn:
        record = read_audit_key(txn, identity.scope)
        if record is not None:
            return record
        key = Ed25519PrivateKey.generate()
        certificate = build_certificate(
            key.public_key(),
            common_name_subject(f"OpenCAS audit key {identity.cas_key_hash[:16]}"),
            CertificateUse(ca=False, key_usage=key_usage(digital_signature=True)),
            signer=Issuer(identity.cas_key, identity.ca_certificate),
            valid_for=CA_VALIDITY - timedelta(days=1),
        )
        record = AuditKeyRecord(
            key_pem=private_key_pem(key).decode("ascii"),
            certificate_pem=certificate_pem(certificate).decode("ascii"),
        )
        write_audit_key(txn, record, identity.scope)
        return record


@dataclass(frozen=True)
class OpenedFile:
    """Where the file ends, and whether its last entry's operation never committed."""

    head: Head
    prev_failed: bool


def reconcile(path: Path, committed: Head) -> OpenedFile:
    """Check the log file at ``path`` against the head the store ``committed``.

    A last line cut by a crash (no newline) is removed: it was never acknowledged. Raises
    :class:`AuditLogError` when the file does not hold the committed entry (it was truncated,
    replaced or edited) or its last entries are not entries.
    """
    if not path.exists() or path.stat().st_size == 0:
        if committed.seq == 0:
            return OpenedFile(GENESIS, False)
        raise AuditLogError(
            f"the audit log {path} is missing or empty, but the database committed its entry "
            f"seq {committed.seq}; restore the log file"
        )
    removed = cut_partial_line(path)
    if removed:
        log.warning("audit: removed an unfinished last line (%d bytes) from %s", removed, path)
    last: tuple[Head, str] | None = None
    for number, line in enumerate(lines_backwards(path), 1):
        try:
            entry = parse_entry(line)
        except ValueError as exc:
            raise AuditLogError(
                f"the audit log {path} is damaged: line {number} from the end: {exc}"
            ) from exc
        head = Head(entry.seq, line_hash(line))
        if committed.seq == 0 or head == committed:
            last = last or (head, entry.event)
            break
        if entry.seq < committed.seq:
            raise AuditLogError(
                f"the audit log {path} does not hold the entry seq {committed.seq} that the "
                "database committed: the log was truncated or replaced; restore it"
            )
        if last is not None and entry.event in STATE_EVENTS:
            # Only the last entry can be a change that never committed: one before it did
            # commit, so the database lost it.
            raise AuditLogError(
                f"the database {_database_hint(committed)} is older than its audit log {path}: "
                f"the entry seq {entry.seq} ({entry.event}) records a change the database does "
                "not hold (an older database restored?); restore the log taken with it"
            )
        last = last or (head, entry.event)
    if last is None:  # pragma: no cover - a non-empty file has a line
        return OpenedFile(GENESIS, False)
    if committed.seq > 0 and last[0].seq < committed.seq:
        raise AuditLogError(
            f"the audit log {path} ends at seq {last[0].seq}, before the entry seq "
            f"{committed.seq} that the database committed; restore it"
        )
    uncommitted = last[0] != committed and last[1] in STATE_EVENTS
    if uncommitted:
        log.warning("audit: the operation of seq %d did not commit", last[0].seq)
    return OpenedFile(last[0], uncommitted)


def _database_hint(committed: Head) -> str:
    return f"(its audit head is seq {committed.seq})"


def shared_chain(store: Store) -> AuditEntries | None:
    """The chain every instance appends to, on PostgreSQL; None for a CAS that is alone."""
    return store.audit_entries if isinstance(store, PostgresStore) else None


def open_audit_log(
    store: Store,
    identity: CasIdentity,
    path: Path,
    attest: Callable[[str], Mapping[str, Any]],
    on_change: Callable[[OwnerConfig | None], None] | None = None,
) -> AuditLog:
    """Open the audit log at ``path`` for the CAS whose store and identity are given.

    ``attest(nonce)`` answers what ``GET /v1/attest`` would: the ``cas_started`` entry carries
    it, with the previous entry's hash as nonce. On PostgreSQL the log is the cluster's chain in
    the database and ``path`` this instance's sink; ``on_change`` is then told of every owner
    config another instance commits (:class:`OwnerConfigFollower`).
    """
    record = audit_key(store, identity)
    stored = read_audit_head(store)
    committed = GENESIS if stored is None else Head(stored.seq, stored.hash)
    entries = shared_chain(store)
    if entries is None:
        opened = reconcile(path, committed)
    else:
        opened = _open_shared(entries, identity, path, committed)
    config = read_owner_config(store)
    sink = open_sink(path, config)

    def details(prev: str) -> Mapping[str, Any]:
        answer = attest(prev)
        return start_details(
            cas_key_hash=identity.cas_key_hash,
            ca_certificate_pem=identity.ca_certificate_pem.decode("ascii"),
            audit_certificate_pem=record.certificate_pem,
            report=answer["report"],
            evidence=answer["evidence"],
        )

    shared: SharedChain | None = entries
    return AuditLog(
        sink,
        record.load_key(),
        mode=mode_of(config),
        head=opened.head,
        prev_failed=opened.prev_failed,
        start=StartInfo(details),
        clock=utc_now_text,
        shared=shared,
        source=None if entries is None else OwnerConfigFollower(store, path, config, on_change),
        version=settings_of(config).version,
    )


def _open_shared(
    entries: AuditEntries, identity: CasIdentity, path: Path, committed: Head
) -> OpenedFile:
    """The cluster's chain as this instance starts on it: its head, checked against the head
    committed with the state; the creating instance's log file moved in, when the database
    kept no entries yet but its state committed some."""
    head = entries.head()
    if head.seq == 0 and committed.seq > 0:
        if identity.scope:
            raise AuditLogError(
                f"the database's audit log is still in the log file of the instance that "
                f"created the CAS (its committed head is seq {committed.seq}): start that "
                "instance first, it moves the log into the database"
            )
        opened = reconcile(path, committed)
        head = entries.import_log(_file_entries(path))
        log.info("audit: moved the log file %s (to seq %d) into the database", path, head.seq)
        return OpenedFile(head, opened.prev_failed)
    if head.seq < committed.seq or (head.seq == committed.seq and head != committed):
        raise AuditLogError(
            f"the database's audit log ends at seq {head.seq}, before the entry seq "
            f"{committed.seq} {committed.hash} that its state committed: audit_entries and "
            "audit_head were cut back or replaced; restore them"
        )
    if path.exists():
        removed = cut_partial_line(path)
        if removed:
            log.warning("audit: removed an unfinished last line (%d bytes) from %s", removed, path)
    return OpenedFile(head, False)


def _file_entries(path: Path) -> Iterator[tuple[Head, bytes]]:
    """Each entry of the log file at ``path``: its head and line, in order."""
    with path.open("rb") as file:
        for number, raw in enumerate(file, 1):
            line = raw.rstrip(b"\n")
            try:
                seq = parse_entry(line).seq
            except ValueError as exc:
                raise AuditLogError(
                    f"the audit log {path} is damaged at line {number}: {exc}"
                ) from exc
            yield Head(seq, line_hash(line)), line


class StateEntry:
    """Records a state-changing operation's entry in its transaction (see :func:`state_change`)."""

    def __init__(self, operation: Operation, sink: Sink | None, config: OwnerConfig | None) -> None:
        self._operation = operation
        self.sink = sink
        self.config = config

    def record(
        self,
        txn: Transaction,
        event: str,
        *,
        actor: str,
        subject: str,
        details: Mapping[str, Any],
    ) -> None:
        """Write the entry (durable before this returns) and its head into ``txn``; with a
        new sink, to that sink, and every later entry too (see :meth:`Operation.record`)."""
        sink, self.sink = self.sink, None
        head = self._operation.record(
            event,
            actor=actor,
            subject=subject,
            details=details,
            sink=sink,
            settings=None if self.config is None else settings_of(self.config),
        )
        if head is not None:
            write_audit_head(txn, AuditHeadRecord(seq=head.seq, hash=head.hash))


@contextlib.contextmanager
def state_change(
    audit: AuditLog, sink: Sink | None = None, config: OwnerConfig | None = None
) -> Iterator[StateEntry]:
    """Wrap a store transaction that changes state: ``with state_change(log) as entry,
    store.transaction() as txn: ...; entry.record(txn, ...)``. If the transaction fails after the
    entry was written, the next entry says so. ``sink`` (from :func:`next_sink`) is where the
    entry and the ones after it go; an operation that fails before its entry closes it.
    ``config``, for an operation that writes a new owner config: the settings the entries after
    this one follow, in every instance (see :class:`OwnerConfigFollower`)."""
    with audit.operation() as operation:
        entry = StateEntry(operation, sink, config)
        try:
            yield entry
        finally:
            if entry.sink is not None:
                entry.sink.close()
    if config is not None:
        took_config(audit, config)


def log_start(audit: AuditLog) -> None:
    """Write this run's ``cas_started`` entry (unless the log is off), before serving."""
    written = audit.write_start()
    if written is not None:
        written.wait()


def log_stop(audit: AuditLog) -> None:
    """Write ``cas_stopped`` (unless the log is off) once serving ended."""
    audit.append("cas_stopped", actor="cas", subject="", details={}).wait()


def record_read(
    audit: AuditLog, event: str, *, actor: str, subject: str, details: Mapping[str, Any]
) -> None:
    """Write the entry of an operation that changes nothing stored, and wait until durable."""
    audit.append(event, actor=actor, subject=subject, details=details).wait()


@dataclass(frozen=True)
class AuditPage:
    """One page of the log for its owner: entry lines, where to go on, the head, checkpoints."""

    entries: list[str]
    next: int | None
    head: Head
    checkpoints: list[Head]


def read_page(audit: AuditLog, store: Store, path: Path, start: int) -> AuditPage:
    """The entries from ``seq`` ``start`` on, at most one page of them: on PostgreSQL the
    cluster's, from the database; else from the log file at ``path``."""
    checkpoints = [Head(point.seq, point.hash) for point in read_audit_checkpoints(store)]
    entries = shared_chain(store)
    if entries is not None:
        head = entries.head()
        stored = entries.page(start, MAX_PAGE_ENTRIES, MAX_PAGE_BYTES)
        return AuditPage(stored.lines, stored.next, head, checkpoints)
    head = audit.head
    lines: list[str] = []
    size = 0
    following: int | None = None
    if not path.exists():
        return AuditPage(lines, following, head, checkpoints)
    with path.open("rb") as file:
        offset = _page_offsets.get((path, start), 0)
        file.seek(offset)
        for raw in file:
            if not raw.endswith(b"\n"):
                break  # a line still being written
            line = raw[:-1]
            try:
                seq = parse_entry(line).seq
            except ValueError as exc:
                message = f"the audit log {path} is damaged at byte {offset}: {exc}"
                raise AuditLogError(message) from exc
            if seq >= start:
                if len(lines) >= MAX_PAGE_ENTRIES or (lines and size + len(line) > MAX_PAGE_BYTES):
                    following = seq
                    _page_offsets[path, seq] = offset
                    break
                lines.append(line.decode("utf-8"))
                size += len(line)
            offset += len(raw)
    return AuditPage(lines, following, head, checkpoints)


# Where each page handed out ends, so that reading the log page by page is linear, not quadratic.
_page_offsets: dict[tuple[Path, int], int] = {}
