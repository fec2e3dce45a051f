"""The HTTP applications: the client API and the enclave API, as ASGI apps over a :class:`Cas`.

The routes live in :mod:`opencas.api.routes`, one module per noun; this module assembles them
with the error handlers and the middleware of each listener.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import x25519
from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from starlette.types import ASGIApp

from opencas import __version__
from opencas.api.auth import BodyLimitMiddleware, ProofMiddleware
from opencas.api.errors import install_error_handlers
from opencas.api.metrics import ApiMetrics, MetricsMiddleware
from opencas.api.offload import WorkerLane
from opencas.api.routes.audit import audit_router
from opencas.api.routes.backup import backup_router
from opencas.api.routes.cas import cas_router, health_router
from opencas.api.routes.owner import owner_router
from opencas.api.routes.sessions import sessions_router
from opencas.api.routes.upgrades import upgrades_router
from opencas.api.routes.workloads import workloads_router
from opencas.crypto.replay_cache import ReplayCache, SharedReplayCache
from opencas.platform.base import Platform
from opencas.service.cas import Cas

# An attest request is a config id, a nonce, a key and evidence of at most 64 KiB (base64).
MAX_ENCLAVE_BODY_BYTES = 256 * 1024
MAX_BACKUP_BODY_BYTES = 1024


# FastAPI's own OpenTelemetry instrumentation stays off, whatever the environment says: it can
# record request bodies and exception messages (secrets and evidence pass through both), and
# even when no provider is configured it looks at the environment at every request. The CAS's
# own metrics (``/metrics``) and audit log say what happens.
_NO_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
}


def _application(title: str) -> FastAPI:
    app = FastAPI(
        title=title,
        version=__version__,
        docs_url=None,
        redoc_url=None,
        telemetry=_NO_TELEMETRY,
    )
    install_error_handlers(app)
    return app


def create_client_api(
    cas: Cas,
    metrics: ApiMetrics | None = None,
    clock: Callable[[], float] = time.time,
) -> ASGIApp:
    """The client API (``api_listen``): the CAS, its owner, sessions; request proofs checked."""
    metrics = metrics or ApiMetrics()
    app = _application("OpenCAS client API")
    for router in (
        health_router(cas),
        cas_router(cas, metrics),
        owner_router(cas),
        upgrades_router(cas),
        audit_router(cas),
        sessions_router(cas),
    ):
        app.include_router(router)
    limits = cas.config.replay_cache_limits
    bounds = {
        "capacity": limits.entries,
        "share": limits.entries_per_identity,
        "identities": limits.identities,
    }
    guards = cas.guards
    replay_cache = (
        ReplayCache(**bounds) if guards is None else SharedReplayCache(guards.add_proof, **bounds)
    )
    authenticated = ProofMiddleware(app, cas.identity.cas_key_hash, replay_cache, clock)
    return MetricsMiddleware(authenticated, metrics, "api")


def create_enclave_api(cas: Cas, metrics: ApiMetrics | None = None) -> ASGIApp:
    """The enclave API (``enclave_listen``) that workloads attest to."""
    metrics = metrics or ApiMetrics()
    app = _application("OpenCAS enclave API")
    app.include_router(health_router(cas))
    app.include_router(workloads_router(cas, WorkerLane("opencas-attest")))
    return MetricsMiddleware(BodyLimitMiddleware(app, MAX_ENCLAVE_BODY_BYTES), metrics, "enclave")


def create_backup_api(platform: Platform, key: x25519.X25519PrivateKey) -> ASGIApp:
    """The API of a CAS in backup mode (``api_listen``): health, and its backup request."""
    app = _application("OpenCAS backup")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process serves requests."""
        return {"status": "ok"}

    app.include_router(backup_router(platform, key))
    # Nothing it serves takes a body.
    return BodyLimitMiddleware(app, MAX_BACKUP_BODY_BYTES)
