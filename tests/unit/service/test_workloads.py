"""The enclave API in-process: a simulated workload attests and receives its sealed config."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opencas.api.app import create_enclave_api
from opencas.attestation.simulated import create_simulated_evidence
from opencas.attestation.workload_binding import ConfigId, workload_report_data
from opencas.config.availability import load_availability_config
from opencas.crypto.hpke_seal import open_workload_config
from opencas.policy.caller import Caller
from opencas.service.cas import Cas, open_cas
from opencas.service.sessions import create_session, load_secret_values, update_session
from opencas.service.workloads import NonceStore
from opencas.testing import write_config

AUTHOR = Caller("a1" * 32)
GOOD = "11" * 32
PLATFORM_KEY = Ed25519PrivateKey.generate()

SESSION = """\
name: hello
version: "0.3"
services:
  - name: app
    command: ["python3", "/app/hello.py", "--token", "$$CAS::token$$"]
    environment:
      GREETING: "{greeting}"
      TOKEN_HEX: "$$CAS::token:hex$$"
    image_name: app-image
    attestation:
      simulated_measurement: "{measurement}"
images:
  - name: app-image
    injection_files:
      - path: /etc/app/server.crt
        content: "$$CAS::server.crt$$"
      - path: /etc/app/config.json
        content: '{{"token": "$$CAS::token$$"}}'
        permission: "0640"
secrets:
  - name: token
    kind: ascii
    size: 16
  - name: ca
    kind: x509-ca
    common_name: Hello CA
  - name: server
    kind: x509
    issuer: ca
    common_name: hello.example
    endpoint: server
    san: ["dns:hello.example"]
{security}"""

TOLERATE = "security:\n  attestation:\n    tolerate: [simulated]\n"


def session_text(greeting: str = "hi", measurement: str = GOOD, security: str = TOLERATE) -> str:
    return SESSION.format(greeting=greeting, measurement=measurement, security=security)


@pytest.fixture
def cas(tmp_path: Path) -> Iterator[Cas]:
    opened = open_cas(load_availability_config(write_config(tmp_path, 18081, 18766)))
    try:
        yield opened
    finally:
        opened.close()


HELLO_APP = ConfigId("hello", "app")


class Workload:
    """A simulated workload talking to the enclave API in this process."""

    def __init__(self, cas: Cas, measurement: str = GOOD) -> None:
        self.app = create_enclave_api(cas)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.public_key = base64.b64encode(
            self.key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).decode()
        self.measurement = measurement

    def post(self, path: str, body: Any = None) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="https://cas.test") as c:
                return await c.post(path, json=body)

        return asyncio.run(send())

    def nonce(self) -> str:
        nonce: str = self.post("/v1/enclave/nonce").json()["nonce"]
        return nonce

    def attest(
        self,
        config_id: str = "hello/app",
        nonce: str | None = None,
        bound_config_id: str | None = None,
        bound_key: str | None = None,
    ) -> tuple[httpx.Response, str]:
        nonce = nonce or self.nonce()
        report_data = workload_report_data(
            ConfigId.parse(bound_config_id or config_id), nonce, bound_key or self.public_key
        )
        evidence = create_simulated_evidence(PLATFORM_KEY, self.measurement, report_data)
        body = {
            "config_id": config_id,
            "nonce": nonce,
            "public_key": self.public_key,
            "evidence": evidence.to_json(),
        }
        return self.post("/v1/enclave/attest", body), nonce

    def config(self, response: httpx.Response, nonce: str, config_id: str = "hello/app") -> Any:
        assert response.status_code == 200, response.text
        plaintext = open_workload_config(self.key, response.json()["sealed"], config_id, nonce)
        return json.loads(plaintext)


def test_right_program_gets_its_config(cas: Cas) -> None:
    create_session(cas, session_text(), AUTHOR)
    workload = Workload(cas)
    response, nonce = workload.attest()
    config = workload.config(response, nonce)
    token = load_secret_values(cas.store, "hello")["token"].data.decode()
    assert config["command"] == ["python3", "/app/hello.py", "--token", token]
    assert config["environment"] == {"GREETING": "hi", "TOKEN_HEX": token.encode().hex()}
    files = {f["path"]: f for f in config["injection_files"]}
    assert json.loads(base64.b64decode(files["/etc/app/config.json"]["content"])) == {
        "token": token
    }
    assert files["/etc/app/config.json"]["permission"] == "0640"
    assert b"BEGIN CERTIFICATE" in base64.b64decode(files["/etc/app/server.crt"]["content"])
    assert token not in response.text  # sealed: nothing readable travels


def test_per_workload_certificate_chains_to_the_session_ca(cas: Cas) -> None:
    create_session(cas, session_text(), AUTHOR)
    workload = Workload(cas)
    response, nonce = workload.attest()
    issued = workload.config(response, nonce)["certificates"]["server"]
    certificate = x509.load_pem_x509_certificate(issued["certificate"].encode())
    ca = load_secret_values(cas.store, "hello")["ca"].certificate()
    certificate.verify_directly_issued_by(ca)
    assert certificate.public_key() == workload.key.public_key()
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["hello.example"]


def test_changed_program_is_refused_with_the_measurement_message(cas: Cas) -> None:
    create_session(cas, session_text(), AUTHOR)
    response, _ = Workload(cas, measurement="22" * 32).attest()
    assert response.status_code == 403
    body = response.json()
    assert body["check"] == "measurement"
    assert "is not allowed for service `app`" in body["message"]
    assert GOOD not in body["message"]


def test_nonce_reuse_and_unknown_nonce_are_refused(cas: Cas) -> None:
    create_session(cas, session_text(), AUTHOR)
    workload = Workload(cas)
    first, nonce = workload.attest()
    assert first.status_code == 200
    again, _ = workload.attest(nonce=nonce)
    assert again.status_code == 403
    assert again.json()["check"] == "nonce"
    made_up, _ = workload.attest(nonce="00" * 32)
    assert made_up.json()["check"] == "nonce"


def test_expired_nonce_is_refused() -> None:
    now = [0.0]
    store = NonceStore(lifetime=60, clock=lambda: now[0])
    nonce = store.issue()
    now[0] = 61.0
    with pytest.raises(Exception, match="expired"):
        store.consume(nonce)


def test_evidence_binding_another_key_or_config_id_is_refused(cas: Cas) -> None:
    create_session(cas, session_text(), AUTHOR)
    workload = Workload(cas)
    other_key = Workload(cas).public_key
    wrong_key, _ = workload.attest(bound_key=other_key)
    assert wrong_key.status_code == 403
    assert wrong_key.json()["check"] == "binding"
    wrong_id, _ = workload.attest(bound_config_id="hello/other")
    assert wrong_id.json()["check"] == "binding"


def test_response_cannot_be_opened_with_another_key(cas: Cas) -> None:
    create_session(cas, session_text(), AUTHOR)
    workload = Workload(cas)
    response, nonce = workload.attest()
    thief = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValueError, match="does not open"):
        open_workload_config(thief, response.json()["sealed"], "hello/app", nonce)


def test_session_update_takes_effect_for_the_next_attestation(cas: Cas) -> None:
    record = create_session(cas, session_text(), AUTHOR)
    workload = Workload(cas)
    first, nonce = workload.attest()
    assert workload.config(first, nonce)["environment"]["GREETING"] == "hi"
    update_session(
        cas,
        "hello",
        f'predecessor: "{record.hash}"\n' + session_text(greeting="hello again"),
        AUTHOR,
    )
    second, nonce = workload.attest()
    assert workload.config(second, nonce)["environment"]["GREETING"] == "hello again"


def test_simulated_evidence_needs_the_session_to_tolerate_it(cas: Cas) -> None:
    create_session(cas, session_text(security=""), AUTHOR)
    response, _ = Workload(cas).attest()
    assert response.status_code == 403
    assert response.json()["check"] == "simulated"


def test_unknown_service_does_not_reveal_others(cas: Cas) -> None:
    create_session(cas, session_text(), AUTHOR)
    response, _ = Workload(cas).attest(config_id="hello/nope")
    assert response.status_code == 404
    assert "app" not in response.json()["message"].replace("hello/nope", "")


@pytest.mark.parametrize(
    "change",
    [
        {"public_key": "not base64!"},
        {"evidence": {"type": "simulated", "data": "!!"}},
        {"config_id": "no-slash"},
        {"nonce": "zz"},
    ],
)
def test_malformed_requests_are_400(cas: Cas, change: dict[str, Any]) -> None:
    create_session(cas, session_text(), AUTHOR)
    workload = Workload(cas)
    nonce = workload.nonce()
    evidence = create_simulated_evidence(
        PLATFORM_KEY,
        GOOD,
        workload_report_data(ConfigId("hello", "app"), nonce, workload.public_key),
    )
    body = {
        "config_id": "hello/app",
        "nonce": nonce,
        "public_key": workload.public_key,
        "evidence": evidence.to_json(),
        **change,
    }
    response = workload.post("/v1/enclave/attest", body)
    assert response.status_code == 400, response.text


EXPORTER = """\
name: exporter
version: "0.3"
secrets:
  - name: shared
    kind: ascii
    export:
      - session: importer
