"""Recovery shares: the database master key split among recovery keys, and moved to a new CAS.

The 32-byte key is split with Shamir's secret sharing as pycryptodome implements it
(``Crypto.Protocol.SecretSharing.Shamir``, over GF(2^128)): each 16-byte half is split on its
own, with the same share indices, so share ``i`` is ``half_1_share_i || half_2_share_i`` (32
bytes) and any ``threshold`` shares give back both halves. Fewer give nothing about the key.

A share travels HPKE-sealed (RFC 9180; DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, base
mode), twice: first to its recovery key (the CAS stores it so), then, opened by the key's holder,
to the attested key of the CAS being recovered. The HPKE ``info`` binds what the share belongs
to — the CAS key hash, the split, the threshold, the index and the recovery key — with a prefix
per leg, so a share cannot be passed off as another, or a sealed share of one leg as the other::

    info = PREFIX + canonical_json({"cas_key_hash", "index", "key_hash", "split_id", "threshold"})

This module is pure: no I/O beyond the operating system's random source.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from opencas.crypto.canonical import canonical_json
from opencas.crypto.hpke_seal import (
    UnsupportedRecipientKey,
    hpke_open,
    hpke_seal,
    load_recipient_public_key,
)

#: How many recovery keys an owner config may name (and so the most shares a key is split into).
MAX_RECOVERY_KEYS = 16
RECOVERY_KEY_SIZE = 32
_HALF = 16
#: ``info`` prefixes: sealed to a recovery key; sealed by its holder to the CAS being recovered.
SHARE_INFO_PREFIX = b"opencas-recovery-share/v1\x00"
TRANSFER_INFO_PREFIX = b"opencas-recovery-transfer/v1\x00"


class RecoveryShareError(ValueError):
    """A share cannot be opened or the shares cannot be combined; the message says why."""


@dataclass(frozen=True)
class ShareLabel:
    """What a share belongs to: the CAS, the split it was made in, its threshold and index, and
    the key hash of the recovery key it was made for."""

    cas_key_hash: str
    split_id: str
    threshold: int
    index: int
    key_hash: str

    def info(self, prefix: bytes) -> bytes:
        """The HPKE ``info`` that binds this label, for the leg ``prefix`` names."""
        return prefix + canonical_json(
            {
                "cas_key_hash": self.cas_key_hash,
                "index": self.index,
                "key_hash": self.key_hash,
                "split_id": self.split_id,
                "threshold": self.threshold,
            }
        )


def recovery_key_hash(public_key_der: bytes) -> str:
    """The key hash of a recovery key: SHA-256 of its DER SubjectPublicKeyInfo, lowercase hex."""
    return hashlib.sha256(public_key_der).hexdigest()


def recovery_public_der(key: x25519.X25519PrivateKey | x25519.X25519PublicKey) -> bytes:
    """The DER SubjectPublicKeyInfo of an X25519 key (of its public half, for a private key)."""
    public = key.public_key() if isinstance(key, x25519.X25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_recovery_key(public_key_der: bytes) -> x25519.X25519PublicKey:
    """The X25519 key in the DER SubjectPublicKeyInfo ``public_key_der``.

    Raises ``ValueError`` for anything else: bad or non-canonical DER, another algorithm.
    """
    try:
        key = load_recipient_public_key(public_key_der)
    except UnsupportedRecipientKey:
        raise ValueError("not an X25519 public key in DER SubjectPublicKeyInfo form") from None
    if not isinstance(key, x25519.X25519PublicKey):
        raise ValueError("a recovery key must be an X25519 public key")
    return key


def split_key(key: bytes, threshold: int, count: int) -> list[tuple[int, bytes]]:
    """Split the 32-byte ``key`` into ``count`` shares ``(index, 32 bytes)``, indices 1..count,
    any ``threshold`` of which give it back (:func:`combine_shares`).

    Raises ``ValueError`` unless ``1 <= threshold <= count <= MAX_RECOVERY_KEYS`` and the key
    is 32 bytes.
    """
    if len(key) != RECOVERY_KEY_SIZE:
        raise ValueError(f"the key to split must be {RECOVERY_KEY_SIZE} bytes")
    if not 1 <= threshold <= count <= MAX_RECOVERY_KEYS:
        raise ValueError(f"need 1 <= threshold <= count <= {MAX_RECOVERY_KEYS}")
    first = Shamir.split(threshold, count, key[:_HALF])
    second = Shamir.split(threshold, count, key[_HALF:])
    # Both splits number their shares 1..count in order, so the halves pair up by position.
    return [(i, a + b) for (i, a), (_, b) in zip(first, second, strict=True)]


def combine_shares(shares: Sequence[tuple[int, bytes]]) -> bytes:
    """The key that ``shares`` (at least its threshold of them, distinct indices) give back.

    Fewer shares than the threshold give a wrong key, not an error: the caller checks the count
    and the result. Raises :class:`RecoveryShareError` for no shares, a repeated index or a
    share that is not 32 bytes.
    """
    if not shares:
        raise RecoveryShareError("no shares were given")
    indices = [index for index, _ in shares]
    if len(set(indices)) != len(indices):
        raise RecoveryShareError("a share was given twice (the same index)")
    if any(len(share) != RECOVERY_KEY_SIZE for _, share in shares):
        raise RecoveryShareError(f"a share must be {RECOVERY_KEY_SIZE} bytes")
    first = Shamir.combine([(i, share[:_HALF]) for i, share in shares])
    second = Shamir.combine([(i, share[_HALF:]) for i, share in shares])
    return first + second


def seal_share(public_key_der: bytes, share: bytes, label: ShareLabel, prefix: bytes) -> bytes:
    """HPKE-seal ``share`` to the X25519 key ``public_key_der`` for the leg ``prefix``.

    Raises ``ValueError`` when the key is not an X25519 key in DER SubjectPublicKeyInfo form.
    """
    load_recovery_key(public_key_der)
    return hpke_seal(public_key_der, share, label.info(prefix)).sealed_bytes


def open_share(
    private_key: x25519.X25519PrivateKey, sealed: bytes, label: ShareLabel, prefix: bytes
) -> bytes:
    """Open what :func:`seal_share` sealed to ``private_key``'s public half for ``label``.

    Raises :class:`RecoveryShareError` when it was sealed to another key, for another label or
    leg, is damaged, or does not hold a 32-byte share.
    """
    try:
        share = hpke_open(private_key, sealed, label.info(prefix))
    except ValueError as exc:
        raise RecoveryShareError(
            f"share {label.index} does not open with this key (another recovery key, another "
            "CAS or split, or it was changed)"
        ) from exc
    if len(share) != RECOVERY_KEY_SIZE:
        raise RecoveryShareError(
            f"share {label.index} does not hold a {RECOVERY_KEY_SIZE}-byte share"
        )
    return share
