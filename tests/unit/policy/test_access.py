"""Access decisions (read, update, create_sessions) and detached signatures over session hashes."""

from __future__ import annotations

import base64
import json
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from opencas.crypto.keys import key_hash
from opencas.crypto.pem import certificate_pem
from opencas.crypto.x509 import create_identity_certificate
from opencas.policy.access import (
    MAX_SIGNATURES,
    SIGNATURE_DOMAIN,
    allows,
    can_create_in,
    can_read,
    can_update,
    sign_session_hash,
    signed_message,
    verify_signatures,
)
from opencas.policy.caller import Caller
from opencas.policy.errors import SessionError
from opencas.policy.model import AllRule, AtLeastRule, KeyRule, Session
from opencas.policy.parse import parse_session

SESSION_HASH = "5f" * 32
OTHER_HASH = "a0" * 32


def _hash_of_new_key() -> str:
    return key_hash(ec.generate_private_key(ec.SECP256R1()))


CREATOR = _hash_of_new_key()
OTHER = _hash_of_new_key()
THIRD = _hash_of_new_key()
SIGNER_A = _hash_of_new_key()
SIGNER_B = _hash_of_new_key()
SIGNER_C = _hash_of_new_key()
ANONYMOUS = None


def _session(access_policy: dict[str, Any] | None = None, name: str = "org/app") -> Session:
    document: dict[str, Any] = {"name": name}
    if access_policy is not None:
        document["access_policy"] = access_policy
    return Session.model_validate_json(json.dumps(document))


def _key(hash_: str) -> dict[str, str]:
    return {"type": "key", "key_hash": hash_}


def _signer(hash_: str) -> dict[str, str]:
    return {"type": "signer", "key_hash": hash_}


def _any_of(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"type": "at-least", "count": 1, "rules": list(rules)}


def _decisions(
    session: Session, caller: str | None, signers: frozenset[str] = frozenset()
) -> tuple[bool, bool, bool]:
    who = Caller(caller)
    return (
        can_read(session, who, CREATOR),
        can_update(session, who, CREATOR, signers),
        can_create_in(session, who, CREATOR, signers),
    )


# --- the matrix: (creator, other, anonymous) x (read, update, create in namespace) ----------------

CREATOR_ONLY = (True, True, True)
NOBODY = (False, False, False)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        pytest.param(None, {CREATOR: CREATOR_ONLY, OTHER: NOBODY, ANONYMOUS: NOBODY}, id="default"),
        pytest.param(
            {
                "read": {"type": "any"},
                "update": {"type": "any"},
                "create_sessions": {"type": "any"},
            },
            {CREATOR: CREATOR_ONLY, OTHER: CREATOR_ONLY, ANONYMOUS: CREATOR_ONLY},
            id="ANY",
        ),
        pytest.param(
            {
                "read": {"type": "none"},
                "update": {"type": "none"},
                "create_sessions": {"type": "none"},
            },
            {CREATOR: NOBODY, OTHER: NOBODY, ANONYMOUS: NOBODY},
            id="NONE",
        ),
        pytest.param(
            {"read": {"type": "any"}},
            {CREATOR: CREATOR_ONLY, OTHER: (True, False, False), ANONYMOUS: (True, False, False)},
            id="public-read",
        ),
        pytest.param(
            {"read": _key(OTHER), "update": _key(OTHER), "create_sessions": _key(OTHER)},
            {CREATOR: NOBODY, OTHER: CREATOR_ONLY, ANONYMOUS: NOBODY},
            id="key-entry-replaces-creator",
        ),
        pytest.param(
            {
                "read": _any_of({"type": "creator"}, _key(OTHER)),
                "update": _any_of({"type": "creator"}, _key(OTHER)),
                "create_sessions": _key(OTHER),
            },
            {CREATOR: (True, True, False), OTHER: CREATOR_ONLY, ANONYMOUS: NOBODY},
            id="creator-or-key",
        ),
        pytest.param(
            {"update": {"type": "none"}, "create_sessions": {"type": "creator"}},
            {CREATOR: (True, False, True), OTHER: NOBODY, ANONYMOUS: NOBODY},
            id="frozen-session-open-namespace",
        ),
    ],
)
def test_access_matrix(
    policy: dict[str, Any] | None, expected: dict[str | None, tuple[bool, bool, bool]]
) -> None:
    session = _session(policy)
    for caller, decisions in expected.items():
        assert _decisions(session, caller) == decisions, caller


