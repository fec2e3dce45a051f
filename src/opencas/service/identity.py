"""The CAS's own identity: its key, CA certificate, TLS certificate, instance id and state.

Records (table ``cas``):

- ``identity``: instance id, CAS key (ECDSA P-384) and its self-signed CA certificate; written
  once, at the first start.
- ``tls``: the TLS server key and certificate issued by the CAS key for the configured hostnames;
  reissued when the hostnames change.
- ``state``: what the attestation report says about provisioning and the database key.
- ``owner`` and ``owner-config``: the owner's key hash (and certificate) and the owner config,
  written at provisioning.
- ``provisioning-token``: the one-time token that attested provisioning requires; deleted once
  the CAS is provisioned.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict

from opencas.attestation.report import report_time
from opencas.config.owner import ApiIdentity, OwnerConfig, owner_config_from_normal_form
from opencas.crypto.canonical import canonical_sha256
from opencas.crypto.keys import (
    generate_private_key,
    key_hash,
    load_private_key_pem,
    private_key_pem,
)
from opencas.crypto.x509 import (
    certificate_pem,
    create_ca_certificate,
    issue_tls_certificate,
    load_certificate_pem,
)
from opencas.errors import ConfigError, RecordDamagedError
from opencas.service.records import read_record, require_record, write_record
from opencas.store.base import Reader, Store, Transaction

TABLE = "cas"
TLS_RENEW_BEFORE = timedelta(days=30)
IDENTITY_KEY = "identity"
TLS_KEY = "tls"
STATE_KEY = "state"
OWNER_KEY = "owner"
OWNER_CONFIG_KEY = "owner-config"
TOKEN_KEY = "provisioning-token"  # noqa: S105 - a record name, not a secret


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class IdentityRecord(_Record):
    """The permanent identity of this CAS instance."""

    instance_id: str
    created_at: str
    cas_key_pem: str
    ca_certificate_pem: str


class TlsRecord(_Record):
    """The current TLS server key and certificate, and what shaped the certificate."""

    hostnames: tuple[str, ...]
    subject_sha256: str | None = None
    tls_key_pem: str
    tls_certificate_pem: str


class StateRecord(_Record):
    """The facts the attestation report states about this CAS's history."""

    provisioned: bool = False
    self_provisioned: bool = False
    provisioned_at: str | None = None
    owner_identity_hash: str | None = None
    owner_config_sha256: str | None = None
    db_key_injected: bool = False


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


@dataclass(frozen=True)
class CasIdentity:
    """The loaded identity: keys as objects, certificates parsed once."""

    instance_id: str
    cas_key: ec.EllipticCurvePrivateKey
    ca_certificate: x509.Certificate
    tls_key: ec.EllipticCurvePrivateKey
    tls_certificate: x509.Certificate
    hostnames: tuple[str, ...]

    @cached_property
    def cas_key_hash(self) -> str:
        """The key hash users pin (``casctl -c``)."""
        return key_hash(self.cas_key)

    @cached_property
    def tls_key_hash(self) -> str:
        """Key hash of the current TLS server key."""
        return key_hash(self.tls_key)

    @cached_property
    def ca_certificate_pem(self) -> bytes:
        """PEM of the CAS CA certificate."""
        return certificate_pem(self.ca_certificate)

    @cached_property
    def tls_certificate_pem(self) -> bytes:
        """PEM of the TLS server certificate."""
        return certificate_pem(self.tls_certificate)


def utc_now_text() -> str:
    """The current time as the report writes times (RFC 3339 UTC, seconds)."""
    return report_time(datetime.now(UTC))


def new_provisioning_token() -> str:
    """A fresh one-time provisioning token (128 bits, URL-safe)."""
    return secrets.token_urlsafe(16)


def populate_new_identity(
    txn: Transaction, hostnames: tuple[str, ...], *, db_key_injected: bool
) -> None:
    """Write every record a brand-new CAS needs, inside the creating transaction."""
    cas_key = _ec_key(generate_private_key("P-384"))
    instance_id = str(uuid.uuid4())
    ca_certificate = create_ca_certificate(cas_key, f"OpenCAS {key_hash(cas_key)[:16]}")
    identity = IdentityRecord(
        instance_id=instance_id,
        created_at=utc_now_text(),
        cas_key_pem=private_key_pem(cas_key).decode("ascii"),
        ca_certificate_pem=certificate_pem(ca_certificate).decode("ascii"),
    )
    tls_key = _ec_key(generate_private_key("P-256"))
    write_record(txn, TABLE, IDENTITY_KEY, identity)
    write_record(
        txn, TABLE, TLS_KEY, _issue_tls(cas_key, ca_certificate, tls_key, TlsShape(hostnames))
    )
    write_record(txn, TABLE, STATE_KEY, StateRecord(db_key_injected=db_key_injected))
    write_record(txn, TABLE, TOKEN_KEY, TokenRecord(token=new_provisioning_token()))


@dataclass(frozen=True)
class TlsShape:
    """What the TLS certificate must say: the host names, and the owner's subject if any."""

    hostnames: tuple[str, ...]
    api_identity: ApiIdentity | None = None

    @property
    def subject_sha256(self) -> str | None:
        """A hash of the owner-chosen subject, to notice when it changes."""
        if self.api_identity is None:
            return None
        return canonical_sha256(self.api_identity.model_dump(mode="json"))


