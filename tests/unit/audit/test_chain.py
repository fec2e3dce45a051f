"""Checking one line without serialising it again: what the signature proves, and every way a
line can differ from its canonical form while still carrying a valid signature."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from opencas.audit.chain import (
    GENESIS,
    SignatureCheck,
    audit_key_check,
    check_line,
    line_hash,
    next_entry,
)

KEY = Ed25519PrivateKey.generate()


def key_check(key: Ed25519PrivateKey = KEY) -> SignatureCheck:
    return audit_key_check(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def signed_line(details: dict[str, object] | None = None) -> bytes:
    _, line, _ = next_entry(
        GENESIS,
        time="2026-12-01T12:00:00Z",
        event="session_read",
        actor="ab" * 32,
        subject="one",
        details=details if details is not None else {"hash": "cd" * 32},
        sign=KEY.sign,
    )
    return line


def sig_of(line: bytes) -> str:
    signature = json.loads(line)["sig"]
    assert isinstance(signature, str)
    return signature


def test_a_signed_line_gives_its_facts() -> None:
    line = signed_line()
    facts = check_line(line, key_check())
    assert (facts.seq, facts.prev, facts.event) == (1, GENESIS.hash, "session_read")
    assert facts.hash == line_hash(line)
    assert facts.signed
    assert not facts.prev_failed


def test_a_signature_of_another_key_does_not_verify() -> None:
    with pytest.raises(ValueError, match="does not verify"):
        check_line(signed_line(), key_check(Ed25519PrivateKey.generate()))


def test_an_edited_value_does_not_verify() -> None:
    line = signed_line().replace(b'"subject":"one"', b'"subject":"two"')
    with pytest.raises(ValueError, match="does not verify"):
        check_line(line, key_check())


def test_the_signature_moved_to_the_end_is_not_canonical() -> None:
    line = signed_line()
    member = b',"sig":"' + sig_of(line).encode() + b'"'
    moved = line.replace(member, b"")[:-1] + member + b"}"
    assert json.loads(moved) == json.loads(line)
    with pytest.raises(ValueError, match="canonical"):
        check_line(moved, key_check())


def test_whitespace_around_the_signature_is_not_canonical() -> None:
    line = signed_line()
    spaced = line.replace(b',"sig":', b', "sig": ')
    with pytest.raises(ValueError, match="canonical"):
        check_line(spaced, key_check())


def test_an_escaped_signature_character_is_not_canonical() -> None:
    line = signed_line()
    signature = sig_of(line)
    escaped = line.replace(
        signature.encode(), b"\\u00" + f"{ord(signature[0]):02x}".encode() + signature[1:].encode()
    )
    assert json.loads(escaped) == json.loads(line)
    with pytest.raises(ValueError, match="canonical"):
        check_line(escaped, key_check())


def test_a_nested_sig_member_in_details_does_not_stand_for_the_entry_s() -> None:
    # The details hold a member spelled like the entry's signature, between a nested seq and
    # subject: the entry's own signature is still the one that counts.
    line = signed_line({"inner": {"seq": 1, "sig": "x", "subject": "y"}})
    assert check_line(line, key_check()).signed


def test_an_unsigned_line_is_checked_in_full() -> None:
    _, line, _ = next_entry(
        GENESIS,
        time="2026-12-01T12:00:00Z",
        event="session_read",
        actor="cas",
        subject="",
        details={},
    )
    assert not check_line(line, key_check()).signed
    with pytest.raises(ValueError, match="canonical"):
        check_line(line.replace(b'"details":{}', b'"details": {}'), key_check())


def test_a_line_without_a_key_is_checked_for_form_only() -> None:
    facts = check_line(signed_line(), None)
    assert facts.signed
    with pytest.raises(ValueError, match="canonical"):
        check_line(signed_line().replace(b',"sig":', b', "sig":'), None)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize(
    "details",
    [
        {},
        {"subject": "nested", "x": {"subject": 'a ,"subject": quoted'}},
        {"sig": "not the entry's", "time": "2026"},
        {"\U0001f600 key": "beyond U+FFFF", "é": "ü"},
    ],
)
def test_the_line_written_is_the_canonical_form_of_its_entry(
    signed: bool, details: dict[str, object]
) -> None:
    entry, line, head = next_entry(
        GENESIS,
        time="2026-12-01T12:00:00Z",
        event="session_read",
        actor="ab" * 32,
        subject='a "subject", quoted',
        details=details,
        sign=KEY.sign if signed else None,
    )
    assert line == entry.line()
    assert head.hash == line_hash(line)
    facts = check_line(line, key_check() if signed else None)
    assert facts.signed is signed
