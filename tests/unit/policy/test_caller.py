"""The caller of a request: a key hash (with the certificate that carried it) or anonymous."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from opencas.crypto.keys import key_hash
from opencas.crypto.x509 import create_identity_certificate
from opencas.errors import AuthenticationRequired
from opencas.policy.caller import ANONYMOUS, Caller

KEY = ec.generate_private_key(ec.SECP256R1())
KEY_HASH = key_hash(KEY)


def test_a_caller_without_a_key_is_anonymous() -> None:
    assert Caller().anonymous
    assert Caller() == ANONYMOUS
    assert not Caller(KEY_HASH).anonymous


def test_a_signed_caller_names_its_key() -> None:
    assert Caller(KEY_HASH).signer("changing sessions") == KEY_HASH
    certificate = create_identity_certificate(KEY, "alice")
    assert Caller(KEY_HASH, certificate).signer("provisioning") == KEY_HASH


def test_an_anonymous_caller_is_refused_with_401_naming_the_operation() -> None:
    with pytest.raises(AuthenticationRequired) as refused:
        ANONYMOUS.signer("changing sessions")
    assert refused.value.code == "signature-required"
    assert refused.value.http_status == 401
    assert refused.value.message == (
        "changing sessions needs a signed request (Authorization: CAS-Proof)"
    )


def test_an_anonymous_caller_carries_no_certificate() -> None:
    with pytest.raises(ValueError, match="no certificate"):
        Caller(None, create_identity_certificate(KEY, "alice"))


def test_a_caller_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Caller(KEY_HASH).key_hash = "00" * 32  # type: ignore[misc]
