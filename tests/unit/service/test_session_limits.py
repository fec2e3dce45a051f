"""Session limits: each refusal names its setting; the upload rate is a token bucket per key."""

from __future__ import annotations

import dataclasses

import pytest

from opencas.config.availability import SessionLimits
from opencas.errors import LimitExceededError, RateLimitedError
from opencas.policy.caller import Caller
from opencas.policy.parse import parse_session
from opencas.policy.secret_values import SecretValue
from opencas.service.cas import Cas
from opencas.service.session_limits import (
    RenderBudget,
    UploadRateLimiter,
    check_session,
    check_session_text,
)
from opencas.service.sessions import create_session
from opencas.service.workloads import configuration_renderer

AUTHOR = Caller("a1" * 32)
SMALL = SessionLimits(
    max_session_bytes=2000,
    max_placeholders_per_session=3,
    max_secrets_per_session=3,
    max_rsa_keys_per_session=1,
    max_rendered_config_bytes=100,
    session_uploads_per_minute=6,
    session_upload_burst=2,
    session_upload_identities=2,
)


def session_text(*, secrets: str, environment: str = "") -> str:
    services = (
        f"services:\n  - name: app\n    environment:\n{environment}"
        "    attestation:\n      simulated_measurement: " + '"' + "a" * 64 + '"\n'
        if environment
        else ""
    )
    return f'name: limited\nversion: "0.3"\n{services}secrets:\n{secrets}'


def ascii_secrets(count: int) -> str:
    return "".join(f"  - name: s{index}\n    kind: ascii\n" for index in range(count))


TOO_LONG = session_text(secrets=ascii_secrets(1) + "# " + "é" * 1000 + "\n")


def check_both(limits: SessionLimits, text: str) -> None:
    check_session_text(text, limits)
    check_session(parse_session(text, "session", purpose="create"), limits)


def refused_limit(limits: SessionLimits, text: str) -> LimitExceededError:
    with pytest.raises(LimitExceededError) as refused:
        check_both(limits, text)
    return refused.value


def test_a_session_within_every_limit_passes() -> None:
    environment = "      A: $$CAS::s0$$\n      B: $$CAS::s1$$$$CAS::s1$$\n"
    text = session_text(secrets=ascii_secrets(3), environment=environment)

    check_session_text(text, SMALL)
    check_session(parse_session(text, "session", purpose="create"), SMALL)


@pytest.mark.parametrize(
    ("text", "limit", "found"),
    [
        (TOO_LONG, "max_session_bytes", len(TOO_LONG.encode())),
        (session_text(secrets=ascii_secrets(4)), "max_secrets_per_session", 4),
        (
            session_text(
                secrets=ascii_secrets(1),
                environment="      A: $$CAS::s0$$ $$CAS::s0$$\n      B: $$SCONE::s0$$$$CAS::s0$$\n",
            ),
            "max_placeholders_per_session",
            4,
        ),
        (
            session_text(
                secrets="  - name: k\n    kind: private-key\n    key_type: RSA-2048\n"
                "  - name: c\n    kind: x509-ca\n    key_type: RSA-3072\n"
            ),
            "max_rsa_keys_per_session",
            2,
        ),
    ],
)
def test_each_refusal_names_its_limit(text: str, limit: str, found: int) -> None:
    error = refused_limit(SMALL, text)

    assert error.code == "limit-exceeded"
    assert error.http_status == 413
    assert error.details == {"limit": limit, "allowed": getattr(SMALL, limit), "found": found}
    assert f"[limits] {limit}" in error.message


def test_a_certificate_for_a_named_rsa_key_makes_no_other() -> None:
    text = session_text(
        secrets="  - name: k\n    kind: private-key\n    key_type: RSA-2048\n"
        "  - name: c\n    kind: x509-ca\n    private_key: k\n"
    )

    check_session(parse_session(text, "session", purpose="create"), SMALL)


def test_the_store_refuses_a_session_over_its_cas_limits(cas: Cas) -> None:
    limited = dataclasses.replace(cas, config=dataclasses.replace(cas.config, session_limits=SMALL))

    with pytest.raises(LimitExceededError, match="max_secrets_per_session"):
        create_session(limited, session_text(secrets=ascii_secrets(4)), AUTHOR)


def test_rendering_stops_at_the_configured_size() -> None:
    values = {"s": SecretValue(kind="ascii", data=b"x" * 40)}
    resolve = configuration_renderer(values, RenderBudget(SMALL))

    assert resolve("$$CAS::s$$") == "x" * 40
    with pytest.raises(LimitExceededError) as refused:
        resolve("$$CAS::s$$" * 1000)
    assert refused.value.details["limit"] == "max_rendered_config_bytes"
    assert refused.value.details["found"] <= 100 + 1000 * 10 + 40  # stopped early, not at 40,000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_uploads_beyond_the_burst_wait_for_the_rate() -> None:
    clock = Clock()
    limiter = UploadRateLimiter(SMALL, clock)

    limiter.take("a")
    limiter.take("a")
    with pytest.raises(RateLimitedError) as refused:
        limiter.take("a")
    assert refused.value.code == "rate-limited"
    assert refused.value.http_status == 429
    assert refused.value.headers() == {"Retry-After": "10"}  # 6 a minute: one every 10 s
    assert "session_uploads_per_minute" in refused.value.message
    limiter.take("b")  # another key is not affected
    clock.now += 10
    limiter.take("a")
    with pytest.raises(RateLimitedError):
        limiter.take("a")


def test_the_longest_idle_key_is_forgotten_first() -> None:
    clock = Clock()
    limiter = UploadRateLimiter(SMALL, clock)
    for key in ("a", "a", "b", "b"):
        limiter.take(key)
    limiter.take("c")  # forgets "a", idle longest

    assert len(limiter) == 2
    with pytest.raises(RateLimitedError):
        limiter.take("b")
    limiter.take("a")  # tracked again from a full bucket
