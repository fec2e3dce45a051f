"""PostgreSQL database URLs: what ``[database] url`` accepts, and how it is shown.

A URL may carry a password (``postgresql://user:password@host/db``). It is never shown: every
message and log line gets :func:`redact_url`, which replaces the password with ``***``.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

SCHEMES = ("postgresql", "postgres")
MAX_URL_LENGTH = 2048


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``: what logs and messages show."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
        return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}{port}"))
    except ValueError:
        return "<a database URL that does not parse>"


def check_database_url(text: str) -> str:
    """``text`` if it is a PostgreSQL URL OpenCAS can use, else ``ValueError`` saying why (the
    message shows the URL without its password)."""
    if len(text) > MAX_URL_LENGTH or any(c.isspace() or ord(c) < 0x20 for c in text):
        raise ValueError(
            f"a database URL must have no white space and at most {MAX_URL_LENGTH} characters"
        )
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises on a port that is not a number in 0..65535
    except ValueError as exc:
        raise ValueError(f"{redact_url(text)!r} is not a URL: {exc}") from None
    if parts.scheme not in SCHEMES or not text.startswith(parts.scheme + "://"):
        raise ValueError(
            f"{redact_url(text)[:80]!r} is not a postgresql:// or postgres:// URL "
            "(for SQLite set path instead)"
        )
    if parts.path in ("", "/"):
        raise ValueError(f"{redact_url(text)!r} names no database (postgresql://HOST/DATABASE)")
    return text
