"""The replay cache: entries live as long as their proof verifies; one key cannot fill it.

The clock is passed in, so every test runs on a fake clock of whole seconds.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opencas.crypto.replay_cache import IDLE_IDENTITY_RETENTION, ReplayCache
from opencas.errors import RequestProofError

T = 1_750_000_000


def _jti(number: int) -> str:
    return f"jti-{number:012d}"


def _refused(
    code: str, cache: ReplayCache, identity: str, jti: str, *, iat: int, now: float
) -> RequestProofError:
    with pytest.raises(RequestProofError) as caught:
        cache.remember(identity, jti, iat=iat, now=now)
    assert caught.value.code == code, caught.value.message
    return caught.value


def _fill(cache: ReplayCache, identity: str, count: int, *, now: float, first: int = 0) -> None:
    for number in range(first, first + count):
        cache.remember(identity, _jti(number), iat=int(now), now=now)


def test_an_entry_lives_exactly_as_long_as_its_proof_verifies() -> None:
    cache = ReplayCache(max_age=10)
    cache.remember("alice", _jti(1), iat=T, now=T)
    cache.remember("alice", _jti(2), iat=T + 5, now=T)  # dated ahead: lives until its iat + 10
    assert cache.purge(now=T + 10) == 0
    assert cache.remembers("alice", _jti(1))
    assert cache.purge(now=T + 10.5) == 1
    assert not cache.remembers("alice", _jti(1))
    assert cache.purge(now=T + 15) == 0
    assert cache.purge(now=T + 16) == 1
    assert len(cache) == 0


def test_a_jti_is_refused_while_remembered_and_only_for_its_own_key() -> None:
    cache = ReplayCache()
    cache.remember("alice", _jti(1), iat=T, now=T)
    error = _refused("proof-replayed", cache, "alice", _jti(1), iat=T, now=T + 119)
    assert error.http_status == 401
    cache.remember("bob", _jti(1), iat=T, now=T)  # another key's proof, not a replay
    assert len(cache) == 2


def test_the_time_window_is_the_caches() -> None:
    cache = ReplayCache(max_age=120, max_future_skew=5)
    cache.check_time(T - 120, now=T)
    cache.check_time(T + 5, now=T)
    assert "120 s before" in _time_refused("proof-expired", cache, T - 121, T)
    assert "5 s after" in _time_refused("proof-not-yet-valid", cache, T + 6, T)


def _time_refused(code: str, cache: ReplayCache, iat: int, now: float) -> str:
    with pytest.raises(RequestProofError) as caught:
        cache.check_time(iat, now)
    assert caught.value.code == code
    return caught.value.message


def test_a_clock_that_goes_back_forgets_nothing_early_and_accepts_nothing_expired() -> None:
    cache = ReplayCache(max_age=10)
    cache.remember("alice", _jti(1), iat=T, now=T)
    cache.remember("alice", _jti(2), iat=T + 30, now=T + 30)  # the server's clock then steps back
    assert cache.purge(now=T) == 0
    assert cache.remembers("alice", _jti(2))
    _refused("proof-expired", cache, "alice", _jti(3), iat=T + 15, now=T + 15)
    assert "before the server's time" in _time_refused("proof-expired", cache, T + 15, T + 15)


def test_a_key_over_its_share_is_the_only_one_refused() -> None:
    cache = ReplayCache(capacity=100, share=3, max_age=10)
    _fill(cache, "flooder", 3, now=T)
    error = _refused("proof-rate-limited", cache, "flooder", _jti(99), iat=T + 2, now=T + 2)
    assert error.http_status == 429
    assert error.details == {"retry_after": 9}  # its first entry expires after T + 10
    assert "retry in 9 s" in error.message
    _fill(cache, "honest", 3, now=T + 2)
    assert not cache.remembers("flooder", _jti(99))
    cache.remember("flooder", _jti(99), iat=T + 11, now=T + 11)  # its old entries expired


def test_a_flood_of_new_keys_never_evicts_a_key_seen_before_it() -> None:
    cache = ReplayCache(capacity=10, share=4, max_age=100)
    cache.remember("honest", _jti(0), iat=T, now=T)
    refusals = {
        _outcome(cache, f"attacker-{key}", _jti(number), iat=T, now=T)
        for key in range(20)
        for number in range(4)
    }
    assert refusals == {"accepted", "proof-replay-cache-full"}
    assert len(cache) <= 10
    for number in range(1, 4):  # room is made by forgetting the youngest attacker keys
        cache.remember("honest", _jti(number), iat=T + 1, now=T + 1)
    assert all(cache.remembers("honest", _jti(number)) for number in range(4))
    assert len(cache) <= 10


def test_a_forgotten_keys_proofs_are_never_accepted_again() -> None:
    cache = ReplayCache(capacity=2, share=2, max_age=100)
    cache.remember("senior", _jti(0), iat=T, now=T)
    cache.remember("junior", _jti(1), iat=T + 3, now=T)
    cache.remember("senior", _jti(2), iat=T, now=T)  # forgets "junior" to make room
    assert not cache.remembers("junior", _jti(1))
    error = _refused("proof-replay-cache-full", cache, "junior", _jti(1), iat=T + 3, now=T + 4)
    assert error.details == {"retry_after": 1}
    assert cache.purge(now=T + 101) == 2
    cache.remember("junior", _jti(5), iat=T + 101, now=T + 101)  # a fresh proof is fine


def test_a_full_cache_refuses_the_youngest_caller() -> None:
    cache = ReplayCache(capacity=2, share=2)
    cache.remember("senior", _jti(0), iat=T, now=T)
    cache.remember("junior", _jti(1), iat=T, now=T)
    _refused("proof-replay-cache-full", cache, "junior", _jti(2), iat=T, now=T)
    _refused("proof-replay-cache-full", cache, "newcomer", _jti(3), iat=T, now=T)
    assert cache.tracked_identities() == 2


def test_identities_are_bounded_and_idle_ones_keep_their_seniority_for_a_while() -> None:
    cache = ReplayCache(capacity=10, share=5, identities=2, max_age=10)
    cache.remember("alice", _jti(0), iat=T, now=T)
    cache.remember("bob", _jti(1), iat=T, now=T)
    error = _refused("proof-replay-cache-full", cache, "carol", _jti(2), iat=T, now=T)
    assert "2 signing keys" in error.message
    later = T + 100  # every entry expired; alice and bob are idle but still tracked
    _refused("proof-replay-cache-full", cache, "carol", _jti(2), iat=later, now=later)
    cache.remember("alice", _jti(3), iat=later, now=later)
    much_later = later + IDLE_IDENTITY_RETENTION + 11  # bob idle for longer than the retention
    cache.remember("carol", _jti(4), iat=much_later, now=much_later)
    assert cache.tracked_identities() == 1


def test_an_idle_senior_key_still_outranks_a_younger_flood() -> None:
    cache = ReplayCache(capacity=4, share=4, max_age=10)
    cache.remember("honest", _jti(0), iat=T, now=T)
    back = T + 60  # honest's entry expired; a younger key has filled the cache meanwhile
    _fill(cache, "attacker", 4, now=back)
    cache.remember("honest", _jti(1), iat=back, now=back)
    assert cache.remembers("honest", _jti(1))
    assert len(cache) == 1


def test_arguments() -> None:
    with pytest.raises(ValueError, match="positive"):
        ReplayCache(max_age=0)
    with pytest.raises(ValueError, match="positive"):
        ReplayCache(capacity=0)
    with pytest.raises(ValueError, match="positive"):
        ReplayCache(identities=0)
    with pytest.raises(ValueError, match="share"):
        ReplayCache(capacity=5, share=6)


_CODES = {
    "accepted",
    "proof-replayed",
    "proof-rate-limited",
    "proof-replay-cache-full",
    "proof-expired",
    "proof-not-yet-valid",
}


def _outcome(cache: ReplayCache, identity: str, jti: str, *, iat: int, now: float) -> str:
    """``accepted``, or the code of the refusal, for a proof checked as the verifier does."""
    try:
        cache.check_time(iat, now)
        cache.remember(identity, jti, iat=iat, now=now)
    except RequestProofError as error:
        return error.code
    return "accepted"


_OPERATIONS = st.lists(
    st.tuples(
        st.integers(0, 11),  # identity
        st.integers(0, 30),  # jti
        st.integers(-3, 3),  # iat relative to now
        st.integers(0, 4),  # seconds the clock advances first
    ),
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(_OPERATIONS)
def test_bounds_hold_and_no_replay_is_ever_accepted(
    operations: list[tuple[int, int, int, int]],
) -> None:
    cache = ReplayCache(capacity=12, share=4, identities=6, max_age=8, max_future_skew=3)
    accepted: dict[tuple[str, str], int] = {}
    now = T
    for identity_number, jti_number, offset, advance in operations:
        now += advance
        identity, jti, iat = f"key-{identity_number}", _jti(jti_number), now + offset
        outcome = _outcome(cache, identity, jti, iat=iat, now=now)
        assert outcome in _CODES
        if outcome == "accepted":
            previous = accepted.get((identity, jti))
            assert previous is None or now > previous + 8, "a proof was accepted twice"
            accepted[(identity, jti)] = iat
        assert len(cache) <= 12
        assert cache.tracked_identities() <= 6
