"""Guards that hold for a cluster: two stores on one PostgreSQL database are two CAS instances.

A nonce, a request proof, a one-time password, the provisioning back-off and a key's upload
budget each mean the same at every instance; and two instances updating one record at once never
lose an update.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from opencas.config.availability import SessionLimits
from opencas.crypto.keys import key_hash
from opencas.crypto.otp import otp_code
from opencas.crypto.replay_cache import SharedReplayCache
from opencas.crypto.request_proof import create_request_proof, verify_request_proof
from opencas.errors import AttestationRefused, RateLimitedError, RequestProofError
from opencas.service.nonces import NonceStore
from opencas.service.otp_guard import OtpGuard
from opencas.service.session_limits import UploadRateLimiter
from opencas.service.token_guard import TokenGuard
from opencas.store import PostgresStore, Transaction

DMK = bytes(range(32))
URL = "https://cas.example:8081/v1/sessions"
AUDIENCE = "ab" * 32
OTP_SECRET = "MGNVWS2SFOKEWZBASXYQNMBWOWDQTQR3"


def _nothing(tx: Transaction) -> None:
    return None


@pytest.fixture
def stores(postgres_url: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Two instances' stores on one fresh database."""
    first = PostgresStore.create(postgres_url, DMK, _nothing)
    second = PostgresStore.open(postgres_url, DMK)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def test_a_nonce_from_one_instance_attests_once_at_another(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    at_a = NonceStore(shared=stores[0].guards)
    at_b = NonceStore(shared=stores[1].guards)
    nonce = at_a.issue()
    at_b.consume(nonce)
    for store in (at_a, at_b):
        with pytest.raises(AttestationRefused, match="unknown, used already, or expired"):
            store.consume(nonce)


def test_a_shared_nonce_expires_by_the_wall_clock(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    now = [time.time() - 120]
    at_a = NonceStore(shared=stores[0].guards, wall_clock=lambda: now[0])
    nonce = at_a.issue()  # issued "two minutes ago": expired after its 60 s
    with pytest.raises(AttestationRefused):
        NonceStore(shared=stores[1].guards).consume(nonce)


def _proof(key: ec.EllipticCurvePrivateKey, now: float) -> str:
    return create_request_proof(
        key, None, method="POST", url=URL, body=b"{}", audience=AUDIENCE, now=now
    )


def _verify(token: str, cache: SharedReplayCache, now: float) -> str:
    return verify_request_proof(
        token, method="POST", url=URL, body=b"{}", audience=AUDIENCE, now=now, replay_cache=cache
    ).key_hash


def test_a_request_proof_replayed_at_another_instance_is_refused(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    at_a = SharedReplayCache(stores[0].guards.add_proof)
    at_b = SharedReplayCache(stores[1].guards.add_proof)
    key = ec.generate_private_key(ec.SECP256R1())
    now = time.time()
    token = _proof(key, now)
    assert _verify(token, at_a, now) == key_hash(key.public_key())
    with pytest.raises(RequestProofError) as replayed:
        _verify(token, at_b, now + 1)
    assert replayed.value.code == "proof-replayed"
    assert "another instance" in replayed.value.message
    # A fresh proof of the same key passes at either.
    _verify(_proof(key, now), at_b, now + 1)


def test_the_provisioning_back_off_closes_every_instance(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    at_a = TokenGuard(free_attempts=2, base_delay=60.0, shared=stores[0].guards)
    at_b = TokenGuard(free_attempts=2, base_delay=60.0, shared=stores[1].guards)
    assert at_a.record_failure() == 0.0
    assert at_b.record_failure() == 0.0
    at_a.check_open()
    assert at_b.record_failure() == 60.0
    assert at_a.failures == 3
    with pytest.raises(RateLimitedError) as closed:
        at_a.check_open()
    assert closed.value.code == "provisioning-backoff"


def test_a_key_has_one_upload_budget_in_the_cluster(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    limits = SessionLimits(session_uploads_per_minute=1, session_upload_burst=2)
    at_a = UploadRateLimiter(limits, shared=stores[0].guards)
    at_b = UploadRateLimiter(limits, shared=stores[1].guards)
    at_a.take("key")
    at_b.take("key")
    with pytest.raises(RateLimitedError) as refused:
        at_a.take("key")
    assert 55 <= refused.value.retry_after <= 60
    at_b.take("other-key")


def test_a_one_time_password_is_used_once_in_the_cluster(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    limits = SessionLimits()
    at_a = OtpGuard(limits, shared=stores[0].guards)
    at_b = OtpGuard(limits, shared=stores[1].guards)
    code = otp_code(OTP_SECRET, time.time())
    at_a.check("s/svc", OTP_SECRET, code)
    with pytest.raises(AttestationRefused, match="used already"):
        at_b.check("s/svc", OTP_SECRET, code)


def test_two_instances_updating_one_record_never_lose_an_update(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    # What a session update does: read the current version, prepare outside the write lock,
    # then in the transaction admit the change only if the version it names is still current.
    with stores[0].transaction() as txn:
        txn.put("sessions", "shared", b"0")
    acknowledged: list[bytes] = []
    conflicts: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def update(store: PostgresStore, writer: int) -> None:
        start.wait()
        for attempt in range(10):
            predecessor = store.get("sessions", "shared")
            new = predecessor + b"," + f"{writer}.{attempt}".encode() if predecessor else b""
            with store.transaction() as txn:
                if txn.get("sessions", "shared") != predecessor:
                    with lock:
                        conflicts.append(writer)
                    continue
                txn.put("sessions", "shared", new)
            with lock:
                acknowledged.append(new)

    threads = [threading.Thread(target=update, args=(stores[n % 2], n)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = stores[1].get_versioned("sessions", "shared")
    assert final is not None
    # Every acknowledged update is in the final value, which grew by one entry per update.
    assert final[1] == 1 + len(acknowledged)
    entries = final[0].split(b",")[1:]
    assert len(entries) == len(acknowledged)
    assert sorted(entries) == sorted(update.rsplit(b",", 1)[1] for update in acknowledged)
    assert len(acknowledged) + len(conflicts) == 60
