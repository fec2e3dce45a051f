"""The HTTP applications: the client API and the enclave API, as ASGI apps over a :class:`Cas`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp

from opencas import __version__
from opencas.api.auth import BodyLimitMiddleware, ProofMiddleware, caller_of, require_caller
from opencas.api.errors import install_error_handlers
from opencas.api.metrics import ApiMetrics, MetricsMiddleware
from opencas.config.owner import owner_config_from_normal_form
from opencas.config.owner_identity import OwnerIdentity, owner_identity_of
from opencas.crypto.request_proof import ReplayCache, RequestProof
from opencas.errors import InvalidRequest
from opencas.service.cas import Cas
from opencas.service.provisioning import (
    provision_with_token,
    show_owner_config,
    update_owner_config,
)
from opencas.service.sessions import (
    create_session,
    exported_values,
    read_session,
    update_session,
)
from opencas.service.token_guard import TokenGuard
from opencas.service.workloads import (
    NONCE_LIFETIME,
    NonceStore,
    WorkloadRequest,
    attest_workload,
)

API_VERSION = 1
MAX_TOKEN_LENGTH = 256
MAX_SESSION_BYTES = 1024 * 1024
# An attest request is a config id, a nonce, a key and evidence of at most 64 KiB (base64).
MAX_ENCLAVE_BODY_BYTES = 256 * 1024


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ProvisionRequest(_Body):
    """Body of ``POST /v1/provision``."""

    token: str = Field(min_length=1, max_length=MAX_TOKEN_LENGTH)
    owner_config: dict[str, Any]


class SessionRequest(_Body):
    """Body of ``POST /v1/sessions`` and ``PUT /v1/sessions/{name}``."""

    session: str = Field(max_length=MAX_SESSION_BYTES)
    signatures: list[dict[str, Any]] = Field(default_factory=list, max_length=64)


class OwnerConfigRequest(_Body):
    """Body of ``PUT /v1/owner/config``."""

    owner_config: dict[str, Any]


def caller_hash(request: Request) -> str | None:
    """The key hash of the request's signer, or ``None`` when it is anonymous."""
    caller = caller_of(request)
    return caller.key_hash if caller else None


def parse_values_selector(selector: str) -> tuple[str, str | None]:
    """``session=NAME[,secret=S]`` as (NAME, S); :class:`InvalidRequest` if malformed."""
    fields: dict[str, str] = {}
    for part in selector.split(","):
        key, sep, value = part.partition("=")
        if not sep or key not in ("session", "secret") or key in fields or not value:
            raise InvalidRequest(
                f"expected session=NAME[,secret=NAME] after /v1/values/, got {selector!r}"
            )
        fields[key] = value
    if "session" not in fields:
        raise InvalidRequest("the values selector must name a session: session=NAME")
    return fields["session"], fields.get("secret")


