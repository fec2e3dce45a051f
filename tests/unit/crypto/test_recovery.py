"""Shamir shares of the database key and their HPKE sealing, bound to what they belong to."""

from __future__ import annotations

import itertools
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from opencas.crypto.recovery import (
    MAX_RECOVERY_KEYS,
    SHARE_INFO_PREFIX,
    TRANSFER_INFO_PREFIX,
    RecoveryShareError,
    ShareLabel,
    combine_shares,
    open_share,
    recovery_public_der,
    seal_share,
    split_key,
)

KEY = os.urandom(32)
LABEL = ShareLabel("aa" * 32, "bb" * 16, 2, 1, "cc" * 32)


def test_any_threshold_shares_give_the_key_back() -> None:
    shares = split_key(KEY, 3, 5)
    assert [index for index, _ in shares] == [1, 2, 3, 4, 5]
    for chosen in itertools.combinations(shares, 3):
        assert combine_shares(chosen) == KEY


def test_one_share_fewer_gives_another_key() -> None:
    shares = split_key(KEY, 3, 5)
    for chosen in itertools.combinations(shares, 2):
        assert combine_shares(chosen) != KEY


def test_a_split_is_random_each_time() -> None:
    assert split_key(KEY, 2, 3) != split_key(KEY, 2, 3)


@pytest.mark.parametrize(("threshold", "count"), [(0, 3), (4, 3), (1, MAX_RECOVERY_KEYS + 1)])
def test_impossible_splits_are_refused(threshold: int, count: int) -> None:
    with pytest.raises(ValueError, match="threshold"):
        split_key(KEY, threshold, count)


def test_a_share_given_twice_is_refused() -> None:
    shares = split_key(KEY, 2, 3)
    with pytest.raises(RecoveryShareError, match="twice"):
        combine_shares([shares[0], shares[0]])


def test_a_sealed_share_opens_only_with_its_key_label_and_leg() -> None:
    holder, other = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    sealed = seal_share(recovery_public_der(holder), KEY, LABEL, SHARE_INFO_PREFIX)
    assert open_share(holder, sealed, LABEL, SHARE_INFO_PREFIX) == KEY
    relabelled = ShareLabel(LABEL.cas_key_hash, LABEL.split_id, LABEL.threshold, 2, LABEL.key_hash)
    for key, label, prefix in [
        (other, LABEL, SHARE_INFO_PREFIX),
        (holder, relabelled, SHARE_INFO_PREFIX),
        (holder, LABEL, TRANSFER_INFO_PREFIX),
    ]:
        with pytest.raises(RecoveryShareError, match="does not open"):
            open_share(key, sealed, label, prefix)
