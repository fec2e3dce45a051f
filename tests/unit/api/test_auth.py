"""Request authentication: the proof middleware hands the endpoints the Caller its proof proved."""

from __future__ import annotations

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from opencas.api.auth import MAX_BODY_BYTES, ProofMiddleware, caller_of
from opencas.crypto.keys import key_hash
from opencas.crypto.request_proof import ReplayCache, create_request_proof
from opencas.crypto.x509 import certificate_key_hash, create_identity_certificate
from opencas.policy.caller import ANONYMOUS, Caller
from opencas.testing import InProcessServer

AUDIENCE = "ca" * 32
URL = "https://cas.test/v1/echo"
KEY = ec.generate_private_key(ec.SECP256R1())
CERTIFICATE = create_identity_certificate(KEY, "alice")

seen: list[tuple[Caller, bytes]] = []


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """An endpoint that records who called it with which body."""
    request = Request(scope, receive)
    seen.append((caller_of(request), await request.body()))
    await JSONResponse({"ok": True})(scope, receive, send)


def _post(body: bytes, authorization: str | None = None) -> httpx.Response:
    app = ProofMiddleware(echo, AUDIENCE, ReplayCache())
    headers = {} if authorization is None else {"authorization": authorization}

    seen.clear()
    with InProcessServer(app) as server, httpx.Client(transport=server.transport()) as client:
        return client.post(URL, content=body, headers=headers)


def _proof(body: bytes, *, with_certificate: bool) -> str:
    token = create_request_proof(
        KEY,
        CERTIFICATE if with_certificate else None,
        method="POST",
        url=URL,
        body=body,
        audience=AUDIENCE,
    )
    return f"CAS-Proof {token}"


def test_a_request_without_a_proof_is_anonymous() -> None:
    assert _post(b"{}").status_code == 200
    assert seen == [(ANONYMOUS, b"{}")]


@pytest.mark.parametrize("with_certificate", [True, False])
def test_a_verified_proof_makes_its_signer_the_caller(with_certificate: bool) -> None:
    body = b'{"a": 1}'
    assert _post(body, _proof(body, with_certificate=with_certificate)).status_code == 200
    [(caller, received)] = seen
    assert received == body
    assert caller.key_hash == key_hash(KEY)
    if with_certificate:
        assert caller.certificate is not None
        assert certificate_key_hash(caller.certificate) == caller.key_hash
    else:
        assert caller.certificate is None


def test_a_proof_that_does_not_verify_is_refused_before_the_endpoint() -> None:
    response = _post(b"{}", _proof(b"other body", with_certificate=False))
    assert response.status_code == 401
    assert response.json()["error"].startswith("proof-")
    assert seen == []


def test_another_authorization_scheme_is_refused() -> None:
    response = _post(b"{}", "Bearer abc")
    assert response.status_code == 401
    assert response.json()["error"] == "proof-malformed"
    assert seen == []


def test_an_oversized_body_is_refused_with_413() -> None:
    response = _post(b"x" * (MAX_BODY_BYTES + 1))
    assert response.status_code == 413
    assert response.json()["error"] == "body-too-large"
    assert seen == []


def test_a_key_over_its_replay_cache_share_is_told_when_to_retry() -> None:
    app = ProofMiddleware(echo, AUDIENCE, ReplayCache(share=2))
    body = b"{}"
    with InProcessServer(app) as server, httpx.Client(transport=server.transport()) as client:
        answers = [
            client.post(
                URL, content=body, headers={"authorization": _proof(body, with_certificate=False)}
            )
            for _ in range(3)
        ]
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    refused = answers[-1]
    assert refused.json()["error"] == "proof-rate-limited"
    assert int(refused.headers["retry-after"]) == refused.json()["retry_after"] >= 1