def test_default_policy_is_the_creator_for_everything() -> None:
    session = _session()
    assert _decisions(session, CREATOR) == CREATOR_ONLY
    # Another session's creator is just another identity.
    assert _decisions(session, OTHER) == NOBODY


def test_a_caller_is_decided_by_its_key_hash_alone() -> None:
    session = _session()
    assert can_read(session, Caller(CREATOR), CREATOR)
    assert not can_read(session, Caller(OTHER), CREATOR)
    assert not can_read(session, Caller(), CREATOR)


def test_signer_entries_are_satisfied_by_signatures_whoever_asks() -> None:
    session = _session({"update": _signer(SIGNER_A), "create_sessions": _signer(SIGNER_A)})
    for caller in (CREATOR, OTHER, ANONYMOUS):
        reads = caller == CREATOR
        assert _decisions(session, caller, frozenset({SIGNER_A})) == (reads, True, True)
        assert _decisions(session, caller, frozenset({SIGNER_B})) == (reads, False, False)
        assert _decisions(session, caller) == (reads, False, False)


def test_a_signature_does_not_stand_in_for_a_key_entry() -> None:
    session = _session({"update": _key(SIGNER_A)})
    assert not can_update(session, Caller(OTHER), CREATOR, frozenset({SIGNER_A}))
    assert can_update(session, Caller(SIGNER_A), CREATOR, frozenset())


def test_require_all() -> None:
    rule = {"type": "all", "rules": [{"type": "creator"}, _signer(SIGNER_A), _signer(SIGNER_B)]}
    session = _session({"update": rule, "create_sessions": rule})
    both = frozenset({SIGNER_A, SIGNER_B})
    assert can_update(session, Caller(CREATOR), CREATOR, both)
    assert can_create_in(session, Caller(CREATOR), CREATOR, both)
    assert not can_update(session, Caller(CREATOR), CREATOR, frozenset({SIGNER_A}))
    assert not can_update(session, Caller(OTHER), CREATOR, both)
    assert not can_update(session, Caller(), CREATOR, both)
    assert not can_create_in(session, Caller(OTHER), CREATOR, both)


def test_require_at_least_n_nested() -> None:
    # Two of: signer A, signer B, (the creator together with signer C).
    rule = {
        "type": "at-least",
        "count": 2,
        "rules": [
            _signer(SIGNER_A),
            _signer(SIGNER_B),
            {"type": "all", "rules": [{"type": "creator"}, _signer(SIGNER_C)]},
        ],
    }
    session = _session({"update": rule})
    cases = [
        (OTHER, {SIGNER_A, SIGNER_B}, True),
        (ANONYMOUS, {SIGNER_A, SIGNER_B}, True),
        (OTHER, {SIGNER_A}, False),
        (OTHER, {SIGNER_A, SIGNER_C}, False),  # C counts only together with the creator
        (CREATOR, {SIGNER_A, SIGNER_C}, True),
        (CREATOR, {SIGNER_C}, False),
        (CREATOR, {SIGNER_B, SIGNER_C}, True),
        (CREATOR, set(), False),
        (OTHER, {SIGNER_A, SIGNER_B, SIGNER_C}, True),
    ]
    for caller, signers, expected in cases:
        assert can_update(session, Caller(caller), CREATOR, frozenset(signers)) is expected, (
            caller,
            signers,
        )


def test_require_at_least_n_of_keys_needs_distinct_rules() -> None:
    rule = {"type": "at-least", "count": 2, "rules": [_key(OTHER), _signer(SIGNER_A)]}
    session = _session({"update": rule})
    assert can_update(session, Caller(OTHER), CREATOR, frozenset({SIGNER_A}))
    assert not can_update(session, Caller(OTHER), CREATOR, frozenset())
    assert not can_update(session, Caller(THIRD), CREATOR, frozenset({SIGNER_A}))


def test_a_rule_listed_twice_counts_once() -> None:
    # The model refuses repeated rules; this checks the decision does not rely on that alone.
    rule = AtLeastRule.model_construct(
        type="at-least", count=2, rules=(KeyRule(key_hash=OTHER), KeyRule(key_hash=OTHER))
    )
    assert not allows(rule, caller=Caller(OTHER), creator=CREATOR, signers=frozenset())


