"""The enclave API in-process: a simulated workload attests and receives its sealed config."""

from __future__ import annotations

import base64
import datetime
import json
import re
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from opencas.attestation.evidence import Evidence
from opencas.attestation.simulated import create_simulated_evidence
from opencas.attestation.workload_binding import ConfigId, workload_report_data
from opencas.client import ApiError
from opencas.crypto.hpke_seal import SealedConfig, open_workload_config
from opencas.errors import AttestationRefused
from opencas.policy.caller import Caller
from opencas.policy.hashing import session_hash
from opencas.policy.parse import parse_session
from opencas.runtime.exchange import WorkloadExchange, attest
from opencas.service.nonces import NonceStore
from opencas.service.sessions import create_session, load_secret_values, update_session
from opencas.testing import InProcessCas

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


class Workload:
    """A simulated workload with its own key, attesting through the real enclave client."""

    def __init__(self, api: InProcessCas, measurement: str = GOOD) -> None:
        self.client = api.enclave_client()
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.public_key = base64.b64encode(
            self.key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).decode()
        self.measurement = measurement

    def attest(
        self,
        config_id: str = "hello/app",
        nonce: str | None = None,
        bound_config_id: str | None = None,
        bound_key: str | None = None,
    ) -> tuple[SealedConfig, str]:
        """The CAS's sealed answer and the nonce; evidence may bind another id or key."""
        nonce = nonce or self.client.nonce()
        report_data = workload_report_data(
            ConfigId.parse(bound_config_id or config_id), nonce, bound_key or self.public_key
        )
        evidence = create_simulated_evidence(PLATFORM_KEY, self.measurement, report_data)
        answer = self.client.attest(ConfigId.parse(config_id), nonce, self.public_key, evidence)
        return answer, nonce

    def refused(self, **attest: Any) -> AttestationRefused:
        """The refusal of an attestation that must be refused."""
        with pytest.raises(AttestationRefused) as refusal:
            self.attest(**attest)
        return refusal.value

    def config(self, answer: SealedConfig, nonce: str, config_id: str = "hello/app") -> Any:
        plaintext = open_workload_config(self.key, answer.sealed, config_id, nonce)
        return json.loads(plaintext)


def test_right_program_gets_its_config(api: InProcessCas) -> None:
    create_session(api.cas, session_text(), AUTHOR)
    workload = Workload(api)
    answer, nonce = workload.attest()
    config = workload.config(answer, nonce)
    token = load_secret_values(api.cas.store, "hello")["token"].data.decode()
    assert config["command"] == ["python3", "/app/hello.py", "--token", token]
    assert config["environment"] == {"GREETING": "hi", "TOKEN_HEX": token.encode().hex()}
    files = {f["path"]: f for f in config["injection_files"]}
    assert json.loads(base64.b64decode(files["/etc/app/config.json"]["content"])) == {
        "token": token
    }
    assert files["/etc/app/config.json"]["permission"] == "0640"
    assert b"BEGIN CERTIFICATE" in base64.b64decode(files["/etc/app/server.crt"]["content"])
    assert token not in answer.kem + answer.sealed  # sealed: nothing readable travels


def test_a_protection_file_is_sent_only_to_its_service(api: InProcessCas) -> None:
    key, tag = "AB" + "ab" * 31, "cd" * 16
    fspf = f'    fspf_path: /app.fspf\n    fspf_key: "{key}"\n    fspf_tag: "{tag}"\n'
    text = session_text().replace(
        "    image_name: app-image\n", "    image_name: app-image\n" + fspf
    )
    create_session(api.cas, text, AUTHOR)
    workload = Workload(api)
    answer, nonce = workload.attest()

    config = workload.config(answer, nonce)

    assert config["fspf"] == {"path": "/app.fspf", "key": "ab" * 32, "tag": "cd" * 16}
    assert "ab" * 32 not in answer.kem + answer.sealed


def test_a_service_without_a_protection_file_gets_no_fspf_member(api: InProcessCas) -> None:
    create_session(api.cas, session_text(), AUTHOR)
    workload = Workload(api)
    answer, nonce = workload.attest()

    assert "fspf" not in workload.config(answer, nonce)


def test_per_workload_certificate_chains_to_the_session_ca(api: InProcessCas) -> None:
    create_session(api.cas, session_text(), AUTHOR)
    workload = Workload(api)
    answer, nonce = workload.attest()
    issued = workload.config(answer, nonce)["certificates"]["server"]
    certificate = x509.load_pem_x509_certificate(issued["certificate"].encode())
    ca = load_secret_values(api.cas.store, "hello")["ca"].certificate()
    certificate.verify_directly_issued_by(ca)
    assert certificate.public_key() == workload.key.public_key()
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["hello.example"]


