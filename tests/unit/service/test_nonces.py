"""Enclave nonces: minted without state, refused when forged, expired or used again."""

from __future__ import annotations

import re

import pytest

from opencas.errors import AttestationRefused, RateLimitedError
from opencas.service.nonces import NonceStore


def _clock() -> tuple[list[float], NonceStore]:
    now = [1000.0]
    return now, NonceStore(lifetime=60, capacity=3, clock=lambda: now[0])


def test_a_nonce_is_64_hex_digits_and_attests_once() -> None:
    store = NonceStore()
    nonce = store.issue()
    assert re.fullmatch(r"[0-9a-f]{64}", nonce)
    assert nonce != store.issue()
    store.consume(nonce)
    with pytest.raises(AttestationRefused, match="used already") as refusal:
        store.consume(nonce)
    assert refusal.value.check == "nonce"


def test_a_nonce_of_another_key_or_changed_in_any_byte_is_refused() -> None:
    store = NonceStore()
    nonce = store.issue()
    with pytest.raises(AttestationRefused):
        NonceStore().consume(nonce)
    raw = bytearray(bytes.fromhex(nonce))
    for index in (0, 7, 8, 15, 16, 31):  # the expiry, the random part, the MAC
        changed = bytearray(raw)
        changed[index] ^= 0x01
        with pytest.raises(AttestationRefused):
            store.consume(changed.hex())
    store.consume(nonce)  # the refusals used nothing up


@pytest.mark.parametrize("text", ["", "ab", "zz" * 32, "ab" * 33, " " + "ab" * 31 + " "])
def test_text_that_is_no_nonce_is_refused(text: str) -> None:
    with pytest.raises(AttestationRefused):
        NonceStore().consume(text)


def test_a_nonce_expires_after_its_lifetime() -> None:
    now, store = _clock()
    nonce, later = store.issue(), store.issue()
    now[0] += 60.0
    store.consume(nonce)  # at its last moment
    now[0] += 0.01
    with pytest.raises(AttestationRefused, match="expired"):
        store.consume(later)


def test_issuing_stores_nothing_and_only_used_nonces_count_against_the_capacity() -> None:
    now, store = _clock()
    issued = [store.issue() for _ in range(1000)]
    for nonce in issued[:3]:
        store.consume(nonce)
    with pytest.raises(RateLimitedError) as full:
        store.consume(issued[3])
    assert full.value.code == "nonce-store-full"
    # A used nonce is forgotten once it expired: it is refused by its expiry from then on.
    now[0] += 61.0
    fresh = store.issue()
    store.consume(fresh)
    with pytest.raises(AttestationRefused):
        store.consume(issued[0])
    with pytest.raises(AttestationRefused):
        store.consume(fresh)


def test_a_nonce_refused_for_a_full_store_can_attest_later() -> None:
    now, store = _clock()
    old = [store.issue() for _ in range(3)]
    now[0] += 30.0
    waiting = store.issue()
    for nonce in old:
        store.consume(nonce)
    with pytest.raises(RateLimitedError):
        store.consume(waiting)
    now[0] += 30.5  # the old ones expired, the waiting one has not
    store.consume(waiting)
