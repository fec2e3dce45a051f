"""The client API in-process: routing, errors, request proofs and metrics, without a server."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp

from opencas.api.app import create_client_api
from opencas.attestation.report import CasExpectations, verify_cas_attestation
from opencas.client.channel import ProofAuth
from opencas.client.identity import ClientIdentity
from opencas.config.availability import load_availability_config
from opencas.service.cas import Cas, open_cas
from opencas.testing import write_config


@pytest.fixture
def cas(tmp_path: Path) -> Iterator[Cas]:
    config = load_availability_config(write_config(tmp_path, 18081, 18766))
    opened = open_cas(config)
    try:
        yield opened
    finally:
        opened.close()


class InProcessClient:
    """A synchronous face over httpx's ASGI transport: the server runs in this process."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="https://cas.test") as c:
                return await c.get(path, **kwargs)

        return asyncio.run(send())


@pytest.fixture
def client(cas: Cas) -> InProcessClient:
    return InProcessClient(create_client_api(cas))


def test_healthz_and_version(client: InProcessClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    version = client.get("/v1/version").json()
    assert version["api_version"] == 1
    assert version["mode"] == "debug"


def test_attest_verifies_in_process(client: InProcessClient, cas: Cas) -> None:
    nonce = "0f" * 32
    body = client.get("/v1/attest", params={"nonce": nonce}).json()
    verified = verify_cas_attestation(
        body,
        CasExpectations(nonce=nonce, allow_debug=True, allow_unprovisioned=True),
        peer_certificate_der=None,
        at=datetime.now(UTC),
    )
    assert verified.report.cas_key_hash == cas.identity.cas_key_hash
    assert verified.report.instance_id == cas.identity.instance_id


@pytest.mark.parametrize("nonce", ["", "xyz", "0f", "0F" * 16, "0" * 17, "00" * 65])
def test_attest_rejects_bad_nonce(client: InProcessClient, nonce: str) -> None:
    response = client.get("/v1/attest", params={"nonce": nonce})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid-request"
    assert "nonce" in response.json()["message"]


def test_unknown_route_is_json_404(client: InProcessClient) -> None:
    response = client.get("/v1/nothing")
    assert response.status_code == 404
    assert response.json()["error"] == "not-found"


def test_whoami_signed_and_anonymous(client: InProcessClient, cas: Cas) -> None:
    identity = ClientIdentity.generate()
    signed = client.get("/v1/whoami", auth=ProofAuth(identity, cas.identity.cas_key_hash))
    assert signed.json() == {"identity": identity.key_hash}
    assert client.get("/v1/whoami").json() == {"identity": "anonymous"}


def test_proof_for_another_cas_is_refused(client: InProcessClient) -> None:
    identity = ClientIdentity.generate()
    response = client.get("/v1/whoami", auth=ProofAuth(identity, "ab" * 32))
    assert response.status_code == 401
    assert response.json()["error"] == "proof-audience-mismatch"


def test_malformed_authorization_is_refused(client: InProcessClient) -> None:
    response = client.get("/v1/whoami", headers={"Authorization": "Bearer abc"})
    assert response.status_code == 401
    assert response.json()["error"] == "proof-malformed"


def test_replayed_proof_is_refused(client: InProcessClient, cas: Cas) -> None:
    identity = ClientIdentity.generate()
    first = client.get("/v1/whoami", auth=ProofAuth(identity, cas.identity.cas_key_hash))
    header = first.request.headers["Authorization"]
    replay = client.get("/v1/whoami", headers={"Authorization": header})
    assert replay.status_code == 401
    assert replay.json()["error"] == "proof-replayed"


def test_damaged_record_gives_error_and_server_keeps_serving(
    client: InProcessClient, cas: Cas
) -> None:
    assert client.get("/v1/attest", params={"nonce": "00" * 16}).status_code == 200
    with sqlite3.connect(cas.config.database_path) as db:
        (value,) = db.execute(
            "SELECT value FROM records WHERE tbl = 'cas' AND key = 'state'"
        ).fetchone()
        db.execute(
            "UPDATE records SET value = ? WHERE tbl = 'cas' AND key = 'state'",
            (value[:-1] + bytes([value[-1] ^ 1]),),
        )
    response = client.get("/v1/attest", params={"nonce": "00" * 16})
    assert response.status_code == 500
    assert response.json()["error"] == "record-damaged"
    assert "cas/state" in response.json()["message"]
    assert client.get("/healthz").status_code == 200


def test_metrics_count_requests_by_route_and_status(client: InProcessClient) -> None:
    client.get("/healthz")
    client.get("/v1/attest", params={"nonce": "bad"})
    client.get("/some/random/path")
    text = client.get("/metrics").text
    assert (
        'opencas_http_requests_total{listener="api",method="GET",route="/healthz",status="200"}'
        in text
    )
    assert 'route="/v1/attest",status="400"' in text
    assert 'route="<unmatched>",status="404"' in text
    assert "opencas_http_request_duration_seconds_bucket" in text
