"""AEAD envelopes: AES-256-GCM with a version byte, a random nonce and bound associated data.

An envelope is ``0x01 || nonce (12 bytes) || ciphertext || tag (16 bytes)``. The associated data
(AAD) is not stored in the envelope: the reader must supply the same bytes, so a value moved to a
context with different AAD (another table, record key or version) fails to open. Keys for
different purposes are derived from one master key with HKDF-SHA256. This module is pure: no I/O
beyond the operating system's random source.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from opencas.crypto.canonical import canonical_json

ENVELOPE_VERSION = 0x01
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
_HEADER_SIZE = 1 + NONCE_SIZE
_MIN_ENVELOPE_SIZE = _HEADER_SIZE + TAG_SIZE
_INFO_PREFIX = b"opencas/v1/"


class EnvelopeError(ValueError):
    """An envelope cannot be opened: unknown version, too short, or failed authentication."""


def _require_key(key: bytes, what: str) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"{what} must be {KEY_SIZE} bytes, got {len(key)}")


def derive_key(master_key: bytes, purpose: str) -> bytes:
    """Derive the 32-byte key for ``purpose`` from ``master_key`` (HKDF-SHA256, no salt).

    The HKDF info is ``b"opencas/v1/" + purpose``, so distinct purposes give independent keys and
    the same (master key, purpose) always gives the same key. Raises ``ValueError`` unless
    ``master_key`` is exactly 32 bytes.
    """
    _require_key(master_key, "master key")
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_SIZE,
        salt=None,
        info=_INFO_PREFIX + purpose.encode("utf-8"),
    )
    return hkdf.derive(master_key)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext`` bound to ``aad`` under the 32-byte ``key``.

    Every call uses a fresh random nonce, so sealing the same input twice gives different
    envelopes. Raises ``ValueError`` unless ``key`` is exactly 32 bytes.
    """
    _require_key(key, "envelope key")
    nonce = os.urandom(NONCE_SIZE)
    return bytes([ENVELOPE_VERSION]) + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_envelope(key: bytes, envelope: bytes, aad: bytes) -> bytes:
    """Return the plaintext of ``envelope`` if it was sealed under ``key`` with exactly ``aad``.

    Raises :class:`EnvelopeError` when the envelope is too short, has an unknown version byte, or
    fails authentication (wrong key, wrong AAD, or any changed byte). Never returns unauthenticated
    data. Raises ``ValueError`` unless ``key`` is exactly 32 bytes.
    """
    _require_key(key, "envelope key")
    if len(envelope) == 0:
        raise EnvelopeError("envelope is empty")
    if envelope[0] != ENVELOPE_VERSION:
        raise EnvelopeError(f"unknown envelope version {envelope[0]:#04x}")
    if len(envelope) < _MIN_ENVELOPE_SIZE:
        raise EnvelopeError(
            f"envelope is {len(envelope)} bytes, shorter than the minimum {_MIN_ENVELOPE_SIZE}"
        )
    nonce = envelope[1:_HEADER_SIZE]
    try:
        return AESGCM(key).decrypt(nonce, envelope[_HEADER_SIZE:], aad)
    except InvalidTag:
        raise EnvelopeError("envelope failed authentication (wrong key, context or data)") from None


def record_aad(table: str, key: str, version: int) -> bytes:
    """The AAD that binds a stored value to its table, record key and version.

    It is the canonical JSON of ``["opencas-record/v1", table, key, version]``, so it is
    unambiguous for any strings (no separator can be forged). Raises ``ValueError`` for a version
    JSON cannot represent exactly.
    """
    return canonical_json(["opencas-record/v1", table, key, version])
