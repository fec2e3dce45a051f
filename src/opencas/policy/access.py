"""Access decisions over a session's access policy, and detached signatures over session hashes.

Pure: a decision takes the rule, who is asking and which keys signed, and returns ``True`` or
``False``. *Who is asking* is a :class:`~opencas.policy.caller.Caller`: the key hash of the key
that signed the request (DESIGN.md §4), or anonymous. *Which keys signed* is the set of key
hashes whose detached signatures over the new session hash verified (:func:`verify_signatures`);
``signer`` rules are satisfied by those, whoever sends the request, unless a signature binds the
creator it authorises: then only that caller may send it. A session created under a
``create_sessions`` rule that holds a signer is decided with its :class:`Governance`. The CAS
owner has no special access: nothing here knows about owners.

Decisions fail closed: an anonymous caller satisfies only ``any``; ``none`` is satisfied by no one.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from opencas.crypto.keys import (
    SIGNING_KEY_TYPES,
    PrivateKey,
    describe_key,
    ecdsa_hash,
    key_hash,
    key_type_of,
)
from opencas.crypto.pem import load_public_key_pem, public_key_pem
from opencas.policy.caller import Caller
from opencas.policy.errors import SessionError
from opencas.policy.model import (
    AccessRuleModel,
    AllRule,
    AnyRule,
    AtLeastRule,
    CreatorRule,
    KeyRule,
    NoneRule,
    SecretKeyRule,
    Session,
    SignerRule,
    check_hex64,
)
from opencas.sources.problems import Problem

Signatures: TypeAlias = frozenset[str]
"""Key hashes whose detached signatures over the session hash verified."""

SecretKeys: TypeAlias = Mapping[str, str]
"""The key hash of each certificate secret of the session whose rule is decided, by secret
name, as the CAS holds its values when it decides (for :class:`SecretKeyRule`)."""

_NO_SECRET_KEYS: Final[SecretKeys] = {}

SIGNATURE_DOMAIN: Final = b"opencas-session-signature/v1\0"
"""Prefix of every signed message, so that a session signature can never be replayed as a
signature over anything else (a request proof, a certificate) that happens to hold the same
bytes, nor the other way round."""

CREATOR_SIGNATURE_DOMAIN: Final = b"opencas-session-signature/v2\0"
"""Prefix of a signed message that also binds the creator it authorises: a different prefix, so
that a signature binding a creator can never be read as one that binds none."""

MAX_SIGNATURES: Final = 64
_SIGNATURE_FIELDS: Final = frozenset({"key_hash", "public_key", "signature"})
_OPTIONAL_FIELDS: Final = frozenset({"creator"})
# Bounds the work an anonymous body can cause; real P-384 / Ed25519 values are far smaller.
_MAX_PUBLIC_KEY_PEM: Final = 1024
_MAX_SIGNATURE_B64: Final = 256


def allows(
    rule: AccessRuleModel,
    *,
    caller: Caller,
    creator: str,
    signers: Signatures,
    secret_keys: SecretKeys = _NO_SECRET_KEYS,
) -> bool:
    """Whether ``rule`` is satisfied for ``caller``.

    ``creator`` holds when the caller's key hash equals ``creator`` (the key hash of the
    session's creator); ``any`` always holds, anonymous callers included; ``none`` never holds;
    ``key`` holds when the caller's key hash equals the rule's; ``signer`` holds when the rule's
    key hash is in ``signers``; ``secret-key`` when the caller's key hash is that of the
    certificate secret in ``secret_keys`` (never, when it is not there); ``all`` when every
    sub-rule holds; ``at-least N`` when at least ``N`` distinct sub-rules hold (a rule listed
    twice counts once). Key hashes are compared in constant time. An empty rule list or a count
    below 1 is never satisfied.
    """

    def holds(item: AccessRuleModel) -> bool:
        return allows(
            item, caller=caller, creator=creator, signers=signers, secret_keys=secret_keys
        )

    if isinstance(rule, AllRule):
        return bool(rule.rules) and all(holds(item) for item in rule.rules)
    if isinstance(rule, AtLeastRule):
        distinct: list[AccessRuleModel] = []
        for item in rule.rules:
            if item not in distinct:
                distinct.append(item)
        held = sum(holds(item) for item in distinct)
        return rule.count >= 1 and held >= rule.count
    if isinstance(rule, SecretKeyRule):
        return _same_key(caller.key_hash, secret_keys.get(rule.secret, ""))
    return _leaf_allows(rule, caller.key_hash, creator, signers)


def can_read(
    session: Session,
    caller: Caller,
    creator: str,
    secret_keys: SecretKeys = _NO_SECRET_KEYS,
) -> bool:
    """Whether ``caller`` may read ``session`` (its text, hash and metadata).

    ``read`` is a flat any-of list (the model refuses signer rules and governance trees there),
    so detached signatures play no part: it is decided with no signers. ``secret_keys`` are
    those of ``session``'s certificate secrets.
    """
    return allows(
        session.access_policy.read,
        caller=caller,
        creator=creator,
        signers=frozenset(),
        secret_keys=secret_keys,
    )


def names_secret_keys(rule: AccessRuleModel) -> bool:
    """Whether ``rule`` holds a ``secret-key`` rule anywhere: deciding it needs the session's
    secret values (:data:`SecretKeys`)."""
    if isinstance(rule, SecretKeyRule):
        return True
    if isinstance(rule, AllRule | AtLeastRule):
        return any(names_secret_keys(item) for item in rule.rules)
    return False


@dataclass(frozen=True)
class Governance:
    """The signer-governed ``create_sessions`` rule a session was created under.

    ``rule`` is the namespace's ``create_sessions`` rule as it is now, ``namespace_creator`` the
    namespace session's creator (whom ``creator`` rules in ``rule`` mean), and
    ``creator_approved`` whether the signatures that admitted the creation bound its creator.
    ``secret_keys`` are those of the namespace session's certificate secrets.
    """

    rule: AccessRuleModel
    namespace_creator: str
    creator_approved: bool
    secret_keys: SecretKeys = field(default_factory=dict)


def governs_creation(rule: AccessRuleModel) -> bool:
    """Whether ``rule`` (a ``create_sessions`` rule) holds a ``signer`` rule anywhere in it.

    Such a rule can be satisfied by signatures whoever submits them, so the session it admits
    needs :class:`Governance` for its later decisions.
    """
    if isinstance(rule, SignerRule):
        return True
    if isinstance(rule, AllRule | AtLeastRule):
        return any(governs_creation(item) for item in rule.rules)
    return False


def acting_creator(creator: str, governance: Governance | None) -> str:
    """Whom ``creator`` rules of a session mean: its creator, unless it was created under a
    signer-governed rule whose signatures did not bind that creator; then no one (``""``)."""
    if governance is not None and not governance.creator_approved:
        return ""
    return creator


def can_update(
    session_before: Session,
    caller: Caller,
    creator: str,
    signers: Signatures,
    governance: Governance | None = None,
    secret_keys: SecretKeys = _NO_SECRET_KEYS,
) -> bool:
    """Whether ``caller``, with the detached ``signers``, may replace ``session_before``.

    The ``update`` rule of the version being replaced decides, never the rule of the new text:
    otherwise a new version could grant itself the right to be stored. For a session created
    under a signer-governed rule (``governance``), an ``update`` rule that is the bare
    ``CREATOR`` (written so, or left out) is replaced by the same approval as its creation: the
    namespace's ``create_sessions`` rule, over the new hash. Any other ``update`` rule decides as
    written, its ``creator`` rules holding only for a creator the signatures bound
    (:func:`acting_creator`). ``secret_keys`` are those of ``session_before``'s certificate
    secrets, as they are before the update.
    """
    rule = session_before.access_policy.update
    if governance is not None and rule == CreatorRule():
        return allows(
            governance.rule,
            caller=caller,
            creator=governance.namespace_creator,
            signers=signers,
            secret_keys=governance.secret_keys,
        )
    return allows(
        rule,
        caller=caller,
        creator=acting_creator(creator, governance),
        signers=signers,
        secret_keys=secret_keys,
    )


def can_create_in(
    parent_session: Session,
    caller: Caller,
    creator_of_parent: str,
    signers: Signatures,
    secret_keys: SecretKeys = _NO_SECRET_KEYS,
) -> bool:
    """Whether ``caller``, with the detached ``signers``, may create a session under ``parent``.

    ``parent_session``'s ``create_sessions`` rule decides; ``creator`` rules in it mean the
    creator of the parent session, not the caller who creates the child, and ``secret_keys``
    are the parent's.
    """
    return allows(
        parent_session.access_policy.create_sessions,
        caller=caller,
        creator=creator_of_parent,
        signers=signers,
        secret_keys=secret_keys,
    )


def signed_message(session_hash: str, creator: str | None = None) -> bytes:
    """The bytes a detached signature covers.

    Without ``creator``: ``SIGNATURE_DOMAIN`` followed by the 32-byte hash. With ``creator`` (the
    key hash of the one identity that may submit the signed version):
    ``CREATOR_SIGNATURE_DOMAIN``, the 32-byte session hash, then the 32-byte creator key hash.
    Raises ``ValueError`` when either is not 64 lowercase hex digits.
    """
    if not _is_hex64(session_hash):
        raise ValueError("a session hash is 64 lowercase hexadecimal digits")
    if creator is None:
        return SIGNATURE_DOMAIN + bytes.fromhex(session_hash)
    if not _is_hex64(creator):
        raise ValueError("a creator is a key hash: 64 lowercase hexadecimal digits")
    return CREATOR_SIGNATURE_DOMAIN + bytes.fromhex(session_hash) + bytes.fromhex(creator)


def sign_session_hash(
    private_key: PrivateKey, session_hash: str, creator: str | None = None
) -> dict[str, str]:
    """A detached signature by ``private_key`` over ``session_hash``, in its JSON shape.

    Returns ``{"key_hash", "public_key" (PEM SubjectPublicKeyInfo), "signature" (standard
    base64)}``, and ``"creator"`` when ``creator`` binds the identity that may submit it. The
    signature covers :func:`signed_message`; it is ECDSA with SHA-256 for a P-256 key, ECDSA
    with SHA-384 for a P-384 key (DER-encoded, as OpenSSL writes it) or Ed25519. Raises
    ``ValueError`` for any other key or a malformed hash.
    """
    message = signed_message(session_hash, creator)
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        signature = private_key.sign(message)
    elif (
        isinstance(private_key, ec.EllipticCurvePrivateKey)
        and key_type_of(private_key) in SIGNING_KEY_TYPES
    ):
        signature = private_key.sign(message, ec.ECDSA(ecdsa_hash(private_key)))
    else:
        raise ValueError(
            f"{describe_key(private_key)} keys cannot sign sessions; use P-256, P-384 or Ed25519"
        )
    public = private_key.public_key()
    item = {
        "key_hash": key_hash(public),
        "public_key": public_key_pem(public).decode("ascii"),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return item if creator is None else {**item, "creator": creator}


@dataclass(frozen=True)
class Approval:
    """The detached signatures of a request that verified.

    ``signers`` holds every signing key's hash; ``bound`` those of the signatures that bind a
    creator, which is then the caller who submitted them.
    """

    signers: Signatures
    bound: Signatures


def verify_signatures(items: object, session_hash: str, submitter: str | None = None) -> Signatures:
    """The key hashes of ``items``, a list of detached signatures over ``session_hash``.

    See :func:`verify_approval`, whose ``signers`` this is.
    """
    return verify_approval(items, session_hash, submitter).signers


def verify_approval(items: object, session_hash: str, submitter: str | None = None) -> Approval:
    """The signers of ``items``, a list of detached signatures over ``session_hash``.

    ``None`` means no signatures. Every item must be an object with exactly ``key_hash``,
    ``public_key`` and ``signature``, and optionally ``creator`` (see :func:`sign_session_hash`);
    the public key must be P-256, P-384 or Ed25519 and have that key hash; no key may sign twice;
    at most ``MAX_SIGNATURES`` items. A signature that names a ``creator`` covers it, and is
    accepted only from that creator: ``submitter`` (the caller's key hash) must equal it. A
    signature that does not verify is never dropped silently: it is refused like a malformed
    item. Raises :class:`SessionError` listing every refused item by its path
    (``signatures[2].signature``), and ``ValueError`` when ``session_hash`` is malformed.
    """
    signed_message(session_hash)
    if items is None:
        return Approval(frozenset(), frozenset())
    if not isinstance(items, list | tuple):
        raise SessionError(Problem.about("signatures", "must be a list of signatures"))
    if len(items) > MAX_SIGNATURES:
        raise SessionError(
            Problem.about("signatures", f"at most {MAX_SIGNATURES} signatures are accepted")
        )
    problems: list[Problem] = []
    verified: dict[str, int] = {}
    bound: set[str] = set()
    for index, item in enumerate(items):
        path = f"signatures[{index}]"
        try:
            signer, creator = _verify_one(item, session_hash, submitter)
        except _Refused as refused:
            where = f"{path}.{refused.field}" if refused.field else path
            problems.append(Problem.about(where, refused.message))
            continue
        if signer in verified:
            message_text = f"the key {signer} already signed in signatures[{verified[signer]}]"
            problems.append(Problem.about(f"{path}.key_hash", message_text))
            continue
        verified[signer] = index
        if creator is not None:
            bound.add(signer)
    if problems:
        raise SessionError(problems)
    return Approval(frozenset(verified), frozenset(bound))


class _Refused(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _verify_one(item: object, session_hash: str, submitter: str | None) -> tuple[str, str | None]:
    """The signer's key hash and the creator the signature binds (or ``None``)."""
    if not isinstance(item, Mapping):
        raise _Refused("", "must be an object with key_hash, public_key and signature")
    fields = set(item)
    if not fields >= _SIGNATURE_FIELDS or not fields <= _SIGNATURE_FIELDS | _OPTIONAL_FIELDS:
        missing = sorted(_SIGNATURE_FIELDS - fields)
        unknown = sorted(str(name) for name in fields - _SIGNATURE_FIELDS - _OPTIONAL_FIELDS)
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"unknown {', '.join(repr(name) for name in unknown)}"] if unknown else []
        raise _Refused(
            "",
            "; ".join(parts) + " (expected key_hash, public_key and signature, and optionally "
            "creator)",
        )
    claimed, pem, encoded = item["key_hash"], item["public_key"], item["signature"]
    creator = item.get("creator")
    for name, value in (("key_hash", claimed), ("public_key", pem), ("signature", encoded)):
        if not isinstance(value, str):
            raise _Refused(name, "must be a string")
    if not _is_hex64(claimed):
        raise _Refused("key_hash", "must be a key hash (64 lowercase hexadecimal digits)")
    if creator is not None and not (isinstance(creator, str) and _is_hex64(creator)):
        raise _Refused("creator", "must be a key hash (64 lowercase hexadecimal digits)")
    message = signed_message(session_hash, creator)
    public = _load_public_key(pem)
    actual = key_hash(public)
    if not hmac.compare_digest(claimed.encode("ascii"), actual.encode("ascii")):
        raise _Refused("key_hash", f"is not the hash of public_key (which is {actual})")
    signature = _decode_signature(encoded)
    try:
        if isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, message)
        else:
            public.verify(signature, message, ec.ECDSA(ecdsa_hash(public)))
    except InvalidSignature:
        raise _Refused(
            "signature",
            f"the signature by key {actual} does not verify over this session's hash "
            "(was it made for another version of the session, or for another creator?)",
        ) from None
    if creator is not None and not _same_key(submitter, creator):
        raise _Refused(
            "creator",
            f"the signature by key {actual} authorises only the identity {creator} to submit "
            f"this session, and this request is signed by {submitter or 'no one'}",
        )
    return actual, creator


