"""Request proofs (DESIGN.md section 4): both sides, every refusal with its own code."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from opencas.crypto.encoding import b64_encode, b64url_encode
from opencas.crypto.jws import alg_for_key, parse_compact, public_key_to_jwk
from opencas.crypto.keys import PrivateKey, SigningKeyType, generate_private_key, key_hash
from opencas.crypto.replay_cache import ReplayCache
from opencas.crypto.request_proof import (
    RequestProof,
    create_request_proof,
    normalise_url,
    verify_request_proof,
)
from opencas.crypto.x509 import (
    create_ca_certificate,
    create_identity_certificate,
    issue_tls_certificate,
)
from opencas.errors import RequestProofError

NOW = 1_750_000_000
CERT_TIME = datetime(2025, 6, 1, tzinfo=UTC)
AUDIENCE = key_hash(generate_private_key("P-384"))
URL = "https://cas.example:8081/v1/sessions/demo"
BODY = b'{"name": "demo"}'
EMPTY_BODY_HASH = "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
KEY_TYPES: list[SigningKeyType] = ["P-256", "P-384", "Ed25519"]
KEYS: dict[SigningKeyType, PrivateKey] = {kind: generate_private_key(kind) for kind in KEY_TYPES}
CERTIFICATES = {
    kind: create_identity_certificate(key, f"client {kind}", now=CERT_TIME)
    for kind, key in KEYS.items()
}
KEY = KEYS["P-256"]
CERTIFICATE = CERTIFICATES["P-256"]


def _proof(
    key: PrivateKey = KEY,
    certificate: x509.Certificate | None = CERTIFICATE,
    *,
    method: str = "POST",
    url: str = URL,
    body: bytes = BODY,
    audience: str = AUDIENCE,
    now: float = NOW,
    jti: str | None = None,
) -> str:
    return create_request_proof(
        key, certificate, method=method, url=url, body=body, audience=audience, now=now, jti=jti
    )


def _verify(
    token: str,
    *,
    method: str = "POST",
    url: str = URL,
    body: bytes = BODY,
    audience: str = AUDIENCE,
    now: float = NOW,
    cache: ReplayCache | None = None,
) -> RequestProof:
    return verify_request_proof(
        token,
        method=method,
        url=url,
        body=body,
        audience=audience,
        now=now,
        replay_cache=ReplayCache() if cache is None else cache,
    )


def _refused(code: str, token: str, **request: Any) -> RequestProofError:
    with pytest.raises(RequestProofError) as caught:
        _verify(token, **request)
    assert caught.value.code == code, caught.value.message
    assert caught.value.http_status in {401, 429, 503}
    return caught.value


def _claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "htm": "POST",
        "htu": URL,
        "iat": NOW,
        "jti": b64url_encode(bytes(range(16))),
        "aud": AUDIENCE,
        "bh": b64url_encode(hashlib.sha256(BODY).digest()),
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def _header(key: PrivateKey = KEY, **changes: Any) -> dict[str, Any]:
    header: dict[str, Any] = {
        "typ": "cas-request+jwt",
        "alg": alg_for_key(key),
        "jwk": public_key_to_jwk(key),
    }
    header.update(changes)
    return {name: value for name, value in header.items() if value is not None}


def _forge(header: Any, claims: Any, key: Any = KEY, signature: bytes | None = None) -> str:
    """Build a token by hand, signed with ``key``'s own algorithm whatever the header says."""
    signing_input = (
        f"{b64url_encode(json.dumps(header).encode())}.{b64url_encode(json.dumps(claims).encode())}"
    )
    if signature is None:
        signature = _raw_signature(key, signing_input.encode("ascii"))
    return f"{signing_input}.{b64url_encode(signature)}"


def _raw_signature(key: Any, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    size = (key.curve.key_size + 7) // 8
    digest = hashes.SHA384() if size == 48 else hashes.SHA512() if size > 48 else hashes.SHA256()
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(digest)))
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


