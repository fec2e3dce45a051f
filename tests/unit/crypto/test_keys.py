"""Key types, the key generator, key hashes and the hash each key type signs with."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from opencas.crypto.keys import (
    DEFAULT_KEY_TYPE,
    KEY_TYPES,
    SIGNING_KEY_TYPES,
    EcdsaKeyType,
    KeyType,
    describe_key,
    ecdsa_hash,
    generate_ecdsa_key,
    generate_private_key,
    is_valid_key_hash,
    key_hash,
    key_type_of,
    signature_hash,
)


def test_signing_key_types_are_a_subset_without_rsa() -> None:
    assert set(SIGNING_KEY_TYPES) < set(KEY_TYPES)
    assert not any(key_type.startswith("RSA") for key_type in SIGNING_KEY_TYPES)
    assert DEFAULT_KEY_TYPE == "P-256"


@pytest.mark.parametrize(
    ("key_type", "kind", "hash_type"),
    [
        ("P-256", ec.EllipticCurvePrivateKey, hashes.SHA256),
        ("P-384", ec.EllipticCurvePrivateKey, hashes.SHA384),
        ("Ed25519", ed25519.Ed25519PrivateKey, type(None)),
        ("RSA-2048", rsa.RSAPrivateKey, hashes.SHA256),
        ("RSA-3072", rsa.RSAPrivateKey, hashes.SHA256),
    ],
)
def test_each_key_type_is_generated_recognised_and_signs_with_its_hash(
    key_type: KeyType, kind: type, hash_type: type
) -> None:
    key = generate_private_key(key_type)
    assert isinstance(key, kind)
    assert key_type_of(key) == key_type
    assert key_type_of(key.public_key()) == key_type
    assert describe_key(key) == key_type
    assert isinstance(signature_hash(key), hash_type)
    assert isinstance(signature_hash(key.public_key()), hash_type)


@pytest.mark.parametrize(("key_type", "curve"), [("P-256", ec.SECP256R1), ("P-384", ec.SECP384R1)])
def test_ecdsa_keys_are_generated_on_their_curve(key_type: EcdsaKeyType, curve: type) -> None:
    key = generate_ecdsa_key(key_type)
    assert isinstance(key.curve, curve)
    assert key_type_of(key) == key_type


def test_the_default_key_type_is_p256() -> None:
    assert key_type_of(generate_private_key()) == "P-256"


def test_unknown_key_types_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown key type 'P-521'; expected one of P-256"):
        generate_private_key("P-521")  # type: ignore[arg-type]


def test_keys_outside_the_key_types_are_named_but_have_no_type() -> None:
    p521 = ec.generate_private_key(ec.SECP521R1())
    assert key_type_of(p521) is None
    assert describe_key(p521) == "ECDSA secp521r1"
    assert key_type_of(rsa.generate_private_key(public_exponent=65537, key_size=1024)) is None
    assert describe_key(rsa.generate_private_key(public_exponent=65537, key_size=1024)) == (
        "RSA-1024"
    )
    assert describe_key(ed448.Ed448PrivateKey.generate()) == "Ed448PrivateKey"
    with pytest.raises(ValueError, match="use P-256 or P-384"):
        ecdsa_hash(p521)
    with pytest.raises(ValueError, match="use P-256 or P-384"):
        signature_hash(p521)


def test_key_hash_is_sha256_of_the_subject_public_key_info() -> None:
    key = generate_private_key()
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key_hash(key) == key_hash(key.public_key()) == hashlib.sha256(der).hexdigest()
    assert is_valid_key_hash(key_hash(key))
    assert not is_valid_key_hash(key_hash(key).upper())
