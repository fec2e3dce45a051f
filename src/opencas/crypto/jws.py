"""Compact JWS (RFC 7515) for exactly ES256 (P-256), ES384 (P-384) and EdDSA (Ed25519).

The algorithm is never chosen by the token alone: it must be one of the three and it must match the
type of the key that verifies it, so ``none``, the HMAC family, RSA and algorithm-confusion tricks
are refused. Parsing is strict — three segments of canonical unpadded base64url, JSON objects
without duplicate keys, at most ``MAX_TOKEN_SIZE`` characters — because proofs arrive from anyone.

Failures are ``ValueError``; :class:`JwsAlgorithmError` (a ``ValueError``) marks the ones about the
algorithm or the key type, so callers can report those separately from a malformed token.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, Literal, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from opencas.crypto.canonical import strict_json_object
from opencas.crypto.encoding import b64url_decode_strict, b64url_encode
from opencas.crypto.keys import KeyType, describe_key, ecdsa_hash, key_type_of

Algorithm: TypeAlias = Literal["ES256", "ES384", "EdDSA"]
JwsPublicKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
JwsPrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

ALGORITHMS: Final[frozenset[str]] = frozenset({"ES256", "ES384", "EdDSA"})
MAX_TOKEN_SIZE: Final = 16 * 1024

# alg -> (curve name in JWK, coordinate / scalar size in bytes); RFC 7518 fixes each alg's hash,
# which is the hash OpenCAS signs with on that curve (crypto.keys.ecdsa_hash).
_EC_PARAMETERS: Final[dict[str, tuple[str, int]]] = {
    "ES256": ("P-256", 32),
    "ES384": ("P-384", 48),
}
_ALGORITHM_OF: Final[dict[KeyType | None, Algorithm]] = {
    "P-256": "ES256",
    "P-384": "ES384",
    "Ed25519": "EdDSA",
}
_EC_CURVES: Final[dict[str, type[ec.EllipticCurve]]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
}
_ED25519_SIZE: Final = 32
_ED25519_SIGNATURE_SIZE: Final = 64


class JwsAlgorithmError(ValueError):
    """The algorithm is not one of ES256, ES384 and EdDSA, or does not fit the key's type."""


def alg_for_key(key: object) -> Algorithm:
    """The JWS ``alg`` for ``key`` (private or public): ES256, ES384 or EdDSA.

    Raises :class:`JwsAlgorithmError` for any other key (RSA, P-521, Ed448, ...).
    """
    alg = _ALGORITHM_OF.get(key_type_of(key))
    if alg is not None:
        return alg
    raise JwsAlgorithmError(
        f"{describe_key(key)} keys are not accepted; use P-256, P-384 or Ed25519"
    )


def sign_compact(header: Mapping[str, Any], claims: Mapping[str, Any], key: object) -> str:
    """Sign ``claims`` under ``header`` with ``key`` and return the compact JWS.

    ``alg`` is set from the key; a different ``alg`` already in ``header`` raises
    :class:`JwsAlgorithmError`. Header and claims are encoded as compact UTF-8 JSON with sorted
    keys; ECDSA signatures are raw ``r || s`` of the curve's size (RFC 7518 §3.4). Raises
    ``ValueError`` when header or claims are not JSON-serialisable or the token would exceed
    ``MAX_TOKEN_SIZE``.
    """
    alg = alg_for_key(key)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError("signing needs a private key")
    if "alg" in header and header["alg"] != alg:
        raise JwsAlgorithmError(f"header alg {header['alg']!r} does not match the key ({alg})")
    header_b64 = b64url_encode(_json_bytes({**header, "alg": alg}))
    claims_b64 = b64url_encode(_json_bytes(claims))
    signing_input = f"{header_b64}.{claims_b64}".encode("ascii")
    token = f"{header_b64}.{claims_b64}.{b64url_encode(_sign(alg, key, signing_input))}"
    if len(token) > MAX_TOKEN_SIZE:
        raise ValueError(f"the token would be {len(token)} characters; at most {MAX_TOKEN_SIZE}")
    return token


