"""Key types, key generation, key hashes and the hash each key type signs with.

A *key hash* names every key in OpenCAS: SHA-256 over the DER SubjectPublicKeyInfo, lowercase hex.
A *key type* names the kinds of key OpenCAS makes and accepts; :data:`SIGNING_KEY_TYPES` is the
narrower set that identifies callers and signs requests and sessions (DESIGN.md §3).
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal, TypeAlias

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey

KeyType: TypeAlias = Literal["P-256", "P-384", "Ed25519", "RSA-2048", "RSA-3072"]
"""Every key type OpenCAS makes: a session's keys may have any of them."""
KEY_TYPES: Final[tuple[KeyType, ...]] = ("P-256", "P-384", "Ed25519", "RSA-2048", "RSA-3072")
EcdsaKeyType: TypeAlias = Literal["P-256", "P-384"]
"""The ECDSA key types: the CAS key, TLS keys and workload keys are of these."""
SigningKeyType: TypeAlias = Literal["P-256", "P-384", "Ed25519"]
"""The key types of identities: they sign request proofs and sessions (no RSA)."""
SIGNING_KEY_TYPES: Final[tuple[SigningKeyType, ...]] = ("P-256", "P-384", "Ed25519")
DEFAULT_KEY_TYPE: Final[KeyType] = "P-256"

_CURVES: Final[dict[str, ec.EllipticCurve]] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}
_CURVE_TYPES: Final[dict[str, KeyType]] = {"secp256r1": "P-256", "secp384r1": "P-384"}
_RSA_SIZES: Final[dict[str, int]] = {"RSA-2048": 2048, "RSA-3072": 3072}
_RSA_TYPES: Final[dict[int, KeyType]] = {2048: "RSA-2048", 3072: "RSA-3072"}
_PRIVATE_TYPES = (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey)


def generate_private_key(key_type: KeyType = DEFAULT_KEY_TYPE) -> PrivateKey:
    """Create a new private key of ``key_type``; raises ``ValueError`` for an unknown type."""
    if key_type == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    curve = _CURVES.get(key_type)
    if curve is not None:
        return ec.generate_private_key(curve)
    if key_type in _RSA_SIZES:
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_SIZES[key_type])
    raise ValueError(f"unknown key type {key_type!r}; expected one of {', '.join(KEY_TYPES)}")


def generate_ecdsa_key(key_type: EcdsaKeyType) -> ec.EllipticCurvePrivateKey:
    """Create a new ECDSA private key of ``key_type`` (typed as such, for ECDH and TLS)."""
    return ec.generate_private_key(_CURVES[key_type])


def key_type_of(key: object) -> KeyType | None:
    """The key type of ``key`` (private or public), or ``None`` when OpenCAS has no such type."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return _CURVE_TYPES.get(key.curve.name)
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return _RSA_TYPES.get(key.key_size)
    return None


def describe_key(key: object) -> str:
    """A short description of ``key`` for messages: its key type, or what it is instead."""
    key_type = key_type_of(key)
    if key_type is not None:
        return key_type
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    return type(key).__name__


def ecdsa_hash(
    key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey,
) -> hashes.SHA256 | hashes.SHA384:
    """The hash an ECDSA signature by ``key`` uses: SHA-256 on P-256, SHA-384 on P-384.

    Raises ``ValueError`` for any other curve.
    """
    if isinstance(key.curve, ec.SECP384R1):
        return hashes.SHA384()
    if isinstance(key.curve, ec.SECP256R1):
        return hashes.SHA256()
    raise ValueError(f"unsupported curve {key.curve.name}; use P-256 or P-384")


def signature_hash(key: PrivateKey | PublicKey) -> hashes.SHA256 | hashes.SHA384 | None:
    """The hash a signature by ``key`` uses: :func:`ecdsa_hash` for ECDSA, SHA-256 for RSA, and
    ``None`` for Ed25519, which hashes inside the algorithm.

    Raises ``ValueError`` for an ECDSA curve other than P-256 and P-384.
    """
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return ecdsa_hash(key)
    return hashes.SHA256()


def public_key_der(key: PublicKey) -> bytes:
    """DER SubjectPublicKeyInfo of ``key``."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_hash(key: PublicKey | PrivateKey) -> str:
    """The key hash of ``key`` (for a private key, of its public half)."""
    public = key.public_key() if isinstance(key, _PRIVATE_TYPES) else key
    return hashlib.sha256(public_key_der(public)).hexdigest()


def is_valid_key_hash(text: str) -> bool:
    """True when ``text`` has the form of a key hash (64 lowercase hex digits)."""
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)
