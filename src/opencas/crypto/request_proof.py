"""Request proofs (DESIGN.md §4): a signed JWS that binds one HTTP request to the caller's key.

TLS authenticates only the server, so each authenticated request carries
``Authorization: CAS-Proof <compact JWS>``, shaped like an OAuth DPoP proof (RFC 9449):

- header ``typ: "cas-request+jwt"``, ``alg`` (ES256, ES384 or EdDSA) and the signer's key, either
  as ``x5c`` (its self-signed identity certificate) or as ``jwk``;
- claims ``htm`` (method), ``htu`` (normalised URL without query and fragment), ``iat`` (seconds),
  ``jti`` (random, at least 96 bits), ``aud`` (the CAS key hash) and ``bh`` (base64url SHA-256 of
  the body, empty body included).

The caller's identity is the key hash of the signing key. Both sides live here so they cannot
drift apart. Everything is pure; the memory of accepted proofs is
:class:`~opencas.crypto.replay_cache.ReplayCache`, which the caller passes in with the time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import time
from dataclasses import dataclass
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from opencas.crypto.encoding import b64_decode, b64_encode, b64url_encode
from opencas.crypto.jws import (
    ALGORITHMS,
    JwsAlgorithmError,
    JwsPublicKey,
    alg_for_key,
    jwk_to_public_key,
    parse_compact,
    public_key_to_jwk,
    sign_compact,
    verify_signature,
)
from opencas.crypto.keys import PrivateKey, key_hash
from opencas.crypto.pem import CERTIFICATE_ERRORS, parse_eagerly
from opencas.crypto.replay_cache import ReplayCache
from opencas.crypto.x509 import certificate_key_hash, verify_issued_by
from opencas.errors import RequestProofError

PROOF_TYPE: Final = "cas-request+jwt"

_JTI_BYTES: Final = 16
_JTI: Final = re.compile(r"[A-Za-z0-9_-]{16,64}")
_BODY_HASH: Final = re.compile(r"[A-Za-z0-9_-]{43}")
_METHOD: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HOST: Final = re.compile(r"[a-z0-9._~!$&'()*+,;=%-]+|\[[0-9a-f:.]+\]")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_UNRESERVED: Final = frozenset(string.ascii_letters + string.digits + "-._~")
_PATH_CHARACTERS: Final = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
_HEX: Final = frozenset(string.hexdigits)


def normalise_url(url: str) -> str:
    """The form of ``url`` that ``htu`` carries and that both sides compare.

    Lower-case scheme (``http`` or ``https``) and host, the default port dropped, query and
    fragment dropped, an empty path made ``/``; in the path, percent-escapes of unreserved
    characters are decoded, other escapes upper-cased and characters that must be escaped are
    escaped (UTF-8), so a decoded path and its encoded form normalise alike. Dot segments are kept
    as they are. Raises ``ValueError`` for anything else: another scheme, user information, no
    host, a non-ASCII host, a bad port or control characters.
    """
    if not isinstance(url, str) or any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ValueError("a URL must be a string without control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"the URL's scheme must be http or https, not {scheme or 'missing'!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the URL must not carry user information")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if not _HOST.fullmatch(host):
        raise ValueError(
            "the URL needs a host of ASCII characters (internationalised names in 'xn--' form)"
        )
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    return f"{scheme}://{netloc}{_normalise_path(parts.path or '/')}"


@dataclass(frozen=True)
class RequestProof:
    """A verified request proof: who signed the request, and the proof's ``jti`` and ``iat``."""

    key_hash: str
    public_key: JwsPublicKey
    certificate: x509.Certificate | None
    jti: str
    iat: int


