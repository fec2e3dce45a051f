"""SCONE's spellings of key hashes and signer keys, read as this CAS's own.

SCONE's CLI prints a key hash (``scone self show-key-hash``, ``scone cert show-key-hash``) as
50 characters such as ``3s1pm8W6Be6cxvAQRbRP5YXd9YuERAr7KswN97uGtoPkRW87x1``, and its
older governance pages write a signer's Ed25519 key as
``LtLcbPVddnCkH36ZcRdgYsw4H8xDbYaFZfuefkDc25uq2qdjmM``.
Both are Base58Check (the Bitcoin alphabet; a version byte, the payload, then the first four
bytes of SHA-256 applied twice): version 1 and a 32-byte key hash, version 10 and the 32 bytes
of an Ed25519 public key. SCONE documents the second; the first is read from its examples, each
of which decodes so, with a valid checksum. docs/sessions.md says what that inference rests on.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from typing import Final

from cryptography.hazmat.primitives.asymmetric import ed25519

from opencas.crypto.keys import key_hash

BASE58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
#: The Base58Check version byte of a SCONE key hash.
KEY_HASH_VERSION: Final = 0x01
#: The Base58Check version byte of a SCONE signer key (an Ed25519 public key).
SIGNER_KEY_VERSION: Final = 0x0A
_PAYLOAD_SIZE: Final = 32
_CHECKSUM_SIZE: Final = 4
# Version, payload and checksum take 37 bytes, which Base58 writes in 49 to 51 characters; a
# bound keeps a long hostile text from costing a quadratic big-integer conversion.
_MAX_TEXT: Final = 60
_DIGITS: Final = {char: value for value, char in enumerate(BASE58_ALPHABET)}


def base58check_encode(version: int, payload: bytes) -> str:
    """``version`` and ``payload`` in Base58Check, as Bitcoin and SCONE write it."""
    data = bytes([version]) + payload
    data += _checksum(data)
    number = int.from_bytes(data, "big")
    digits = []
    while number:
        number, remainder = divmod(number, 58)
        digits.append(BASE58_ALPHABET[remainder])
    leading = len(data) - len(data.lstrip(b"\0"))
    return "1" * leading + "".join(reversed(digits))


def base58check_decode(text: str) -> tuple[int, bytes]:
    """The version byte and payload of the Base58Check ``text``.

    Raises ``ValueError`` for a character outside the alphabet, a text too long to be a key, a
    checksum that does not match, or fewer bytes than a version and a checksum.
    """
    if not text or len(text) > _MAX_TEXT or any(char not in _DIGITS for char in text):
        raise ValueError("not Base58Check text")
    number = 0
    for char in text:
        number = number * 58 + _DIGITS[char]
    leading = len(text) - len(text.lstrip("1"))
    data = b"\0" * leading + number.to_bytes((number.bit_length() + 7) // 8, "big")
    if len(data) <= 1 + _CHECKSUM_SIZE:
        raise ValueError("too short for Base58Check")
    body, checksum = data[:-_CHECKSUM_SIZE], data[-_CHECKSUM_SIZE:]
    if _checksum(body) != checksum:
        raise ValueError("its Base58Check checksum does not match (a mistyped character?)")
    return body[0], body[1:]


def scone_key_hash(text: str) -> str | None:
    """The key hash (64 lowercase hex) that SCONE's key-hash text ``text`` names, or ``None``
    when ``text`` is not one (not Base58Check, another version, or not 32 bytes).

    The 32 bytes are taken as this CAS's key hash, SHA-256 of the DER SubjectPublicKeyInfo
    (see the module's docstring).
    """
    payload = _payload(text, KEY_HASH_VERSION)
    return None if payload is None else payload.hex()


def scone_signer_key_hash(text: str) -> str | None:
    """The key hash of the Ed25519 key that SCONE's signer-key text ``text`` names, or ``None``
    when ``text`` is not one."""
    payload = _payload(text, SIGNER_KEY_VERSION)
    if payload is None:
        return None
    try:
        public = ed25519.Ed25519PublicKey.from_public_bytes(payload)
    except ValueError:
        return None
    return key_hash(public)


def to_scone_key_hash(hashed: str) -> str:
    """The key hash ``hashed`` (64 hex) as SCONE writes one."""
    return base58check_encode(KEY_HASH_VERSION, bytes.fromhex(hashed))


def looks_like_base58check(text: str) -> bool:
    """Whether ``text`` could be a SCONE key spelling: 49 to 51 Base58 characters. Decides only
    which error message fits; :func:`scone_key_hash` decides what it is."""
    return 49 <= len(text) <= 51 and all(char in _DIGITS for char in text)


def _payload(text: str, version: int) -> bytes | None:
    try:
        found, payload = base58check_decode(text.strip())
    except ValueError:
        return None
    if found != version or len(payload) != _PAYLOAD_SIZE:
        return None
    return payload


def _checksum(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()[:_CHECKSUM_SIZE]
