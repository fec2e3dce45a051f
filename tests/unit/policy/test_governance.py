"""Signatures that bind a creator, and decisions about sessions created under signer rules."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from opencas.crypto.keys import key_hash
from opencas.policy.access import (
    CREATOR_SIGNATURE_DOMAIN,
    Governance,
    acting_creator,
    can_update,
    governs_creation,
    sign_session_hash,
    signed_message,
    verify_approval,
    verify_signatures,
)
from opencas.policy.caller import Caller
from opencas.policy.errors import SessionError
from opencas.policy.model import AllRule, AtLeastRule, CreatorRule, KeyRule, SignerRule
from opencas.policy.parse import parse_session

SESSION_HASH = "5e" * 32
CREATOR = "c1" * 32
OTHER = "d2" * 32
SIGNER = ec.generate_private_key(ec.SECP256R1())
SIGNER_HASH = key_hash(SIGNER.public_key())
RULE = SignerRule(key_hash=SIGNER_HASH)


def test_a_bound_signature_covers_the_creator_under_its_own_domain() -> None:
    item = sign_session_hash(SIGNER, SESSION_HASH, CREATOR)

    assert item["creator"] == CREATOR
    message = signed_message(SESSION_HASH, CREATOR)
    assert message == CREATOR_SIGNATURE_DOMAIN + bytes.fromhex(SESSION_HASH + CREATOR)
    assert verify_approval([item], SESSION_HASH, CREATOR).bound == {SIGNER_HASH}
    with pytest.raises(ValueError):
        signed_message(SESSION_HASH, "not a key hash")


def test_a_bound_signature_is_refused_from_anyone_else() -> None:
    item = sign_session_hash(SIGNER, SESSION_HASH, CREATOR)

    with pytest.raises(SessionError, match="authorises only the identity") as refused:
        verify_signatures([item], SESSION_HASH, OTHER)
    assert refused.value.problems[0].key == "signatures[0].creator"
    with pytest.raises(SessionError, match="authorises only"):
        verify_signatures([item], SESSION_HASH)


def test_a_changed_creator_does_not_verify() -> None:
    item = {**sign_session_hash(SIGNER, SESSION_HASH, CREATOR), "creator": OTHER}

    with pytest.raises(SessionError, match="for another creator"):
        verify_signatures([item], SESSION_HASH, OTHER)
    unbound = dict(sign_session_hash(SIGNER, SESSION_HASH, CREATOR))
    del unbound["creator"]
    with pytest.raises(SessionError, match="does not verify"):
        verify_signatures([unbound], SESSION_HASH, OTHER)


def test_an_unbound_signature_counts_but_binds_no_one() -> None:
    approval = verify_approval([sign_session_hash(SIGNER, SESSION_HASH)], SESSION_HASH, OTHER)

    assert approval.signers == {SIGNER_HASH}
    assert approval.bound == frozenset()


def test_governs_creation_means_a_signer_anywhere() -> None:
    assert governs_creation(RULE)
    assert governs_creation(AtLeastRule(count=1, rules=(CreatorRule(), RULE)))
    assert not governs_creation(AllRule(rules=(CreatorRule(), KeyRule(key_hash=OTHER))))
    assert not governs_creation(CreatorRule())


def child(update: str = "") -> str:
    return f'name: ns/app\nversion: "0.3"\n{update}'


@pytest.mark.parametrize("update", ["", "access_policy:\n  update: [CREATOR]\n"])
def test_a_bare_creator_update_needs_the_namespace_approval(update: str) -> None:
    session = parse_session(child(update))
    approved = Governance(RULE, OTHER, creator_approved=True)

    assert not can_update(session, Caller(CREATOR), CREATOR, frozenset(), approved)
    assert can_update(session, Caller(CREATOR), CREATOR, frozenset({SIGNER_HASH}), approved)
    assert can_update(session, Caller(CREATOR), CREATOR, frozenset())


def test_a_written_update_rule_holds_creator_only_when_approved() -> None:
    session = parse_session(child(f"access_policy:\n  update: [CREATOR, {OTHER}]\n"))
    approved = Governance(RULE, OTHER, creator_approved=True)
    unapproved = Governance(RULE, OTHER, creator_approved=False)

    assert can_update(session, Caller(CREATOR), CREATOR, frozenset(), approved)
    assert not can_update(session, Caller(CREATOR), CREATOR, frozenset(), unapproved)
    assert can_update(session, Caller(OTHER), CREATOR, frozenset(), unapproved)
    assert acting_creator(CREATOR, unapproved) == ""
    assert acting_creator(CREATOR, None) == CREATOR