def parse_compact(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Split a compact JWS into ``(header, claims, signing_input, signature)`` without verifying it.

    Strict: at most ``MAX_TOKEN_SIZE`` characters, exactly three non-empty segments of canonical
    unpadded base64url, header and claims UTF-8 JSON objects without duplicate keys or
    non-finite numbers. Raises ``ValueError`` naming the first problem found; nothing else.
    """
    if not isinstance(token, str):
        raise ValueError("a JWS must be a string")
    if len(token) > MAX_TOKEN_SIZE:
        raise ValueError(f"the JWS is longer than {MAX_TOKEN_SIZE} characters")
    segments = token.split(".")
    if len(segments) != 3:
        raise ValueError(f"a compact JWS has 3 segments separated by '.', not {len(segments)}")
    header_b64, claims_b64, signature_b64 = segments
    header = strict_json_object(b64url_decode_strict(header_b64, "header"), "header")
    claims = strict_json_object(b64url_decode_strict(claims_b64, "payload"), "payload")
    signature = b64url_decode_strict(signature_b64, "signature")
    return header, claims, f"{header_b64}.{claims_b64}".encode("ascii"), signature


def verify_signature(alg: str, public_key: object, signing_input: bytes, signature: bytes) -> bool:
    """True exactly when ``signature`` over ``signing_input`` verifies under ``alg`` and the key.

    A signature of the wrong length or encoding is simply invalid (``False``). Raises
    :class:`JwsAlgorithmError` when ``alg`` is not ES256, ES384 or EdDSA, or does not match the
    type of ``public_key`` (an ES256 signature is never checked with a P-384 key).
    """
    if alg not in ALGORITHMS:
        raise JwsAlgorithmError(f"alg {alg!r} is not accepted; use ES256, ES384 or EdDSA")
    if not isinstance(public_key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise JwsAlgorithmError(f"{type(public_key).__name__} is not a supported public key")
    key_alg = alg_for_key(public_key)
    if key_alg != alg:
        raise JwsAlgorithmError(f"alg {alg} does not match the key, which needs {key_alg}")
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            if len(signature) != _ED25519_SIGNATURE_SIZE:
                return False
            public_key.verify(signature, signing_input)
            return True
        _, size = _EC_PARAMETERS[alg]
        if len(signature) != 2 * size:
            return False
        r = int.from_bytes(signature[:size], "big")
        s = int.from_bytes(signature[size:], "big")
        public_key.verify(
            encode_dss_signature(r, s), signing_input, ec.ECDSA(ecdsa_hash(public_key))
        )
        return True
    except InvalidSignature:
        return False


def public_key_to_jwk(key: object) -> dict[str, str]:
    """The public JWK (RFC 7517) of ``key``: ``EC`` with ``crv`` P-256 / P-384, or ``OKP`` Ed25519.

    A private key yields the JWK of its public half. Raises :class:`JwsAlgorithmError` for other
    key types.
    """
    alg = alg_for_key(key)
    if isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        key = key.public_key()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(key.public_bytes_raw())}
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise JwsAlgorithmError(f"{type(key).__name__} keys have no supported JWK form")
    crv, size = _EC_PARAMETERS[alg]
    numbers = key.public_numbers()
    return {
        "kty": "EC",
        "crv": crv,
        "x": b64url_encode(numbers.x.to_bytes(size, "big")),
        "y": b64url_encode(numbers.y.to_bytes(size, "big")),
    }


def jwk_to_public_key(jwk: Mapping[str, Any]) -> JwsPublicKey:
    """The public key of an ``EC`` (P-256, P-384) or ``OKP`` (Ed25519) JWK.

    Raises :class:`JwsAlgorithmError` for any other ``kty`` or ``crv`` (RSA, ``oct``, P-521, X25519,
    ...), and ``ValueError`` when the JWK is malformed: not an object, missing or mistyped members,
    coordinates of the wrong size or off the curve, or a private member ``d``.
    """
    if not isinstance(jwk, Mapping):
        raise ValueError("a JWK must be a JSON object")
    kty = jwk.get("kty")
    crv = jwk.get("crv")
    if not isinstance(kty, str) or not isinstance(crv, str | None):
        raise ValueError("a JWK needs a string 'kty' (and 'crv', when present, must be a string)")
    if "d" in jwk:
        raise ValueError("the JWK holds a private key ('d'); only public keys may be sent")
    if kty == "OKP":
        if crv != "Ed25519":
            raise JwsAlgorithmError(f"OKP curve {crv!r} is not accepted; use Ed25519")
        raw = _jwk_member(jwk, "x", _ED25519_SIZE)
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    if kty == "EC":
        if crv not in _EC_CURVES:
            raise JwsAlgorithmError(f"EC curve {crv!r} is not accepted; use P-256 or P-384")
        size = 32 if crv == "P-256" else 48
        x = int.from_bytes(_jwk_member(jwk, "x", size), "big")
        y = int.from_bytes(_jwk_member(jwk, "y", size), "big")
        try:
            return ec.EllipticCurvePublicNumbers(x, y, _EC_CURVES[crv]()).public_key()
        except ValueError as exc:
            raise ValueError(f"the JWK's point is not on {crv}") from exc
    raise JwsAlgorithmError(f"JWK key type {kty!r} is not accepted; use EC or OKP")


def _sign(alg: Algorithm, key: JwsPrivateKey, signing_input: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(signing_input)
    _, size = _EC_PARAMETERS[alg]
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(ecdsa_hash(key))))
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def _json_bytes(value: Mapping[str, Any]) -> bytes:
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not JSON-serialisable: {exc}") from exc
    return text.encode("utf-8")


def _jwk_member(jwk: Mapping[str, Any], name: str, size: int) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise ValueError(f"the JWK's {name!r} must be a base64url string")
    raw = b64url_decode_strict(value, f"JWK member {name!r}")
    if len(raw) != size:
        raise ValueError(f"the JWK's {name!r} must be {size} bytes, not {len(raw)}")
    return raw