"""
IMPORTER = f"""\
name: importer
version: "0.3"
services:
  - name: app
    environment:
      SHARED: "$$CAS::shared$$"
    attestation:
      simulated_measurement: "{GOOD}"
secrets:
  - name: shared
    import:
      session: exporter
      secret: shared
security:
  attestation:
    tolerate: [simulated]
"""


def test_withdrawn_export_stops_sharing_at_once(cas: Cas) -> None:
    exporter = create_session(cas, EXPORTER, AUTHOR)
    create_session(cas, IMPORTER, AUTHOR)
    workload = Workload(cas)
    response, nonce = workload.attest(config_id="importer/app")
    shared = load_secret_values(cas.store, "exporter")["shared"].data.decode()
    assert workload.config(response, nonce, "importer/app")["environment"]["SHARED"] == shared
    withdrawn = EXPORTER.replace("    export:\n      - session: importer\n", "")
    update_session(cas, "exporter", f'predecessor: "{exporter.hash}"\n' + withdrawn, AUTHOR)
    refused, _ = workload.attest(config_id="importer/app")
    assert refused.status_code == 403
    assert refused.json()["check"] == "import"


def test_compressed_p256_key_is_invalid_input(cas: Cas) -> None:
    create_session(cas, session_text(), AUTHOR)
    workload = Workload(cas)
    point = workload.key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    # SubjectPublicKeyInfo (id-ecPublicKey, prime256v1) around a compressed point.
    prefix = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200")
    workload.public_key = base64.b64encode(prefix + point).decode()
    response, _ = workload.attest()
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid-request"


def test_oversized_enclave_request_is_413(cas: Cas) -> None:
    response = Workload(cas).post("/v1/enclave/attest", {"padding": "x" * 300_000})
    assert response.status_code == 413
    assert response.json()["error"] == "body-too-large"
