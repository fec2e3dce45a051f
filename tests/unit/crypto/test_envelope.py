"""AEAD envelopes: round trip, tamper detection, AAD binding, key derivation."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from opencas.crypto.canonical import canonical_json
from opencas.crypto.envelope import (
    ENVELOPE_VERSION,
    NONCE_SIZE,
    TAG_SIZE,
    EnvelopeError,
    derive_key,
    open_envelope,
    record_aad,
    seal,
)

MASTER = bytes(range(32))


def test_round_trip() -> None:
    key = derive_key(MASTER, "store/table/sessions")
    aad = record_aad("sessions", "alpha", 1)
    for plaintext in (b"", b"x", os.urandom(1000)):
        envelope = seal(key, plaintext, aad)
        assert envelope[0] == ENVELOPE_VERSION
        assert len(envelope) == 1 + NONCE_SIZE + len(plaintext) + TAG_SIZE
        assert open_envelope(key, envelope, aad) == plaintext


def test_nonce_is_fresh_each_time() -> None:
    key = derive_key(MASTER, "p")
    assert seal(key, b"same", b"aad") != seal(key, b"same", b"aad")


def test_every_flipped_byte_fails() -> None:
    key = derive_key(MASTER, "p")
    envelope = seal(key, b"a secret value", b"aad")
    for index in range(len(envelope)):
        for mask in (0x01, 0x80):
            damaged = bytearray(envelope)
            damaged[index] ^= mask
            with pytest.raises(EnvelopeError):
                open_envelope(key, bytes(damaged), b"aad")


def test_truncated_and_extended_envelopes_fail() -> None:
    key = derive_key(MASTER, "p")
    envelope = seal(key, b"value", b"aad")
    for length in range(len(envelope)):
        with pytest.raises(EnvelopeError):
            open_envelope(key, envelope[:length], b"aad")
    with pytest.raises(EnvelopeError):
        open_envelope(key, envelope + b"\x00", b"aad")


def test_short_input_is_reported_as_such() -> None:
    key = derive_key(MASTER, "p")
    with pytest.raises(EnvelopeError, match="empty"):
        open_envelope(key, b"", b"")
    with pytest.raises(EnvelopeError, match="shorter"):
        open_envelope(key, bytes([ENVELOPE_VERSION]) + b"\x00" * 20, b"")


def test_unknown_version_byte() -> None:
    key = derive_key(MASTER, "p")
    envelope = bytearray(seal(key, b"value", b"aad"))
    envelope[0] = 0x02
    with pytest.raises(EnvelopeError, match="version 0x02"):
        open_envelope(key, bytes(envelope), b"aad")


@pytest.mark.parametrize(
    ("table", "key", "version"),
    [("other", "k", 1), ("t", "other", 1), ("t", "k", 2), ("t", "k", 0), ("tk", "", 1)],
)
def test_aad_binds_table_key_and_version(table: str, key: str, version: int) -> None:
    table_key = derive_key(MASTER, "store/table/t")
    envelope = seal(table_key, b"value", record_aad("t", "k", 1))
    with pytest.raises(EnvelopeError, match="authentication"):
        open_envelope(table_key, envelope, record_aad(table, key, version))


def test_record_aad_is_canonical_json_and_unambiguous() -> None:
    assert record_aad("t", "k", 3) == canonical_json(["opencas-record/v1", "t", "k", 3])
    # Concatenation-based AAD would confuse these; canonical JSON keeps them apart.
    assert record_aad("a/b", "c", 1) != record_aad("a", "b/c", 1)
    assert record_aad("ab", "c", 1) != record_aad("a", "bc", 1)


def test_wrong_key_fails() -> None:
    envelope = seal(derive_key(MASTER, "p"), b"value", b"aad")
    with pytest.raises(EnvelopeError):
        open_envelope(derive_key(MASTER, "q"), envelope, b"aad")
    with pytest.raises(EnvelopeError):
        open_envelope(derive_key(os.urandom(32), "p"), envelope, b"aad")


def test_derive_key_is_deterministic_and_separates_purposes() -> None:
    first = derive_key(MASTER, "store/table/a")
    assert len(first) == 32
    assert derive_key(MASTER, "store/table/a") == first
    assert derive_key(MASTER, "store/table/b") != first
    assert derive_key(bytes(32), "store/table/a") != first


def test_derive_key_matches_hkdf_sha256() -> None:
    expected = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"opencas/v1/store/table/x"
    ).derive(MASTER)
    assert derive_key(MASTER, "store/table/x") == expected


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_key_sizes_other_than_32_are_refused(size: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        derive_key(bytes(size), "p")
    with pytest.raises(ValueError, match="32 bytes"):
        seal(bytes(size), b"v", b"")
    with pytest.raises(ValueError, match="32 bytes"):
        open_envelope(bytes(size), bytes(40), b"")
