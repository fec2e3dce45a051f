"""Canonical JSON (RFC 8785, JCS): one encoding per JSON value, so hashes and signatures agree."""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785


def canonical_json(value: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 encoding of ``value``.

    Raises ``ValueError`` for values JSON cannot represent (NaN, non-string keys, bytes, ...).
    """
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, TypeError) as exc:
        raise ValueError(f"value has no canonical JSON form: {exc}") from exc


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def canonical_sha256(value: Any) -> str:
    """Lowercase hex SHA-256 over the canonical JSON of ``value``."""
    return sha256_hex(canonical_json(value))


def canonical_sha512(value: Any) -> bytes:
    """The 64-byte SHA-512 digest of the canonical JSON of ``value`` (the report-data binding)."""
    return hashlib.sha512(canonical_json(value)).digest()
