"""RFC 6238 codes: the RFC's own vector, the clock window, constant-time matching."""

from __future__ import annotations

import base64

from opencas.crypto.otp import OTP_STEP, matching_step, otp_code, otp_step

# RFC 6238 appendix B: the ASCII key "12345678901234567890" (SHA-1); its 8-digit code at T=59
# is 94287082, so the 6-digit code is 287082.
RFC_SECRET = base64.b32encode(b"12345678901234567890").decode().rstrip("=")


def test_the_rfc_6238_vector() -> None:
    assert otp_code(RFC_SECRET, 59) == "287082"
    assert otp_code(RFC_SECRET, 1111111109) == "081804"


def test_a_code_matches_its_step_and_one_step_either_side() -> None:
    at = 1_800_000_015.0
    code = otp_code(RFC_SECRET, at)

    assert matching_step(RFC_SECRET, code, at) == otp_step(at)
    assert matching_step(RFC_SECRET, code, at + OTP_STEP) == otp_step(at)
    assert matching_step(RFC_SECRET, code, at - OTP_STEP) == otp_step(at)
    assert matching_step(RFC_SECRET, code, at + 2 * OTP_STEP) is None
    assert matching_step(RFC_SECRET, code, at - 2 * OTP_STEP) is None


def test_a_wrong_or_odd_code_matches_nothing() -> None:
    at = 1_800_000_015.0
    code = otp_code(RFC_SECRET, at)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"

    assert matching_step(RFC_SECRET, wrong, at) is None
    assert matching_step(RFC_SECRET, "", at) is None
    assert matching_step(RFC_SECRET, "é" * 6, at) is None
