"""Sessions: storing policies and their secrets, and deciding who may do what with them.

What a session *means* is decided in :mod:`opencas.policy`; this module is what happens when one
is stored: access decisions against the stored version, the ``predecessor`` check that keeps two
writers from losing each other's changes, import checks against the exporters, the refusal of
an unpinned export to a name nobody has claimed yet, and the session
and its generated secrets written in one transaction.

Records: table ``sessions`` (key: session name) holds the policy text as uploaded, its normal
form, hash and creator; table ``session-secrets`` (same key) holds the session's own secret
values. Imported secrets are not copied: they are resolved from the exporter when used, so they
follow the exporter's later updates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from opencas.content_cache import ContentCache
from opencas.errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    RecordDamagedError,
)
from opencas.policy.access import (
    Approval,
    Governance,
    SecretKeys,
    acting_creator,
    allows,
    can_create_in,
    can_read,
    can_update,
    governs_creation,
    names_secret_keys,
    verify_approval,
)
from opencas.policy.caller import Caller
from opencas.policy.errors import SessionError
from opencas.policy.hashing import session_hash
from opencas.policy.model import AccessRuleModel, NoneRule, Session
from opencas.policy.parse import Purpose, parse_session, session_from_normal_form
from opencas.policy.secret_values import (
    SecretValue,
    certificate_keys,
    check_exports_claimed,
    check_import,
    generate_values,
    public_values,
    unpinned_export_targets,
)
from opencas.policy.volumes import (
    check_volume_exports_claimed,
    check_volume_import,
    unpinned_volume_export_targets,
)
from opencas.service.audit import actor_of, record_read, state_change
from opencas.service.cas import Cas
from opencas.service.identity import utc_now_text
from opencas.service.records import decode_record, write_record
from opencas.service.session_limits import check_session, check_session_text
from opencas.service.volume_states import write_session_volumes
from opencas.sources.problems import Problem
from opencas.store.base import Reader, Transaction

SESSIONS = "sessions"
SECRETS = "session-secrets"
_CHANGING_SESSIONS = "changing sessions"

_parsed_sessions: ContentCache[str, Session] = ContentCache()
_decoded_secrets: ContentCache[tuple[str, bytes], dict[str, SecretValue]] = ContentCache()
_decoded_sessions: ContentCache[tuple[str, bytes], StoredSession] = ContentCache()


class SessionRecord(BaseModel):
    """One stored session version."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str
    text: str
    normal_form: dict[str, Any]
    hash: str
    creator: str
    created_at: str
    updated_at: str
    revision: int
    governed_by: str | None = None
    creator_approved: bool = False


class SecretsRecord(BaseModel):
    """The session's own secret values (never imported ones)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    values: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class StoredSession:
    """A session as read back: the record and the parsed policy."""

    record: SessionRecord
    session: Session


def parent_of(name: str) -> str | None:
    """The namespace session that governs creating ``name`` (``a/b`` for ``a/b/c``)."""
    parent, _, _ = name.rpartition("/")
    return parent or None


def load_session(source: Reader, name: str) -> StoredSession | None:
    """The stored session ``name``, or ``None``."""
    data = source.get(SESSIONS, name)
    if data is None:
        return None
    # Decoding validates the whole record, normal form and text included; reuse it while the
    # record's bytes are the same.
    return _decoded_sessions.get_or_make(
        (name, hashlib.sha256(data).digest()), lambda: _decode_session(name, data)
    )


def _decode_session(name: str, data: bytes) -> StoredSession:
    record = decode_record(SessionRecord, SESSIONS, name, data)
    try:
        # The record is authenticated and its hash names its normal form (both written by the
        # CAS in one record), so the parsed session can be reused for every read of that hash.
        session = _parsed_sessions.get_or_make(
            record.hash, lambda: session_from_normal_form(record.normal_form)
        )
    except SessionError as exc:
        raise RecordDamagedError(SESSIONS, name, "not a valid session") from exc
    return StoredSession(record, session)


def load_secret_values(source: Reader, name: str) -> dict[str, SecretValue]:
    """The session's own secret values."""
    data = source.get(SECRETS, name)
    if data is None:
        return {}

    def decode() -> dict[str, SecretValue]:
        record = decode_record(SecretsRecord, SECRETS, name, data)
        try:
            return {key: SecretValue.from_record(value) for key, value in record.values.items()}
        except ValueError as exc:
            raise RecordDamagedError(SECRETS, name, "a secret value does not load") from exc

    # Decoding reloads every key and certificate; reuse it while the record's bytes are the same.
    return dict(_decoded_secrets.get_or_make((name, hashlib.sha256(data).digest()), decode))