def test_changed_program_is_refused_with_the_measurement_message(api: InProcessCas) -> None:
    create_session(api.cas, session_text(), AUTHOR)
    refused = Workload(api, measurement="22" * 32).refused()
    assert refused.check == "measurement"
    assert "is not allowed for service `app`" in refused.message
    assert GOOD not in refused.message


def test_nonce_reuse_and_unknown_nonce_are_refused(api: InProcessCas) -> None:
    create_session(api.cas, session_text(), AUTHOR)
    workload = Workload(api)
    _, nonce = workload.attest()
    assert workload.refused(nonce=nonce).check == "nonce"
    assert workload.refused(nonce="00" * 32).check == "nonce"


def _posted(api: InProcessCas, workload: Workload, nonce: str) -> Any:
    """The enclave API's raw answer to an attestation of ``workload`` over ``nonce``."""
    report_data = workload_report_data(ConfigId.parse("hello/app"), nonce, workload.public_key)
    body = {
        "config_id": "hello/app",
        "nonce": nonce,
        "public_key": workload.public_key,
        "evidence": create_simulated_evidence(PLATFORM_KEY, GOOD, report_data).to_json(),
    }
    return api.send("POST", "/v1/enclave/attest", listener="enclave", json=body)


def test_an_answer_hands_out_a_next_nonce_that_attests_once(api: InProcessCas) -> None:
    create_session(api.cas, session_text(), AUTHOR)
    workload = Workload(api)
    first = _posted(api, workload, workload.client.nonce())
    assert first.status_code == 200
    assert set(first.json()) == {"kem", "sealed"}  # the body is as before the next nonce
    next_nonce = first.headers["CAS-Next-Nonce"]
    assert re.fullmatch(r"[0-9a-f]{64}", next_nonce)
    second = _posted(api, workload, next_nonce)
    assert second.status_code == 200
    assert second.headers["CAS-Next-Nonce"] not in (next_nonce, first.headers["CAS-Next-Nonce"])
    again = _posted(api, workload, next_nonce)
    assert again.status_code == 403
    assert again.json()["check"] == "nonce"
    assert "CAS-Next-Nonce" not in again.headers  # a refusal hands out nothing


def test_a_workload_that_attests_again_asks_for_no_nonce(api: InProcessCas) -> None:
    create_session(api.cas, session_text(), AUTHOR)
    workload = Workload(api)
    client = workload.client
    asked: list[str] = []
    ask = client.nonce

    def counted() -> str:
        asked.append(ask())
        return asked[-1]

    client.nonce = counted  # type: ignore[method-assign]
    exchange = WorkloadExchange(ConfigId.parse("hello/app"), workload.key)
    platform = _HelloPlatform()
    answers = [attest(client, exchange, platform) for _ in range(3)]
    assert len(asked) == 1
    assert len({answer.nonce for answer in answers}) == 3
    for answer in answers:
        assert exchange.open(answer).environment["GREETING"] == "hi"


class _HelloPlatform:
    """Simulated evidence of the measurement the hello session accepts."""

    def evidence(self, report_data: bytes) -> Evidence:
        return create_simulated_evidence(PLATFORM_KEY, GOOD, report_data)


def test_expired_nonce_is_refused() -> None:
    now = [0.0]
    store = NonceStore(lifetime=60, clock=lambda: now[0])
    nonce = store.issue()
    now[0] = 61.0
    with pytest.raises(Exception, match="expired"):
        store.consume(nonce)


def test_evidence_binding_another_key_or_config_id_is_refused(api: InProcessCas) -> None:
    create_session(api.cas, session_text(), AUTHOR)
    workload = Workload(api)
    other_key = Workload(api).public_key
    assert workload.refused(bound_key=other_key).check == "binding"
    assert workload.refused(bound_config_id="hello/other").check == "binding"


def test_response_cannot_be_opened_with_another_key(api: InProcessCas) -> None:
    create_session(api.cas, session_text(), AUTHOR)
    answer, nonce = Workload(api).attest()
    thief = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValueError, match="does not open"):
        open_workload_config(thief, answer.sealed, "hello/app", nonce)


def test_session_update_takes_effect_for_the_next_attestation(api: InProcessCas) -> None:
    record = create_session(api.cas, session_text(), AUTHOR)
    workload = Workload(api)
    first, nonce = workload.attest()
    assert workload.config(first, nonce)["environment"]["GREETING"] == "hi"
    update_session(
        api.cas,
        "hello",
        f'predecessor: "{record.hash}"\n' + session_text(greeting="hello again"),
        AUTHOR,
    )
    second, nonce = workload.attest()
    assert workload.config(second, nonce)["environment"]["GREETING"] == "hello again"


