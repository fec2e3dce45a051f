"""Routes of the CAS owner: attested provisioning, the owner config, the recovery shares and the
database key rollover."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field

from opencas.api.auth import caller_of
from opencas.api.routes.bodies import StrictBody
from opencas.config.owner import owner_config_from_normal_form
from opencas.crypto.recovery_documents import document_json
from opencas.service.backups import (
    NAME_PATTERN,
    BackupRecord,
    list_backups,
    register_backup,
    unregister_backup,
)
from opencas.service.cas import Cas
from opencas.service.key_handover import HandoverRequest
from opencas.service.key_rollover import RolloverRecord, rollover_status, start_key_rollover
from opencas.service.provisioning import (
    provision_with_token,
    show_owner_config,
    show_recovery_shares,
    update_owner_config,
)
from opencas.service.snapshots import request_snapshot
from opencas.service.token_guard import TokenGuard

MAX_TOKEN_LENGTH = 256


class ProvisionRequest(StrictBody):
    """Body of ``POST /v1/provision``."""

    token: str = Field(min_length=1, max_length=MAX_TOKEN_LENGTH)
    owner_config: dict[str, Any]


class BackupRegistration(StrictBody):
    """Body of ``POST /v1/owner/backups``: the backup's name and URL, and the key handover
    request the owner's casctl fetched from it (checked again here)."""

    name: str = Field(min_length=1, max_length=64, pattern=NAME_PATTERN)
    url: str = Field(min_length=1, max_length=512)
    request: HandoverRequest


class OwnerConfigRequest(StrictBody):
    """Body of ``PUT /v1/owner/config``."""

    owner_config: dict[str, Any]


def owner_router(cas: Cas) -> APIRouter:
    """``POST /v1/provision``, ``GET`` and ``PUT /v1/owner/config``,
    ``GET /v1/owner/recovery/shares``, ``GET`` and ``POST /v1/owner/key-rollover``,
    ``POST /v1/owner/snapshots``, ``GET`` and ``POST /v1/owner/backups``,
    ``DELETE /v1/owner/backups/{name}``."""
    router = APIRouter()
    guard = TokenGuard(shared=cas.guards)

    @router.post("/v1/provision")
    def provision(body: ProvisionRequest, request: Request) -> dict[str, Any]:
        """Attested provisioning: the signer of this request becomes the CAS owner."""
        caller = caller_of(request)
        caller.signer("provisioning")  # before the body is parsed: anonymous work costs nothing
        config = owner_config_from_normal_form(body.owner_config)
        state = provision_with_token(cas, guard, body.token, caller, config)
        return {
            "provisioned": state.provisioned,
            "provisioned_at": state.provisioned_at,
            "owner_identity_hash": state.owner_identity_hash,
            "owner_config_sha256": state.owner_config_sha256,
        }

    @router.get("/v1/owner/config")
    def show_config(request: Request) -> dict[str, Any]:
        """The owner config, secrets redacted (owner only)."""
        shown = show_owner_config(cas, caller_of(request))
        return {"owner_config": shown.redacted, "owner_config_sha256": shown.sha256}

    @router.put("/v1/owner/config")
    def update_config(body: OwnerConfigRequest, request: Request) -> dict[str, Any]:
        """Replace the owner config (owner only)."""
        caller = caller_of(request)
        caller.signer("an owner operation")  # before the body is parsed, as for provisioning
        config = owner_config_from_normal_form(body.owner_config)
        return {"owner_config_sha256": update_owner_config(cas, caller, config)}

    @router.get("/v1/owner/recovery/shares")
    def recovery_shares(request: Request) -> dict[str, Any]:
        """The recovery shares, each HPKE-sealed to its recovery key (owner only)."""
        shares = show_recovery_shares(cas, caller_of(request))
        return {"shares": [document_json(share) for share in shares]}

    @router.get("/v1/owner/key-rollover")
    def key_rollover(request: Request) -> dict[str, Any]:
        """The progress of the running or last database key rollover (owner only)."""
        return _rollover_json(rollover_status(cas, caller_of(request)))

    @router.post("/v1/owner/key-rollover")
    def start_rollover(request: Request) -> dict[str, Any]:
        """Start rolling the database key over (owner only); it runs in the background."""
        return _rollover_json(start_key_rollover(cas, caller_of(request)))

    @router.post("/v1/owner/snapshots")
    def snapshot(request: Request) -> dict[str, Any]:
        """Write a snapshot of the store to the ``[backup]`` target now (owner only)."""
        written = request_snapshot(cas, caller_of(request))
        return {"name": written.name, "bytes": written.size} | written.header.to_json()

    @router.get("/v1/owner/backups")
    def backups(request: Request) -> dict[str, Any]:
        """The registered backups (owner only)."""
        return {"backups": [_backup_json(each) for each in list_backups(cas, caller_of(request))]}

    @router.post("/v1/owner/backups")
    def add_backup(body: BackupRegistration, request: Request) -> dict[str, Any]:
        """Register a backup CAS after verifying its evidence (owner only)."""
        caller = caller_of(request)
        return _backup_json(register_backup(cas, caller, body.name, body.url, body.request))

    @router.delete("/v1/owner/backups/{name}")
    def remove_backup(name: str, request: Request) -> dict[str, Any]:
        """Unregister a backup (owner only): later snapshots carry no key for it."""
        return _backup_json(unregister_backup(cas, caller_of(request), name))

    return router


def _backup_json(record: BackupRecord) -> dict[str, Any]:
    return record.model_dump(exclude={"public_key", "request_id"})


def _rollover_json(record: RolloverRecord | None) -> dict[str, Any]:
    if record is None:
        return {"state": "none"}
    return record.model_dump(exclude={"cursor", "cursor_table", "cursor_id"})
