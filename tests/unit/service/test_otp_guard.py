"""One-time passwords per service: accepted once, wrong ones counted and rate-limited."""

from __future__ import annotations

import pytest

from opencas.config.availability import SessionLimits
from opencas.crypto.otp import OTP_STEP, otp_code
from opencas.errors import AttestationRefused, RateLimitedError
from opencas.service.otp_guard import OtpGuard

SECRET = "MGNVWS2SFOKEWZBASXYQNMBWOWDQTQR3"
START = 1_900_000_000.0


def guard(now: list[float], refusals: int = 3, window: float = 120.0) -> OtpGuard:
    limits = SessionLimits(otp_refusals_per_service=refusals, otp_refusal_window=window)
    return OtpGuard(limits, clock=lambda: now[0])


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def test_a_valid_code_is_accepted_once() -> None:
    now = [START]
    otp = guard(now)
    code = otp_code(SECRET, START)

    otp.check("s/a", SECRET, code)
    with pytest.raises(AttestationRefused) as reused:
        otp.check("s/a", SECRET, code)

    assert reused.value.check == "otp"
    assert "used already" in str(reused.value)
    # Another service has codes of its own.
    otp.check("s/b", SECRET, code)


def test_an_older_code_is_refused_after_a_newer_one() -> None:
    now = [START + OTP_STEP]
    otp = guard(now)
    otp.check("s/a", SECRET, otp_code(SECRET, now[0]))

    with pytest.raises(AttestationRefused, match="used already"):
        otp.check("s/a", SECRET, otp_code(SECRET, START))  # still within the window
    now[0] += OTP_STEP
    otp.check("s/a", SECRET, otp_code(SECRET, now[0]))


def test_a_missing_code_is_refused_without_counting() -> None:
    now = [START]
    otp = guard(now, refusals=1)

    for _ in range(3):
        with pytest.raises(AttestationRefused, match="requires a one-time password") as missing:
            otp.check("s/a", SECRET, None)
        assert missing.value.check == "otp"
    otp.check("s/a", SECRET, otp_code(SECRET, START))


def test_wrong_codes_are_refused_then_rate_limited_per_service() -> None:
    now = [START]
    otp = guard(now, refusals=3, window=120.0)
    code = otp_code(SECRET, START)

    for attempt in (wrong(code), "12345", "abcdef"):
        with pytest.raises(AttestationRefused, match="wrong or expired") as refused:
            otp.check("s/a", SECRET, attempt)
        assert refused.value.check == "otp"
        assert SECRET not in str(refused.value)
        assert code not in str(refused.value)
    # Now even the right code is refused: guessing must not be able to race the limit.
    with pytest.raises(RateLimitedError) as limited:
        otp.check("s/a", SECRET, code)
    assert limited.value.code == "otp-rate-limited"
    assert 0 < limited.value.retry_after <= 120
    otp.check("s/b", SECRET, code)  # the limit is per service

    now[0] += 121
    otp.check("s/a", SECRET, otp_code(SECRET, now[0]))


def test_a_reused_code_counts_as_a_refusal() -> None:
    now = [START]
    otp = guard(now, refusals=2)
    code = otp_code(SECRET, START)
    otp.check("s/a", SECRET, code)
    for _ in range(2):
        with pytest.raises(AttestationRefused):
            otp.check("s/a", SECRET, code)

    with pytest.raises(RateLimitedError):
        otp.check("s/a", SECRET, otp_code(SECRET, START + OTP_STEP))
