"""Client identities: a key pair with a self-signed certificate that carries it (DESIGN.md §3)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography import x509

from opencas.client.files import write_private_file
from opencas.crypto.keys import SIGNING_KEY_TYPES, PrivateKey, generate_private_key, key_hash
from opencas.crypto.pem import (
    certificate_pem,
    load_certificate_pem,
    load_private_key_pem,
    pem_blocks,
    private_key_pem,
)
from opencas.crypto.x509 import certificate_key_hash, create_identity_certificate
from opencas.errors import ClientError

KEY_FILE = "identity-key.pem"
CERTIFICATE_FILE = "identity-cert.pem"


@dataclass(frozen=True)
class ClientIdentity:
    """A key pair and the self-signed certificate that names it."""

    key: PrivateKey
    certificate: x509.Certificate

    @cached_property
    def key_hash(self) -> str:
        """The key hash access policies name this identity by."""
        return key_hash(self.key)

    @cached_property
    def certificate_pem(self) -> bytes:
        """PEM of the identity certificate."""
        return certificate_pem(self.certificate)

    @classmethod
    def generate(cls, common_name: str = "casctl") -> ClientIdentity:
        """A new P-256 identity."""
        key = generate_private_key("P-256")
        return cls(key, create_identity_certificate(key, common_name))

    @classmethod
    def load(cls, directory: Path) -> ClientIdentity:
        """Load the identity kept in ``directory``; raise :class:`ClientError` naming the file."""
        key_path, cert_path = directory / KEY_FILE, directory / CERTIFICATE_FILE
        try:
            key = load_private_key_pem(key_path.read_bytes(), SIGNING_KEY_TYPES)
        except (OSError, ValueError) as exc:
            raise ClientError(f"cannot load the identity key {key_path}: {exc}") from exc
        try:
            certificate = load_certificate_pem(cert_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ClientError(f"cannot load the identity certificate {cert_path}: {exc}") from exc
        return cls._checked(key, certificate, f"{cert_path} does not carry the key in {key_path}")

    @classmethod
    def from_path(cls, path: Path) -> ClientIdentity:
        """Load an identity from a directory (as casctl keeps it) or from one PEM file.

        A PEM file must hold the private key and the certificate that carries it.
        """
        if path.is_dir():
            return cls.load(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot read the identity {path}: {exc.strerror}") from exc
        try:
            blocks = dict(pem_blocks(data))
            key_pem = blocks.get("PRIVATE KEY") or blocks.get("EC PRIVATE KEY")
            certificate_block = blocks.get("CERTIFICATE")
            if key_pem is None or certificate_block is None:
                raise ClientError(f"{path} must hold a PEM private key and a PEM certificate")
            key = load_private_key_pem(key_pem, SIGNING_KEY_TYPES)
            certificate = load_certificate_pem(certificate_block)
        except ValueError as exc:
            raise ClientError(f"cannot load the identity {path}: {exc}") from exc
        return cls._checked(
            key, certificate, f"the certificate in {path} does not carry its private key"
        )

    @classmethod
    def _checked(
        cls, key: PrivateKey, certificate: x509.Certificate, mismatch: str
    ) -> ClientIdentity:
        try:
            carried = certificate_key_hash(certificate)
        except ValueError as exc:
            raise ClientError(mismatch) from exc
        if carried != key_hash(key):
            raise ClientError(mismatch)
        return cls(key, certificate)

    @classmethod
    def load_or_create(cls, directory: Path) -> ClientIdentity:
        """Load the identity in ``directory``, creating it (files 0600) on first use."""
        if (directory / KEY_FILE).exists():
            return cls.load(directory)
        identity = cls.generate()
        write_private_file(directory / KEY_FILE, private_key_pem(identity.key))
        write_private_file(directory / CERTIFICATE_FILE, identity.certificate_pem)
        return identity