# --- happy paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KEY_TYPES)
@pytest.mark.parametrize("carrier", ["x5c", "jwk"])
def test_valid_proof_identifies_the_signing_key(kind: SigningKeyType, carrier: str) -> None:
    key = KEYS[kind]
    certificate = CERTIFICATES[kind] if carrier == "x5c" else None
    token = _proof(key, certificate)
    proof = _verify(token)
    assert proof.key_hash == key_hash(key)
    assert key_hash(proof.public_key) == key_hash(key)
    assert proof.certificate == certificate
    assert proof.iat == NOW
    header, claims, _, _ = parse_compact(token)
    assert proof.jti == claims["jti"]
    assert header["typ"] == "cas-request+jwt"
    assert header["alg"] == {"P-256": "ES256", "P-384": "ES384", "Ed25519": "EdDSA"}[kind]
    if certificate is None:
        assert header["jwk"] == public_key_to_jwk(key)
        assert "x5c" not in header
    else:
        assert header["x5c"] == [b64_encode(certificate.public_bytes(serialization.Encoding.DER))]
        assert "jwk" not in header


def test_claims_carry_the_request() -> None:
    token = _proof(
        method="post", url="HTTPS://CAS.Example:443/v1/sessions/demo?x=1#frag", now=NOW + 0.9
    )
    _, claims, _, _ = parse_compact(token)
    assert claims["htm"] == "POST"
    assert claims["htu"] == "https://cas.example/v1/sessions/demo"
    assert claims["iat"] == NOW
    assert isinstance(claims["iat"], int)
    assert claims["aud"] == AUDIENCE
    assert claims["bh"] == b64url_encode(hashlib.sha256(BODY).digest())
    assert len(claims["jti"]) >= 16
    assert set(claims) == {"htm", "htu", "iat", "jti", "aud", "bh"}


def test_empty_body_is_hashed_too() -> None:
    token = _proof(method="GET", body=b"")
    assert parse_compact(token)[1]["bh"] == EMPTY_BODY_HASH
    _verify(token, method="GET", body=b"")
    _refused("proof-body-mismatch", _proof(method="GET", body=b""), method="GET", body=b"x")


def test_jti_is_fresh_for_every_proof() -> None:
    jtis = {parse_compact(_proof())[1]["jti"] for _ in range(20)}
    assert len(jtis) == 20


def test_skew_boundaries_are_inclusive() -> None:
    _verify(_proof(), now=NOW + 120)
    _verify(_proof(), now=NOW - 5)


def test_query_is_ignored_and_default_port_equivalent() -> None:
    token = _proof(url="https://cas.example/v1/sessions?name=a")
    _verify(token, url="https://CAS.example:443/v1/sessions?name=b")


def test_a_certificate_issued_by_someone_else_is_accepted_for_its_key() -> None:
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_certificate = create_ca_certificate(ca_key, "some CA", now=CERT_TIME)
    certificate = issue_tls_certificate(
        ca_key, ca_certificate, KEY.public_key(), ["client"], now=CERT_TIME
    )
    proof = _verify(_proof(KEY, certificate))
    assert proof.key_hash == key_hash(KEY)


def test_expired_identity_certificate_still_names_its_key() -> None:
    old = create_identity_certificate(
        KEY, "old", timedelta(days=1), datetime(2000, 1, 1, tzinfo=UTC)
    )
    assert _verify(_proof(KEY, old)).key_hash == key_hash(KEY)


# --- refusals, one code each ----------------------------------------------------------------------


def test_expired() -> None:
    error = _refused("proof-expired", _proof(), now=NOW + 121)
    assert "clock" in error.message


def test_not_yet_valid() -> None:
    _refused("proof-not-yet-valid", _proof(), now=NOW - 121)
    error = _refused("proof-not-yet-valid", _proof(), now=NOW - 6)
    assert "more than 5 s after" in error.message


def test_a_proof_may_be_a_little_ahead_of_the_server() -> None:
    _verify(_proof(), now=NOW - 5)


def test_the_replay_cache_sets_the_window() -> None:
    cache = ReplayCache(max_age=10, max_future_skew=0)
    _refused("proof-expired", _proof(), now=NOW + 11, cache=cache)
    _refused("proof-not-yet-valid", _proof(), now=NOW - 1, cache=cache)
    _verify(_proof(), now=NOW + 10, cache=cache)


def test_replayed() -> None:
    cache = ReplayCache()
    token = _proof()
    _verify(token, cache=cache)
    _refused("proof-replayed", token, cache=cache)
    _refused("proof-replayed", _proof(jti=parse_compact(token)[1]["jti"]), cache=cache)