def test_degenerate_trees_fail_closed() -> None:
    empty = AtLeastRule.model_construct(type="at-least", count=0, rules=())
    assert not allows(empty, caller=Caller(CREATOR), creator=CREATOR, signers=frozenset())
    empty_all = AllRule.model_construct(type="all", rules=())
    assert not allows(empty_all, caller=Caller(CREATOR), creator=CREATOR, signers=frozenset())


def test_creator_and_key_comparisons_refuse_odd_callers() -> None:
    session = _session({"read": _key(OTHER)})
    assert not can_read(session, Caller(""), CREATOR)
    assert not can_read(session, Caller("é" * 64), CREATOR)
    assert not can_read(session, Caller(OTHER.upper()), CREATOR)
    assert not can_read(_session(), Caller(""), "")


def test_update_is_decided_by_the_version_being_replaced() -> None:
    before = _session({"update": _key(OTHER)})
    after = _session({"update": _key(THIRD)})
    assert can_update(before, Caller(OTHER), CREATOR, frozenset())
    assert not can_update(before, Caller(THIRD), CREATOR, frozenset())
    assert can_update(after, Caller(THIRD), CREATOR, frozenset())


def test_create_in_uses_the_parent_creator() -> None:
    parent = _session({"create_sessions": {"type": "creator"}})
    assert can_create_in(parent, Caller(OTHER), OTHER, frozenset())
    assert not can_create_in(parent, Caller(CREATOR), OTHER, frozenset())


# --- detached signatures --------------------------------------------------------------------------


def _p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
KEYS: dict[str, Callable[[], SigningKey]] = {
    "P-256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "P-384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "Ed25519": ed25519.Ed25519PrivateKey.generate,
}


