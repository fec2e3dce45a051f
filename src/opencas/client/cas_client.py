"""The Python SDK: talk to a CAS over a pinned TLS channel with signed requests.

A :class:`CasClient` either is *pinned* (it trusts only the CA certificate of a CAS it attested) or
is used once, unpinned, to attest a CAS: the attestation response is then verified against what the
TLS connection actually presented, so nothing is trusted before it is checked. The transport is
injectable (``httpx`` transports), which lets tests run the server in-process.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Generator
from typing import Any

import httpx

from opencas.attestation.report import CasExpectations, VerifiedCas, verify_cas_attestation
from opencas.client.identity import ClientIdentity
from opencas.crypto.request_proof import create_request_proof
from opencas.errors import ClientError

DEFAULT_TIMEOUT = 30.0
NONCE_BYTES = 32


class CasUnreachable(ClientError):
    """The CAS did not answer: connection refused, TLS failure, timeout."""

    code = "cas-unreachable"


class ApiError(ClientError):
    """The CAS answered with an error; ``code`` and ``message`` are the CAS's own."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, object] | None = None
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.status = status


class ProofAuth(httpx.Auth):
    """Adds ``Authorization: CAS-Proof <JWS>`` to every request, signed by ``identity``."""

    requires_request_body = True

    def __init__(self, identity: ClientIdentity, audience: str) -> None:
        self.identity = identity
        self.audience = audience

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Sign ``request`` (method, URL, body) for the CAS ``audience``."""
        proof = create_request_proof(
            self.identity.key,
            self.identity.certificate,
            method=request.method,
            url=str(request.url),
            body=request.content,
            audience=self.audience,
        )
        request.headers["Authorization"] = f"CAS-Proof {proof}"
        yield request


def pinned_ssl_context(ca_certificate_pem: bytes) -> ssl.SSLContext:
    """A client TLS context that trusts exactly the CA certificate of one attested CAS.

    The CA key *is* the CAS key users pin, so the chain check is the pin; host names are not
    checked, because a CAS is reached under names its operator chooses.
    """
    context = ssl.create_default_context(cadata=ca_certificate_pem.decode("ascii"))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def new_nonce() -> str:
    """A fresh attestation nonce (256 bits, hex)."""
    return secrets.token_hex(NONCE_BYTES)


class CasClient:
    """A client for one CAS at ``url``."""

    def __init__(
        self,
        url: str,
        *,
        ca_certificate_pem: bytes | None = None,
        cas_key_hash: str | None = None,
        identity: ClientIdentity | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.url = url.rstrip("/")
        self.cas_key_hash = cas_key_hash
        self.identity = identity
        verify: ssl.SSLContext | bool = (
            pinned_ssl_context(ca_certificate_pem) if ca_certificate_pem else False
        )
        self._http = httpx.Client(
            base_url=self.url, verify=verify, transport=transport, timeout=timeout
        )

    def __enter__(self) -> CasClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def attest(self, expectations: CasExpectations) -> VerifiedCas:
        """Fetch the report for ``expectations.nonce`` and verify it and the TLS peer.

        Raises :class:`AttestationRefused` / :class:`EvidenceError` when the CAS is not what the
        expectations accept, :class:`CasUnreachable` or :class:`ApiError` otherwise.
        """
        response = self._send("GET", "/v1/attest", params={"nonce": expectations.nonce})
        body = self._json(response)
        return verify_cas_attestation(body, expectations, _peer_certificate(response))

    def whoami(self, signed: bool = True) -> str:
        """The caller identity the CAS sees: a key hash, or ``anonymous``."""
        body = self._json(self._send("GET", "/v1/whoami", signed=signed))
        identity = body.get("identity") if isinstance(body, dict) else None
        if not isinstance(identity, str):
            raise ClientError("the CAS answered /v1/whoami without an identity")
        return identity

    def version(self) -> dict[str, Any]:
        """The CAS's software and API version."""
        body = self._json(self._send("GET", "/v1/version"))
        if not isinstance(body, dict):
            raise ClientError("the CAS answered /v1/version with something that is not an object")
        return body

    def request(self, method: str, path: str, *, json_body: Any = None, signed: bool = True) -> Any:
        """Send an API request (signed unless ``signed`` is false) and return its JSON body."""
        return self._json(self._send(method, path, json_body=json_body, signed=signed))

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        signed: bool = False,
    ) -> httpx.Response:
        auth: httpx.Auth | None = None
        if signed:
            if self.identity is None or self.cas_key_hash is None:
                raise ClientError("a signed request needs a client identity and a pinned CAS")
            auth = ProofAuth(self.identity, self.cas_key_hash)
        try:
            response = self._http.request(method, path, params=params, json=json_body, auth=auth)
        except httpx.TransportError as exc:
            raise CasUnreachable(f"cannot reach the CAS at {self.url}: {_reason(exc)}") from exc
        if response.status_code >= 400:
            raise _api_error(response)
        return response

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise ClientError(f"the CAS answered {response.url.path} with invalid JSON") from exc


def _api_error(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
        details = {k: v for k, v in body.items() if k not in ("error", "message")}
        return ApiError(response.status_code, str(body["error"]), str(body["message"]), details)
    except (ValueError, KeyError, TypeError):
        return ApiError(
            response.status_code, "http-error", f"HTTP {response.status_code} from the CAS"
        )


def _reason(exc: httpx.TransportError) -> str:
    text = str(exc) or exc.__class__.__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            "its TLS certificate does not verify against the CAS key pinned for it (another CAS "
            f"answers at this address, or the certificate expired): {text}"
        )
    return text


def _peer_certificate(response: httpx.Response) -> bytes | None:
    stream = response.extensions.get("network_stream")
    if stream is None:
        return None  # an in-process transport: there is no TLS peer to compare
    ssl_object = stream.get_extra_info("ssl_object")
    if ssl_object is None:
        raise ClientError("the CAS connection is not TLS")
    certificate: bytes | None = ssl_object.getpeercert(True)
    return certificate