def owner_of(caller: RequestProof) -> OwnerIdentity:
    """The owner identity of the signer of a provisioning request."""
    if caller.certificate is not None:
        return owner_identity_of(caller.certificate)
    return OwnerIdentity(caller.key_hash, None)


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
    async def healthz() -> dict[str, str]:
        """Liveness: the process serves requests."""
        return {"status": "ok"}

    @app.get("/v1/version")
    async def version() -> dict[str, Any]:
        """The CAS software version and API version."""
        return {
            "cas_version": __version__,
            "api_version": API_VERSION,
            "platform": cas.platform.kind,
            "mode": cas.mode,
            "enclave_port": cas.config.enclave_listen.port,
        }

    # Cheap endpoints run on the event loop: a thread-pool hop costs more than their work.
    @app.get("/v1/attest")
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

    @app.get("/v1/whoami")
    async def whoami(request: Request) -> dict[str, str]:
        """The caller's key hash as proven by the request proof, or ``anonymous``."""
        caller = caller_of(request)
        return {"identity": caller.key_hash if caller else "anonymous"}

    guard = TokenGuard()

    @app.post("/v1/provision")
    def provision(body: ProvisionRequest, request: Request) -> dict[str, Any]:
        """Attested provisioning: the signer of this request becomes the CAS owner."""
        caller = require_caller(request)
        config = owner_config_from_normal_form(body.owner_config)
        state = provision_with_token(cas, guard, body.token, owner_of(caller), config)
        return {
            "provisioned": state.provisioned,
            "provisioned_at": state.provisioned_at,
            "owner_identity_hash": state.owner_identity_hash,
            "owner_config_sha256": state.owner_config_sha256,
        }

    @app.get("/v1/owner/config")
    def show_config(request: Request) -> dict[str, Any]:
        """The owner config, secrets redacted (owner only)."""
        shown = show_owner_config(cas, require_caller(request).key_hash)
        return {"owner_config": shown.redacted, "owner_config_sha256": shown.sha256}

    @app.put("/v1/owner/config")
    def update_config(body: OwnerConfigRequest, request: Request) -> dict[str, Any]:
        """Replace the owner config (owner only)."""
        caller = require_caller(request)
        config = owner_config_from_normal_form(body.owner_config)
        return {"owner_config_sha256": update_owner_config(cas, caller.key_hash, config)}

    @app.post("/v1/sessions", status_code=201)
    def create(body: SessionRequest, request: Request) -> dict[str, Any]:
        """Create a session; the signer becomes its creator."""
        record = create_session(cas, body.session, caller_hash(request), body.signatures)
        return {"name": record.name, "hash": record.hash}

    @app.put("/v1/sessions/{name:path}")
    def update(name: str, body: SessionRequest, request: Request) -> dict[str, Any]:
        """Replace a session; its ``predecessor`` must name the current version's hash."""
        record = update_session(cas, name, body.session, caller_hash(request), body.signatures)
        return {"name": record.name, "hash": record.hash}

    @app.get("/v1/sessions/{name:path}")
    def read(name: str, request: Request) -> dict[str, Any]:
        """The session as stored and its hash (never generated secret values)."""
        record = read_session(cas, name, caller_hash(request))
        return {
            "name": record.name,
            "hash": record.hash,
            "session": record.text,
            "creator": record.creator,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "revision": record.revision,
        }

    @app.get("/v1/values/{selector:path}")
    def values(selector: str) -> dict[str, Any]:
        """Public values a session exports (``session=NAME[,secret=S]``); no signature needed."""
        name, secret = parse_values_selector(selector)
        return {"session": name, "values": exported_values(cas, name, secret)}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        """Prometheus metrics of this process."""
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    authenticated = ProofMiddleware(app, cas.identity.cas_key_hash, ReplayCache(), clock)
    return MetricsMiddleware(authenticated, metrics, "api")


class EnclaveAttestRequest(_Body):
    """Body of ``POST /v1/enclave/attest``."""

    config_id: str = Field(min_length=3, max_length=1024)
    nonce: str = Field(pattern=r"^[0-9a-f]{64}$")
    public_key: str = Field(min_length=1, max_length=1024)
    evidence: dict[str, Any]


def create_enclave_api(cas: Cas, metrics: ApiMetrics | None = None) -> ASGIApp:
    """The enclave API (``enclave_listen``) that workloads attest to."""
    metrics = metrics or ApiMetrics()
    app = FastAPI(title="OpenCAS enclave API", version=__version__, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    nonces = NonceStore()

    @app.post("/v1/enclave/nonce")
    async def nonce() -> dict[str, Any]:
        """A fresh single-use nonce for the next attestation (valid 60 s)."""
        return {"nonce": nonces.issue(), "expires_in": int(NONCE_LIFETIME)}

    # CPU-bound and short: a thread-pool hop would add cost, and the GIL serialises it anyway.
    @app.post("/v1/enclave/attest")
    async def attest(body: EnclaveAttestRequest) -> dict[str, str]:
        """Attest a workload; answer its configuration, HPKE-sealed to its public key."""
        request = WorkloadRequest(body.config_id, body.nonce, body.public_key, body.evidence)
        sealed = attest_workload(cas, nonces, request)
        return {"kem": sealed.kem, "sealed": sealed.sealed}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process serves requests."""
        return {"status": "ok"}

    return MetricsMiddleware(BodyLimitMiddleware(app, MAX_ENCLAVE_BODY_BYTES), metrics, "enclave")
