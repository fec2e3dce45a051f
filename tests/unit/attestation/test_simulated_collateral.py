"""Simulated collateral: a simulated machine's TCB status, signed by a root the verifier trusts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opencas.attestation.simulated import SimulatedVerifier, create_simulated_evidence
from opencas.attestation.simulated_collateral import (
    SIMULATED_COLLATERAL_KEY,
    create_simulated_collateral,
    parse_simulated_collateral,
)
from opencas.attestation.verifier import NO_COLLATERAL, CollateralKey
from opencas.crypto.canonical import canonical_json
from opencas.crypto.keys import key_hash
from opencas.errors import EvidenceError

ROOT = Ed25519PrivateKey.generate()
ROOTS = frozenset({key_hash(ROOT.public_key())})
MACHINE = Ed25519PrivateKey.generate()
AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def document(status: str = "OutOfDate", root: Ed25519PrivateKey = ROOT) -> bytes:
    return create_simulated_collateral(
        root,
        issue_date=AT - timedelta(days=1),
        next_update=AT + timedelta(days=1),
        tcb_evaluation_number=7,
        machines={key_hash(MACHINE.public_key()): status},
    )


class One:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.asked: list[CollateralKey] = []

    def collateral(self, key: CollateralKey, at: datetime) -> bytes:
        self.asked.append(key)
        return self.data


def verify(data: bytes, at: datetime = AT, machine: Ed25519PrivateKey = MACHINE) -> object:
    evidence = create_simulated_evidence(machine, "11" * 32, bytes(64))
    return SimulatedVerifier(ROOTS).verify(evidence, at=at, collateral=One(data))


def test_the_machine_gets_the_status_the_collateral_gives_it() -> None:
    source = One(document("OutOfDate"))
    evidence = create_simulated_evidence(MACHINE, "11" * 32, bytes(64))
    verified = SimulatedVerifier(ROOTS).verify(evidence, at=AT, collateral=source)
    assert verified.tcb_status == "OutOfDate"
    assert verified.tcb_evaluation_number == 7
    assert verified.collateral_not_after == AT + timedelta(days=1)
    assert source.asked == [SIMULATED_COLLATERAL_KEY]


def test_without_roots_the_collateral_is_not_asked_for() -> None:
    evidence = create_simulated_evidence(MACHINE, "11" * 32, bytes(64))
    verified = SimulatedVerifier().verify(evidence, at=AT, collateral=NO_COLLATERAL)
    assert verified.tcb_status == "Simulated"


@pytest.mark.parametrize(
    ("data", "at", "check", "message"),
    [
        (document(root=Ed25519PrivateKey.generate()), AT, "collateral", "does not trust"),
        (document(), AT + timedelta(days=2), "collateral", "is valid from"),
        (document().replace(b"OutOfDate", b"UpToDate"), AT, "collateral", "does not verify"),
        (b'{"body": 1}', AT, "collateral", "canonical"),
        (canonical_json({"body": {}, "signature": ""}), AT, "collateral", "wrong members"),
    ],
)
def test_collateral_that_does_not_hold_is_refused(
    data: bytes, at: datetime, check: str, message: str
) -> None:
    with pytest.raises(EvidenceError, match=message) as refused:
        verify(data, at)
    assert refused.value.check == check


def test_a_machine_the_collateral_does_not_list_has_no_tcb_level() -> None:
    with pytest.raises(EvidenceError, match="lists no TCB status") as refused:
        verify(document(), machine=Ed25519PrivateKey.generate())
    assert refused.value.check == "tcb"


def test_an_unknown_status_is_refused() -> None:
    body = json.loads(document())["body"]
    body["machines"] = {key_hash(MACHINE.public_key()): "Fine"}
    with pytest.raises(ValueError, match="cannot be listed"):
        create_simulated_collateral(
            ROOT, issue_date=AT, next_update=AT, tcb_evaluation_number=0, machines=body["machines"]
        )
    assert parse_simulated_collateral(document(), ROOTS).machines
