"""Routes about the CAS itself: health, version, its attestation, the caller, metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from opencas import __version__
from opencas.api.auth import caller_of
from opencas.api.errors import error_response
from opencas.api.metrics import ApiMetrics
from opencas.service.cas import Cas

API_VERSION = 1
# Nonces are hex: at least 64 bits so a replayed report cannot be passed off as fresh, at most 512.
NONCE_PATTERN = r"^(?:[0-9a-f]{2}){8,64}$"


def health_router(cas: Cas) -> APIRouter:
    """``GET /healthz`` and ``GET /readyz``, on every listener."""
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process serves requests."""
        return {"status": "ok"}

    # A plain function: the check reads the database, off the event loop.
    @router.get("/readyz")
    def readyz() -> Response:
        """Readiness: this instance can answer from its store now; 503 ``not-ready`` if not."""
        problem = cas.readiness_problem()
        if problem is not None:
            return error_response(503, "not-ready", problem)
        return JSONResponse({"status": "ready"})

    return router


def cas_router(cas: Cas, metrics: ApiMetrics) -> APIRouter:
    """Version, attestation report, whoami and metrics (all but the report are cheap: they run
    on the event loop)."""
    router = APIRouter()

    @router.get("/v1/version")
    async def version() -> dict[str, Any]:
        """The CAS software version and API version."""
        return {
            "cas_version": __version__,
            "api_version": API_VERSION,
            "platform": cas.platform.kind,
            "mode": cas.mode,
            "enclave_port": cas.config.enclave_listen.port,
        }

    # A plain function: the report reads the store, which on PostgreSQL is a round trip.
    @router.get("/v1/attest")
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

    @router.get("/v1/whoami")
    async def whoami(request: Request) -> dict[str, str]:
        """The caller's key hash as proven by the request proof, or ``anonymous``."""
        return {"identity": caller_of(request).key_hash or "anonymous"}

    @router.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        """Prometheus metrics of this process."""
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return router
