"""The workload side of the enclave API: HPKE sealing, strict parsing, and the HTTP client."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519

from opencas.attestation.evidence import Evidence
from opencas.attestation.workload_binding import ConfigId
from opencas.client.channel import ApiError, CasUnreachable
from opencas.client.enclave import (
    AsyncEnclaveClient,
    EnclaveClient,
    InjectionFile,
    IssuedCertificate,
    open_config,
    parse_workload_config,
)
from opencas.crypto.canonical import canonical_json
from opencas.crypto.hpke_seal import (
    SealedConfig,
    SealedConfigError,
    UnsupportedRecipientKey,
    hpke_info,
    load_recipient_public_key,
    open_workload_config,
    seal_workload_config,
)
from opencas.crypto.keys import public_key_der
from opencas.crypto.pem import certificate_pem
from opencas.crypto.x509 import create_ca_certificate
from opencas.errors import AttestationRefused, ClientError

CONFIG_ID = "team/app/api"
WORKLOAD = ConfigId.parse(CONFIG_ID)
NONCE = "ab" * 32
SECRET = "s3cr3t-value-never-shown"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def der_of(key: ec.EllipticCurvePrivateKey | x25519.X25519PrivateKey) -> bytes:
    return public_key_der(key.public_key())  # type: ignore[arg-type]


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# --- HPKE --------------------------------------------------------------------------------------


def test_info_is_the_documented_bytes() -> None:
    assert hpke_info("s/svc", "00") == (
        b'opencas-workload-config/v1\x00{"config_id":"s/svc","nonce":"00"}'
    )


@pytest.mark.parametrize(
    ("make_key", "kem"),
    [(p256, "P-256"), (x25519.X25519PrivateKey.generate, "X25519")],
)
def test_round_trip(make_key: Callable[[], Any], kem: str) -> None:
    key = make_key()
    name, sealed = seal_workload_config(der_of(key), b"plaintext", CONFIG_ID, NONCE)
    assert name == kem
    assert open_workload_config(key, sealed, CONFIG_ID, NONCE) == b"plaintext"
    raw = base64.b64decode(sealed)
    # enc (65 bytes for P-256, 32 for X25519) || ciphertext || 16-byte tag
    assert len(raw) == (65 if kem == "P-256" else 32) + len(b"plaintext") + 16


def test_sealing_is_randomised() -> None:
    key = p256()
    first = seal_workload_config(der_of(key), b"x", CONFIG_ID, NONCE)[1]
    assert first != seal_workload_config(der_of(key), b"x", CONFIG_ID, NONCE)[1]


def test_another_key_cannot_open() -> None:
    _, sealed = seal_workload_config(der_of(p256()), b"x", CONFIG_ID, NONCE)
    with pytest.raises(SealedConfigError):
        open_workload_config(p256(), sealed, CONFIG_ID, NONCE)


@pytest.mark.parametrize(
    ("config_id", "nonce"), [("team/app/other", NONCE), (CONFIG_ID, "cd" * 32), ("", "")]
)
def test_another_exchange_cannot_open(config_id: str, nonce: str) -> None:
    key = p256()
    _, sealed = seal_workload_config(der_of(key), b"x", CONFIG_ID, NONCE)
    with pytest.raises(SealedConfigError):
        open_workload_config(key, sealed, config_id, nonce)


@pytest.mark.parametrize("position", [0, 40, 70, -1])
def test_tampered_bytes_cannot_open(position: int) -> None:
    key = p256()
    _, sealed = seal_workload_config(der_of(key), b"some plaintext", CONFIG_ID, NONCE)
    raw = bytearray(base64.b64decode(sealed))
    raw[position] ^= 0x01
    with pytest.raises(SealedConfigError):
        open_workload_config(key, base64.b64encode(raw).decode(), CONFIG_ID, NONCE)


@pytest.mark.parametrize("sealed", ["", "not base64!", base64.b64encode(b"short").decode()])
def test_malformed_sealed_text(sealed: str) -> None:
    with pytest.raises(SealedConfigError):
        open_workload_config(p256(), sealed, CONFIG_ID, NONCE)


def test_truncated_cannot_open() -> None:
    key = p256()
    _, sealed = seal_workload_config(der_of(key), b"some plaintext", CONFIG_ID, NONCE)
    raw = base64.b64decode(sealed)[:-1]
    with pytest.raises(SealedConfigError):
        open_workload_config(key, base64.b64encode(raw).decode(), CONFIG_ID, NONCE)


@pytest.mark.parametrize(
    "der",
    [
        public_key_der(ec.generate_private_key(ec.SECP384R1()).public_key()),
        public_key_der(ed25519.Ed25519PrivateKey.generate().public_key()),
        b"not DER",
        public_key_der(p256().public_key()) + b"\x00",
    ],
    ids=["p384", "ed25519", "garbage", "trailing-byte"],
)
def test_unsupported_recipient_keys(der: bytes) -> None:
    with pytest.raises(UnsupportedRecipientKey):
        seal_workload_config(der, b"x", CONFIG_ID, NONCE)


def test_loads_supported_keys() -> None:
    assert isinstance(load_recipient_public_key(der_of(p256())), ec.EllipticCurvePublicKey)


# --- the plaintext -----------------------------------------------------------------------------


def document(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "config_id": CONFIG_ID,
        "session_hash": "0f" * 32,
        "command": ["python3", "app.py", f"--token={SECRET}"],
        "environment": {"TOKEN": SECRET, "CONF": "/etc/app/conf.yaml"},
        "pwd": "/srv",
        "injection_files": [
            {
                "path": "/etc/app/conf.yaml",
                "content": base64.b64encode(b"key: value\n").decode(),
                "permission": "0640",
            },
            {"path": "/etc/app/other", "content": "", "permission": None},
        ],
        "certificates": {"tls-cert": {"certificate": PEM, "chain": PEM + PEM}},
        "volumes": [
            {
                "name": "ledger",
                "path": "/srv/ledger",
                "key": "1a" * 32,
                "tag": None,
                "ticket": "eyJhIjoiYiJ9",
                "report_secret": "2b" * 32,
            }
        ],
    }
    base.update(overrides)
    return base


def test_parses_the_documented_plaintext() -> None:
    config = parse_workload_config(canonical_json(document()), WORKLOAD)
    assert config.config_id == WORKLOAD
    assert config.session_hash == "0f" * 32
    assert config.command == ("python3", "app.py", f"--token={SECRET}")
    assert dict(config.environment) == {"TOKEN": SECRET, "CONF": "/etc/app/conf.yaml"}
    assert config.pwd == "/srv"
    assert config.injection_files == (
        InjectionFile("/etc/app/conf.yaml", b"key: value\n", "0640"),
        InjectionFile("/etc/app/other", b"", None),
    )
    assert dict(config.certificates) == {"tls-cert": IssuedCertificate(PEM, PEM + PEM)}
    (volume,) = config.volumes
    assert (volume.name, volume.path, volume.tag) == ("ledger", "/srv/ledger", None)
    assert volume.key == bytes.fromhex("1a" * 32)
    assert volume.report_secret == bytes.fromhex("2b" * 32)
    assert "1a1a" not in repr(volume)
    assert SECRET not in repr(config)
    with pytest.raises(TypeError):
        config.environment["X"] = "y"  # type: ignore[index]


GRANT = document()["volumes"][0]


@pytest.mark.parametrize(
    "volumes",
    [
        [{**GRANT, "key": "1a"}],
        [{**GRANT, "tag": "AB" * 32}],
        [{**GRANT, "path": "srv"}],
        [{**GRANT, "name": "a.b"}],
        [{**GRANT, "ticket": "not base64url!"}],
        [{k: v for k, v in GRANT.items() if k != "report_secret"}],
        [GRANT, {**GRANT, "name": "other"}],
    ],
)
def test_a_malformed_volume_grant_is_refused(volumes: list[dict[str, Any]]) -> None:
    with pytest.raises(ValueError, match="volumes"):
        parse_workload_config(canonical_json(document(volumes=volumes)), WORKLOAD)


def test_empty_configuration() -> None:
    plaintext = canonical_json(
        document(command=[], environment={}, pwd=None, injection_files=[], certificates={})
    )
    config = parse_workload_config(plaintext, WORKLOAD)
    assert config.command == ()
    assert config.pwd is None


def _without(key: str) -> dict[str, Any]:
    doc = document()
    del doc[key]
    return doc


def _file(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": "/etc/x", "content": "", "permission": None}
    entry.update(changes)
    return document(injection_files=[entry])


BAD_DOCUMENTS: dict[str, Any] = {
    "extra member": document(extra=1),
    "missing member": _without("pwd"),
    "other config id": document(config_id="team/app/other"),
    "short session hash": document(session_hash="0f"),
    "upper-case session hash": document(session_hash="0F" * 32),
    "command not a list": document(command="python3 app.py"),
    "command item not a string": document(command=["python3", 1]),
    "command with NUL": document(command=["a\x00b"]),
    "environment not an object": document(environment=[["A", "b"]]),
    "bad environment name": document(environment={"1A": "x"}),
    "environment value not a string": document(environment={"A": 1}),
    "relative pwd": document(pwd="srv"),
    "pwd with ..": document(pwd="/srv/../etc"),
    "injection files not a list": document(injection_files={}),
    "relative injection path": _file(path="etc/x"),
    "injection path with ..": _file(path="/etc/../x"),
    "injection path /": _file(path="/"),
    "injection path with empty segment": _file(path="/etc//x"),
    "content not base64": _file(content="!!"),
    "content not a string": _file(content=None),
    "permission without leading 0": _file(permission="600"),
    "permission with 0o": _file(permission="0o600"),
    "setuid permission": _file(permission="4755"),
    "permission as a number": _file(permission=384),
    "extra file member": _file(owner="root"),
    "duplicate injection path": document(
        injection_files=[
            {"path": "/etc/x", "content": "", "permission": None},
            {"path": "/etc/x", "content": "", "permission": None},
        ]
    ),
    "certificate name with a dot": document(
        certificates={"tls.crt": {"certificate": PEM, "chain": PEM}}
    ),
    "certificate without chain": document(certificates={"tls": {"certificate": PEM}}),
    "certificate not PEM": document(certificates={"tls": {"certificate": "x", "chain": PEM}}),
}


@pytest.mark.parametrize("doc", BAD_DOCUMENTS.values(), ids=BAD_DOCUMENTS.keys())
def test_deviations_are_refused(doc: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as caught:
        parse_workload_config(canonical_json(doc), WORKLOAD)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "plaintext",
    [
        json.dumps(document()).encode(),  # valid JSON, but not canonical
        b"[]",
        b"not json",
        canonical_json(document())[:-1],
        b'{"config_id":"a","config_id":"b"}',
    ],
    ids=["not-canonical", "array", "garbage", "truncated", "duplicate-member"],
)
def test_non_canonical_or_invalid_json_is_refused(plaintext: bytes) -> None:
    with pytest.raises(ValueError) as caught:
        parse_workload_config(plaintext, WORKLOAD)
    assert SECRET not in str(caught.value)


def test_open_config_round_trip() -> None:
    key = p256()
    _, sealed = seal_workload_config(der_of(key), canonical_json(document()), CONFIG_ID, NONCE)
    config = open_config(key, sealed, WORKLOAD, NONCE)
    assert config.command[1] == "app.py"
    assert EnclaveClient.open_config is open_config


def test_open_config_errors_are_client_errors_without_plaintext() -> None:
    key = p256()
    _, sealed = seal_workload_config(
        der_of(key), canonical_json(document(command=[1, SECRET])), CONFIG_ID, NONCE
    )
    with pytest.raises(ClientError, match=r"the CAS's answer could not be opened/parsed") as bad:
        open_config(key, sealed, WORKLOAD, NONCE)
    assert SECRET not in bad.value.message
    with pytest.raises(ClientError, match=r"could not be opened/parsed"):
        open_config(p256(), sealed, WORKLOAD, NONCE)
    with pytest.raises(ClientError, match=r"could not be opened/parsed"):
        open_config(key, sealed, WORKLOAD, "cd" * 32)


# --- the HTTP client ---------------------------------------------------------------------------

CA_PEM = certificate_pem(create_ca_certificate(p256(), "test CAS"))
EVIDENCE = Evidence(type="simulated", data=b"evidence")


def client_for(handler: Callable[[httpx.Request], httpx.Response]) -> EnclaveClient:
    return EnclaveClient("https://cas.test:18765/", CA_PEM, transport=httpx.MockTransport(handler))


def test_nonce() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"nonce": NONCE, "expires_in": 60})

    with client_for(handler) as client:
        assert client.nonce() == NONCE
    assert seen[0].method == "POST"
    assert seen[0].url == "https://cas.test:18765/v1/enclave/nonce"
    assert seen[0].content == b""
    assert "authorization" not in seen[0].headers


@pytest.mark.parametrize("body", [{}, {"nonce": "AB" * 32}, {"nonce": 1}, []])
def test_invalid_nonce_answer(body: Any) -> None:
    with (
        client_for(lambda _: httpx.Response(200, json=body)) as client,
        pytest.raises(ClientError, match="without a valid nonce"),
    ):
        client.nonce()


def test_attest_posts_the_documented_body() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/enclave/attest"
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"kem": "P-256", "sealed": "c2VhbGVk"})

    with client_for(handler) as client:
        answer = client.attest(WORKLOAD, NONCE, "cHVi", EVIDENCE)
    assert answer == SealedConfig("P-256", "c2VhbGVk")
    assert seen == [
        {
            "config_id": CONFIG_ID,
            "nonce": NONCE,
            "public_key": "cHVi",
            "evidence": {"type": "simulated", "data": base64.b64encode(b"evidence").decode()},
        }
    ]


def test_refusal_becomes_attestation_refused() -> None:
    body = {"error": "attestation-refused", "check": "measurement", "message": "not allowed"}
    with (
        client_for(lambda _: httpx.Response(403, json=body)) as client,
        pytest.raises(AttestationRefused) as refused,
    ):
        client.attest(WORKLOAD, NONCE, "cHVi", EVIDENCE)
    assert refused.value.check == "measurement"
    assert refused.value.message == "not allowed"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, {"error": "not-found", "message": "there is no service team/app/api"}),
        (400, {"error": "invalid-request", "message": "bad"}),
        (403, {"error": "forbidden", "message": "no"}),
        (500, {"unexpected": True}),
    ],
)
def test_other_errors_are_api_errors(status: int, body: dict[str, Any]) -> None:
    with (
        client_for(lambda _: httpx.Response(status, json=body)) as client,
        pytest.raises(ApiError) as error,
    ):
        client.attest(WORKLOAD, NONCE, "cHVi", EVIDENCE)
    assert error.value.status == status


@pytest.mark.parametrize(
    "body",
    [{"kem": "P-256"}, {"kem": "P-256", "sealed": 1}, {"kem": "P-256", "sealed": "x", "x": 1}, []],
)
def test_malformed_attest_answer(body: Any) -> None:
    with (
        client_for(lambda _: httpx.Response(200, json=body)) as client,
        pytest.raises(ClientError, match="without a sealed configuration"),
    ):
        client.attest(WORKLOAD, NONCE, "cHVi", EVIDENCE)


def test_unreachable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with client_for(handler) as client, pytest.raises(CasUnreachable):
        client.nonce()


@pytest.mark.parametrize(
    ("failure", "message", "retryable"),
    [
        # No connection, so no request reached the CAS, and the next try may find one.
        (httpx.ConnectError, "[Errno 111] Connection refused", True),
        (httpx.ConnectError, "[Errno 104] Connection reset by peer", True),
        (httpx.ConnectTimeout, "timed out", True),
        # It will not verify the next time either.
        (httpx.ConnectError, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", False),
        # The request may have reached the CAS.
        (httpx.ReadError, "[Errno 104] Connection reset by peer", False),
        (httpx.ReadTimeout, "timed out", False),
        (httpx.WriteError, "broken pipe", False),
        (httpx.RemoteProtocolError, "Server disconnected without sending a response.", False),
    ],
)
def test_an_unreachable_cas_says_whether_trying_again_is_safe(
    failure: type[httpx.TransportError], message: str, retryable: bool
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure(message, request=request)

    with client_for(handler) as client, pytest.raises(CasUnreachable) as caught:
        client.nonce()
    assert caught.value.retryable is retryable
    assert message in caught.value.message


def test_nothing_is_trusted_unpinned() -> None:
    with pytest.raises(ClientError, match="attested CAS"):
        EnclaveClient("https://cas.test:18765", b"")


# --- the asyncio client ------------------------------------------------------------------------


def async_client_for(handler: Callable[[httpx.Request], httpx.Response]) -> AsyncEnclaveClient:
    return AsyncEnclaveClient(
        "https://cas.test:18765/", CA_PEM, max_connections=1, transport=httpx.MockTransport(handler)
    )


def test_async_client_speaks_the_same_protocol() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        if request.url.path == "/v1/enclave/nonce":
            return httpx.Response(200, json={"nonce": NONCE, "expires_in": 60})
        return httpx.Response(200, json={"kem": "P-256", "sealed": "c2VhbGVk"})

    async def exchange() -> tuple[str, str, SealedConfig]:
        async with async_client_for(handler) as client:
            health = await client.health()
            nonce = await client.nonce()
            return health, nonce, await client.attest(WORKLOAD, nonce, "cHVi", EVIDENCE)

    assert asyncio.run(exchange()) == ("ok", NONCE, SealedConfig("P-256", "c2VhbGVk"))
    assert [(r.method, r.url.path) for r in seen] == [
        ("GET", "/healthz"),
        ("POST", "/v1/enclave/nonce"),
        ("POST", "/v1/enclave/attest"),
    ]
    assert json.loads(seen[2].content) == {
        "config_id": CONFIG_ID,
        "nonce": NONCE,
        "public_key": "cHVi",
        "evidence": EVIDENCE.to_json(),
    }


def test_async_client_errors_are_the_same() -> None:
    refusal = {"error": "attestation-refused", "check": "binding", "message": "not bound"}

    async def attest(status: int, body: Any) -> SealedConfig:
        async with async_client_for(lambda _: httpx.Response(status, json=body)) as client:
            return await client.attest(WORKLOAD, NONCE, "cHVi", EVIDENCE)

    with pytest.raises(AttestationRefused) as refused:
        asyncio.run(attest(403, refusal))
    assert refused.value.check == "binding"
    with pytest.raises(ApiError) as error:
        asyncio.run(attest(404, {"error": "not-found", "message": "no"}))
    assert error.value.status == 404
    with pytest.raises(ClientError, match="without a sealed configuration"):
        asyncio.run(attest(200, {"kem": "P-256"}))

    async def nonce() -> str:
        async with async_client_for(lambda _: httpx.Response(200, json={})) as client:
            return await client.nonce()

    with pytest.raises(ClientError, match="without a valid nonce"):
        asyncio.run(nonce())

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def health() -> str:
        async with async_client_for(unreachable) as client:
            return await client.health()

    with pytest.raises(CasUnreachable):
        asyncio.run(health())


def test_async_client_is_never_unpinned() -> None:
    with pytest.raises(ClientError, match="attested CAS"):
        AsyncEnclaveClient("https://cas.test:18765", b"")


def test_async_attest_sends_the_one_time_password() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"kem": "P-256", "sealed": "c2VhbGVk"})

    async def attest() -> SealedConfig:
        async with async_client_for(handler) as client:
            return await client.attest(WORKLOAD, NONCE, "cHVi", EVIDENCE, otp="123456")

    assert asyncio.run(attest()) == SealedConfig("P-256", "c2VhbGVk")
    assert seen[0]["otp"] == "123456"
    assert set(seen[0]) == {"config_id", "nonce", "public_key", "evidence", "otp"}


def test_a_protection_file_travels_with_the_configuration() -> None:
    fspf = {"path": "/srv/app.fspf", "key": "ab" * 32, "tag": "cd" * 16}
    config = parse_workload_config(canonical_json(document(fspf=fspf)), WORKLOAD)

    assert config.fspf is not None
    assert (config.fspf.path, config.fspf.key, config.fspf.tag) == tuple(fspf.values())
    assert "ab" * 32 not in repr(config.fspf)
    assert parse_workload_config(canonical_json(document()), WORKLOAD).fspf is None


@pytest.mark.parametrize(
    "fspf",
    [
        {"path": "relative", "key": "ab" * 32, "tag": "cd" * 16},
        {"path": "/f", "key": "ab" * 31, "tag": "cd" * 16},
        {"path": "/f", "key": "ab" * 32, "tag": "CD" * 16},
        {"path": "/f", "key": "ab" * 32},
        None,
    ],
)
def test_a_malformed_protection_file_member_is_refused(fspf: Any) -> None:
    with pytest.raises(ValueError, match="fspf"):
        parse_workload_config(canonical_json(document(fspf=fspf)), WORKLOAD)


def _answer_with(next_nonce: str | None, expires_in: int = 60) -> Callable[..., httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/nonce"):
            return httpx.Response(200, json={"nonce": NONCE, "expires_in": expires_in})
        headers = {} if next_nonce is None else {"CAS-Next-Nonce": next_nonce}
        return httpx.Response(200, json={"kem": "P-256", "sealed": "c2VhbGVk"}, headers=headers)

    return handler


def test_the_next_nonce_of_an_answer_is_taken_once() -> None:
    with client_for(_answer_with("cd" * 32)) as client:
        assert client.take_next_nonce() is None
        client.attest(WORKLOAD, NONCE, "a2V5", EVIDENCE)
        assert client.take_next_nonce() == "cd" * 32
        assert client.take_next_nonce() is None


@pytest.mark.parametrize("header", [None, "", "CD" * 32, "cd" * 31, "cd" * 33, "zz" * 32])
def test_no_next_nonce_without_one_of_the_right_shape(header: str | None) -> None:
    with client_for(_answer_with(header)) as client:
        client.attest(WORKLOAD, NONCE, "a2V5", EVIDENCE)
        assert client.take_next_nonce() is None


def test_a_next_nonce_too_close_to_its_expiry_is_not_used() -> None:
    # The CAS said its nonces live 5 s: less than the margin the evidence needs.
    with client_for(_answer_with("cd" * 32, expires_in=5)) as client:
        client.nonce()
        client.attest(WORKLOAD, NONCE, "a2V5", EVIDENCE)
        assert client.take_next_nonce() is None


def test_async_client_keeps_the_next_nonce() -> None:
    async def run() -> tuple[str | None, str | None]:
        async with async_client_for(_answer_with("cd" * 32)) as client:
            await client.attest(WORKLOAD, NONCE, "a2V5", EVIDENCE)
            return client.take_next_nonce(), client.take_next_nonce()

    assert asyncio.run(run()) == ("cd" * 32, None)
