"""How the API answers errors: each error's own JSON form and headers, one problems[] shape."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.types import ASGIApp

from opencas.api.errors import install_error_handlers
from opencas.client.identity import ClientIdentity
from opencas.errors import AttestationRefused, ConfigError, RateLimitedError
from opencas.sources.problems import Problem
from opencas.testing import InProcessCas, InProcessServer

OWNER = ClientIdentity.generate()
BAD_OWNER_CONFIG = {"dcap": {"pccs_url": "http://pccs.example"}, "colour": "red"}


def call(app: ASGIApp, method: str, path: str, body: Any = None) -> httpx.Response:
    with (
        InProcessServer(app) as server,
        httpx.Client(transport=server.transport(), base_url="https://cas.test") as client,
    ):
        return client.request(method, path, json=body)


class _Body(BaseModel):
    count: int


@pytest.fixture
def app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/limited")
    def limited() -> None:
        raise RateLimitedError("slow down", retry_after=2.2)

    @app.get("/refused")
    def refused() -> None:
        raise AttestationRefused("nonce", "the nonce is stale")

    @app.get("/config")
    def config() -> None:
        raise ConfigError(Problem("owner.toml", 3, None, "expected a string", "[dcap] pccs_url"))

    @app.post("/body")
    def body(_: _Body) -> None:
        return None

    return app


def test_an_error_with_a_retry_time_says_it_in_a_header(app: FastAPI) -> None:
    response = call(app, "GET", "/limited")

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert response.json() == {"error": "rate-limited", "message": "slow down"}


def test_a_refused_attestation_names_its_check(app: FastAPI) -> None:
    response = call(app, "GET", "/refused")

    assert response.status_code == 403
    assert response.json() == {
        "error": "attestation-refused",
        "message": "the nonce is stale",
        "check": "nonce",
    }


def test_a_config_error_lists_its_problems(app: FastAPI) -> None:
    response = call(app, "GET", "/config")

    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid-config",
        "message": "owner.toml:3: [dcap] pccs_url: expected a string",
        "problems": [
            {
                "path": "owner.toml",
                "key": "[dcap] pccs_url",
                "line": 3,
                "column": None,
                "message": "expected a string",
            }
        ],
    }


def test_request_validation_lists_its_problems_in_the_same_shape(app: FastAPI) -> None:
    response = call(app, "POST", "/body", {"count": "many", "extra": 1})

    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid-request"
    assert body["message"].startswith("body.count: ")
    assert [problem["key"] for problem in body["problems"]] == ["body.count"]
    assert set(body["problems"][0]) == {"path", "key", "line", "column", "message"}


def _assert_invalid_owner_config(response: httpx.Response) -> None:
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid-config"
    assert [(problem["path"], problem["key"]) for problem in body["problems"]] == [
        ("request body", "[dcap] pccs_url"),
        ("request body", "colour"),
    ]
    assert "http://pccs.example" not in response.text


def test_provisioning_with_an_invalid_owner_config_lists_its_problems(api: InProcessCas) -> None:
    response = api.send(
        "POST",
        "/v1/provision",
        signer=OWNER,
        json={"token": "t", "owner_config": BAD_OWNER_CONFIG},
    )

    _assert_invalid_owner_config(response)


def test_an_invalid_owner_config_update_lists_its_problems(api: InProcessCas) -> None:
    api.provision(OWNER)

    response = api.send(
        "PUT", "/v1/owner/config", signer=OWNER, json={"owner_config": BAD_OWNER_CONFIG}
    )

    _assert_invalid_owner_config(response)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/provision", {"token": "t", "owner_config": BAD_OWNER_CONFIG}),
        ("PUT", "/v1/owner/config", {"owner_config": BAD_OWNER_CONFIG}),
    ],
)
def test_an_anonymous_owner_request_is_refused_before_its_body_is_read(
    api: InProcessCas, method: str, path: str, body: dict[str, object]
) -> None:
    response = api.send(method, path, json=body)

    assert response.status_code == 401
    assert response.json()["error"] == "signature-required"
