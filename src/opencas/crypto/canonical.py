"""Canonical JSON (RFC 8785, JCS): one encoding per JSON value, so hashes and signatures agree."""

from __future__ import annotations

import hashlib
import json
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


def strict_json_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse ``data`` as one UTF-8 JSON object, refusing what lenient parsers let through.

    Duplicate member names (which parsers resolve differently, so two readers could disagree on
    what a signed document says), NaN and Infinity, and nesting too deep for Python all raise
    ``ValueError`` naming ``what``.
    """
    try:
        value = json.loads(
            data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant
        )
    except RecursionError as exc:
        raise ValueError(f"the {what} JSON is nested too deeply") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"the {what} is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"the {what} must be a JSON object")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError(f"duplicate member {name!r}")
        result[name] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
