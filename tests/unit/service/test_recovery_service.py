"""Recovery keys in the owner config: the shares the CAS keeps, when they change, who gets them."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from opencas.config.owner import OwnerConfig, parse_owner_config
from opencas.config.owner_identity import OwnerIdentity
from opencas.crypto.encoding import b64_decode
from opencas.crypto.recovery import (
    SHARE_INFO_PREFIX,
    combine_shares,
    open_share,
    recovery_public_der,
)
from opencas.errors import ConflictError, ForbiddenError
from opencas.policy.caller import Caller
from opencas.service.cas import Cas
from opencas.service.provisioning import provision, show_recovery_shares, update_owner_config

OWNER = OwnerIdentity("a1" * 32, None)
OWNER_CALLER = Caller(OWNER.key_hash)
HOLDERS = [x25519.X25519PrivateKey.generate() for _ in range(3)]


def _config(threshold: int | None, holders: list[x25519.X25519PrivateKey] = HOLDERS) -> OwnerConfig:
    if threshold is None:
        return parse_owner_config("", "owner.toml", "toml").config
    keys = ", ".join(
        '"' + base64.b64encode(recovery_public_der(key)).decode() + '"' for key in holders
    )
    text = f"[recovery]\nkeys = [{keys}]\nthreshold = {threshold}\n"
    return parse_owner_config(text, "owner.toml", "toml").config


def _events(cas: Cas) -> list[str]:
    lines = cas.config.audit_log_path.read_text().splitlines()
    return [json.loads(line)["event"] for line in lines]


def test_the_shares_give_the_database_key_back_and_the_report_names_the_keys(cas: Cas) -> None:
    config = _config(2)
    provision(cas, OWNER, config, self_provisioned=True)
    shares = show_recovery_shares(cas, OWNER_CALLER)
    opened = [
        (share.index, open_share(key, b64_decode(share.sealed), share.label(), SHARE_INFO_PREFIX))
        for key, share in zip(HOLDERS, shares, strict=True)
    ]
    assert combine_shares(opened[:2]) == cas.database_key
    assert combine_shares(opened[1:]) == cas.database_key
    assert combine_shares(opened[:1]) != cas.database_key
    report = cas.report("00" * 16)
    assert config.recovery is not None
    assert report.recovery.configured
    assert report.recovery.threshold == 2
    assert report.recovery.key_hashes == list(config.recovery.key_hashes())
    assert report.recovered is False


def test_shares_change_only_when_the_keys_or_threshold_do(cas: Cas) -> None:
    provision(cas, OWNER, _config(2), self_provisioned=True)
    first = show_recovery_shares(cas, OWNER_CALLER)
    update_owner_config(cas, OWNER_CALLER, _config(2))
    assert show_recovery_shares(cas, OWNER_CALLER) == first
    update_owner_config(cas, OWNER_CALLER, _config(3))
    changed = show_recovery_shares(cas, OWNER_CALLER)
    assert {share.split_id for share in changed} != {share.split_id for share in first}
    assert changed[0].threshold == 3
    update_owner_config(cas, OWNER_CALLER, _config(None))
    with pytest.raises(ConflictError, match="no recovery keys"):
        show_recovery_shares(cas, OWNER_CALLER)
    assert not cas.report("00" * 16).recovery.configured
    assert _events(cas)[-4:] == [
        "provisioned",
        "owner_config_updated",
        "recovery_configured",
        "recovery_configured",
    ]


def test_only_the_owner_gets_the_shares(cas: Cas) -> None:
    provision(cas, OWNER, _config(1), self_provisioned=True)
    with pytest.raises(ForbiddenError):
        show_recovery_shares(cas, Caller("b2" * 32))