def tls_shape(source: Reader, hostnames: tuple[str, ...]) -> TlsShape:
    """The TLS certificate's shape: the config's host names plus the owner's ``[api_identity]``."""
    config = read_owner_config(source)
    api_identity = config.api_identity if config else None
    if api_identity is None:
        return TlsShape(hostnames)
    extra = tuple(name for name in api_identity.alt_names if name not in hostnames)
    return TlsShape(hostnames + extra, api_identity)


def _issue_tls(
    cas_key: ec.EllipticCurvePrivateKey,
    ca_certificate: x509.Certificate,
    tls_key: ec.EllipticCurvePrivateKey,
    shape: TlsShape,
) -> TlsRecord:
    subject = shape.api_identity.subject_name() if shape.api_identity else None
    if subject is not None and len(subject) == 0:
        subject = None
    certificate = issue_tls_certificate(
        cas_key, ca_certificate, tls_key.public_key(), shape.hostnames, subject=subject
    )
    return TlsRecord(
        hostnames=shape.hostnames,
        subject_sha256=shape.subject_sha256,
        tls_key_pem=private_key_pem(tls_key).decode("ascii"),
        tls_certificate_pem=certificate_pem(certificate).decode("ascii"),
    )


def reshape_tls(txn: Transaction, hostnames: tuple[str, ...]) -> bool:
    """Reissue the TLS certificate (same key) if its shape changed or it expires soon.

    Returns True when it reissued the certificate.
    """
    identity = require_record(txn, IdentityRecord, TABLE, IDENTITY_KEY)
    tls = require_record(txn, TlsRecord, TABLE, TLS_KEY)
    shape = tls_shape(txn, hostnames)
    expires = _load_certificate(tls.tls_certificate_pem, TLS_KEY).not_valid_after_utc
    fresh = expires - datetime.now(UTC) > TLS_RENEW_BEFORE
    if fresh and tls.hostnames == shape.hostnames and tls.subject_sha256 == shape.subject_sha256:
        return False
    reissued = _issue_tls(
        _load_key(identity.cas_key_pem, IDENTITY_KEY),
        _load_certificate(identity.ca_certificate_pem, IDENTITY_KEY),
        _load_key(tls.tls_key_pem, TLS_KEY),
        shape,
    )
    write_record(txn, TABLE, TLS_KEY, reissued)
    return True


def _ec_key(key: object) -> ec.EllipticCurvePrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("expected an EC private key")
    return key


def load_identity(store: Store, hostnames: tuple[str, ...], *, reissue: bool = True) -> CasIdentity:
    """Load the CAS identity; first reissue the TLS certificate if its shape changed.

    With ``reissue`` false nothing is written: the identity is loaded as stored.
    Raises :class:`RecordDamagedError` naming the record when a record is missing or damaged.
    """
    if reissue:
        with store.transaction() as txn:
            reshape_tls(txn, hostnames)
    identity = require_record(store, IdentityRecord, TABLE, IDENTITY_KEY)
    tls = require_record(store, TlsRecord, TABLE, TLS_KEY)
    return CasIdentity(
        instance_id=identity.instance_id,
        cas_key=_load_key(identity.cas_key_pem, IDENTITY_KEY),
        ca_certificate=_load_certificate(identity.ca_certificate_pem, IDENTITY_KEY),
        tls_key=_load_key(tls.tls_key_pem, TLS_KEY),
        tls_certificate=_load_certificate(tls.tls_certificate_pem, TLS_KEY),
        hostnames=tls.hostnames,
    )


def _load_key(pem: str, record: str) -> ec.EllipticCurvePrivateKey:
    try:
        return _ec_key(load_private_key_pem(pem.encode("ascii")))
    except (ValueError, TypeError) as exc:
        raise RecordDamagedError(TABLE, record, "its private key does not load") from exc


def _load_certificate(pem: str, record: str) -> x509.Certificate:
    try:
        return load_certificate_pem(pem.encode("ascii"))
    except ValueError as exc:
        raise RecordDamagedError(TABLE, record, "its certificate does not load") from exc


def read_state(source: Reader) -> StateRecord:
    """The CAS state record (provisioning and database-key facts)."""
    return require_record(source, StateRecord, TABLE, STATE_KEY)


def read_owner(source: Reader) -> OwnerRecord | None:
    """The owner record, or ``None`` while unprovisioned."""
    return read_record(source, OwnerRecord, TABLE, OWNER_KEY)


def read_owner_config(source: Reader) -> OwnerConfig | None:
    """The provisioned owner config, or ``None`` while unprovisioned."""
    record = read_record(source, OwnerConfigRecord, TABLE, OWNER_CONFIG_KEY)
    if record is None:
        return None
    try:
        return owner_config_from_normal_form(record.normal_form)
    except ConfigError as exc:
        raise RecordDamagedError(TABLE, OWNER_CONFIG_KEY, "not a valid owner config") from exc


def read_provisioning_token(source: Reader) -> str | None:
    """The one-time provisioning token, or ``None`` once the CAS is provisioned."""
    record = read_record(source, TokenRecord, TABLE, TOKEN_KEY)
    return None if record is None else record.token


def mark_db_key_injected(store: Store) -> None:
    """Record, for good, that the database key was injected by an operator."""
    with store.transaction() as txn:
        state = read_state(txn)
        if not state.db_key_injected:
            write_record(txn, TABLE, STATE_KEY, state.model_copy(update={"db_key_injected": True}))