def _load_public_key(pem: str) -> ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey:
    if len(pem) > _MAX_PUBLIC_KEY_PEM or not pem.isascii():
        raise _Refused("public_key", "must be a PEM public key ('-----BEGIN PUBLIC KEY-----')")
    try:
        public = load_public_key_pem(pem.encode("ascii"))
    except ValueError:
        raise _Refused(
            "public_key", "must be a PEM public key ('-----BEGIN PUBLIC KEY-----')"
        ) from None
    if key_type_of(public) in SIGNING_KEY_TYPES and not isinstance(public, rsa.RSAPublicKey):
        return public
    raise _Refused("public_key", "must be a P-256, P-384 or Ed25519 key")


def _decode_signature(encoded: str) -> bytes:
    if not encoded or len(encoded) > _MAX_SIGNATURE_B64:
        raise _Refused("signature", "must be a signature in standard base64")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise _Refused("signature", "must be a signature in standard base64") from None


def _leaf_allows(rule: AccessRuleModel, who: str | None, creator: str, signers: Signatures) -> bool:
    if isinstance(rule, AnyRule):
        return True
    if isinstance(rule, NoneRule):
        return False
    if isinstance(rule, CreatorRule):
        return _same_key(who, creator)
    if isinstance(rule, KeyRule):
        return _same_key(who, rule.key_hash)
    if isinstance(rule, SignerRule):
        return any(_same_key(signer, rule.key_hash) for signer in signers)
    raise TypeError(f"not an access rule: {type(rule).__name__}")


def _is_hex64(text: str) -> bool:
    try:
        check_hex64(text)
    except ValueError:
        return False
    return True


def _same_key(presented: str | None, expected: str) -> bool:
    if presented is None or not presented or not expected:
        return False
    # Encoded first: compare_digest refuses non-ASCII str, and a caller's hash is untrusted input.
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))
