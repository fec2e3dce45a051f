"""Routes of workloads (the enclave API): a nonce, then the attestation."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import Field, GetPydanticSchema
from pydantic_core import core_schema

from opencas.api.offload import WorkerLane
from opencas.api.routes.bodies import StrictBody
from opencas.attestation.workload_binding import NEXT_NONCE_HEADER, ConfigId
from opencas.service.cas import Cas
from opencas.service.nonces import NonceStore
from opencas.service.otp_guard import OtpGuard
from opencas.service.volumes import (
    MAX_TICKET_CHARS,
    ReportLimiter,
    TagReport,
    report_volume_tag,
)
from opencas.service.workloads import (
    WorkloadDecision,
    WorkloadRequest,
    decide_workload,
)

#: A config id in a request body: a string of 3 to 1024 characters read as a :class:`ConfigId`.
ConfigIdText = Annotated[
    ConfigId,
    GetPydanticSchema(
        lambda _type, _handler: core_schema.no_info_after_validator_function(
            ConfigId.parse, core_schema.str_schema(min_length=3, max_length=1024)
        )
    ),
]


class EnclaveAttestRequest(StrictBody):
    """Body of ``POST /v1/enclave/attest``."""

    config_id: ConfigIdText
    nonce: str = Field(pattern=r"^[0-9a-f]{64}$")
    public_key: str = Field(min_length=1, max_length=1024)
    evidence: dict[str, Any]
    otp: str | None = Field(default=None, pattern=r"^[0-9]{1,10}$")


class VolumeTagRequest(StrictBody):
    """Body of ``POST /v1/enclave/volume-tag``."""

    ticket: str = Field(min_length=1, max_length=MAX_TICKET_CHARS, pattern=r"^[A-Za-z0-9_-]+$")
    previous_tag: str | None = Field(pattern=r"^[0-9a-f]{64}$")
    tag: str = Field(pattern=r"^[0-9a-f]{64}$")
    proof: str = Field(pattern=r"^[0-9a-f]{64}$")


def workloads_router(cas: Cas, lane: WorkerLane) -> APIRouter:
    """``POST /v1/enclave/nonce``, ``POST /v1/enclave/attest`` (attesting in ``lane``) and
    ``POST /v1/enclave/volume-tag``."""
    router = APIRouter()
    nonces = NonceStore(shared=cas.guards)
    otp_guard = OtpGuard(cas.config.session_limits, shared=cas.guards)

    # Issuing a nonce stores nothing, not even on PostgreSQL (service/nonces.py): a few
    # microseconds on the event loop cost less than the hop to a worker thread and back.
    @router.post("/v1/enclave/nonce")
    async def nonce() -> dict[str, Any]:
        """A fresh single-use nonce for the next attestation (valid 60 s)."""
        return {"nonce": nonces.issue(), "expires_in": int(nonces.lifetime)}

    # Verifying the evidence, rendering, issuing certificates and sealing run in one hop to the
    # lane, so none of it holds up the event loop. The lane does not wait for the decision's
    # audit entry to be synced: it goes on with the next attestation while this one's answer
    # is held back until its entry is durable, so attestations in flight share one fsync.
    # The answer hands out the workload's next nonce: one that attests again needs one request.
    @router.post("/v1/enclave/attest")
    async def attest(body: EnclaveAttestRequest) -> JSONResponse:
        """Attest a workload; answer its configuration, HPKE-sealed to its public key, and
        the nonce for its next attestation (header ``CAS-Next-Nonce``)."""
        request = WorkloadRequest(
            body.config_id, body.nonce, body.public_key, body.evidence, body.otp
        )
        # Announced now, so that a sync of the decisions before it waits for its entry.
        expected = cas.audit_log.expect()
        try:
            decision = await lane.run_then_wait(
                _durability, decide_workload, cas, nonces, request, otp_guard, expected
            )
        finally:
            expected.release()  # when the lane never ran it: the client went away
        sealed = decision.answer()  # durable by now: raises the refusal or the log's error
        return JSONResponse(
            {"kem": sealed.kem, "sealed": sealed.sealed},
            headers={NEXT_NONCE_HEADER: nonces.issue()},
        )

    reports = ReportLimiter()

    # A plain function, as the session writes are: FastAPI runs it in its thread pool, so the
    # transaction and the audit entry's fsync hold up neither the event loop nor the attestation
    # lane.
    @router.post("/v1/enclave/volume-tag")
    def volume_tag(body: VolumeTagRequest) -> dict[str, Any]:
        """Accept a volume's new tag from the workload its ticket names (compare-and-swap)."""
        report = TagReport(body.ticket, body.previous_tag, body.tag, body.proof)
        return report_volume_tag(cas, reports, report)

    return router


def _durability(decision: WorkloadDecision) -> Future[None] | None:
    """What a decision's answer waits for: its audit entry becoming durable."""
    return decision.durable.future
