"""One signing key that floods the CAS with signed requests is refused alone (docs/security.md).

The CAS runs with a small replay cache, so the flood is short: the flooder fills its share and is
refused with ``429 proof-rate-limited``, while another key's signed requests all succeed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from opencas.client import (
    ApiError,
    CasClient,
    ClientIdentity,
    VerifiedCas,
)
from opencas.testing import CasProcess

SHARE = 20
LIMITS = {
    "replay_cache_entries": 3 * SHARE,
    "replay_cache_entries_per_identity": SHARE,
    "replay_cache_identities": 10,
}


@pytest.fixture
def small_cache_cas(tmp_path: Path) -> Iterator[CasProcess]:
    process = CasProcess(tmp_path / "cas", limits=LIMITS)
    try:
        yield process.start()
    finally:
        process.stop()


def _signing_client(cas: CasProcess, verified: VerifiedCas) -> CasClient:
    return CasClient.pinned_to(cas.url, verified, ClientIdentity.generate())


def _outcome(client: CasClient) -> str:
    """``accepted`` for a signed request the CAS answers, or the code it refuses it with."""
    try:
        client.whoami()
    except ApiError as error:
        return error.code
    return "accepted"


def test_a_flooding_key_is_refused_alone(small_cache_cas: CasProcess) -> None:
    verified = small_cache_cas.attest()
    with (
        _signing_client(small_cache_cas, verified) as flooder,
        _signing_client(small_cache_cas, verified) as honest,
    ):
        assert honest.identity is not None
        assert honest.whoami() == honest.identity.key_hash  # seen before the flood
        outcomes = [_outcome(flooder) for _ in range(2 * SHARE)]
        assert outcomes == ["accepted"] * SHARE + ["proof-rate-limited"] * SHARE
        with pytest.raises(ApiError) as refused:
            flooder.whoami()
        assert refused.value.status == 429
        assert refused.value.code == "proof-rate-limited"
        assert refused.value.details["retry_after"] > 0
        for _ in range(SHARE - 1):  # the honest key's whole share, after the flood
            assert honest.whoami() == honest.identity.key_hash
        with pytest.raises(ApiError) as still_refused:
            flooder.whoami()
        assert still_refused.value.code == "proof-rate-limited"
        assert flooder.whoami(signed=False) == "anonymous"


def test_a_flood_of_new_keys_does_not_crowd_out_a_key_seen_before(
    small_cache_cas: CasProcess,
) -> None:
    verified = small_cache_cas.attest()
    with _signing_client(small_cache_cas, verified) as honest:
        assert honest.identity is not None
        assert honest.whoami() == honest.identity.key_hash
        outcomes = set()
        for _ in range(2 * LIMITS["replay_cache_identities"]):
            with _signing_client(small_cache_cas, verified) as attacker:
                outcomes |= {_outcome(attacker) for _ in range(SHARE + 1)}
        assert outcomes == {"accepted", "proof-rate-limited", "proof-replay-cache-full"}
        for _ in range(SHARE - 1):
            assert honest.whoami() == honest.identity.key_hash