def secret_keys_for(source: Reader, name: str, rule: AccessRuleModel) -> SecretKeys:
    """The key hashes of session ``name``'s certificate secrets, as ``source`` holds them, when
    ``rule`` (one of that session's access rules) names any; otherwise none are read."""
    if not names_secret_keys(rule):
        return {}
    return certificate_keys(load_secret_values(source, name))


@dataclass(frozen=True)
class _Change:
    """A session write to admit: the new version, its hash, who asks and whose signatures hold."""

    session: Session
    text: str
    hash: str
    caller: Caller
    approval: Approval


def _change(session: Session, text: str, caller: Caller, signatures: object) -> _Change:
    new_hash = session_hash(session)
    approval = verify_approval(signatures, new_hash, caller.key_hash)
    return _Change(session, text, new_hash, caller, approval)


@dataclass(frozen=True)
class _Creation:
    """What admitting a new session found: its imports, and the rule that governed it."""

    imported: dict[str, SecretValue]
    governed_by: str | None
    creator_approved: bool


def governance_of(source: Reader, stored: StoredSession) -> Governance | None:
    """The signer-governed rule ``stored`` was created under, as its namespace has it now.

    ``None`` for a session created under any other rule (or before this was recorded).
    """
    namespace = stored.record.governed_by
    if namespace is None:
        return None
    governing = load_session(source, namespace)
    if governing is None:
        # Namespaces are never removed; should one be missing, nothing satisfies its rule.
        return Governance(NoneRule(), "", stored.record.creator_approved)
    rule = governing.session.access_policy.create_sessions
    return Governance(
        rule,
        acting_creator(governing.record.creator, governance_of(source, governing)),
        stored.record.creator_approved,
        secret_keys_for(source, namespace, rule),
    )


def _parse_within_limits(cas: Cas, text: str, purpose: Purpose) -> Session:
    """``text`` parsed, if it and the session it holds are within the CAS's session limits."""
    limits = cas.config.session_limits
    check_session_text(text, limits)
    session = parse_session(text, "session", purpose=purpose)
    check_session(session, limits)
    return session


def create_session(cas: Cas, text: str, caller: Caller, signatures: object = ()) -> SessionRecord:
    """Store a new session written by ``caller``; returns its record.

    Refuses: anonymous callers (401); an invalid policy (400, naming path and line); a name that
    exists (409); a namespace whose parent is missing (404) or whose ``create_sessions`` policy
    does not allow the caller (403); a broken import, or an unpinned export to a session or
    namespace that does not exist yet (400); a session over the CAS's session limits (413,
    naming the limit).
    """
    creator = caller.signer(_CHANGING_SESSIONS)
    change = _change(_parse_within_limits(cas, text, "create"), text, caller, signatures)
    # Secrets (an RSA key can take seconds) are made from a snapshot, outside the write lock;
    # the checks run again in the transaction, against whatever was committed meanwhile.
    with cas.store.snapshot() as view:
        creation = _admit_create(view, change)
    values = generate_values(change.session, None, None, creation.imported)
    now = utc_now_text()
    record = SessionRecord(
        name=change.session.name,
        text=text,
        normal_form=change.session.normal_form(),
        hash=change.hash,
        creator=creator,
        created_at=now,
        updated_at=now,
        revision=1,
        governed_by=creation.governed_by,
        creator_approved=creation.creator_approved,
    )

    def admit_again(source: Reader, again: _Change) -> None:
        found = _admit_create(source, again)
        if (found.governed_by, found.creator_approved) != (
            record.governed_by,
            record.creator_approved,
        ):
            raise ConflictError(
                f"the namespace of {record.name} changed while it was being created; retry"
            )

    return _commit(cas, change, admit_again, record, values)


