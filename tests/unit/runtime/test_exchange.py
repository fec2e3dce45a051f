"""The workload exchange: nonce, evidence, attest and opening, against a scripted enclave API."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from opencas.attestation.evidence import Evidence
from opencas.attestation.verify import verify_evidence
from opencas.attestation.workload_binding import ConfigId, workload_report_data
from opencas.client.channel import CasUnreachable
from opencas.client.enclave import AsyncEnclaveClient, EnclaveClient, WorkloadConfig
from opencas.crypto.canonical import canonical_json
from opencas.crypto.hpke_seal import seal_workload_config
from opencas.crypto.pem import certificate_pem
from opencas.crypto.x509 import create_ca_certificate
from opencas.errors import AttestationRefused, ClientError
from opencas.platform.simulated import SimulatedPlatform
from opencas.runtime.exchange import (
    WORKLOAD_KEM,
    SealedAnswer,
    WorkloadExchange,
    attest,
    attest_async,
    fetch_configuration,
)

CONFIG_ID = ConfigId("team/app", "api")
NONCE = "ab" * 32
MEASUREMENT = "5e" * 32
CA_PEM = certificate_pem(create_ca_certificate(ec.generate_private_key(ec.SECP256R1()), "t"))


def configuration(config_id: ConfigId = CONFIG_ID) -> bytes:
    return canonical_json(
        {
            "config_id": str(config_id),
            "session_hash": "0f" * 32,
            "command": [],
            "environment": {"TOKEN": "value"},
            "pwd": None,
            "injection_files": [],
            "certificates": {},
            "volumes": [],
        }
    )


class ScriptedCas:
    """An enclave API that issues one nonce and answers an attestation as the CAS would."""

    def __init__(self, kem: str | None = None, plaintext: bytes | None = None) -> None:
        self.kem = kem
        self.plaintext = plaintext or configuration()
        self.bodies: list[dict[str, Any]] = []
        self.nonce_requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/nonce"):
            self.nonce_requests += 1
            return httpx.Response(200, json={"nonce": NONCE, "expires_in": 60})
        body = json.loads(request.content)
        self.bodies.append(body)
        verified = verify_evidence(Evidence.from_json(body["evidence"]), at=datetime.now(UTC))
        expected = workload_report_data(
            ConfigId.parse(body["config_id"]), body["nonce"], body["public_key"]
        )
        if verified.report_data != expected:
            return httpx.Response(
                403, json={"error": "attestation-refused", "check": "binding", "message": "no"}
            )
        der = base64.b64decode(body["public_key"])
        kem, sealed = seal_workload_config(der, self.plaintext, body["config_id"], body["nonce"])
        return httpx.Response(200, json={"kem": self.kem or kem, "sealed": sealed})


@pytest.fixture
def platform(tmp_path: Path) -> SimulatedPlatform:
    return SimulatedPlatform.load_or_create(tmp_path / "platform.key", MEASUREMENT)


def client_for(cas: ScriptedCas) -> EnclaveClient:
    return EnclaveClient("https://cas.test:18765", CA_PEM, transport=httpx.MockTransport(cas))


def test_fetch_configuration_attests_and_opens(platform: SimulatedPlatform) -> None:
    cas = ScriptedCas()
    with client_for(cas) as client:
        attested = fetch_configuration(client, CONFIG_ID, platform)
    assert attested.config.config_id == CONFIG_ID
    assert dict(attested.config.environment) == {"TOKEN": "value"}
    assert isinstance(attested.key.curve, ec.SECP256R1)
    [body] = cas.bodies
    assert body["config_id"] == "team/app/api"
    assert body["nonce"] == NONCE
    assert body["public_key"] == WorkloadExchange(CONFIG_ID, attested.key).public_key


def test_every_exchange_has_its_own_key(platform: SimulatedPlatform) -> None:
    with client_for(ScriptedCas()) as client:
        first = fetch_configuration(client, CONFIG_ID, platform)
        second = fetch_configuration(client, CONFIG_ID, platform)
    assert first.key.private_numbers() != second.key.private_numbers()


def test_evidence_binds_config_id_nonce_and_key(platform: SimulatedPlatform) -> None:
    exchange = WorkloadExchange.new(CONFIG_ID)
    verified = verify_evidence(exchange.evidence(NONCE, platform), at=datetime.now(UTC))
    assert verified.report_data == workload_report_data(CONFIG_ID, NONCE, exchange.public_key)
    assert verified.measurement == MEASUREMENT


def test_a_refusal_is_attestation_refused(platform: SimulatedPlatform) -> None:
    class Rebinding(ScriptedCas):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/attest"):
                body = json.loads(request.content)
                body["public_key"] = "b3RoZXI="
                request = httpx.Request("POST", request.url, json=body)
            return super().__call__(request)

    with client_for(Rebinding()) as client, pytest.raises(AttestationRefused) as refused:
        fetch_configuration(client, CONFIG_ID, platform)
    assert refused.value.check == "binding"


def test_another_kem_is_refused(platform: SimulatedPlatform) -> None:
    with (
        client_for(ScriptedCas(kem="X25519")) as client,
        pytest.raises(ClientError, match=f"names the KEM 'X25519', not {WORKLOAD_KEM}"),
    ):
        fetch_configuration(client, CONFIG_ID, platform)


def test_a_configuration_for_another_service_does_not_open(platform: SimulatedPlatform) -> None:
    other = ScriptedCas(plaintext=configuration(ConfigId("team/app", "web")))
    with (
        client_for(other) as client,
        pytest.raises(ClientError, match=r"could not be opened/parsed.*another config id"),
    ):
        fetch_configuration(client, CONFIG_ID, platform)


def test_one_key_attests_again_and_the_answers_open_later(platform: SimulatedPlatform) -> None:
    exchange = WorkloadExchange.new(CONFIG_ID)
    with client_for(ScriptedCas()) as client:
        answers = [attest(client, exchange, platform) for _ in range(2)]
    assert [exchange.open(answer).config_id for answer in answers] == [CONFIG_ID, CONFIG_ID]
    assert answers[0].nonce == NONCE


def test_attest_async_is_the_same_exchange(platform: SimulatedPlatform) -> None:
    cas = ScriptedCas()
    exchange = WorkloadExchange.new(CONFIG_ID)

    async def run() -> WorkloadConfig:
        transport = httpx.MockTransport(cas)
        async with AsyncEnclaveClient(
            "https://cas.test:18765", CA_PEM, transport=transport
        ) as client:
            return exchange.open(await attest_async(client, exchange, platform))

    assert asyncio.run(run()).config_id == CONFIG_ID
    assert cas.bodies[0]["public_key"] == exchange.public_key


class HandingOutNonces(ScriptedCas):
    """A CAS that hands out a next nonce with each answer and takes each nonce once;
    ``refuse`` names the check it refuses a next nonce with, as a CAS that forgot it would."""

    def __init__(self, refuse: str | None = None) -> None:
        super().__init__()
        self.refuse = refuse
        self.used: set[str] = set()
        self.handed_out: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/attest"):
            nonce = json.loads(request.content)["nonce"]
            check = "nonce" if nonce in self.used else None
            if nonce in self.handed_out and self.refuse is not None:
                check = self.refuse
            if check is not None:
                self.bodies.append(json.loads(request.content))
                return httpx.Response(
                    403, json={"error": "attestation-refused", "check": check, "message": "no"}
                )
            self.used.add(nonce)
        answer = super().__call__(request)
        if request.url.path.endswith("/attest") and answer.status_code == 200:
            self.handed_out.append(f"{len(self.handed_out):064x}")
            answer.headers["CAS-Next-Nonce"] = self.handed_out[-1]
        return answer


def test_a_client_that_attested_attests_again_in_one_request(platform: SimulatedPlatform) -> None:
    cas = HandingOutNonces()
    exchange = WorkloadExchange.new(CONFIG_ID)
    with client_for(cas) as client:
        answers = [attest(client, exchange, platform) for _ in range(3)]
    assert cas.nonce_requests == 1
    assert [answer.nonce for answer in answers] == [NONCE, *cas.handed_out[:2]]
    assert [exchange.open(answer).config_id for answer in answers] == [CONFIG_ID] * 3


def test_a_next_nonce_the_cas_refuses_is_replaced_by_one_asked_for(
    platform: SimulatedPlatform,
) -> None:
    cas = HandingOutNonces(refuse="nonce")
    exchange = WorkloadExchange.new(CONFIG_ID)
    with client_for(cas) as client:
        attest(client, exchange, platform)
        cas.used.clear()  # the nonce asked for is new again to this CAS
        answer = attest(client, exchange, platform)
    assert answer.nonce == NONCE
    assert cas.nonce_requests == 2
    assert [body["nonce"] for body in cas.bodies] == [NONCE, cas.handed_out[0], NONCE]


def test_other_refusals_with_a_next_nonce_are_not_made_again(platform: SimulatedPlatform) -> None:
    cas = HandingOutNonces(refuse="measurement")
    exchange = WorkloadExchange.new(CONFIG_ID)
    with client_for(cas) as client:
        attest(client, exchange, platform)
        with pytest.raises(AttestationRefused) as refused:
            attest(client, exchange, platform)
    assert refused.value.check == "measurement"
    assert cas.nonce_requests == 1
    assert len(cas.bodies) == 2


def test_attest_async_uses_the_next_nonce_too(platform: SimulatedPlatform) -> None:
    cas = HandingOutNonces()
    exchange = WorkloadExchange.new(CONFIG_ID)

    async def run() -> list[str]:
        transport = httpx.MockTransport(cas)
        async with AsyncEnclaveClient(
            "https://cas.test:18765", CA_PEM, transport=transport
        ) as client:
            return [(await attest_async(client, exchange, platform)).nonce for _ in range(2)]

    assert asyncio.run(run()) == [NONCE, cas.handed_out[0]]
    assert cas.nonce_requests == 1


class TurningAway(ScriptedCas):
    """A CAS that turns the first ``refused`` connections away before any request is read, as
    one over ``max_connections_per_source`` resets them; ``failure`` is what the client sees."""

    def __init__(self, refused: int, failure: type[httpx.TransportError] = httpx.ConnectError):
        super().__init__()
        self.refused = refused
        self.failure = failure
        self.tries = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.tries += 1
        if self.tries <= self.refused:
            raise self.failure("[Errno 104] Connection reset by peer", request=request)
        return super().__call__(request)


class FakeTime:
    """A clock that moves only when the code under test sleeps, and the waits it slept."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    def attest(
        self, cas: ScriptedCas, platform: SimulatedPlatform, retry_for: float
    ) -> SealedAnswer:
        """An attestation of a new exchange to ``cas`` on this clock."""
        with client_for(cas) as client:
            return attest(
                client,
                WorkloadExchange.new(CONFIG_ID),
                platform,
                retry_for=retry_for,
                sleep=self.sleep,
                clock=self.clock,
            )


