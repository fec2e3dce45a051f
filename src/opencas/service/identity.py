"""The CAS's own identity: its key, CA certificate, TLS certificate and instance id.

A new CAS gets its keys, certificates, state and one-time provisioning token here
(:func:`populate_new_identity`); its TLS certificate is reissued here when its shape changes or
it expires soon (:func:`reshape_tls`). Their records (table ``cas``) are read and written
through :mod:`opencas.service.cas_records`.
"""

from __future__ import annotations

import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from opencas.attestation.report import report_time
from opencas.config.owner import ApiIdentity
from opencas.crypto.canonical import canonical_sha256
from opencas.crypto.keys import generate_ecdsa_key, key_hash
from opencas.crypto.pem import certificate_pem, private_key_pem
from opencas.crypto.x509 import create_ca_certificate, issue_tls_certificate
from opencas.errors import KeyStoreError
from opencas.service.cas_records import (
    IdentityRecord,
    InstanceRecord,
    StateRecord,
    TlsRecord,
    read_identity,
    read_instance,
    read_owner_config,
    read_state,
    read_tls,
    write_identity,
    write_instance,
    write_provisioning_token,
    write_state,
    write_tls,
)
from opencas.store.base import Reader, Store, Transaction

TLS_RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True)
class CasIdentity:
    """The loaded identity: keys as objects, certificates parsed once.

    ``cluster_id`` names the CAS, whichever instance serves it (made at its first start, kept
    in the store); ``instance_id`` names this instance (kept beside its key store). ``scope`` is
    ``""`` for the instance that created the CAS and the instance id for one that joined it: the
    records of its own TLS key and audit chain are kept under it.
    """

    cluster_id: str
    instance_id: str
    cas_key: ec.EllipticCurvePrivateKey
    ca_certificate: x509.Certificate
    tls_key: ec.EllipticCurvePrivateKey
    tls_certificate: x509.Certificate
    hostnames: tuple[str, ...]
    scope: str = ""

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
    cas_key = generate_ecdsa_key("P-384")
    cluster_id = str(uuid.uuid4())
    ca_certificate = create_ca_certificate(cas_key, f"OpenCAS {key_hash(cas_key)[:16]}")
    identity = IdentityRecord(
        instance_id=cluster_id,
        created_at=utc_now_text(),
        cas_key_pem=private_key_pem(cas_key).decode("ascii"),
        ca_certificate_pem=certificate_pem(ca_certificate).decode("ascii"),
    )
    tls_key = generate_ecdsa_key("P-256")
    write_identity(txn, identity)
    write_tls(txn, _issue_tls(cas_key, ca_certificate, tls_key, TlsShape(hostnames)))
    write_state(txn, StateRecord(db_key_injected=db_key_injected))
    write_provisioning_token(txn, new_provisioning_token())


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


def reshape_tls(txn: Transaction, hostnames: tuple[str, ...], scope: str = "") -> bool:
    """Reissue the TLS certificate of the instance ``scope`` (same key) if its shape changed or
    it expires soon.

    Returns True when it reissued the certificate.
    """
    identity = read_identity(txn)
    tls = read_tls(txn, scope)
    shape = tls_shape(txn, hostnames)
    expires = tls.load_tls_certificate().not_valid_after_utc
    fresh = expires - datetime.now(UTC) > TLS_RENEW_BEFORE
    if fresh and tls.hostnames == shape.hostnames and tls.subject_sha256 == shape.subject_sha256:
        return False
    reissued = _issue_tls(
        identity.load_cas_key(), identity.load_ca_certificate(), tls.load_tls_key(), shape
    )
    write_tls(txn, reissued, scope)
    return True


def instance_scope(source: Reader, instance_id: str) -> str:
    """The scope of the instance ``instance_id``'s own records: its id once it joined the CAS,
    ``""`` for the instance that created it."""
    return instance_id if read_instance(source, instance_id) is not None else ""


