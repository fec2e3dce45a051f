"""Key handover between simulated CAS platforms: the key reaches only the attested requester,
and every change of the request or answer on the way is refused by name."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from opencas.attestation.peer_admission import RegisteredUpgrade
from opencas.crypto.encoding import b64_decode, b64_encode
from opencas.crypto.recovery import recovery_public_der
from opencas.platform.simulated import SimulatedPlatform
from opencas.service.key_handover import (
    HandoverRefused,
    HandoverSecret,
    check_request,
    document_text,
    make_request,
    open_handover,
    own_identity,
    parse_answer,
    parse_request,
    seal_handover,
)

NOW = datetime(2026, 12, 1, tzinfo=UTC)
SIM = "5e" * 32
SIM_OTHER = "6f" * 32
SECRET = HandoverSecret(secrets.token_bytes(32), False, "ab" * 32, "cluster-1")


def machine(directory: Path, name: str, measurement: str = SIM) -> SimulatedPlatform:
    return SimulatedPlatform.load_or_create(directory / name / "platform.key", measurement)


def test_the_key_reaches_an_admitted_peer(tmp_path: Path) -> None:
    giver, newcomer = machine(tmp_path, "a"), machine(tmp_path, "b")
    key, request = make_request(newcomer, "join")
    # The request travels as text (a database row, a file).
    request = parse_request(document_text(request))
    decision = check_request(request, own_identity(giver, at=NOW), at=NOW)
    assert decision.basis == "same-software"
    answer = parse_answer(document_text(seal_handover(request, SECRET, giver)))
    opened = open_handover(answer, request, key, own_identity(newcomer, at=NOW), at=NOW)
    assert opened == SECRET
    assert opened.dmk == SECRET.dmk


def test_during_a_rollover_the_previous_key_travels_with_the_new_one(tmp_path: Path) -> None:
    giver, newcomer = machine(tmp_path, "a"), machine(tmp_path, "b")
    key, request = make_request(newcomer, "join")
    rolling = HandoverSecret(
        secrets.token_bytes(32), False, "ab" * 32, "c", secrets.token_bytes(32)
    )
    answer = parse_answer(document_text(seal_handover(request, rolling, giver)))
    opened = open_handover(answer, request, key, own_identity(newcomer, at=NOW), at=NOW)
    assert opened.previous_dmk == rolling.previous_dmk
    assert opened.dmk == rolling.dmk
    short = HandoverSecret(rolling.dmk, False, "ab" * 32, "c", b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        seal_handover(request, short, giver)


def test_other_software_gets_nothing_and_hears_why(tmp_path: Path) -> None:
    giver, stranger = machine(tmp_path, "a"), machine(tmp_path, "b", SIM_OTHER)
    _, request = make_request(stranger, "join")
    with pytest.raises(HandoverRefused) as refused:
        check_request(request, own_identity(giver, at=NOW), at=NOW)
    assert refused.value.check == "software"
    assert SIM_OTHER in refused.value.message
    upgrades = [RegisteredUpgrade(measurement=SIM_OTHER)]
    decision = check_request(request, own_identity(giver, at=NOW), upgrades, at=NOW)
    assert decision.basis == "registered-upgrade"


def test_a_changed_request_is_refused(tmp_path: Path) -> None:
    giver, newcomer = machine(tmp_path, "a"), machine(tmp_path, "b")
    _, request = make_request(newcomer, "join")
    own = own_identity(giver, at=NOW)
    # Someone with the database swaps in a key of their own: the evidence no longer binds it.
    swapped = request.model_copy(
        update={"public_key": b64_encode(recovery_public_der(x25519.X25519PrivateKey.generate()))}
    )
    with pytest.raises(HandoverRefused) as refused:
        check_request(swapped, own, at=NOW)
    assert refused.value.check == "binding"
    other_purpose = request.model_copy(update={"purpose": "backup"})
    with pytest.raises(HandoverRefused, match="does not bind"):
        check_request(other_purpose, own, at=NOW)


def test_bad_evidence_is_refused_as_evidence(tmp_path: Path) -> None:
    giver, newcomer = machine(tmp_path, "a"), machine(tmp_path, "b")
    _, request = make_request(newcomer, "join")
    broken = dict(request.evidence)
    data = bytearray(b64_decode(broken["data"]))
    data[-5] ^= 1
    broken["data"] = b64_encode(bytes(data))
    with pytest.raises(HandoverRefused) as refused:
        check_request(
            request.model_copy(update={"evidence": broken}), own_identity(giver, at=NOW), at=NOW
        )
    assert refused.value.check == "evidence"


def test_an_answer_from_other_software_is_not_used(tmp_path: Path) -> None:
    # A database made by anyone else (here: other software) must not be served by this build.
    impostor, newcomer = machine(tmp_path, "a", SIM_OTHER), machine(tmp_path, "b")
    key, request = make_request(newcomer, "join")
    answer = seal_handover(request, SECRET, impostor)
    with pytest.raises(HandoverRefused) as refused:
        open_handover(answer, request, key, own_identity(newcomer, at=NOW), at=NOW)
    assert refused.value.check == "software"


def test_a_changed_or_misdirected_answer_is_refused(tmp_path: Path) -> None:
    giver, newcomer = machine(tmp_path, "a"), machine(tmp_path, "b")
    key, request = make_request(newcomer, "join")
    own = own_identity(newcomer, at=NOW)
    answer = seal_handover(request, SECRET, giver)
    # The sealed key of another answer (to another request) under this answer's evidence.
    _, other_request = make_request(newcomer, "join")
    other = seal_handover(other_request, SECRET, giver)
    with pytest.raises(HandoverRefused) as refused:
        open_handover(answer.model_copy(update={"sealed": other.sealed}), request, key, own, at=NOW)
    assert refused.value.check == "binding"
    with pytest.raises(HandoverRefused, match="another request"):
        open_handover(other, request, key, own, at=NOW)
    # An answer replayed to a new request of the same machine opens nothing either.
    new_key, new_request = make_request(newcomer, "join")
    with pytest.raises(HandoverRefused):
        open_handover(answer, new_request, new_key, own, at=NOW)


def test_malformed_documents_are_refused_as_format() -> None:
    with pytest.raises(HandoverRefused) as refused:
        parse_request('{"format": "opencas-key-handover-request/v1"}')
    assert refused.value.check == "format"
    with pytest.raises(HandoverRefused, match="malformed"):
        parse_answer(b"[1]")