def test_wrong_body() -> None:
    _refused("proof-body-mismatch", _proof(), body=BODY + b" ")


@pytest.mark.parametrize(
    "url",
    [
        "https://cas.example:8081/v1/sessions/other",
        "https://cas.example:8081/v1/sessions/demo/",
        "https://cas.example:8081/v1/sessions/Demo",
        "https://other.example:8081/v1/sessions/demo",
        "http://cas.example:8081/v1/sessions/demo",
        "https://cas.example:8082/v1/sessions/demo",
        "https://cas.example/v1/sessions/demo",
    ],
    ids=["path", "trailing-slash", "path-case", "host", "scheme", "port", "default-port"],
)
def test_wrong_url(url: str) -> None:
    _refused("proof-url-mismatch", _proof(), url=url)


def test_unnormalisable_urls_are_a_url_mismatch() -> None:
    _refused("proof-url-mismatch", _forge(_header(), _claims(htu="ftp://cas.example/")))
    _refused("proof-url-mismatch", _proof(), url="not a url")


def test_wrong_method() -> None:
    _refused("proof-method-mismatch", _proof(method="POST"), method="PUT")
    _refused("proof-method-mismatch", _forge(_header(), _claims(htm="post")))


def test_wrong_audience() -> None:
    error = _refused("proof-audience-mismatch", _proof(audience="0" * 64))
    assert "pinned" in error.message


@pytest.mark.parametrize("kind", KEY_TYPES)
@pytest.mark.parametrize("position", [0, -1])
def test_flipped_signature_byte(kind: SigningKeyType, position: int) -> None:
    head, body, signature = _proof(KEYS[kind], CERTIFICATES[kind]).split(".")
    raw = bytearray(parse_compact(f"{head}.{body}.{signature}")[3])
    raw[position] ^= 0x01
    _refused("proof-signature-invalid", f"{head}.{body}.{b64url_encode(bytes(raw))}")


def test_changed_claims_break_the_signature() -> None:
    head, _, signature = _proof().split(".")
    _, claims, _, _ = parse_compact(_proof())
    claims["htm"] = "DELETE"
    forged_claims = b64url_encode(json.dumps(claims).encode())
    _refused("proof-signature-invalid", f"{head}.{forged_claims}.{signature}", method="DELETE")


def test_certificate_of_another_key_breaks_the_signature() -> None:
    header = _header(jwk=None, x5c=[b64_encode(CERTIFICATES["P-256"].public_bytes(_DER))])
    other = generate_private_key("P-256")
    _refused("proof-signature-invalid", _forge(header, _claims(), other))


def test_failed_proofs_do_not_consume_their_jti() -> None:
    cache = ReplayCache()
    token = _proof()
    _refused("proof-body-mismatch", token, body=b"other", cache=cache)
    _refused("proof-audience-mismatch", token, audience="f" * 64, cache=cache)
    assert len(cache) == 0
    _verify(token, cache=cache)
    assert len(cache) == 1


_DER = serialization.Encoding.DER


@pytest.mark.parametrize(
    ("alg", "kind"),
    [
        ("ES384", "P-256"),
        ("ES256", "P-384"),
        ("EdDSA", "P-256"),
        ("ES256", "Ed25519"),
    ],
)
@pytest.mark.parametrize("carrier", ["x5c", "jwk"])
def test_alg_must_match_the_key(alg: str, kind: SigningKeyType, carrier: str) -> None:
    key = KEYS[kind]
    if carrier == "x5c":
        header = _header(
            key, alg=alg, jwk=None, x5c=[b64_encode(CERTIFICATES[kind].public_bytes(_DER))]
        )
    else:
        header = _header(key, alg=alg)
    _refused("proof-algorithm", _forge(header, _claims(), key))


@pytest.mark.parametrize("alg", ["none", "None", "HS256", "HS384", "RS256", "PS256", "ES512", ""])
def test_alg_not_allowed(alg: str) -> None:
    claims = _claims()
    _refused("proof-algorithm", _forge(_header(alg=alg), claims, signature=b""))
    # The classic confusion: an HMAC keyed with the public key the header carries.
    jwk = public_key_to_jwk(KEY)
    header = _header(alg=alg, jwk=jwk)
    signing_input = (
        f"{b64url_encode(json.dumps(header).encode())}.{b64url_encode(json.dumps(claims).encode())}"
    )
    mac = hmac.new(json.dumps(jwk).encode(), signing_input.encode(), hashlib.sha256).digest()
    _refused("proof-algorithm", f"{signing_input}.{b64url_encode(mac)}")