def create_request_proof(
    key: PrivateKey,
    certificate: x509.Certificate | None,
    *,
    method: str,
    url: str,
    body: bytes,
    audience: str,
    now: float | None = None,
    jti: str | None = None,
) -> str:
    """Sign a proof that the holder of ``key`` sends this request (method, URL, body).

    The proof is addressed to ``audience`` (the CAS key hash). ``key`` is P-256, P-384 or Ed25519;
    ``certificate`` (its identity certificate) goes into ``x5c``, or, when ``None``, the public key
    goes into ``jwk``. ``htu`` is ``normalise_url(url)``, ``iat`` is ``now`` (default: the current
    time) in whole seconds and ``jti`` 128 random bits unless given. Raises ``ValueError`` when the
    key type is not accepted, the certificate carries another key, or the method, URL or ``jti`` is
    invalid.
    """
    if not isinstance(method, str) or not _METHOD.fullmatch(method):
        raise ValueError(f"{method!r} is not an HTTP method")
    if jti is None:
        jti = b64url_encode(secrets.token_bytes(_JTI_BYTES))
    elif not _JTI.fullmatch(jti):
        raise ValueError("jti must be 16 to 64 base64url characters (at least 96 bits)")
    header: dict[str, Any] = {"typ": PROOF_TYPE, "alg": alg_for_key(key)}
    if certificate is None:
        header["jwk"] = public_key_to_jwk(key)
    else:
        if certificate_key_hash(certificate) != key_hash(key):
            raise ValueError("the certificate does not carry the signing key")
        header["x5c"] = [b64_encode(certificate.public_bytes(serialization.Encoding.DER))]
    claims = {
        "htm": method.upper(),
        "htu": normalise_url(url),
        "iat": int(time.time() if now is None else now),
        "jti": jti,
        "aud": audience,
        "bh": _body_hash(body),
    }
    return sign_compact(header, claims, key)


def verify_request_proof(
    token: str,
    *,
    method: str,
    url: str,
    body: bytes,
    audience: str,
    now: float,
    replay_cache: ReplayCache,
) -> RequestProof:
    """Verify that ``token`` proves this request (method, URL, body) to ``audience`` at ``now``.

    Checks, in order: the token's form, the algorithm against the key, the signature, that ``iat``
    is at most ``replay_cache.max_age`` seconds old and at most ``replay_cache.max_future_skew``
    seconds ahead, method, URL (both normalised), audience, body hash (in constant time), and
    finally that the ``jti`` is unseen for this signer and the signer has room in the replay cache
    — it is recorded only when every other check passed. The signer is identified by its key; an
    ``x5c`` certificate must be well-formed and, if self-issued, carry a valid self-signature, but
    need not chain to anything and its validity dates are not checked (a certificate names a key,
    DESIGN.md §3). Returns the signer on success.
    Raises :class:`RequestProofError` whose ``code`` names the first failed check.
    """
    try:
        header, claims, signing_input, signature = parse_compact(token)
    except ValueError as exc:
        _refuse("proof-malformed", f"the request proof is not a valid compact JWS: {exc}")
    alg = _check_header(header)
    fields = _Claims.parse(claims)
    public_key, certificate = _signer(header)
    if alg not in ALGORITHMS:
        _refuse("proof-algorithm", f"alg {_show(alg)} is not accepted; use ES256, ES384 or EdDSA")
    key_alg = alg_for_key(public_key)
    if alg != key_alg:
        _refuse("proof-algorithm", f"alg {alg} does not fit the proof's key, which needs {key_alg}")
    if not verify_signature(alg, public_key, signing_input, signature):
        _refuse("proof-signature-invalid", "the request proof's signature does not verify")
    replay_cache.check_time(fields.iat, now)
    if fields.htm != method.upper():
        _refuse(
            "proof-method-mismatch",
            f"the proof is for method {_show(fields.htm)}, the request uses {_show(method)}",
        )
    _check_url(fields.htu, url)
    if fields.aud != audience:
        _refuse(
            "proof-audience-mismatch",
            f"the proof is for the CAS with key hash {_show(fields.aud)}, not this CAS "
            f"({audience}); check which CAS the client pinned",
        )
    if not hmac.compare_digest(fields.bh.encode("ascii"), _body_hash(body).encode("ascii")):
        _refuse("proof-body-mismatch", "the request body is not the body the proof was signed for")
    signer = key_hash(public_key)
    replay_cache.remember(signer, fields.jti, iat=fields.iat, now=now)
    return RequestProof(
        key_hash=signer,
        public_key=public_key,
        certificate=certificate,
        jti=fields.jti,
        iat=fields.iat,
    )


