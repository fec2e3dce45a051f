"""Base64 helpers: URL-safe without padding (JOSE) and standard, with strict decoding."""

from __future__ import annotations

import base64
import binascii
import re

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(data: bytes) -> str:
    """URL-safe base64 without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode_strict(text: str, what: str = "value") -> bytes:
    """Decode canonical unpadded base64url (RFC 7515 §2): one encoding per byte string.

    Raises ``ValueError`` (naming ``what``) for padding, characters outside the alphabet, an
    impossible length or non-zero trailing bits.
    """
    if not isinstance(text, str) or not _B64URL.fullmatch(text):
        raise ValueError(f"the {what} is not unpadded base64url")
    if len(text) % 4 == 1:
        raise ValueError(f"the {what} has an impossible base64url length")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url_encode(data) != text:
        raise ValueError(f"the {what} is not canonical base64url (non-zero trailing bits)")
    return data


def b64_encode(data: bytes) -> str:
    """Standard base64 with padding."""
    return base64.b64encode(data).decode("ascii")


def b64_decode(text: str) -> bytes:
    """Decode standard base64, rejecting characters outside the alphabet."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError(f"not valid base64: {exc}") from exc