def test_rsa_keys_are_refused() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa client")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(CERT_TIME)
        .not_valid_after(CERT_TIME + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    header = _header(alg="RS256", jwk=None, x5c=[b64_encode(certificate.public_bytes(_DER))])
    _refused("proof-algorithm", _forge(header, _claims(), key))
    header["alg"] = "ES256"
    _refused("proof-algorithm", _forge(header, _claims(), key))
    jwk = {"kty": "RSA", "n": b64url_encode(b"\x01" * 256), "e": "AQAB"}
    _refused("proof-algorithm", _forge(_header(alg="RS256", jwk=jwk), _claims(), key))
    with pytest.raises(ValueError, match="not accepted"):
        _proof(key, None)


def test_unsupported_curves_are_refused() -> None:
    key = ec.generate_private_key(ec.SECP521R1())
    jwk = {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}
    _refused("proof-algorithm", _forge(_header(alg="ES512", jwk=jwk), _claims(), key))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p521 client")])
    p521_certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(CERT_TIME)
        .not_valid_after(CERT_TIME + timedelta(days=1))
        .sign(key, hashes.SHA512())
    )
    header = _header(alg="ES256", jwk=None, x5c=[b64_encode(p521_certificate.public_bytes(_DER))])
    _refused("proof-algorithm", _forge(header, _claims(), key))


def _self_signed_with_broken_signature() -> str:
    der = bytearray(CERTIFICATE.public_bytes(_DER))
    der[-5] ^= 0x01  # inside the signature value at the end of the certificate
    return b64_encode(bytes(der))


