"""The owner identity file of self-provisioning: a PEM certificate carrying the owner's key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from opencas.crypto.keys import SIGNING_KEY_TYPES, describe_key, key_type_of
from opencas.crypto.pem import certificate_pem, load_certificate_pem
from opencas.crypto.x509 import certificate_key_hash
from opencas.errors import ConfigError


@dataclass(frozen=True)
class OwnerIdentity:
    """The owner: the key hash that names it and, when known, the certificate that carries it."""

    key_hash: str
    certificate_pem: str | None


def owner_identity_of(certificate: x509.Certificate) -> OwnerIdentity:
    """The owner identity carried by ``certificate``."""
    return OwnerIdentity(
        certificate_key_hash(certificate), certificate_pem(certificate).decode("ascii")
    )


def load_owner_certificate(
    path: Path, now: datetime | None = None, *, check_validity: bool = True
) -> OwnerIdentity:
    """Load the owner certificate at ``path``.

    Raises :class:`ConfigError` naming the file when it cannot be read, is not exactly one PEM
    certificate, is not valid at ``now`` (default: the current time; skipped when
    ``check_validity`` is false, e.g. to compare an already provisioned owner), or carries a key
    type that OpenCAS identities do not use (P-256, P-384 and Ed25519 are accepted).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        what = f"cannot read the owner certificate: {exc.strerror}"
        raise ConfigError(what, source=str(path)) from exc
    try:
        certificate = load_certificate_pem(data)
    except ValueError as exc:
        raise ConfigError(f"not a PEM certificate: {exc}", source=str(path)) from exc
    if check_validity:
        _check_validity(path, certificate, now or datetime.now(UTC))
    key = certificate.public_key()
    if key_type_of(key) not in SIGNING_KEY_TYPES:
        raise ConfigError(
            f"the owner certificate carries a {describe_key(key)} key; "
            "use a P-256, P-384 or Ed25519 key",
            source=str(path),
        )
    return owner_identity_of(certificate)


def _check_validity(path: Path, certificate: x509.Certificate, moment: datetime) -> None:
    if moment < certificate.not_valid_before_utc:
        raise ConfigError(
            "the owner certificate is not valid before "
            f"{certificate.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}",
            source=str(path),
        )
    if moment > certificate.not_valid_after_utc:
        raise ConfigError(
            "the owner certificate expired at "
            f"{certificate.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
            source=str(path),
        )
