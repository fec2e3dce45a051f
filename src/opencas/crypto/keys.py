"""Key pairs and key hashes.

A *key hash* names every key in OpenCAS: SHA-256 over the DER SubjectPublicKeyInfo, lowercase hex.
"""

from __future__ import annotations

import hashlib
from typing import Literal, TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
KeyType = Literal["P-256", "P-384", "Ed25519"]

_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}


def generate_private_key(key_type: KeyType = "P-256") -> PrivateKey:
    """Create a new private key of ``key_type``."""
    if key_type == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(_CURVES[key_type])


def public_key_der(key: PublicKey) -> bytes:
    """DER SubjectPublicKeyInfo of ``key``."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_hash(key: PublicKey | PrivateKey) -> str:
    """The key hash of ``key`` (for a private key, of its public half)."""
    public = key.public_key() if isinstance(key, _PRIVATE_TYPES) else key
    return hashlib.sha256(public_key_der(public)).hexdigest()


_PRIVATE_TYPES = (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey)


def private_key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM of ``key`` (for files that the platform or the OS protects)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key_pem(data: bytes) -> PrivateKey:
    """Load a PEM private key of a supported type; raise ``ValueError`` otherwise."""
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError(f"unsupported private key type {type(key).__name__}")
    return key


def is_valid_key_hash(text: str) -> bool:
    """True when ``text`` has the form of a key hash (64 lowercase hex digits)."""
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)
