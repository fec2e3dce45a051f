"""Time-based one-time passwords (RFC 6238), as authenticator apps make them.

Codes are 6 digits, HMAC-SHA1, in steps of 30 seconds (the defaults of RFC 6238 and of every
common authenticator app, and what SCONE's ``one_time_password_shared_secret`` expects). The
shared secret is RFC 4648 base32. No I/O and no clock: the time is a parameter.
"""

from __future__ import annotations

import base64
import hmac

from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

OTP_DIGITS = 6
OTP_STEP = 30
OTP_WINDOW = 1
"""Steps before and after the current one whose codes are accepted too (clock skew)."""


def otp_step(at: float) -> int:
    """The RFC 6238 time step (counter) that the Unix time ``at`` falls in."""
    return int(at) // OTP_STEP


def otp_code(secret_base32: str, at: float) -> str:
    """The code for ``secret_base32`` (normal spelling: uppercase, no padding) at time ``at``."""
    return _totp(secret_base32).generate(int(at)).decode("ascii")


def matching_step(secret_base32: str, code: str, at: float) -> int | None:
    """The time step within :data:`OTP_WINDOW` of ``at`` whose code is ``code``, or ``None``.

    Every candidate is compared, in constant time, so the time taken does not tell which step
    (if any) matched.
    """
    totp = _totp(secret_base32)
    given = code.encode("ascii", "replace")
    found: int | None = None
    current = otp_step(at)
    for step in range(current - OTP_WINDOW, current + OTP_WINDOW + 1):
        expected = totp.generate(step * OTP_STEP)
        if hmac.compare_digest(expected, given) and found is None:
            found = step
    return found


def _totp(secret_base32: str) -> TOTP:
    padded = secret_base32 + "=" * (-len(secret_base32) % 8)
    key = base64.b32decode(padded)
    # RFC 6238's HMAC-SHA1: what authenticator apps compute; HMAC does not rest on collisions.
    return TOTP(key, OTP_DIGITS, SHA1(), OTP_STEP, enforce_key_length=True)  # noqa: S303
