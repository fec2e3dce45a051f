"""The HTTP applications: the client API and the enclave API, as ASGI apps over a :class:`Cas`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response
from starlette.types import ASGIApp

from opencas import __version__
from opencas.api.auth import ProofMiddleware, caller_of
from opencas.api.errors import install_error_handlers
from opencas.api.metrics import ApiMetrics, MetricsMiddleware
from opencas.crypto.request_proof import ReplayCache
from opencas.service.cas import Cas

API_VERSION = 1
# Nonces are hex: at least 64 bits so a replayed report cannot be passed off as fresh, at most 512.
NONCE_PATTERN = r"^(?:[0-9a-f]{2}){8,64}$"


def create_client_api(
    cas: Cas,
    metrics: ApiMetrics | None = None,
    clock: Callable[[], float] = time.time,
) -> ASGIApp:
    """The client API (``api_listen``): health, version, attestation, whoami, metrics."""
    metrics = metrics or ApiMetrics()
    app = FastAPI(
        title="OpenCAS client API",
        version=__version__,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process serves requests."""
        return {"status": "ok"}

    @app.get("/v1/version")
    def version() -> dict[str, Any]:
        """The CAS software version and API version."""
        return {
            "cas_version": __version__,
            "api_version": API_VERSION,
            "platform": cas.platform.kind,
            "mode": cas.mode,
        }

    @app.get("/v1/attest")
    def attest(
        nonce: Annotated[
            str,
            Query(
                pattern=NONCE_PATTERN,
                description="Lowercase hex, 16 to 128 digits, chosen fresh by the verifier.",
            ),
        ],
    ) -> dict[str, Any]:
        """The report for ``nonce``, the evidence that binds it, and the CAS certificates."""
        return cas.attest(nonce)

    @app.get("/v1/whoami")
    def whoami(request: Request) -> dict[str, str]:
        """The caller's key hash as proven by the request proof, or ``anonymous``."""
        caller = caller_of(request)
        return {"identity": caller.key_hash if caller else "anonymous"}

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        """Prometheus metrics of this process."""
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    authenticated = ProofMiddleware(app, cas.identity.cas_key_hash, ReplayCache(), clock)
    return MetricsMiddleware(authenticated, metrics, "api")


def create_enclave_api(cas: Cas, metrics: ApiMetrics | None = None) -> ASGIApp:
    """The enclave API (``enclave_listen``) that workloads attest to."""
    metrics = metrics or ApiMetrics()
    app = FastAPI(title="OpenCAS enclave API", version=__version__, docs_url=None, redoc_url=None)
    install_error_handlers(app)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process serves requests."""
        return {"status": "ok"}

    return MetricsMiddleware(app, metrics, "enclave")
