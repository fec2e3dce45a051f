"""The records of the CAS's own table ``cas``, and the only code that reads or writes them.

Records (table ``cas``; each value is the JSON of its model below):

- ``identity`` (:class:`IdentityRecord`): instance id, CAS key (ECDSA P-384) and its
  self-signed CA certificate; written once, at the first start.
- ``tls`` (:class:`TlsRecord`): the TLS server key and certificate issued by the CAS key for
  the configured hostnames; reissued when the hostnames change.
- ``state`` (:class:`StateRecord`): what the attestation report says about provisioning and the
  database key.
- ``owner`` (:class:`OwnerRecord`) and ``owner-config`` (:class:`OwnerConfigRecord`): the
  owner's key hash (and certificate) and the owner config, written at provisioning.
- ``provisioning-token`` (:class:`TokenRecord`): the one-time token that attested provisioning
  requires; deleted once the CAS is provisioned.
- ``audit-key`` (:class:`AuditKeyRecord`): the Ed25519 audit key and its certificate, issued by
  the CAS key; written once. An instance that joined the CAS has its own
  (``audit-key/<instance id>``).
- ``audit-head`` (:class:`AuditHeadRecord`): the ``seq`` and hash of the last audit entry whose
  operation committed, written in that operation's transaction. There is one audit chain for the
  whole CAS, whichever instance wrote its entries (on PostgreSQL the entries are in the
  database, :mod:`opencas.store.audit_entries`).
- ``audit-checkpoint/<seq, 16 digits>`` (:class:`AuditHeadRecord`): committed heads kept for
  good, one at least every :data:`AUDIT_CHECKPOINT_INTERVAL` sequence numbers, so a verifier can
  tell a rewritten older part of the log.
- ``instance/<instance id>`` (:class:`InstanceRecord`): an instance that joined the CAS (on
  PostgreSQL) after the one that created it. A joined instance keeps its own TLS record
  (``tls/<instance id>``) and audit key (``audit-key/<instance id>``). The instance that
  created the CAS keeps the unscoped records, so a database from before clusters opens as it
  was. (Joined instances of an earlier build kept an audit chain of their own,
  ``audit-head/<instance id>`` and ``audit-checkpoint-<instance id>/<seq>``; those records are
  no longer read.)

The table name, the keys and the JSON shapes are the on-disk format: existing databases must keep
opening, so they change only with a migration. A record that must exist and does not, or that
does not fit its model, raises :class:`RecordDamagedError` naming ``cas`` and its key.
"""

from __future__ import annotations

from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict

from opencas.config.owner import OwnerConfig, owner_config_from_normal_form, owner_config_sha256
from opencas.crypto.pem import load_certificate_pem, load_private_key_pem
from opencas.errors import ConfigError, RecordDamagedError
from opencas.service.records import read_record, require_record, write_record
from opencas.store.base import Reader, Transaction

_TABLE: Final = "cas"
_IDENTITY: Final = "identity"
_TLS: Final = "tls"
_STATE: Final = "state"
_OWNER: Final = "owner"
_OWNER_CONFIG: Final = "owner-config"
_TOKEN: Final = "provisioning-token"  # noqa: S105 - a record name, not a secret
_AUDIT_KEY: Final = "audit-key"
_AUDIT_HEAD: Final = "audit-head"
_AUDIT_CHECKPOINT: Final = "audit-checkpoint/"
_INSTANCE: Final = "instance/"
#: A committed audit head becomes a checkpoint when it is this many seq past the last one.
AUDIT_CHECKPOINT_INTERVAL: Final = 1024


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class IdentityRecord(_Record):
    """The permanent identity of this CAS instance."""

    instance_id: str
    created_at: str
    cas_key_pem: str
    ca_certificate_pem: str

    def load_cas_key(self) -> ec.EllipticCurvePrivateKey:
        """The CAS key; :class:`RecordDamagedError` when it does not load."""
        return _load_key(self.cas_key_pem, _IDENTITY)

    def load_ca_certificate(self) -> x509.Certificate:
        """The CAS CA certificate; :class:`RecordDamagedError` when it does not load."""
        return _load_certificate(self.ca_certificate_pem, _IDENTITY)


