"""Routes of the CAS owner's registered upgrades: ``GET`` and ``POST /v1/owner/upgrades``,
``DELETE /v1/owner/upgrades/{upgrade_id}``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import Field

from opencas.api.auth import caller_of
from opencas.api.routes.bodies import StrictBody
from opencas.attestation.peer_admission import MEASUREMENT_PATTERN, MRSIGNER_PATTERN
from opencas.service.cas import Cas
from opencas.service.software import UpgradeEntry
from opencas.service.upgrades import (
    list_upgrades,
    make_upgrade,
    register_upgrade,
    unregister_upgrade,
)

_UINT16 = Annotated[int, Field(ge=0, le=65535)]


class UpgradeRequest(StrictBody):
    """Body of ``POST /v1/owner/upgrades``: ``measurement`` alone, or ``mrsigner``,
    ``isv_prod_id`` and ``isv_svn`` together."""

    measurement: Annotated[str, Field(pattern=MEASUREMENT_PATTERN)] | None = None
    mrsigner: Annotated[str, Field(pattern=MRSIGNER_PATTERN)] | None = None
    isv_prod_id: _UINT16 | None = None
    isv_svn: _UINT16 | None = None


def upgrade_json(entry: UpgradeEntry) -> dict[str, Any]:
    """One registered upgrade as the API answers it."""
    return entry.model_dump()


def upgrades_router(cas: Cas) -> APIRouter:
    """The owner's upgrade routes (owner only, each)."""
    router = APIRouter()

    @router.get("/v1/owner/upgrades")
    def upgrades(request: Request) -> dict[str, Any]:
        """The registered upgrades, oldest first."""
        registered = list_upgrades(cas, caller_of(request))
        return {"upgrades": [upgrade_json(entry) for entry in registered.upgrades]}

    @router.post("/v1/owner/upgrades")
    def register(body: UpgradeRequest, request: Request) -> dict[str, Any]:
        """Register the build the body names as an upgrade of this CAS."""
        caller = caller_of(request)
        caller.signer("an owner operation")
        upgrade = make_upgrade(body.measurement, body.mrsigner, body.isv_prod_id, body.isv_svn)
        return upgrade_json(register_upgrade(cas, caller, upgrade))

    @router.delete("/v1/owner/upgrades/{upgrade_id}")
    def unregister(
        upgrade_id: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")], request: Request
    ) -> dict[str, Any]:
        """Unregister the upgrade ``upgrade_id`` (as ``GET`` lists it)."""
        return upgrade_json(unregister_upgrade(cas, caller_of(request), upgrade_id))

    return router