@pytest.mark.parametrize(
    ("header", "claims"),
    [
        (_header(typ=None), _claims()),
        (_header(typ="JWT"), _claims()),
        (_header(typ="dpop+jwt"), _claims()),
        (_header(alg=None), _claims()),
        (_header(alg=256), _claims()),
        (_header(crit=["exp"]), _claims()),
        (_header(jwk=None), _claims()),
        (_header(x5c=[b64_encode(CERTIFICATE.public_bytes(_DER))]), _claims()),
        (_header(jwk="not an object"), _claims()),
        (_header(jwk={**public_key_to_jwk(KEY), "d": "AAAA"}), _claims()),
        (_header(jwk={"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}), _claims()),
        (_header(jwk=None, x5c="not a list"), _claims()),
        (_header(jwk=None, x5c=[]), _claims()),
        (_header(jwk=None, x5c=[b64_encode(CERTIFICATE.public_bytes(_DER))] * 2), _claims()),
        (_header(jwk=None, x5c=[5]), _claims()),
        (_header(jwk=None, x5c=["not base64!"]), _claims()),
        (_header(jwk=None, x5c=[b64_encode(b"not DER")]), _claims()),
        (_header(jwk=None, x5c=[_self_signed_with_broken_signature()]), _claims()),
        (_header(), _claims(htm=None)),
        (_header(), _claims(htu=None)),
        (_header(), _claims(iat=None)),
        (_header(), _claims(jti=None)),
        (_header(), _claims(aud=None)),
        (_header(), _claims(bh=None)),
        (_header(), _claims(htm=["POST"])),
        (_header(), _claims(htu=1)),
        (_header(), _claims(iat=str(NOW))),
        (_header(), _claims(iat=float(NOW))),
        (_header(), _claims(iat=True)),
        (_header(), _claims(jti="short")),
        (_header(), _claims(jti="a" * 65)),
        (_header(), _claims(jti="not base64url jti!")),
        (_header(), _claims(aud=["x"])),
        (_header(), _claims(bh="too-short")),
        (_header(), _claims(bh=b64_encode(hashlib.sha256(BODY).digest()))),
    ],
)
def test_malformed_proofs(header: Any, claims: Any) -> None:
    _refused("proof-malformed", _forge(header, claims))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d",
        "....",
        "eyJ.eyJ.AAAA",
        "not a token at all",
        "x" * 20_000,
        "é.é.é",
    ],
)
def test_malformed_tokens(token: str) -> None:
    _refused("proof-malformed", token)


def test_non_string_token_is_malformed() -> None:
    _refused("proof-malformed", _proof().encode())  # type: ignore[arg-type]


# --- replay cache (its own rules: tests/unit/crypto/test_replay_cache.py) -----------------------


def test_a_key_over_its_share_is_refused_and_replays_are_still_caught() -> None:
    cache = ReplayCache(capacity=2, share=1)
    first = _proof()
    _verify(first, cache=cache)
    error = _refused("proof-rate-limited", _proof(), cache=cache)
    assert error.http_status == 429
    _refused("proof-replayed", first, cache=cache)
    _verify(_proof(now=NOW + 300), now=NOW + 300, cache=cache)


def test_another_key_keeps_its_share_when_one_key_exhausts_its_own() -> None:
    cache = ReplayCache(capacity=2, share=1)
    _verify(_proof(), cache=cache)
    _refused("proof-rate-limited", _proof(), cache=cache)
    other = KEYS["Ed25519"], CERTIFICATES["Ed25519"]
    assert _verify(_proof(*other), cache=cache).key_hash == key_hash(other[0])


def test_a_full_cache_refuses_the_youngest_key() -> None:
    cache = ReplayCache(capacity=1, share=1)
    _verify(_proof(), cache=cache)
    error = _refused(
        "proof-replay-cache-full", _proof(KEYS["P-384"], CERTIFICATES["P-384"]), cache=cache
    )
    assert error.http_status == 503


def test_replay_cache_is_thread_safe() -> None:
    cache = ReplayCache()
    barrier = threading.Barrier(8)
    accepted: list[str] = []
    refused: list[str] = []

    def attempt(index: int) -> None:
        barrier.wait()
        for round_ in range(50):
            jti = f"shared-jti-{round_:06d}"
            try:
                cache.remember("shared", jti, iat=NOW, now=NOW)
                accepted.append(jti)
            except RequestProofError as error:
                refused.append(error.code)
            cache.remember(f"own-{index:02d}", f"own-{index:02d}-{round_:06d}", iat=NOW, now=NOW)

    threads = [threading.Thread(target=attempt, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(accepted) == [f"shared-jti-{round_:06d}" for round_ in range(50)]
    assert refused == ["proof-replayed"] * (7 * 50)
    assert len(cache) == 50 + 8 * 50
    assert cache.tracked_identities() == 9


# --- creating proofs ------------------------------------------------------------------------------


def test_create_request_proof_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="does not carry the signing key"):
        _proof(KEY, CERTIFICATES["P-384"])
    with pytest.raises(ValueError, match="HTTP method"):
        _proof(method="GET /")
    with pytest.raises(ValueError, match="HTTP method"):
        _proof(method="")
    with pytest.raises(ValueError, match="jti"):
        _proof(jti="short")
    with pytest.raises(ValueError, match="scheme"):
        _proof(url="ftp://cas.example/")


def test_create_request_proof_uses_the_given_jti() -> None:
    jti = b64url_encode(b"\x00" * 12)
    assert _verify(_proof(jti=jti)).jti == jti


# --- URL normalisation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("https://cas.example/v1/x", "https://cas.example/v1/x"),
        ("HTTPS://CAS.Example.COM/v1/X", "https://cas.example.com/v1/X"),
        ("https://cas.example:443/a", "https://cas.example/a"),
        ("http://cas.example:80/a", "http://cas.example/a"),
        ("http://cas.example:443/a", "http://cas.example:443/a"),
        ("https://cas.example:80/a", "https://cas.example:80/a"),
        ("https://cas.example:8081/a", "https://cas.example:8081/a"),
        ("https://cas.example:/a", "https://cas.example/a"),
        ("https://cas.example", "https://cas.example/"),
        ("https://cas.example?x=1", "https://cas.example/"),
        ("https://cas.example/a?x=1&y=2#frag", "https://cas.example/a"),
        ("https://cas.example/a#frag", "https://cas.example/a"),
        ("https://127.0.0.1:8081/a", "https://127.0.0.1:8081/a"),
        ("https://[::1]:8081/a", "https://[::1]:8081/a"),
        ("https://[::1]:443/a", "https://[::1]/a"),
        ("https://[2001:DB8::1]/a", "https://[2001:db8::1]/a"),
        ("https://cas.example/a%7Eb%2dc", "https://cas.example/a~b-c"),
        ("https://cas.example/a%2fb", "https://cas.example/a%2Fb"),
        ("https://cas.example/a b", "https://cas.example/a%20b"),
        ("https://cas.example/a%20b", "https://cas.example/a%20b"),
        ("https://cas.example/caf%c3%a9", "https://cas.example/caf%C3%A9"),
        ("https://cas.example/café", "https://cas.example/caf%C3%A9"),
        ("https://cas.example/50%", "https://cas.example/50%25"),
        ("https://cas.example/a/../b", "https://cas.example/a/../b"),
        ("https://cas.example/s/demo:v1@x", "https://cas.example/s/demo:v1@x"),
    ],
)
def test_normalise_url(url: str, normalised: str) -> None:
    assert normalise_url(url) == normalised
    assert normalise_url(normalised) == normalised