def test_a_cas_that_turned_connections_away_is_tried_again(platform: SimulatedPlatform) -> None:
    cas = TurningAway(refused=3)
    time = FakeTime()
    exchange = WorkloadExchange.new(CONFIG_ID)
    with client_for(cas) as client:
        answer = attest(
            client, exchange, platform, retry_for=10, sleep=time.sleep, clock=time.clock
        )
    assert exchange.open(answer).config_id == CONFIG_ID
    assert cas.tries == 5  # three turned away, then a nonce and the attestation
    # Each wait is drawn between half and all of 0.1 s doubling.
    assert len(time.waits) == 3
    for wait, bound in zip(time.waits, (0.1, 0.2, 0.4), strict=True):
        assert bound / 2 <= wait <= bound


def test_without_retry_for_a_turned_away_attestation_fails_at_once(
    platform: SimulatedPlatform,
) -> None:
    cas = TurningAway(refused=1)
    time = FakeTime()
    with client_for(cas) as client, pytest.raises(CasUnreachable) as caught:
        attest(client, WorkloadExchange.new(CONFIG_ID), platform, sleep=time.sleep)
    assert caught.value.retryable
    assert "tries" not in caught.value.message
    assert cas.tries == 1
    assert time.waits == []


def test_tries_stop_when_the_time_is_up_and_say_how_many_there_were(
    platform: SimulatedPlatform,
) -> None:
    cas = TurningAway(refused=1000)
    time = FakeTime()
    with pytest.raises(CasUnreachable) as caught:
        time.attest(cas, platform, retry_for=5)
    assert sum(time.waits) == pytest.approx(5)
    assert max(time.waits) <= 2.0
    assert f"(after {cas.tries} tries in 5.0 s)" in caught.value.message
    assert "Connection reset by peer" in caught.value.message