class TlsRecord(_Record):
    """The current TLS server key and certificate, and what shaped the certificate."""

    hostnames: tuple[str, ...]
    subject_sha256: str | None = None
    tls_key_pem: str
    tls_certificate_pem: str

    def load_tls_key(self) -> ec.EllipticCurvePrivateKey:
        """The TLS server key; :class:`RecordDamagedError` when it does not load."""
        return _load_key(self.tls_key_pem, _TLS)

    def load_tls_certificate(self) -> x509.Certificate:
        """The TLS server certificate; :class:`RecordDamagedError` when it does not load."""
        return _load_certificate(self.tls_certificate_pem, _TLS)


class RestoredFromRecord(_Record):
    """The snapshot a restored CAS came from (the report's ``restored_from``)."""

    snapshot_id: str
    state_counter: int
    audit_seq: int
    taken_at: str
    restored_at: str


class StateRecord(_Record):
    """The facts the attestation report states about this CAS's history."""

    provisioned: bool = False
    self_provisioned: bool = False
    provisioned_at: str | None = None
    owner_identity_hash: str | None = None
    owner_config_sha256: str | None = None
    db_key_injected: bool = False
    recovery_threshold: int | None = None
    recovery_key_hashes: tuple[str, ...] = ()
    recovered: bool = False
    recovered_at: str | None = None
    restored_from: RestoredFromRecord | None = None


class OwnerRecord(_Record):
    """The CAS owner: its key hash and, when it was presented, its certificate."""

    key_hash: str
    certificate_pem: str | None


class OwnerConfigRecord(_Record):
    """The owner config in its normal form, and the hash the report states for it."""

    normal_form: dict[str, Any]
    sha256: str


class TokenRecord(_Record):
    """The one-time provisioning token (deleted once the CAS is provisioned)."""

    token: str


class InstanceRecord(_Record):
    """An instance that joined the CAS: when, and through which join request."""

    instance_id: str
    joined_at: str
    request_id: str


class AuditKeyRecord(_Record):
    """The audit signing key (Ed25519) and its certificate, issued by the CAS key."""

    key_pem: str
    certificate_pem: str

    def load_key(self) -> Ed25519PrivateKey:
        """The audit key; :class:`RecordDamagedError` when it does not load."""
        try:
            key = load_private_key_pem(self.key_pem.encode("ascii"))
        except (ValueError, TypeError) as exc:
            raise RecordDamagedError(_TABLE, _AUDIT_KEY, "its private key does not load") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise RecordDamagedError(_TABLE, _AUDIT_KEY, "its key is not an Ed25519 key")
        return key


class AuditHeadRecord(_Record):
    """An audit head: the ``seq`` and hash of an entry whose operation committed."""

    seq: int
    hash: str


def read_audit_key(source: Reader, scope: str = "") -> AuditKeyRecord | None:
    """The audit key record of the instance ``scope``, or ``None`` before it first opened the
    log."""
    return read_record(source, AuditKeyRecord, _TABLE, _scoped(_AUDIT_KEY, scope))


def write_audit_key(txn: Transaction, record: AuditKeyRecord, scope: str = "") -> None:
    """Write the audit key record of the instance ``scope`` (once)."""
    write_record(txn, _TABLE, _scoped(_AUDIT_KEY, scope), record)


def _scoped(key: str, scope: str) -> str:
    """``key`` of the instance ``scope`` (the creating instance's scope is ``""``)."""
    return f"{key}/{scope}" if scope else key


def read_audit_head(source: Reader) -> AuditHeadRecord | None:
    """The last committed head of the audit log, or ``None`` before its first logged
    operation."""
    return read_record(source, AuditHeadRecord, _TABLE, _AUDIT_HEAD)


def write_audit_head(txn: Transaction, head: AuditHeadRecord) -> None:
    """Store ``head`` as the committed head of the audit log, and as a checkpoint when one is
    due."""
    previous = read_audit_head(txn)
    write_record(txn, _TABLE, _AUDIT_HEAD, head)
    checkpoints = txn.list_keys(_TABLE, _AUDIT_CHECKPOINT)
    last = int(checkpoints[-1].removeprefix(_AUDIT_CHECKPOINT)) if checkpoints else 0
    if previous is None or head.seq - last >= AUDIT_CHECKPOINT_INTERVAL:
        write_record(txn, _TABLE, f"{_AUDIT_CHECKPOINT}{head.seq:016d}", head)


