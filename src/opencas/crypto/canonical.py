"""Canonical JSON (RFC 8785, JCS): one encoding per JSON value, so hashes and signatures agree."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import rfc8785

_MAX_SAFE_INTEGER = 2**53 - 1


def canonical_json(value: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 encoding of ``value``.

    Raises ``ValueError`` for values JSON cannot represent (NaN, non-string keys, bytes, ...).
    """
    if _json_dumps_is_canonical(value):
        try:
            return json.dumps(
                value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            ).encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: let the reference implementation refuse it
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, TypeError) as exc:
        raise ValueError(f"value has no canonical JSON form: {exc}") from exc


def _json_dumps_is_canonical(value: Any) -> bool:
    """True when ``json.dumps`` with sorted keys produces exactly RFC 8785 for ``value``.

    That holds for strings, safe integers, booleans, null, lists and objects whose keys hold no
    character beyond U+FFFF: JSON's escaping of such values is RFC 8785's, and for such keys
    code-point order is UTF-16 order. Anything else (floats, big integers, such keys, other
    types) goes to the reference implementation, which is correct but several times slower.
    """
    # Exact types first (one identity test each, where isinstance walks the class's MRO);
    # subclasses (an enum's str, a custom dict) take the general path of _is_canonical_item.
    stack = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is dict:
            if not _keys_are_canonical(item):
                return False
            extend(item.values())
        elif kind is list or kind is tuple:
            extend(item)
        elif kind is int:
            if not -_MAX_SAFE_INTEGER <= item <= _MAX_SAFE_INTEGER:
                return False
        elif not _is_canonical_item(item, stack):
            return False
    return True


def _keys_are_canonical(mapping: dict[Any, Any]) -> bool:
    for key in mapping:
        # max() runs in C: checking each character in Python cost more than the dump.
        if type(key) is not str and not isinstance(key, str):
            return False
        if not key.isascii() and max(key) > "\uffff":
            return False
    return True


def _is_canonical_item(item: Any, stack: list[Any]) -> bool:
    """Whether ``item``, of a type derived from a JSON type, dumps canonically at its own level
    (what it holds is put on ``stack`` to be checked)."""
    if isinstance(item, str | bool):
        return True
    if isinstance(item, int):
        return -_MAX_SAFE_INTEGER <= item <= _MAX_SAFE_INTEGER
    if isinstance(item, list | tuple):
        stack.extend(item)
        return True
    if isinstance(item, dict):
        stack.extend(item.values())
        return _keys_are_canonical(item)
    return False


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


def member_mismatch(
    members: Iterable[object], expected: frozenset[str], *, name_unexpected: bool = True
) -> str | None:
    """What is wrong with a JSON object's member names, or None when they are ``expected``.

    The answer reads ``missing a, b; unexpected c``: missing names sorted, unexpected ones
    sorted and cut to 40 characters, or only counted (``2 unexpected``) when
    ``name_unexpected`` is false, for documents whose member names may be secret values.
    """
    present = {str(member) for member in members}
    if present == expected:
        return None
    parts = []
    missing = sorted(expected - present)
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    unexpected = present - expected
    if unexpected and name_unexpected:
        parts.append(f"unexpected {', '.join(sorted(name[:40] for name in unexpected))}")
    elif unexpected:
        parts.append(f"{len(unexpected)} unexpected")
    return "; ".join(parts)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError(f"duplicate member {name!r}")
        result[name] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