@pytest.mark.parametrize("key_type", sorted(KEYS))
def test_sign_and_verify_each_key_type(key_type: str) -> None:
    key = KEYS[key_type]()
    item = sign_session_hash(key, SESSION_HASH)
    assert set(item) == {"key_hash", "public_key", "signature"}
    assert item["key_hash"] == key_hash(key)
    assert item["public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert verify_signatures([item], SESSION_HASH) == frozenset({key_hash(key)})
    # Round-trips through JSON, as it arrives in a request body.
    assert verify_signatures(json.loads(json.dumps([item])), SESSION_HASH) == {key_hash(key)}


@pytest.mark.parametrize("key_type", sorted(KEYS))
def test_signature_covers_the_domain_separated_hash(key_type: str) -> None:
    key = KEYS[key_type]()
    item = sign_session_hash(key, SESSION_HASH)
    signature = base64.b64decode(item["signature"])
    message = b"opencas-session-signature/v1\0" + bytes.fromhex(SESSION_HASH)
    assert signed_message(SESSION_HASH) == message
    assert message.startswith(SIGNATURE_DOMAIN)
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        public.verify(signature, message)
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        digest = hashes.SHA384() if key_type == "P-384" else hashes.SHA256()
        public.verify(signature, message, ec.ECDSA(digest))


def test_several_signers() -> None:
    keys = [factory() for factory in KEYS.values()]
    items = [sign_session_hash(key, SESSION_HASH) for key in keys]
    assert verify_signatures(items, SESSION_HASH) == {key_hash(key) for key in keys}
    assert verify_signatures(tuple(items), SESSION_HASH) == {key_hash(key) for key in keys}


def test_no_signatures() -> None:
    assert verify_signatures(None, SESSION_HASH) == frozenset()
    assert verify_signatures([], SESSION_HASH) == frozenset()


def _problem_paths(error: pytest.ExceptionInfo[SessionError]) -> list[str]:
    return [problem.key for problem in error.value.problems]


@pytest.mark.parametrize("key_type", sorted(KEYS))
def test_tampered_signature_is_refused_not_dropped(key_type: str) -> None:
    item = sign_session_hash(KEYS[key_type](), SESSION_HASH)
    raw = bytearray(base64.b64decode(item["signature"]))
    raw[-1] ^= 0x01
    item["signature"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(SessionError) as error:
        verify_signatures([item], SESSION_HASH)
    assert _problem_paths(error) == ["signatures[0].signature"]
    assert "does not verify" in str(error.value)
    assert error.value.code == "invalid-session"


@pytest.mark.parametrize("key_type", sorted(KEYS))
def test_signature_over_another_hash_is_refused(key_type: str) -> None:
    item = sign_session_hash(KEYS[key_type](), OTHER_HASH)
    with pytest.raises(SessionError, match="does not verify"):
        verify_signatures([item], SESSION_HASH)


def test_signature_without_the_domain_prefix_is_refused() -> None:
    key = _p256()
    item = sign_session_hash(key, SESSION_HASH)
    bare = key.sign(bytes.fromhex(SESSION_HASH), ec.ECDSA(hashes.SHA256()))
    item["signature"] = base64.b64encode(bare).decode()
    with pytest.raises(SessionError, match="does not verify"):
        verify_signatures([item], SESSION_HASH)


def test_a_valid_signature_next_to_a_bad_one_still_fails() -> None:
    good = sign_session_hash(_p256(), SESSION_HASH)
    bad = sign_session_hash(_p256(), OTHER_HASH)
    with pytest.raises(SessionError) as error:
        verify_signatures([good, bad], SESSION_HASH)
    assert _problem_paths(error) == ["signatures[1].signature"]


def _good() -> dict[str, str]:
    return sign_session_hash(_p256(), SESSION_HASH)


def _rsa_public_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _p521_item() -> dict[str, str]:
    key = ec.generate_private_key(ec.SECP521R1())
    public = key.public_key()
    return {
        "key_hash": key_hash(key),
        "public_key": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
        "signature": base64.b64encode(
            key.sign(signed_message(SESSION_HASH), ec.ECDSA(hashes.SHA512()))
        ).decode(),
    }


@pytest.mark.parametrize(
    ("mutate", "path", "words"),
    [
        (lambda item: "not an object", "signatures[0]", "must be an object"),
        (
            lambda item: {k: v for k, v in item.items() if k != "key_hash"},
            "signatures[0]",
            "key_hash",
        ),
        (lambda item: {**item, "alg": "ES256"}, "signatures[0]", "unknown 'alg'"),
        (lambda item: {**item, "signature": 5}, "signatures[0].signature", "string"),
        (lambda item: {**item, "key_hash": "ABC"}, "signatures[0].key_hash", "64 lowercase"),
        (lambda item: {**item, "key_hash": OTHER}, "signatures[0].key_hash", "not the hash"),
        (lambda item: {**item, "public_key": "garbage"}, "signatures[0].public_key", "PEM"),
        (
            lambda item: {**item, "public_key": "x" * 5000},
            "signatures[0].public_key",
            "PEM",
        ),
        (lambda item: {**item, "signature": "!!!"}, "signatures[0].signature", "base64"),
        (lambda item: {**item, "signature": ""}, "signatures[0].signature", "base64"),
        (lambda item: {**item, "signature": "A" * 400}, "signatures[0].signature", "base64"),
        (
            lambda item: {**item, "signature": base64.b64encode(b"not der").decode()},
            "signatures[0].signature",
            "does not verify",
        ),
        (lambda item: _p521_item(), "signatures[0].public_key", "P-256, P-384 or Ed25519"),
    ],
)
def test_malformed_items_are_refused_with_their_path(mutate: Any, path: str, words: str) -> None:
    with pytest.raises(SessionError) as error:
        verify_signatures([mutate(_good())], SESSION_HASH)
    assert _problem_paths(error) == [path]
    assert words in str(error.value)


def test_rsa_public_key_is_refused() -> None:
    item = {**_good(), "public_key": _rsa_public_pem()}
    with pytest.raises(SessionError, match="P-256, P-384 or Ed25519"):
        verify_signatures([item], SESSION_HASH)


@pytest.mark.parametrize("items", ["a string", {"key_hash": "x"}, 42])
def test_items_must_be_a_list(items: object) -> None:
    with pytest.raises(SessionError) as error:
        verify_signatures(items, SESSION_HASH)
    assert _problem_paths(error) == ["signatures"]


def test_too_many_signatures() -> None:
    item = _good()
    with pytest.raises(SessionError, match=f"at most {MAX_SIGNATURES}"):
        verify_signatures([item] * (MAX_SIGNATURES + 1), SESSION_HASH)


def test_the_same_key_may_not_sign_twice() -> None:
    item = _good()
    with pytest.raises(SessionError) as error:
        verify_signatures([item, dict(item)], SESSION_HASH)
    assert _problem_paths(error) == ["signatures[1].key_hash"]


def test_every_problem_is_listed() -> None:
    with pytest.raises(SessionError) as error:
        verify_signatures([_good(), 1, {**_good(), "signature": "!"}], SESSION_HASH)
    assert _problem_paths(error) == ["signatures[1]", "signatures[2].signature"]


@pytest.mark.parametrize("bad_hash", ["", "5F" * 32, "5f" * 31, "zz" * 32])
def test_malformed_session_hash(bad_hash: str) -> None:
    with pytest.raises(ValueError, match="64 lowercase"):
        sign_session_hash(_p256(), bad_hash)
    with pytest.raises(ValueError, match="64 lowercase"):
        verify_signatures([], bad_hash)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(
            lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), id="RSA"
        ),
        pytest.param(lambda: ec.generate_private_key(ec.SECP521R1()), id="P-521"),
    ],
)
def test_unsupported_signing_keys(key: Any) -> None:
    with pytest.raises(ValueError, match="P-256, P-384"):
        sign_session_hash(key(), SESSION_HASH)


