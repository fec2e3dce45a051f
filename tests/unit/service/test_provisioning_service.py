"""Provisioning decisions in-process: one winner, owner-only operations, one transaction."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from opencas.config.owner import parse_owner_config
from opencas.config.owner_identity import OwnerIdentity
from opencas.crypto.keys import key_hash
from opencas.crypto.pem import certificate_pem
from opencas.crypto.x509 import create_identity_certificate
from opencas.errors import AuthenticationRequired, CasError, ConflictError, ForbiddenError
from opencas.policy.caller import Caller
from opencas.service.cas import Cas
from opencas.service.cas_records import read_owner, read_provisioning_token
from opencas.service.provisioning import (
    provision,
    provision_with_token,
    show_owner_config,
    update_owner_config,
)
from opencas.service.token_guard import TokenGuard

CONFIG = parse_owner_config(
    '[api_identity]\ncommon_name = "cas.test"\n[dcap]\nsubscription_key = "s3cr3t-key"\n',
    "owner.toml",
    "toml",
).config
OWNER = OwnerIdentity("a1" * 32, None)
OWNER_CALLER = Caller(OWNER.key_hash)


def test_provision_records_everything_and_consumes_the_token(cas: Cas) -> None:
    assert read_provisioning_token(cas.store) is not None
    state = provision(cas, OWNER, CONFIG, self_provisioned=True)
    assert state.provisioned
    assert state.self_provisioned
    assert state.owner_identity_hash == OWNER.key_hash
    assert cas.report("00" * 16).owner_config_sha256 == state.owner_config_sha256
    assert read_provisioning_token(cas.store) is None
    owner = read_owner(cas.store)
    assert owner is not None
    assert owner.key_hash == OWNER.key_hash
    # The TLS certificate now carries the owner's subject.
    assert "CN=cas.test" in cas.identity.tls_certificate.subject.rfc4514_string()


def test_concurrent_provisioning_has_exactly_one_winner(cas: Cas) -> None:
    token = read_provisioning_token(cas.store)
    assert token is not None
    guard = TokenGuard()

    def attempt(index: int) -> str:
        owner = f"{index:02x}" * 32
        try:
            provision_with_token(cas, guard, token, Caller(owner), CONFIG)
        except ConflictError:
            return "conflict"
        return owner

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(attempt, range(8)))
    winners = [o for o in outcomes if o != "conflict"]
    assert len(winners) == 1
    assert cas.state().owner_identity_hash == winners[0]


def test_wrong_token_is_forbidden_and_counted(cas: Cas) -> None:
    guard = TokenGuard()
    with pytest.raises(ForbiddenError) as refused:
        provision_with_token(cas, guard, "not-the-token", OWNER_CALLER, CONFIG)
    assert refused.value.code == "wrong-token"
    assert guard.failures == 1
    assert not cas.state().provisioned


def test_anonymous_provisioning_is_refused_before_the_token_counts(cas: Cas) -> None:
    guard = TokenGuard()
    with pytest.raises(AuthenticationRequired) as refused:
        provision_with_token(cas, guard, "not-the-token", Caller(), CONFIG)
    assert refused.value.code == "signature-required"
    assert refused.value.http_status == 401
    assert guard.failures == 0
    assert not cas.state().provisioned


def test_attested_provisioning_records_the_callers_certificate(cas: Cas) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = create_identity_certificate(key, "owner")
    token = read_provisioning_token(cas.store)
    assert token is not None
    provision_with_token(cas, TokenGuard(), token, Caller(key_hash(key), certificate), CONFIG)
    owner = read_owner(cas.store)
    assert owner is not None
    assert owner.key_hash == key_hash(key)
    assert owner.certificate_pem == certificate_pem(certificate).decode("ascii")


def test_owner_operations_refuse_anonymous_callers_first(cas: Cas) -> None:
    # Even before provisioning (which answers signed callers with not-provisioned).
    for operation in (
        lambda: show_owner_config(cas, Caller()),
        lambda: update_owner_config(cas, Caller(), CONFIG),
    ):
        with pytest.raises(AuthenticationRequired):
            operation()


def test_failed_provisioning_changes_nothing(cas: Cas, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> bool:
        raise CasError("simulated failure while reissuing the TLS certificate")

    monkeypatch.setattr("opencas.service.provisioning.reshape_tls", broken)
    with pytest.raises(CasError):
        provision(cas, OWNER, CONFIG, self_provisioned=True)
    assert not cas.state().provisioned
    assert read_provisioning_token(cas.store) is not None
    assert read_owner(cas.store) is None


def test_owner_operations_are_owner_only(cas: Cas) -> None:
    with pytest.raises(ConflictError):
        show_owner_config(cas, OWNER_CALLER)
    provision(cas, OWNER, CONFIG, self_provisioned=False)
    with pytest.raises(ForbiddenError):
        show_owner_config(cas, Caller("b2" * 32))
    with pytest.raises(ForbiddenError):
        update_owner_config(cas, Caller("b2" * 32), CONFIG)
    shown = show_owner_config(cas, OWNER_CALLER)
    assert shown.redacted["dcap"]["subscription_key"] == "<redacted>"
    assert "s3cr3t-key" not in repr(shown)
    changed = parse_owner_config("", "empty.toml", "toml").config
    sha = update_owner_config(cas, OWNER_CALLER, changed)
    assert cas.state().owner_config_sha256 == sha != shown.sha256


def test_refresh_tls_renews_a_certificate_that_expires_soon(
    cas: Cas, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    cas.identity_listeners.append(seen.append)
    before = cas.identity.tls_certificate
    key_before = cas.identity.tls_key_hash
    assert cas.refresh_tls() is False  # a year left: nothing to do
    monkeypatch.setattr("opencas.service.identity.TLS_RENEW_BEFORE", timedelta(days=400))
    assert cas.refresh_tls() is True
    assert cas.identity.tls_certificate.serial_number != before.serial_number
    assert cas.identity.tls_key_hash == key_before  # pinned clients keep working
    assert seen == [cas.identity]
