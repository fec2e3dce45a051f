"""The client API in-process: routing, errors, request proofs and metrics, without a server."""

from __future__ import annotations

import sqlite3

import pytest
from opentelemetry import _logs, metrics, trace

from opencas.attestation.report import CasExpectations
from opencas.client import ApiError, ClientIdentity, new_nonce
from opencas.errors import DatabaseUnavailable
from opencas.testing import InProcessCas, stored_record_id


def test_healthz_and_version(api: InProcessCas) -> None:
    client = api.client()
    assert client.health() == "ok"
    version = client.version()
    assert version.api_version == 1
    assert version.mode == "debug"


def test_attest_verifies_in_process(api: InProcessCas) -> None:
    verified = api.client().attest(
        CasExpectations(nonce=new_nonce(), allow_debug=True, allow_unprovisioned=True)
    )
    assert verified.report.cas_key_hash == api.cas.identity.cas_key_hash
    assert verified.report.instance_id == api.cas.identity.instance_id
    assert verified.report.cluster_id == api.cas.identity.cluster_id
    # The CAS's id is in its store; this instance's id is beside its key store.
    assert verified.report.cluster_id != verified.report.instance_id
    instance_file = api.cas.config.database_path.with_name("cas.db.instance-id")
    assert instance_file.read_text().strip() == verified.report.instance_id


@pytest.mark.parametrize("nonce", ["", "xyz", "0f", "0F" * 16, "0" * 17, "00" * 65])
def test_attest_rejects_bad_nonce(api: InProcessCas, nonce: str) -> None:
    response = api.send("GET", "/v1/attest", params={"nonce": nonce})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid-request"
    assert "nonce" in response.json()["message"]


def test_unknown_route_is_json_404(api: InProcessCas) -> None:
    response = api.send("GET", "/v1/nothing")
    assert response.status_code == 404
    assert response.json()["error"] == "not-found"


def test_whoami_signed_and_anonymous(api: InProcessCas) -> None:
    identity = ClientIdentity.generate()
    client = api.client(identity)
    assert client.whoami() == identity.key_hash
    assert client.whoami(signed=False) == "anonymous"
    assert api.client().whoami(signed=False) == "anonymous"


def test_proof_for_another_cas_is_refused(api: InProcessCas) -> None:
    identity = ClientIdentity.generate()
    response = api.send("GET", "/v1/whoami", signer=identity, audience="ab" * 32)
    assert response.status_code == 401
    assert response.json()["error"] == "proof-audience-mismatch"


def test_malformed_authorization_is_refused(api: InProcessCas) -> None:
    response = api.send("GET", "/v1/whoami", headers={"Authorization": "Bearer abc"})
    assert response.status_code == 401
    assert response.json()["error"] == "proof-malformed"


def test_replayed_proof_is_refused(api: InProcessCas) -> None:
    identity = ClientIdentity.generate()
    first = api.send("GET", "/v1/whoami", signer=identity)
    header = first.request.headers["Authorization"]
    replay = api.send("GET", "/v1/whoami", headers={"Authorization": header})
    assert replay.status_code == 401
    assert replay.json()["error"] == "proof-replayed"


def test_damaged_record_gives_error_and_server_keeps_serving(api: InProcessCas) -> None:
    client = api.client()
    expectations = CasExpectations(nonce="00" * 16, allow_debug=True, allow_unprovisioned=True)
    client.attest(expectations)
    database = api.cas.config.database_path
    record_id = stored_record_id(api.cas.config, "cas", "state")
    with sqlite3.connect(database) as db:
        (value,) = db.execute(
            "SELECT value FROM records WHERE tbl = 'cas' AND key = ?", (record_id,)
        ).fetchone()
        db.execute(
            "UPDATE records SET value = ? WHERE tbl = 'cas' AND key = ?",
            (value[:-1] + bytes([value[-1] ^ 1]), record_id),
        )
    with pytest.raises(ApiError) as damaged:
        client.attest(expectations)
    assert damaged.value.status == 500
    assert damaged.value.code == "record-damaged"
    assert "cas/state" in damaged.value.message
    assert client.health() == "ok"


def test_metrics_count_requests_by_route_and_status(api: InProcessCas) -> None:
    api.send("GET", "/healthz")
    api.send("GET", "/v1/attest", params={"nonce": "bad"})
    api.send("GET", "/some/random/path")
    text = api.send("GET", "/metrics").text
    assert (
        'opencas_http_requests_total{listener="api",method="GET",route="/healthz",status="200"}'
        in text
    )
    assert 'route="/v1/attest",status="400"' in text
    assert 'route="<unmatched>",status="404"' in text
    assert "opencas_http_request_duration_seconds_bucket" in text


def test_readyz_on_both_listeners(api: InProcessCas) -> None:
    for listener in ("api", "enclave"):
        ready = api.send("GET", "/readyz", listener=listener)
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready"}


def test_readyz_fails_while_the_store_cannot_answer(
    api: InProcessCas, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable() -> None:
        raise DatabaseUnavailable("database cas@db:5432/cas: reading the commit state failed")

    monkeypatch.setattr(api.cas.store, "state", unreachable)
    for listener in ("api", "enclave"):
        answer = api.send("GET", "/readyz", listener=listener)
        assert answer.status_code == 503
        assert answer.json()["error"] == "not-ready"
        assert "reading the commit state failed" in answer.json()["message"]
        # Liveness is another question: the process still serves.
        assert api.send("GET", "/healthz", listener=listener).status_code == 200


def test_fastapis_own_telemetry_is_off_whatever_the_environment_says(
    api: InProcessCas, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FastAPI's instrumentation would record request bodies and exception messages once a
    # provider is configured (by the environment or another library); the CAS never asks.
    def consulted() -> None:
        raise AssertionError("FastAPI's telemetry looked for a provider")

    monkeypatch.setenv("FASTAPI_OTEL_AUTO_CONFIGURE", "true")
    for module, name in ((trace, "get_tracer_provider"), (metrics, "get_meter_provider")):
        monkeypatch.setattr(module, name, consulted)
    monkeypatch.setattr(_logs, "get_logger_provider", consulted)
    for listener in ("api", "enclave"):
        assert api.send("GET", "/healthz", listener=listener).status_code == 200
        assert api.send("POST", "/v1/enclave/attest", listener=listener).status_code in (400, 404)