def test_verified_signers_satisfy_signer_rules() -> None:
    key_a, key_b = _p256(), ed25519.Ed25519PrivateKey.generate()
    session = _session(
        {"update": {"type": "all", "rules": [_signer(key_hash(key_a)), _signer(key_hash(key_b))]}}
    )
    signers = verify_signatures(
        [sign_session_hash(key_a, SESSION_HASH), sign_session_hash(key_b, SESSION_HASH)],
        SESSION_HASH,
    )
    assert can_update(session, Caller(), CREATOR, signers)
    only_a = verify_signatures([sign_session_hash(key_a, SESSION_HASH)], SESSION_HASH)
    assert not can_update(session, Caller(), CREATOR, only_a)


# --- policies written in YAML ---------------------------------------------------------------------


def _indented(text: str, spaces: int) -> str:
    return textwrap.indent(text, " " * spaces)


def test_policy_written_in_yaml() -> None:
    reader_key = ec.generate_private_key(ec.SECP256R1())
    reader_cert = certificate_pem(create_identity_certificate(reader_key, "reader")).decode()
    signer_key = ed25519.Ed25519PrivateKey.generate()
    signer_cert = certificate_pem(create_identity_certificate(signer_key, "signer")).decode()
    session = parse_session(
        f"""
name: org/app
version: "0.3"
access_policy:
  read:
    - CREATOR
    - {OTHER}
    - |
{_indented(reader_cert, 6)}
  update:
    require-all:
      - CREATOR
      - signer: |
{_indented(signer_cert, 10)}
  create_sessions: [NONE]
"""
    )
    reader = key_hash(reader_key)
    for caller in (CREATOR, OTHER, reader):
        assert can_read(session, Caller(caller), CREATOR)
    assert not can_read(session, Caller(THIRD), CREATOR)
    assert not can_read(session, Caller(), CREATOR)
    signers = verify_signatures([sign_session_hash(signer_key, SESSION_HASH)], SESSION_HASH)
    assert can_update(session, Caller(CREATOR), CREATOR, signers)
    assert not can_update(session, Caller(CREATOR), CREATOR, frozenset())
    assert not can_update(session, Caller(reader), CREATOR, signers)
    assert not can_create_in(session, Caller(CREATOR), CREATOR, signers)


def test_at_least_two_of_three_signers_in_yaml() -> None:
    keys = [ec.generate_private_key(ec.SECP384R1()) for _ in range(3)]
    entries = "\n".join(f"      - signer: {key_hash(key)}" for key in keys)
    session = parse_session(
        f"""
name: org/app
version: "0.3"
access_policy:
  update:
    require-at-least-2:
{entries}
"""
    )
    one = verify_signatures([sign_session_hash(keys[0], SESSION_HASH)], SESSION_HASH)
    two = verify_signatures(
        [sign_session_hash(keys[0], SESSION_HASH), sign_session_hash(keys[2], SESSION_HASH)],
        SESSION_HASH,
    )
    assert not can_update(session, Caller(CREATOR), CREATOR, one)
    assert can_update(session, Caller(), CREATOR, two)
