"""The asyncio face of the client API, against the client API application in this process."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from opencas.api.app import create_client_api
from opencas.attestation.report import CasExpectations, verify_cas_attestation
from opencas.client.cas_client import AsyncCasClient, new_nonce
from opencas.client.channel import ApiError, CasUnreachable, MalformedAnswer
from opencas.service.cas import Cas


def in_process(cas: Cas) -> AsyncCasClient:
    transport = httpx.ASGITransport(app=create_client_api(cas))
    return AsyncCasClient("https://cas.test:8081", max_connections=1, transport=transport)


def test_health_and_an_attestation_that_verifies(cas: Cas) -> None:
    nonce = new_nonce()

    async def fetch() -> tuple[str, Any]:
        async with in_process(cas) as client:
            return await client.health(), await client.attestation(nonce)

    health, response = asyncio.run(fetch())
    assert health == "ok"
    expectations = CasExpectations(nonce=nonce, allow_debug=True, allow_unprovisioned=True)
    verified = verify_cas_attestation(response, expectations, None, at=datetime.now(UTC))
    assert verified.report.cas_key_hash == cas.identity.cas_key_hash


def test_error_answers_are_api_errors(cas: Cas) -> None:
    async def fetch() -> Any:
        async with in_process(cas) as client:
            return await client.attestation("not-hex")

    with pytest.raises(ApiError) as error:
        asyncio.run(fetch())
    assert error.value.status == 400


def mocked(handler: Any) -> AsyncCasClient:
    return AsyncCasClient("https://cas.test:8081", transport=httpx.MockTransport(handler))


def test_an_answer_that_is_not_json_is_malformed() -> None:
    async def fetch() -> Any:
        async with mocked(lambda _: httpx.Response(200, content=b"<html>")) as client:
            return await client.attestation("00" * 32)

    with pytest.raises(MalformedAnswer, match="invalid JSON"):
        asyncio.run(fetch())


def test_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def fetch() -> str:
        async with mocked(refuse) as client:
            return await client.health()

    with pytest.raises(CasUnreachable, match="connection refused"):
        asyncio.run(fetch())
