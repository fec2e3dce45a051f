"""The PEM codec: certificates, chains, private and public keys, and what each refuses."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448

from opencas.crypto.keys import (
    KEY_TYPES,
    SIGNING_KEY_TYPES,
    generate_private_key,
    key_hash,
    key_type_of,
)
from opencas.crypto.pem import (
    certificate_pem,
    load_certificate_chain_pem,
    load_certificate_pem,
    load_private_key_pem,
    load_public_key_pem,
    pem_blocks,
    private_key_pem,
    public_key_pem,
)
from opencas.crypto.x509 import create_ca_certificate, create_identity_certificate

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CA_CERTIFICATE = create_ca_certificate(ec.generate_private_key(ec.SECP384R1()), "PEM CA", now=NOW)


# --- certificates ---------------------------------------------------------------------------------


def test_pem_round_trip_and_chain() -> None:
    ca_certificate = CA_CERTIFICATE
    identity = create_identity_certificate(generate_private_key(), "bob", now=NOW)
    pem = certificate_pem(ca_certificate)
    assert pem.startswith(b"-----BEGIN CERTIFICATE-----\n")
    assert load_certificate_pem(pem) == ca_certificate
    assert load_certificate_pem(b"comment before\n" + pem + b"after\n") == ca_certificate
    chain = certificate_pem(identity) + pem
    assert load_certificate_chain_pem(chain) == [identity, ca_certificate]
    assert load_certificate_chain_pem(chain.replace(b"\n", b"\r\n")) == [identity, ca_certificate]
    with pytest.raises(ValueError, match="exactly one PEM certificate, found 2"):
        load_certificate_pem(chain)


def test_pem_errors_are_explained() -> None:
    ca_certificate = CA_CERTIFICATE
    pem = certificate_pem(ca_certificate)
    with pytest.raises(ValueError, match="no PEM certificate"):
        load_certificate_pem(b"")
    with pytest.raises(ValueError, match="no PEM certificate"):
        load_certificate_pem(b"not a pem file")
    with pytest.raises(ValueError, match="PRIVATE KEY, not a CERTIFICATE"):
        load_certificate_pem(private_key_pem(generate_private_key()))
    with pytest.raises(ValueError, match="PRIVATE KEY, not a CERTIFICATE"):
        load_certificate_chain_pem(pem + private_key_pem(generate_private_key()))
    with pytest.raises(ValueError, match=r"not a valid X\.509 certificate"):
        load_certificate_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    truncated = pem.split(b"-----END")[0]
    with pytest.raises(ValueError, match="without its matching END"):
        load_certificate_chain_pem(truncated + pem)
    with pytest.raises(ValueError, match="bytes"):
        load_certificate_pem(pem.decode("ascii"))  # type: ignore[arg-type]


def test_load_private_key_refuses_unsupported_keys() -> None:
    for key in (ec.generate_private_key(ec.SECP521R1()), ed448.Ed448PrivateKey.generate()):
        with pytest.raises(ValueError, match="unsupported private key"):
            load_private_key_pem(private_key_pem(key))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a PEM private key"):
        load_private_key_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def test_pem_blocks_name_their_labels_and_ignore_text_around_them() -> None:
    key = private_key_pem(generate_private_key())
    cert = certificate_pem(CA_CERTIFICATE)
    blocks = pem_blocks(b"notes\n" + key + b"between\n" + cert)
    assert blocks == [("PRIVATE KEY", key), ("CERTIFICATE", cert)]
    assert pem_blocks(b"no blocks at all") == []
    with pytest.raises(ValueError, match="without its matching END"):
        pem_blocks(cert.split(b"-----END")[0])


# --- private keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_private_keys_of_every_key_type_round_trip(key_type: str) -> None:
    key = generate_private_key(key_type)  # type: ignore[arg-type]
    loaded = load_private_key_pem(private_key_pem(key))
    assert key_type_of(loaded) == key_type
    assert key_hash(loaded) == key_hash(key)


def test_private_keys_outside_the_accepted_types_are_refused() -> None:
    rsa_pem = private_key_pem(generate_private_key("RSA-2048"))
    with pytest.raises(
        ValueError, match=r"unsupported private key \(RSA-2048\); expected one of P-256"
    ):
        load_private_key_pem(rsa_pem, SIGNING_KEY_TYPES)
    assert key_type_of(load_private_key_pem(rsa_pem)) == "RSA-2048"


def test_an_encrypted_private_key_is_refused() -> None:
    encrypted = generate_private_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(ValueError, match="encrypted; give it without a password"):
        load_private_key_pem(encrypted)
    with pytest.raises(ValueError, match="bytes"):
        load_private_key_pem(private_key_pem(generate_private_key()).decode())  # type: ignore[arg-type]


# --- public keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", [*KEY_TYPES])
def test_public_keys_round_trip(key_type: str) -> None:
    public = generate_private_key(key_type).public_key()  # type: ignore[arg-type]
    assert public_key_pem(public).startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert key_hash(load_public_key_pem(public_key_pem(public))) == key_hash(public)


def test_public_keys_that_do_not_load_are_refused() -> None:
    with pytest.raises(ValueError, match="not a PEM public key"):
        load_public_key_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    dsa_public = dsa.generate_private_key(2048).public_key()
    pem = dsa_public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="unsupported key type"):
        load_public_key_pem(pem)
