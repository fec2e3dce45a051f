"""Compact JWS: ES256, ES384 and EdDSA only, strict parsing, JWK import and export."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from opencas.crypto.encoding import b64url_decode_strict, b64url_encode
from opencas.crypto.jws import (
    MAX_TOKEN_SIZE,
    JwsAlgorithmError,
    alg_for_key,
    jwk_to_public_key,
    parse_compact,
    public_key_to_jwk,
    sign_compact,
    verify_signature,
)
from opencas.crypto.keys import SigningKeyType, generate_private_key, public_key_der

KEYS = {
    "ES256": generate_private_key("P-256"),
    "ES384": generate_private_key("P-384"),
    "EdDSA": generate_private_key("Ed25519"),
}
KEY_TYPES: dict[str, SigningKeyType] = {"ES256": "P-256", "ES384": "P-384", "EdDSA": "Ed25519"}
SIGNATURE_SIZES = {"ES256": 64, "ES384": 96, "EdDSA": 64}

# RFC 8037 Appendix A (Ed25519) and RFC 7515 Appendix A.3 (ES256): independent known answers.
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_JWK = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
RFC8037_INPUT = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
RFC8037_SIGNATURE = (
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)
RFC7515_A3_JWK = {
    "kty": "EC",
    "crv": "P-256",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
}
RFC7515_A3_TOKEN = (
    "eyJhbGciOiJFUzI1NiJ9"
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFt"
    "cGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
    ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSA"
    "pmWQxfKTUJqPP3-Kg6NU1Q"
)


def _segment(value: Any) -> str:
    return b64url_encode(json.dumps(value).encode("utf-8"))


# --- signing and verifying ------------------------------------------------------------------------


@pytest.mark.parametrize("alg", sorted(KEYS))
def test_round_trip(alg: str) -> None:
    key = KEYS[alg]
    claims = {"sub": "alice", "n": 1, "nested": {"b": [1, 2], "a": "é"}}
    token = sign_compact({"typ": "test"}, claims, key)
    header, parsed_claims, signing_input, signature = parse_compact(token)
    assert header == {"typ": "test", "alg": alg}
    assert parsed_claims == claims
    assert len(signature) == SIGNATURE_SIZES[alg]
    assert verify_signature(alg, key.public_key(), signing_input, signature)
    assert alg_for_key(key) == alg
    assert alg_for_key(key.public_key()) == alg


def test_segments_are_compact_sorted_utf8_json() -> None:
    token = sign_compact({"typ": "t"}, {"b": "é", "a": 1}, KEYS["ES256"])
    header_b64, claims_b64, _ = token.split(".")
    assert b64url_decode_strict(header_b64) == b'{"alg":"ES256","typ":"t"}'
    assert b64url_decode_strict(claims_b64) == '{"a":1,"b":"é"}'.encode()
    assert "=" not in token


def test_rfc8037_ed25519_known_answer() -> None:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(b64url_decode_strict(RFC8037_D))
    public = jwk_to_public_key(RFC8037_JWK)
    assert public_key_to_jwk(public) == RFC8037_JWK
    assert public_key_to_jwk(key) == RFC8037_JWK
    signature = b64url_decode_strict(RFC8037_SIGNATURE)
    assert key.sign(RFC8037_INPUT) == signature
    assert verify_signature("EdDSA", public, RFC8037_INPUT, signature)


def test_rfc7515_es256_known_answer() -> None:
    public = jwk_to_public_key(RFC7515_A3_JWK)
    header, claims, signing_input, signature = parse_compact(RFC7515_A3_TOKEN)
    assert header == {"alg": "ES256"}
    assert claims["iss"] == "joe"
    assert verify_signature("ES256", public, signing_input, signature)
    assert public_key_to_jwk(public) == RFC7515_A3_JWK


@pytest.mark.parametrize("alg", sorted(KEYS))
def test_tampering_is_detected(alg: str) -> None:
    key = KEYS[alg]
    _, _, signing_input, signature = parse_compact(sign_compact({}, {"a": 1}, key))
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify_signature(alg, key.public_key(), signing_input, flipped)
    assert not verify_signature(alg, key.public_key(), signing_input + b"x", signature)
    assert not verify_signature(alg, key.public_key(), signing_input, signature[:-1])
    assert not verify_signature(alg, key.public_key(), signing_input, b"")
    assert not verify_signature(alg, key.public_key(), signing_input, bytes(len(signature)))
    other = generate_private_key(KEY_TYPES[alg])
    assert not verify_signature(alg, other.public_key(), signing_input, signature)


def test_der_encoded_ecdsa_signatures_are_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    message = b"a.b"
    der = key.sign(message, ec.ECDSA(hashes.SHA256()))
    assert not verify_signature("ES256", key.public_key(), message, der)


@pytest.mark.parametrize(
    ("alg", "key_alg"),
    [
        ("ES256", "ES384"),
        ("ES384", "ES256"),
        ("EdDSA", "ES256"),
        ("ES256", "EdDSA"),
        ("none", "ES256"),
        ("HS256", "ES256"),
        ("RS256", "ES256"),
        ("ES512", "ES256"),
        ("es256", "ES256"),
    ],
)
def test_algorithm_must_be_allowed_and_fit_the_key(alg: str, key_alg: str) -> None:
    key = KEYS[key_alg]
    _, _, signing_input, signature = parse_compact(sign_compact({}, {}, key))
    with pytest.raises(JwsAlgorithmError):
        verify_signature(alg, key.public_key(), signing_input, signature)


def test_other_key_types_are_refused() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p521 = ec.generate_private_key(ec.SECP521R1())
    for key in (rsa_key, rsa_key.public_key(), p521, p521.public_key(), "a key"):
        with pytest.raises(JwsAlgorithmError):
            alg_for_key(key)
        with pytest.raises(JwsAlgorithmError):
            public_key_to_jwk(key)
    with pytest.raises(JwsAlgorithmError):
        sign_compact({}, {}, rsa_key)
    with pytest.raises(JwsAlgorithmError):
        verify_signature("ES256", rsa_key.public_key(), b"a.b", bytes(64))


def test_sign_compact_refuses_bad_input() -> None:
    with pytest.raises(JwsAlgorithmError, match="does not match"):
        sign_compact({"alg": "ES384"}, {}, KEYS["ES256"])
    with pytest.raises(ValueError, match="private key"):
        sign_compact({}, {}, KEYS["ES256"].public_key())
    with pytest.raises(ValueError, match="JSON"):
        sign_compact({}, {"x": float("nan")}, KEYS["ES256"])
    with pytest.raises(ValueError, match="JSON"):
        sign_compact({}, {"x": b"bytes"}, KEYS["ES256"])
    with pytest.raises(ValueError, match="at most"):
        sign_compact({}, {"x": "a" * MAX_TOKEN_SIZE}, KEYS["ES256"])
    assert sign_compact({"alg": "EdDSA"}, {}, KEYS["EdDSA"])


# --- strict parsing -------------------------------------------------------------------------------

# Fixed bytes rather than a fresh signature: parametrised test ids must be identical in every
# process of a parallel run.
HEADER = _segment({"typ": "t", "alg": "ES256"})
CLAIMS, SIGNATURE = _segment({"a": 1}), b64url_encode(bytes(64))
GOOD = f"{HEADER}.{CLAIMS}.{SIGNATURE}"
DUPLICATE = b64url_encode(b'{"a":1,"a":2}')
NAN = b64url_encode(b'{"a":NaN}')
INFINITY = b64url_encode(b'{"a":Infinity}')
NOT_UTF8 = b64url_encode(b'{"a":"\xff"}')


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (f"{HEADER}.{CLAIMS}", "3 segments"),
        (f"{HEADER}.{CLAIMS}.{SIGNATURE}.", "3 segments"),
        (f"{HEADER}={CLAIMS}.{SIGNATURE}", "3 segments"),
        (f"{HEADER}.{CLAIMS}.{SIGNATURE}=", "base64url"),
        (f"{HEADER}.{CLAIMS}.{SIGNATURE[:-1]}+", "base64url"),
        (f"{HEADER}.{CLAIMS}.{SIGNATURE[:-1]}/", "base64url"),
        (f"{HEADER}.{CLAIMS}.{SIGNATURE} ", "base64url"),
        (f"{HEADER}.{CLAIMS}.{SIGNATURE}!", "base64url"),
        (f"{HEADER}.{CLAIMS}.A", "impossible base64url length"),
        (f"{HEADER}.{CLAIMS}.AB", "canonical"),
        (f"{HEADER}.{CLAIMS}.AAB", "canonical"),
        (f".{CLAIMS}.{SIGNATURE}", "header"),
        (f"{HEADER}..{SIGNATURE}", "payload"),
        (f"{b64url_encode(b'not json')}.{CLAIMS}.{SIGNATURE}", "header is not valid"),
        (f"{_segment([1, 2])}.{CLAIMS}.{SIGNATURE}", "JSON object"),
        (f"{HEADER}.{_segment('text')}.{SIGNATURE}", "JSON object"),
        (f"{DUPLICATE}.{CLAIMS}.{SIGNATURE}", "duplicate"),
        (f"{NAN}.{CLAIMS}.{SIGNATURE}", "NaN"),
        (f"{INFINITY}.{CLAIMS}.{SIGNATURE}", "Infinity"),
        (f"{NOT_UTF8}.{CLAIMS}.{SIGNATURE}", "UTF-8"),
        (f"{b64url_encode(b'[' * 9000)}.{CLAIMS}.{SIGNATURE}", "nested too deeply"),
        (f"{HEADER}.{CLAIMS}.{'A' * MAX_TOKEN_SIZE}", "longer than"),
        ("", "3 segments"),
        ("é.é.é", "base64url"),
    ],
)
def test_parse_compact_is_strict(token: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_compact(token)


def test_parse_compact_accepts_an_empty_signature_segment() -> None:
    # An unsecured JWS is well-formed; refusing it is the verifier's job (alg "none" is refused).
    header, claims, signing_input, signature = parse_compact(f"{HEADER}.{CLAIMS}.")
    assert signature == b""
    assert signing_input == f"{HEADER}.{CLAIMS}".encode("ascii")
    assert header == {"typ": "t", "alg": "ES256"}
    assert claims == {"a": 1}


def test_parse_compact_refuses_non_strings() -> None:
    with pytest.raises(ValueError, match="string"):
        parse_compact(GOOD.encode("ascii"))  # type: ignore[arg-type]


@given(st.text(max_size=300))
def test_parse_compact_raises_only_value_error_for_arbitrary_text(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_compact(text)


@given(st.binary(max_size=200), st.binary(max_size=200), st.binary(max_size=100))
def test_parse_compact_raises_only_value_error_for_arbitrary_segments(
    header: bytes, claims: bytes, signature: bytes
) -> None:
    token = ".".join(b64url_encode(part) for part in (header, claims, signature))
    with contextlib.suppress(ValueError):
        parse_compact(token)


@given(st.binary(max_size=64))
def test_b64url_strict_round_trip(data: bytes) -> None:
    assert b64url_decode_strict(b64url_encode(data)) == data


# --- JWK ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", sorted(KEYS))
def test_jwk_round_trip(alg: str) -> None:
    public = KEYS[alg].public_key()
    jwk = public_key_to_jwk(public)
    assert public_key_to_jwk(KEYS[alg]) == jwk
    assert "d" not in jwk
    assert public_key_der(jwk_to_public_key(jwk)) == public_key_der(public)


def test_jwk_coordinates_keep_leading_zero_bytes() -> None:
    for _ in range(200):
        key = ec.generate_private_key(ec.SECP256R1())
        if key.public_key().public_numbers().x < 2**248:
            break
    jwk = public_key_to_jwk(key)
    assert len(b64url_decode_strict(jwk["x"])) == 32
    assert public_key_der(jwk_to_public_key(jwk)) == public_key_der(key.public_key())


P256_JWK = public_key_to_jwk(KEYS["ES256"])


@pytest.mark.parametrize(
    ("jwk", "error"),
    [
        ({"kty": "RSA", "n": "AQAB", "e": "AQAB"}, JwsAlgorithmError),
        ({"kty": "oct", "k": "c2VjcmV0"}, JwsAlgorithmError),
        ({**P256_JWK, "crv": "P-521"}, JwsAlgorithmError),
        ({"kty": "OKP", "crv": "X25519", "x": RFC8037_JWK["x"]}, JwsAlgorithmError),
        ({"kty": "OKP", "crv": "Ed448", "x": RFC8037_JWK["x"]}, JwsAlgorithmError),
        ({"crv": "P-256", "x": P256_JWK["x"], "y": P256_JWK["y"]}, ValueError),
        ({**P256_JWK, "kty": 1}, ValueError),
        ({**P256_JWK, "crv": 1}, ValueError),
        ({**P256_JWK, "d": "AAAA"}, ValueError),
        ({**P256_JWK, "x": P256_JWK["x"][:-2]}, ValueError),
        ({**P256_JWK, "y": 5}, ValueError),
        ({k: v for k, v in P256_JWK.items() if k != "y"}, ValueError),
        ({**P256_JWK, "y": P256_JWK["x"]}, ValueError),
        ({**P256_JWK, "x": P256_JWK["x"] + "="}, ValueError),
        ({**RFC8037_JWK, "x": "AAAA"}, ValueError),
        ([], ValueError),
    ],
)
def test_jwk_import_refuses(jwk: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        jwk_to_public_key(jwk)


def test_jwk_errors_distinguish_unsupported_from_malformed() -> None:
    with pytest.raises(ValueError) as malformed:
        jwk_to_public_key({**P256_JWK, "y": P256_JWK["x"]})
    assert not isinstance(malformed.value, JwsAlgorithmError)
    assert "not on P-256" in str(malformed.value)


def test_standard_base64_is_not_base64url() -> None:
    data = bytes(range(250, 256))
    assert "+" in base64.b64encode(data).decode() or "/" in base64.b64encode(data).decode()
    with pytest.raises(ValueError, match="base64url"):
        b64url_decode_strict(base64.b64encode(data).decode())