def _admit_create(source: Reader, change: _Change) -> _Creation:
    """Refuse the creation unless it may happen now; returns what admitting it found."""
    name = change.session.name
    if source.get(SESSIONS, name) is not None:
        raise ConflictError(f"session {name} exists; update it instead", code="session-exists")
    parent = parent_of(name)
    governed_by, approved = None, False
    if parent is not None:
        governing = load_session(source, parent)
        if governing is None:
            raise NotFoundError(
                f"cannot create {name}: its namespace session {parent} does not exist"
            )
        parent_creator = acting_creator(governing.record.creator, governance_of(source, governing))
        rule = governing.session.access_policy.create_sessions
        parent_keys = secret_keys_for(source, parent, rule)
        if not can_create_in(
            governing.session, change.caller, parent_creator, change.approval.signers, parent_keys
        ):
            raise ForbiddenError(
                f"the create_sessions policy of {parent} does not allow you to create {name}",
                code="access-denied",
            )
        if governs_creation(rule):
            # Approved as creator only if the signatures that bind the caller suffice alone.
            governed_by = parent
            approved = allows(
                rule,
                caller=change.caller,
                creator=parent_creator,
                signers=change.approval.bound,
                secret_keys=parent_keys,
            )
    _check_exports(source, change)
    return _Creation(imported_values(source, change.session, change.hash), governed_by, approved)


def update_session(
    cas: Cas, name: str, text: str, caller: Caller, signatures: object = ()
) -> SessionRecord:
    """Replace session ``name`` with ``text``, whose ``predecessor`` must be the current hash.

    Refuses: anonymous callers (401); an invalid policy or a name that differs from ``name``
    (400); an unknown session (404); a stale predecessor (409, with ``current_hash``); an update
    the stored version's ``update`` policy does not allow (403); a broken import, or an unpinned
    export to a session or namespace that does not exist yet (400); a session over the CAS's
    session limits (413, naming the limit).
    """
    caller.signer(_CHANGING_SESSIONS)
    session = _parse_within_limits(cas, text, "update")
    if session.name != name:
        raise SessionError(Problem.about("name", f"the policy names {session.name}, not {name}"))
    change = _change(session, text, caller, signatures)
    with cas.store.snapshot() as view:
        current, imported = _admit_update(view, change)
        previous = load_secret_values(view, name)
    # Made outside the write lock; the transaction admits the update again, and a session that
    # changed meanwhile no longer matches the predecessor, so these values cannot be stale.
    values = generate_values(session, previous, current.session, imported)
    record = current.record.model_copy(
        update={
            "text": text,
            "normal_form": session.normal_form(),
            "hash": change.hash,
            "updated_at": utc_now_text(),
            "revision": current.record.revision + 1,
        }
    )
    return _commit(cas, change, _admit_update, record, values)


def _admit_update(source: Reader, change: _Change) -> tuple[StoredSession, dict[str, SecretValue]]:
    """Refuse the update unless it may happen now; returns the current version and imports."""
    name = change.session.name
    current = load_session(source, name)
    if current is None:
        raise NotFoundError(f"there is no session {name}")
    if not can_update(
        current.session,
        change.caller,
        current.record.creator,
        change.approval.signers,
        governance_of(source, current),
        secret_keys_for(source, name, current.session.access_policy.update),
    ):
        raise ForbiddenError(
            f"the update policy of {name} does not allow this update", code="access-denied"
        )
    if change.session.predecessor != current.record.hash:
        raise ConflictError(
            f"session {name} changed: its current hash is {current.record.hash}, but the "
            f"update names predecessor {change.session.predecessor}; merge and retry",
            code="stale-predecessor",
            details={"current_hash": current.record.hash},
        )
    _check_exports(source, change)
    return current, imported_values(source, change.session, change.hash)


def _check_exports(source: Reader, change: _Change) -> None:
    """Refuse an unpinned export to a session or namespace that nobody has created yet, and a
    volume import its exporter does not allow."""
    targets = unpinned_export_targets(change.session)
    existing = {name for name in targets if source.get(SESSIONS, name) is not None}
    check_exports_claimed(change.session, existing, change.text)
    volume_targets = unpinned_volume_export_targets(change.session)
    existing = {name for name in volume_targets if source.get(SESSIONS, name) is not None}
    check_volume_exports_claimed(change.session, existing, change.text)
    check_volume_imports(source, change.session, change.hash)


def check_volume_imports(source: Reader, session: Session, session_hash: str) -> None:
    """Refuse ``session`` (at ``session_hash``) if one of its volume imports is not allowed by
    its exporter's current version (:func:`~opencas.policy.volumes.check_volume_import`)."""
    for volume in session.volumes:
        spec = volume.import_
        if spec is None:
            continue
        exporter = load_session(source, spec.session) if spec.session != session.name else None
        check_volume_import(
            session,
            volume.name,
            spec,
            exporter.session if exporter else None,
            exporter.record.hash if exporter else None,
            session_hash,
        )