@pytest.mark.parametrize("failure", [httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError])
def test_a_request_that_may_have_reached_the_cas_is_not_sent_again(
    platform: SimulatedPlatform, failure: type[httpx.TransportError]
) -> None:
    cas = TurningAway(refused=1, failure=failure)
    time = FakeTime()
    with pytest.raises(CasUnreachable) as caught:
        time.attest(cas, platform, retry_for=60)
    assert not caught.value.retryable
    assert cas.tries == 1
    assert time.waits == []


def test_a_refusal_is_not_tried_again(platform: SimulatedPlatform) -> None:
    cas = HandingOutNonces(refuse="measurement")
    time = FakeTime()
    with client_for(cas) as client:
        fetch_configuration(client, CONFIG_ID, platform)
        with pytest.raises(AttestationRefused):
            fetch_configuration(client, CONFIG_ID, platform, retry_for=60, sleep=time.sleep)
    assert time.waits == []


def test_attest_async_tries_again_too(platform: SimulatedPlatform) -> None:
    cas = TurningAway(refused=2)
    time = FakeTime()
    exchange = WorkloadExchange.new(CONFIG_ID)

    async def sleep(seconds: float) -> None:
        time.sleep(seconds)

    async def run() -> WorkloadConfig:
        transport = httpx.MockTransport(cas)
        async with AsyncEnclaveClient(
            "https://cas.test:18765", CA_PEM, transport=transport
        ) as client:
            answer = await attest_async(
                client, exchange, platform, retry_for=10, sleep=sleep, clock=time.clock
            )
            return exchange.open(answer)

    assert asyncio.run(run()).config_id == CONFIG_ID
    assert len(time.waits) == 2


@pytest.mark.parametrize("retry_for", [-1.0, float("nan"), float("inf")])
def test_retry_for_is_a_finite_number_of_seconds(
    platform: SimulatedPlatform, retry_for: float
) -> None:
    cas = TurningAway(refused=0)
    with client_for(cas) as client, pytest.raises(ValueError, match="retry_for"):
        attest(client, WorkloadExchange.new(CONFIG_ID), platform, retry_for=retry_for)
    assert cas.tries == 0
