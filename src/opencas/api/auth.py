"""Request authentication: the ``Authorization: CAS-Proof <JWS>`` proof of DESIGN.md §4.

The middleware reads the whole body (bounded), checks the proof when there is one, and hands the
endpoints the :class:`~opencas.policy.caller.Caller` the proof proved (:func:`caller_of`). A
request without a proof is anonymous; a request with a proof that does not verify is refused with
401 and the proof error's own code, before any endpoint runs. Whether an operation refuses
anonymous callers is not decided here but by the service, through :meth:`Caller.signer`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import anyio.to_thread
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opencas.crypto.replay_cache import ReplayCache
from opencas.crypto.request_proof import verify_request_proof
from opencas.errors import CasError, RequestProofError
from opencas.policy.caller import ANONYMOUS, Caller

PROOF_SCHEME = "cas-proof"
MAX_BODY_BYTES = 2 * 1024 * 1024


class BodyTooLarge(CasError, code="body-too-large", http_status=413):
    """The request body exceeds what the API accepts."""


def caller_of(request: Request) -> Caller:
    """Who sent ``request``, as its verified proof says; anonymous when it carried none."""
    caller: Caller = request.scope.get("state", {}).get("caller", ANONYMOUS)
    return caller


def request_url(scope: Scope) -> str:
    """The URL the client addressed, rebuilt from the scheme, Host header and path (no query)."""
    host = ""
    for name, value in scope.get("headers", []):
        if name == b"host":
            host = value.decode("latin-1")
            break
    if not host and scope.get("server"):
        server_host, server_port = scope["server"]
        host = f"{server_host}:{server_port}"
    # The raw path is what the client signed; the decoded one would turn %2F into a separator.
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope.get("path", "/")
    return f"{scope.get('scheme', 'https')}://{host}{path.partition('?')[0]}"


async def send_error(send: Send, error: CasError) -> None:
    """Answer with the API's JSON error body for ``error``, and the headers it gives."""
    body = json.dumps(error.to_json()).encode("utf-8")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
    ]
    headers += [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in error.headers().items()
    ]
    await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """ASGI middleware that refuses request bodies over ``limit`` bytes with 413.

    The app receives the body as it was read; :meth:`inspect` may refuse the request first.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body = await _read_body(receive, self.limit)
            await self.inspect(scope, body)
        except CasError as error:
            await send_error(send, error)
            return
        await self.app(scope, _replaying(body, receive), send)

    async def inspect(self, scope: Scope, body: bytes) -> None:
        """Look at the request before the app does; raise a :class:`CasError` to refuse it."""


def _replaying(body: bytes, receive: Receive) -> Receive:
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class ProofMiddleware(BodyLimitMiddleware):
    """ASGI middleware verifying request proofs against this CAS's key hash as audience."""

    def __init__(
        self,
        app: ASGIApp,
        audience: str,
        replay_cache: ReplayCache,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(app)
        self.audience = audience
        self.replay_cache = replay_cache
        self.clock = clock

    async def inspect(self, scope: Scope, body: bytes) -> None:
        """Record the request's :class:`Caller`; refuse a proof that does not verify.

        A request without a proof costs nothing here. A proof is verified in a worker thread:
        hashing the body and checking a signature would otherwise hold up every other request
        on the event loop.
        """
        authorization = _authorization(scope)
        caller = ANONYMOUS
        if authorization is not None:
            caller = await anyio.to_thread.run_sync(self._authenticate, scope, authorization, body)
        scope.setdefault("state", {})["caller"] = caller

    def _authenticate(self, scope: Scope, authorization: str, body: bytes) -> Caller:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != PROOF_SCHEME or not token.strip():
            raise RequestProofError(
                "the Authorization header must be 'CAS-Proof <JWS>'", code="proof-malformed"
            )
        proof = verify_request_proof(
            token.strip(),
            method=scope["method"],
            url=request_url(scope),
            body=body,
            audience=self.audience,
            now=self.clock(),
            replay_cache=self.replay_cache,
        )
        return Caller(proof.key_hash, proof.certificate)


def _authorization(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            return str(value.decode("latin-1"))
    return None


async def _read_body(receive: Receive, limit: int = MAX_BODY_BYTES) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the request body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