def _commit(
    cas: Cas,
    change: _Change,
    admit: Callable[[Reader, _Change], object],
    record: SessionRecord,
    values: Mapping[str, SecretValue],
) -> SessionRecord:
    """Write ``record`` and its own values if ``admit`` still admits ``change``; returns it.

    The audit entry (``session_created`` or ``session_updated``) is durable before the commit.
    """
    with state_change(cas.audit_log) as entry, cas.store.transaction() as txn:
        admit(txn, change)
        write_session(txn, record, change.session, values)
        entry.record(
            txn,
            "session_created" if record.revision == 1 else "session_updated",
            actor=actor_of(change.caller),
            subject=record.name,
            details={
                "hash": record.hash,
                "predecessor": change.session.predecessor,
                "revision": record.revision,
                "signers": sorted(change.approval.signers),
            },
        )
    return record


def read_session(cas: Cas, name: str, caller: Caller) -> SessionRecord:
    """The stored session ``name`` if ``caller`` may read it; :class:`NotFoundError` otherwise.

    A session the caller may not read gets the very answer of one that does not exist (404
    ``not-found``, the same message), whether the caller is anonymous or signed: a read must
    not tell who may not read a session that the name exists.
    """
    # One snapshot: the certificate a secret-key rule names is that of the version decided.
    with cas.store.snapshot() as view:
        stored = load_session(view, name)
        allowed = stored is not None and can_read(
            stored.session,
            caller,
            acting_creator(stored.record.creator, governance_of(view, stored)),
            secret_keys_for(view, name, stored.session.access_policy.read),
        )
    if stored is None or not allowed:
        raise NotFoundError(f"there is no session {name} that you may read")
    record_read(
        cas.audit_log,
        "session_read",
        actor=actor_of(caller),
        subject=name,
        details={"hash": stored.record.hash},
    )
    return stored.record


def exported_values(cas: Cas, name: str, secret: str | None) -> dict[str, str]:
    """The public values session ``name`` marks ``export_public`` (all, or just ``secret``)."""
    # One answer for "no such session" and "nothing public": anonymous callers must not be able
    # to list which sessions exist.
    stored = load_session(cas.store, name)
    values = public_values(stored.session, load_secret_values(cas.store, name)) if stored else {}
    if secret is not None:
        values = {secret: values[secret]} if secret in values else {}
    if not values:
        what = f"a public value {secret}" if secret else "public values"
        raise NotFoundError(f"no {what} for session {name}")
    # Anyone may read public values; the entry names which were read, never their values.
    record_read(
        cas.audit_log,
        "values_read",
        actor="anonymous",
        subject=name,
        details={"hash": stored.record.hash if stored else None, "secrets": sorted(values)},
    )
    return values


def imported_values(source: Reader, session: Session, importer_hash: str) -> dict[str, SecretValue]:
    """The values ``session`` imports, as their exporters hold them now.

    Each import is checked against the exporter's current ``export`` rules and hash pins; a
    broken import raises :class:`SessionError` naming it.
    """
    imported: dict[str, SecretValue] = {}
    for secret in session.secrets:
        spec = secret.import_
        if spec is None:
            continue
        exporter = load_session(source, spec.session)
        check_import(
            session,
            spec,
            exporter.session if exporter else None,
            exporter.record.hash if exporter else None,
            importer_hash,
        )
        value = load_secret_values(source, spec.session).get(spec.secret)
        if value is None:
            raise SessionError(
                Problem.about(
                    f"secrets.{secret.name}.import",
                    f"session {spec.session} holds no value for {spec.secret}",
                )
            )
        imported[secret.name] = value
    return imported


def write_session(
    txn: Transaction,
    record: SessionRecord,
    session: Session,
    values: Mapping[str, SecretValue],
) -> None:
    """Write ``record`` (the stored version of ``session``), its volumes and its own secret
    ``values`` in ``txn``. It admits nothing and records no audit entry: that is the caller's."""
    own = {secret.name for secret in session.secrets if secret.import_ is None}
    # Reads of this version then find it parsed, so a read costs about the same whether the
    # name exists or not (nothing to parse before the read rule is known).
    _parsed_sessions.get_or_make(record.hash, lambda: session)
    write_session_volumes(txn, session)
    write_record(txn, SESSIONS, record.name, record)
    write_record(
        txn,
        SECRETS,
        record.name,
        SecretsRecord(
            values={name: value.to_record() for name, value in values.items() if name in own}
        ),
    )