def read_audit_checkpoints(source: Reader) -> list[AuditHeadRecord]:
    """Every checkpoint of the audit log, oldest first."""
    return [
        require_record(source, AuditHeadRecord, _TABLE, key)
        for key in source.list_keys(_TABLE, _AUDIT_CHECKPOINT)
    ]


def read_instance(source: Reader, instance_id: str) -> InstanceRecord | None:
    """The record of the joined instance ``instance_id``; ``None`` for any other instance."""
    return read_record(source, InstanceRecord, _TABLE, _INSTANCE + instance_id)


def write_instance(txn: Transaction, record: InstanceRecord) -> None:
    """Record a joined instance (once, when it joins)."""
    write_record(txn, _TABLE, _INSTANCE + record.instance_id, record)


def read_identity(source: Reader) -> IdentityRecord:
    """The identity record (it exists from the first start on)."""
    return require_record(source, IdentityRecord, _TABLE, _IDENTITY)


def write_identity(txn: Transaction, record: IdentityRecord) -> None:
    """Write the identity record (once, when the CAS is created)."""
    write_record(txn, _TABLE, _IDENTITY, record)


def read_tls(source: Reader, scope: str = "") -> TlsRecord:
    """The TLS record of the instance ``scope`` (the creating instance's exists from the first
    start on, a joined instance's from its join)."""
    return require_record(source, TlsRecord, _TABLE, _scoped(_TLS, scope))


def write_tls(txn: Transaction, record: TlsRecord, scope: str = "") -> None:
    """Write the TLS record of ``scope`` (at creation or join, and whenever it is reissued)."""
    write_record(txn, _TABLE, _scoped(_TLS, scope), record)


def read_state(source: Reader) -> StateRecord:
    """The CAS state record (provisioning and database-key facts)."""
    return require_record(source, StateRecord, _TABLE, _STATE)


def write_state(txn: Transaction, record: StateRecord) -> None:
    """Write the CAS state record."""
    write_record(txn, _TABLE, _STATE, record)


def read_owner(source: Reader) -> OwnerRecord | None:
    """The owner record, or ``None`` while unprovisioned."""
    return read_record(source, OwnerRecord, _TABLE, _OWNER)


def write_owner(txn: Transaction, record: OwnerRecord) -> None:
    """Write the owner record (at provisioning)."""
    write_record(txn, _TABLE, _OWNER, record)


def read_owner_config(source: Reader) -> OwnerConfig | None:
    """The provisioned owner config, or ``None`` while unprovisioned."""
    record = read_record(source, OwnerConfigRecord, _TABLE, _OWNER_CONFIG)
    if record is None:
        return None
    try:
        return owner_config_from_normal_form(record.normal_form)
    except ConfigError as exc:
        raise RecordDamagedError(_TABLE, _OWNER_CONFIG, "not a valid owner config") from exc


def write_owner_config(txn: Transaction, config: OwnerConfig) -> str:
    """Write ``config`` as the owner config record; returns its hash (``owner_config_sha256``)."""
    sha = owner_config_sha256(config)
    write_record(
        txn, _TABLE, _OWNER_CONFIG, OwnerConfigRecord(normal_form=config.normal_form(), sha256=sha)
    )
    return sha


def read_provisioning_token(source: Reader) -> str | None:
    """The one-time provisioning token, or ``None`` once the CAS is provisioned."""
    record = read_record(source, TokenRecord, _TABLE, _TOKEN)
    return None if record is None else record.token


def write_provisioning_token(txn: Transaction, token: str) -> None:
    """Write the one-time provisioning token (when the CAS is created)."""
    write_record(txn, _TABLE, _TOKEN, TokenRecord(token=token))


def delete_provisioning_token(txn: Transaction) -> None:
    """Delete the one-time provisioning token (provisioning consumes it)."""
    txn.delete(_TABLE, _TOKEN)


def _load_key(pem: str, record: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = load_private_key_pem(pem.encode("ascii"))
    except (ValueError, TypeError) as exc:
        raise RecordDamagedError(_TABLE, record, "its private key does not load") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise RecordDamagedError(_TABLE, record, "its private key does not load")
    return key


def _load_certificate(pem: str, record: str) -> x509.Certificate:
    try:
        return load_certificate_pem(pem.encode("ascii"))
    except ValueError as exc:
        raise RecordDamagedError(_TABLE, record, "its certificate does not load") from exc