@pytest.mark.parametrize(
    "url",
    [
        "ftp://cas.example/",
        "cas.example/v1",
        "/v1/sessions",
        "https:///v1",
        "https://user:pass@cas.example/",
        "https://user@cas.example/",
        "https://cas.example:99999/",
        "https://cas.example:port/",
        "https://cas.example/a\nb",
        "https://cas.example/a\x00",
        "https://bücher.example/",
        "https://a b/",
        "https://[::1/",
    ],
)
def test_normalise_url_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        normalise_url(url)


# --- arbitrary input never escapes as anything but RequestProofError -----------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_HEADER_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "typ": st.sampled_from(["cas-request+jwt", "JWT"]) | _JSON,
        "alg": st.sampled_from(["ES256", "ES384", "EdDSA", "none", "HS256"]) | _JSON,
        "x5c": st.sampled_from(
            [[b64_encode(CERTIFICATE.public_bytes(_DER))], [_self_signed_with_broken_signature()]]
        )
        | _JSON,
        "jwk": st.sampled_from([public_key_to_jwk(k) for k in KEYS.values()]) | _JSON,
        "crit": _JSON,
    },
)
_CLAIM_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "htm": st.sampled_from(["POST", "post"]) | _JSON,
        "htu": st.sampled_from([URL, "https://[", "ftp://x/"]) | _JSON,
        "iat": st.integers(NOW - 300, NOW + 300) | _JSON,
        "jti": st.text("ab-_", min_size=14, max_size=66) | _JSON,
        "aud": st.just(AUDIENCE) | _JSON,
        "bh": st.just(_claims()["bh"]) | _JSON,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_strings_raise_only_request_proof_errors(token: str) -> None:
    with pytest.raises(RequestProofError):
        _verify(token)


@settings(max_examples=300, deadline=None)
@given(_HEADER_VALUES, _CLAIM_VALUES, st.binary(max_size=100))
def test_arbitrary_structured_tokens_raise_only_request_proof_errors(
    header: dict[str, Any], claims: dict[str, Any], signature: bytes
) -> None:
    with pytest.raises(RequestProofError):
        _verify(_forge(header, claims, signature=signature))


VALID = _proof()


# A changed character can make the certificate's serial number negative, which cryptography
# still loads with a deprecation warning.
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(VALID) - 1), st.characters(codec="ascii"))
def test_any_single_character_change_is_refused(position: int, replacement: str) -> None:
    mutated = VALID[:position] + replacement + VALID[position + 1 :]
    if mutated == VALID:
        return
    with pytest.raises(RequestProofError):
        _verify(mutated)


CERTIFICATE_DER = CERTIFICATE.public_bytes(_DER)


# Damage can make the serial number negative, which cryptography still loads with a warning.
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(CERTIFICATE_DER) - 1), st.integers(1, 255))
def test_damaged_x5c_certificates_raise_only_request_proof_errors(position: int, mask: int) -> None:
    damaged = bytearray(CERTIFICATE_DER)
    damaged[position] ^= mask
    header = _header(jwk=None, x5c=[b64_encode(bytes(damaged))])
    # Signed with the right key: only the certificate is damaged. Some damage leaves the key and
    # self-signature intact (a bit in an unused field), so acceptance is allowed, crashes are not.
    with contextlib.suppress(RequestProofError):
        _verify(_forge(header, _claims()))
