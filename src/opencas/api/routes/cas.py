"""Routes about the CAS itself: health, version, its attestation, the caller, metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from opencas import __version__
from opencas.api.auth import caller_of
from opencas.api.metrics import ApiMetrics
from opencas.service.cas import Cas

API_VERSION = 1
# Nonces are hex: at least 64 bits so a replayed report cannot be passed off as fresh, at most 512.
NONCE_PATTERN = r"^(?:[0-9a-f]{2}){8,64}$"


def health_router() -> APIRouter:
    """``GET /healthz``, on every listener."""
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process serves requests."""
        return {"status": "ok"}

    return router


def cas_router(cas: Cas, metrics: ApiMetrics) -> APIRouter:
    """Version, attestation report, whoami and metrics (cheap: they run on the event loop)."""
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

    @router.get("/v1/attest")
    async def attest(
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