def register_joined_instance(
    txn: Transaction, hostnames: tuple[str, ...], instance_id: str, request_id: str
) -> None:
    """Record the instance ``instance_id`` as joined, with a TLS key of its own and its
    certificate issued by the CAS key; nothing when it is recorded already."""
    if read_instance(txn, instance_id) is not None:
        return
    identity = read_identity(txn)
    shape = tls_shape(txn, hostnames)
    tls = _issue_tls(
        identity.load_cas_key(), identity.load_ca_certificate(), generate_ecdsa_key("P-256"), shape
    )
    write_instance(
        txn,
        InstanceRecord(instance_id=instance_id, joined_at=utc_now_text(), request_id=request_id),
    )
    write_tls(txn, tls, instance_id)


def load_identity(
    store: Store, hostnames: tuple[str, ...], instance_id: str, *, reissue: bool = True
) -> CasIdentity:
    """Load the CAS identity of the instance ``instance_id``; first reissue the TLS certificate
    if its shape changed.

    With ``reissue`` false nothing is written: the identity is loaded as stored.
    Raises :class:`RecordDamagedError` naming the record when a record is missing or damaged.
    """
    scope = instance_scope(store, instance_id)
    if reissue:
        with store.transaction() as txn:
            reshape_tls(txn, hostnames, scope)
    identity = read_identity(store)
    tls = read_tls(store, scope)
    return CasIdentity(
        # The stored id predates clusters: it was made at the CAS's first start and names the CAS.
        cluster_id=identity.instance_id,
        instance_id=instance_id,
        cas_key=identity.load_cas_key(),
        ca_certificate=identity.load_ca_certificate(),
        tls_key=tls.load_tls_key(),
        tls_certificate=tls.load_tls_certificate(),
        hostnames=tls.hostnames,
        scope=scope,
    )


def mark_db_key_injected(store: Store) -> None:
    """Record, for good, that the database key was injected by an operator."""
    with store.transaction() as txn:
        state = read_state(txn)
        if not state.db_key_injected:
            write_state(txn, state.model_copy(update={"db_key_injected": True}))


def instance_id_path(database: Path) -> Path:
    """Where an instance keeps its own id: ``<database>.instance-id``, beside its key store."""
    return database.with_name(database.name + ".instance-id")


def write_instance_id(database: Path, instance_id: str) -> None:
    """Make ``instance_id`` (a UUID) this machine's instance id from now on (a CAS restored
    here goes on as the instance that wrote the snapshot). Written whole or not at all.

    Raises :class:`KeyStoreError` when it is not a UUID or cannot be written.
    """
    try:
        text = str(uuid.UUID(instance_id))
    except ValueError as exc:
        raise KeyStoreError(f"{instance_id!r} is not an instance id (a UUID)") from exc
    path = instance_id_path(database)
    temporary = path.with_name(f"{path.name}.tmp-{secrets.token_hex(8)}")
    try:
        temporary.write_text(text + "\n", encoding="ascii")
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise KeyStoreError(f"cannot write the instance id {path}: {exc.strerror or exc}") from exc


def local_instance_id(database: Path) -> str:
    """This instance's id: read from :func:`instance_id_path`, made (a UUID) on its first start.

    The file is written whole or not at all (a new name, then a rename). Raises
    :class:`KeyStoreError` when it cannot be read or written, or does not hold a UUID.
    """
    path = instance_id_path(database)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        text = str(uuid.uuid4())
        temporary = path.with_name(f"{path.name}.tmp-{secrets.token_hex(8)}")
        try:
            temporary.write_text(text + "\n", encoding="ascii")
            os.replace(temporary, path)
        except OSError as exc:
            raise KeyStoreError(
                f"cannot write the instance id {path}: {exc.strerror or exc}"
            ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyStoreError(f"cannot read the instance id {path}: {exc}") from exc
    try:
        return str(uuid.UUID(text))
    except ValueError as exc:
        raise KeyStoreError(f"{path} does not hold an instance id (a UUID); remove it") from exc
