"""Base64 helpers: URL-safe without padding (JOSE) and standard, with strict decoding."""

from __future__ import annotations

import base64
import binascii


def b64url_encode(data: bytes) -> str:
    """URL-safe base64 without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode URL-safe base64 with or without padding; raise ``ValueError`` on any bad character."""
    if not isinstance(text, str) or any(c in text for c in "+/= \n\r\t"):
        raise ValueError("not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not valid base64url: {exc}") from exc


def b64_encode(data: bytes) -> str:
    """Standard base64 with padding."""
    return base64.b64encode(data).decode("ascii")


def b64_decode(text: str) -> bytes:
    """Decode standard base64, rejecting characters outside the alphabet."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError(f"not valid base64: {exc}") from exc