def test_simulated_evidence_needs_the_session_to_tolerate_it(api: InProcessCas) -> None:
    create_session(api.cas, session_text(security=""), AUTHOR)
    assert Workload(api).refused().check == "simulated"


def test_unknown_service_does_not_reveal_others(api: InProcessCas) -> None:
    create_session(api.cas, session_text(), AUTHOR)
    with pytest.raises(ApiError) as unknown:
        Workload(api).attest(config_id="hello/nope")
    assert unknown.value.status == 404
    assert "app" not in unknown.value.message.replace("hello/nope", "")


@pytest.mark.parametrize(
    "change",
    [
        {"public_key": "not base64!"},
        {"evidence": {"type": "simulated", "data": "!!"}},
        {"config_id": "no-slash"},
        {"nonce": "zz"},
    ],
)
def test_malformed_requests_are_400(api: InProcessCas, change: dict[str, Any]) -> None:
    create_session(api.cas, session_text(), AUTHOR)
    workload = Workload(api)
    nonce = workload.client.nonce()
    evidence = create_simulated_evidence(
        PLATFORM_KEY,
        GOOD,
        workload_report_data(ConfigId.parse("hello/app"), nonce, workload.public_key),
    )
    body = {
        "config_id": "hello/app",
        "nonce": nonce,
        "public_key": workload.public_key,
        "evidence": evidence.to_json(),
        **change,
    }
    response = api.send("POST", "/v1/enclave/attest", listener="enclave", json=body)
    assert response.status_code == 400, response.text


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
# Pinned to the importer's hash: an unpinned export to a session nobody created yet is refused.
EXPORT = f"""\
    export:
      - session: importer
        session_hash: {session_hash(parse_session(IMPORTER))}
"""
EXPORTER = f"""\
name: exporter
version: "0.3"
secrets:
  - name: shared
    kind: ascii
{EXPORT}"""


def test_withdrawn_export_stops_sharing_at_once(api: InProcessCas) -> None:
    exporter = create_session(api.cas, EXPORTER, AUTHOR)
    create_session(api.cas, IMPORTER, AUTHOR)
    workload = Workload(api)
    answer, nonce = workload.attest(config_id="importer/app")
    shared = load_secret_values(api.cas.store, "exporter")["shared"].data.decode()
    assert workload.config(answer, nonce, "importer/app")["environment"]["SHARED"] == shared
    withdrawn = EXPORTER.replace(EXPORT, "")
    update_session(api.cas, "exporter", f'predecessor: "{exporter.hash}"\n' + withdrawn, AUTHOR)
    assert workload.refused(config_id="importer/app").check == "import"


def test_compressed_p256_key_is_invalid_input(api: InProcessCas) -> None:
    create_session(api.cas, session_text(), AUTHOR)
    workload = Workload(api)
    point = workload.key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    # SubjectPublicKeyInfo (id-ecPublicKey, prime256v1) around a compressed point.
    prefix = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200")
    workload.public_key = base64.b64encode(prefix + point).decode()
    with pytest.raises(ApiError) as invalid:
        workload.attest()
    assert invalid.value.status == 400
    assert invalid.value.code == "invalid-request"


def test_oversized_enclave_request_is_413(api: InProcessCas) -> None:
    response = api.send(
        "POST", "/v1/enclave/attest", listener="enclave", json={"padding": "x" * 300_000}
    )
    assert response.status_code == 413
    assert response.json()["error"] == "body-too-large"


def _ca_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Anchor")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def test_an_imported_certificate_without_its_key_cannot_give_one(api: InProcessCas) -> None:
    anchor = "\n".join("      " + line for line in _ca_pem().splitlines())
    importer = (
        'name: importer\nversion: "0.3"\nservices:\n  - name: app\n'
        '    environment:\n      CA: "$$CAS::anchor$$"\n      KEY: "$$CAS::anchor.key$$"\n'
        f'    attestation:\n      simulated_measurement: "{GOOD}"\n'
        "secrets:\n  - name: anchor\n    import: {session: exporter, secret: anchor}\n" + TOLERATE
    )
    exporter = (
        'name: exporter\nversion: "0.3"\nsecrets:\n  - name: anchor\n    kind: x509-ca\n'
        f"    export: [{{session: importer}}]\n    value: |\n{anchor}\n"
    )
    # The importer exists first (an unpinned export needs it), then imports.
    first = create_session(api.cas, 'name: importer\nversion: "0.3"\n', AUTHOR)
    create_session(api.cas, exporter, AUTHOR)
    update_session(api.cas, "importer", importer + f'predecessor: "{first.hash}"\n', AUTHOR)

    refusal = Workload(api).refused(config_id="importer/app")

    assert refusal.check == "import"
    assert "'anchor' cannot be given" in refusal.message
