"""The HTTP channel to one CAS listener: pinned TLS, request proofs, error answers as errors.

Both SDK clients, :class:`~opencas.client.cas_client.CasClient` (the client API) and
:class:`~opencas.client.enclave.EnclaveClient` (the enclave API), send their requests through an
:class:`ApiChannel`, and the asyncio clients through an :class:`AsyncApiChannel`. A channel
trusts only the CA certificate of an attested CAS (or nothing, for the one unpinned attestation
request), signs requests when asked, and turns transport failures into :class:`CasUnreachable`
and error answers into :class:`ApiError`. The transport is injectable (``httpx`` transports),
which lets tests run the server in-process.
"""

from __future__ import annotations

import ssl
from collections.abc import Generator
from typing import Any, Self, TypeVar

import httpx
from pydantic import TypeAdapter, ValidationError

from opencas.client.answers import HEALTH_PATH, Health
from opencas.client.identity import ClientIdentity
from opencas.crypto.request_proof import create_request_proof
from opencas.errors import ClientError

DEFAULT_TIMEOUT = 30.0

T = TypeVar("T")


class CasUnreachable(ClientError, code="cas-unreachable"):
    """The CAS did not answer: connection refused, TLS failure, timeout.

    ``retryable`` says that no connection was made, so nothing of the request reached the CAS,
    and that the failure may pass (a refused or reset connection, a connect timeout: the CAS
    is starting, or it turned away a connection over its limits). Sending again is then safe;
    a certificate that does not verify is not retryable.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class ApiError(ClientError):
    """The CAS answered with an error; ``code`` and ``message`` are the CAS's own.

    ``status`` is the HTTP status; ``details`` holds the error's other members, for example
    ``current_hash`` of a ``stale-predecessor`` or ``check`` of an ``attestation-refused``.
    """

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, object] | None = None
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.status = status


class MalformedAnswer(ClientError, code="malformed-answer"):
    """The CAS answered, but not with the documented shape."""


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


class ApiChannel:
    """Requests to one listener at ``url``; pinned to ``ca_certificate_pem`` when given.

    Signed requests need ``identity`` (who signs) and ``cas_key_hash`` (the proof's audience).
    """

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
        self._http = httpx.Client(
            base_url=self.url,
            verify=_tls_verify(ca_certificate_pem),
            transport=transport,
            timeout=timeout,
        )

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        signed: bool = False,
    ) -> httpx.Response:
        """Send one request (signed if ``signed``); the response when its status is below 400.

        Raises :class:`CasUnreachable` when the CAS cannot be reached, :class:`ApiError` for an
        error answer, :class:`ClientError` for a signed request without identity or pin.
        """
        auth = _proof_auth(self.identity, self.cas_key_hash) if signed else None
        try:
            response = self._http.request(method, path, params=params, json=json_body, auth=auth)
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from exc
        return _successful(response)

    def call(
        self,
        answer: type[T],
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        signed: bool = False,
    ) -> T:
        """Send one request as :meth:`send` does and read its answer as ``answer``.

        Raises :class:`MalformedAnswer` when the body is not a JSON object of that shape.
        """
        response = self.send(method, path, params=params, json_body=json_body, signed=signed)
        return read_answer(answer, response)


class AsyncApiChannel:
    """Anonymous requests to one listener at ``url``, for asyncio: many at once.

    Pinned to ``ca_certificate_pem`` when given; ``max_connections`` bounds its connection pool
    (a load generator keeps one connection per simulated client; default: httpx's);
    ``transport`` replaces the network.
    """

    def __init__(
        self,
        url: str,
        *,
        ca_certificate_pem: bytes | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._http = httpx.AsyncClient(
            base_url=self.url,
            verify=_tls_verify(ca_certificate_pem),
            transport=transport,
            timeout=timeout,
            limits=limits if max_connections is not None else httpx.Limits(),
        )

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: Any = None,
    ) -> httpx.Response:
        """Send one anonymous request as :meth:`ApiChannel.send` does, with the same errors."""
        try:
            response = await self._http.request(method, path, params=params, json=json_body)
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from exc
        return _successful(response)


class AsyncListenerClient:
    """What every asyncio client of a CAS listener offers: ``async with``, health, closing.

    Its requests go through an :class:`AsyncApiChannel` made from the same arguments.
    """

    def __init__(
        self,
        url: str,
        *,
        ca_certificate_pem: bytes | None = None,
        max_connections: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._channel = AsyncApiChannel(
            url,
            ca_certificate_pem=ca_certificate_pem,
            transport=transport,
            timeout=timeout,
            max_connections=max_connections,
        )

    @property
    def url(self) -> str:
        """The listener's URL (without a trailing ``/``)."""
        return self._channel.url

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._channel.aclose()

    async def health(self) -> str:
        """The listener's health, ``GET /healthz``: ``"ok"`` while it serves."""
        return read_answer(Health, await self._channel.send("GET", HEALTH_PATH)).status


def _tls_verify(ca_certificate_pem: bytes | None) -> ssl.SSLContext | bool:
    # Unpinned means unverified: only the first attestation, which checks the peer itself.
    return pinned_ssl_context(ca_certificate_pem) if ca_certificate_pem else False


def _proof_auth(identity: ClientIdentity | None, cas_key_hash: str | None) -> ProofAuth:
    if identity is None or cas_key_hash is None:
        raise ClientError("a signed request needs a client identity and a pinned CAS")
    return ProofAuth(identity, cas_key_hash)


def _unreachable(url: str, exc: httpx.TransportError) -> CasUnreachable:
    # httpx raises ConnectError for the TCP connect and the TLS handshake alike: no request
    # was written on either. A certificate that does not verify will not verify next time.
    retryable = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) and not (
        _certificate_failed(exc)
    )
    return CasUnreachable(f"cannot reach the CAS at {url}: {_reason(exc)}", retryable=retryable)


def _successful(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise _api_error(response)
    return response


def read_answer(answer: type[T], response: httpx.Response) -> T:
    """The JSON body of ``response`` as the dataclass ``answer`` (strict; unknown members are
    ignored, so a newer CAS may add some); :class:`MalformedAnswer` when it does not fit."""
    try:
        return _adapter(answer).validate_json(response.content, strict=True)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors()
        )
        raise MalformedAnswer(
            f"the CAS answered {response.request.method} {response.url.path} with an "
            f"unexpected body: {problems}"
        ) from exc


# Building a validator costs more than a request: one per answer type, built on first use.
_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def _adapter(answer: type[T]) -> TypeAdapter[T]:
    adapter = _ADAPTERS.get(answer)
    if adapter is None:
        adapter = _ADAPTERS[answer] = TypeAdapter(answer)
    return adapter


def _api_error(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
        details = {k: v for k, v in body.items() if k not in ("error", "message")}
        return ApiError(response.status_code, str(body["error"]), str(body["message"]), details)
    except (ValueError, KeyError, TypeError, AttributeError):
        return ApiError(
            response.status_code, "http-error", f"HTTP {response.status_code} from the CAS"
        )


def _certificate_failed(exc: httpx.TransportError) -> bool:
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def _reason(exc: httpx.TransportError) -> str:
    text = str(exc) or exc.__class__.__name__
    if _certificate_failed(exc):
        return (
            "its TLS certificate does not verify against the CAS key pinned for it (another CAS "
            f"answers at this address, or the certificate expired): {text}"
        )
    return text