@dataclass(frozen=True)
class _Claims:
    htm: str
    htu: str
    iat: int
    jti: str
    aud: str
    bh: str

    @classmethod
    def parse(cls, claims: dict[str, Any]) -> _Claims:
        for name in ("htm", "htu", "jti", "aud", "bh"):
            if not isinstance(claims.get(name), str):
                _refuse("proof-malformed", f"the request proof needs a string claim {name!r}")
        iat = claims.get("iat")
        if not isinstance(iat, int) or isinstance(iat, bool):
            _refuse("proof-malformed", "the request proof needs an integer claim 'iat' (seconds)")
        if not _JTI.fullmatch(claims["jti"]):
            _refuse("proof-malformed", "the claim 'jti' must be 16 to 64 base64url characters")
        if not _BODY_HASH.fullmatch(claims["bh"]):
            _refuse("proof-malformed", "the claim 'bh' must be a base64url SHA-256 digest")
        return cls(
            htm=claims["htm"],
            htu=claims["htu"],
            iat=iat,
            jti=claims["jti"],
            aud=claims["aud"],
            bh=claims["bh"],
        )


def _check_header(header: dict[str, Any]) -> str:
    if header.get("typ") != PROOF_TYPE:
        _refuse("proof-malformed", f"the request proof's header must have typ {PROOF_TYPE!r}")
    if "crit" in header:
        _refuse("proof-malformed", "the request proof must not carry critical header extensions")
    alg = header.get("alg")
    if not isinstance(alg, str):
        _refuse("proof-malformed", "the request proof's header needs a string 'alg'")
    if ("x5c" in header) == ("jwk" in header):
        _refuse(
            "proof-malformed", "the request proof's header needs exactly one of 'x5c' and 'jwk'"
        )
    return alg


def _signer(header: dict[str, Any]) -> tuple[JwsPublicKey, x509.Certificate | None]:
    if "jwk" in header:
        try:
            return jwk_to_public_key(header["jwk"]), None
        except JwsAlgorithmError as exc:
            _refuse("proof-algorithm", f"the proof's key is not accepted: {exc}")
        except ValueError as exc:
            _refuse("proof-malformed", f"the proof's 'jwk' is invalid: {exc}")
    chain = header["x5c"]
    if not isinstance(chain, list) or len(chain) != 1 or not isinstance(chain[0], str):
        _refuse("proof-malformed", "'x5c' must be a list holding exactly the signer's certificate")
    try:
        certificate = parse_eagerly(x509.load_der_x509_certificate(b64_decode(chain[0])))
        public_key = certificate.public_key()
        self_issued = certificate.issuer == certificate.subject
    except UnsupportedAlgorithm as exc:
        _refuse("proof-algorithm", f"the certificate's key type is not accepted: {exc}")
    except CERTIFICATE_ERRORS as exc:
        _refuse("proof-malformed", f"the 'x5c' certificate is invalid: {exc}")
    if not isinstance(public_key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        _refuse(
            "proof-algorithm",
            f"{type(public_key).__name__} keys are not accepted; use P-256, P-384 or Ed25519",
        )
    try:
        alg_for_key(public_key)
    except JwsAlgorithmError as exc:
        _refuse("proof-algorithm", str(exc))
    if self_issued:
        try:
            verify_issued_by(certificate, certificate)
        except ValueError as exc:
            _refuse("proof-malformed", f"the self-signed 'x5c' certificate is invalid: {exc}")
    return public_key, certificate


def _check_url(htu: str, url: str) -> None:
    try:
        expected = normalise_url(url)
    except ValueError as exc:
        _refuse("proof-url-mismatch", f"the request URL cannot be compared: {exc}")
    try:
        claimed = normalise_url(htu)
    except ValueError as exc:
        _refuse("proof-url-mismatch", f"the proof's 'htu' is not a valid URL: {exc}")
    if claimed != expected:
        _refuse(
            "proof-url-mismatch",
            f"the proof is for {_show(claimed)}, the request was sent to {_show(expected)}",
        )


def _normalise_path(path: str) -> str:
    out: list[str] = []
    index = 0
    while index < len(path):
        char = path[index]
        escape = path[index + 1 : index + 3]
        if char == "%" and len(escape) == 2 and all(c in _HEX for c in escape):
            decoded = chr(int(escape, 16))
            out.append(decoded if decoded in _UNRESERVED else f"%{escape.upper()}")
            index += 3
            continue
        if char in _PATH_CHARACTERS:
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
        index += 1
    return "".join(out)


def _body_hash(body: bytes) -> str:
    return b64url_encode(hashlib.sha256(body).digest())


def _show(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _refuse(code: str, message: str) -> NoReturn:
    raise RequestProofError(message, code=code)
