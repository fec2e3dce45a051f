"""The guards' rows in PostgreSQL: two stores on one database stand for two CAS instances."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from opencas.store import PostgresStore, Transaction
from opencas.store.guards import PostgresGuards

DMK = bytes(range(32))


def _nothing(tx: Transaction) -> None:
    return None


@pytest.fixture
def two(postgres_url: str) -> Iterator[tuple[PostgresGuards, PostgresGuards]]:
    """The guards of two instances on one fresh database."""
    first = PostgresStore.create(postgres_url, DMK, _nothing)
    second = PostgresStore.open(postgres_url, DMK)
    try:
        yield first.guards, second.guards
    finally:
        first.close()
        second.close()


def test_a_nonce_is_used_once_across_instances(
    two: tuple[PostgresGuards, PostgresGuards],
) -> None:
    one, other = two
    expires = time.time() + 60
    assert other.use_nonce("ab" * 32, expires)
    assert not one.use_nonce("ab" * 32, expires)
    assert not other.use_nonce("ab" * 32, expires)
    assert one.use_nonce("cd" * 32, expires)


def _race(
    two: tuple[PostgresGuards, PostgresGuards], check: Callable[[PostgresGuards], bool]
) -> list[bool]:
    """What ``check`` answered in 8 threads released at once, alternating the two instances."""
    passed: list[bool] = []
    start = threading.Barrier(8)

    def race(guards: PostgresGuards) -> None:
        start.wait()
        passed.append(check(guards))

    threads = [threading.Thread(target=race, args=(two[n % 2],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return passed


def test_concurrent_uses_of_one_nonce_pass_at_most_once(
    two: tuple[PostgresGuards, PostgresGuards],
) -> None:
    passed = _race(two, lambda guards: guards.use_nonce("ef" * 32, time.time() + 60))
    assert sorted(passed) == [False] * 7 + [True]


def test_instances_share_the_nonce_key_and_a_rollover_changes_it(
    two: tuple[PostgresGuards, PostgresGuards],
) -> None:
    one, other = two
    assert one.nonce_mac(b"message") == other.nonce_mac(b"message")
    assert one.nonce_mac(b"message") != one.nonce_mac(b"other message")
    other.use_key(bytes(range(1, 33)))
    assert one.nonce_mac(b"message") != other.nonce_mac(b"message")


def test_a_used_nonce_row_names_no_nonce(
    two: tuple[PostgresGuards, PostgresGuards], postgres_url: str
) -> None:
    one, _ = two
    one.use_nonce("01" * 32, time.time() + 60)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        rows = conn.execute("SELECT id FROM guard_nonces").fetchall()
    assert len(rows) == 1
    assert bytes(rows[0][0]) not in (bytes.fromhex("01" * 32), ("01" * 32).encode())


def test_a_proof_is_new_at_one_instance_only(two: tuple[PostgresGuards, PostgresGuards]) -> None:
    one, other = two
    expires = time.time() + 125
    assert one.add_proof("key-a", "jti-1", expires)
    assert not other.add_proof("key-a", "jti-1", expires)
    assert other.add_proof("key-b", "jti-1", expires)
    assert other.add_proof("key-a", "jti-2", expires)


def test_concurrent_proofs_with_one_jti_pass_at_most_once(
    two: tuple[PostgresGuards, PostgresGuards],
) -> None:
    passed = _race(two, lambda guards: guards.add_proof("key", "same-jti", time.time() + 125))
    assert sorted(passed) == [False] * 7 + [True]


def test_expired_rows_are_deleted(
    two: tuple[PostgresGuards, PostgresGuards], postgres_url: str
) -> None:
    one, _ = two
    one.add_proof("key", "old", time.time() - 1)
    one.add_proof("key", "young", time.time() + 100)
    one.use_nonce("aa" * 32, time.time() - 1)
    one.purge()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM guard_proofs").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM guard_nonces").fetchone() == (0,)


def test_back_off_counts_failures_of_every_instance(
    two: tuple[PostgresGuards, PostgresGuards],
) -> None:
    one, other = two

    def delay_after_two(failures: int) -> float:
        return 0.0 if failures <= 2 else 30.0

    assert one.count_failure("token", delay_after_two) == (1, 0.0)
    assert other.count_failure("token", delay_after_two) == (2, 0.0)
    assert one.closed_until("token") == 0.0
    assert other.count_failure("token", delay_after_two) == (3, 30.0)
    assert one.closed_until("token") > time.time() + 25
    assert one.failures("token") == 3


def test_an_upload_bucket_is_one_for_the_cluster(
    two: tuple[PostgresGuards, PostgresGuards],
) -> None:
    one, other = two
    rate = 1 / 60  # one upload a minute after a burst of 3
    assert one.take_upload("key", 3, rate) == 0.0
    assert other.take_upload("key", 3, rate) == 0.0
    assert one.take_upload("key", 3, rate) == 0.0
    wait = other.take_upload("key", 3, rate)
    assert 55 < wait <= 60
    assert one.take_upload("another-key", 3, rate) == 0.0


def test_a_one_time_password_step_is_used_once_in_the_cluster(
    two: tuple[PostgresGuards, PostgresGuards],
) -> None:
    one, other = two
    assert one.advance_otp_step("s/svc", 100)
    assert not other.advance_otp_step("s/svc", 100)
    assert not other.advance_otp_step("s/svc", 99)
    assert other.advance_otp_step("s/svc", 101)
    assert one.advance_otp_step("t/svc", 100)
