"""The one route of a CAS in backup mode (``cas backup``): its key handover request for a
verifier's nonce, which the owner's ``casctl register-backup`` takes to the primary."""

from __future__ import annotations

from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric import x25519
from fastapi import APIRouter, Query

from opencas.platform.base import Platform
from opencas.service.backups import backup_request

#: The verifier's nonce is the request id: 128 bits, lowercase hex.
BACKUP_NONCE_PATTERN = r"^[0-9a-f]{32}$"


def backup_router(platform: Platform, key: x25519.X25519PrivateKey) -> APIRouter:
    """``GET /v1/backup/request``."""
    router = APIRouter()

    # A plain function: evidence is a round trip to the TEE, off the event loop.
    @router.get("/v1/backup/request")
    def request(
        nonce: Annotated[
            str,
            Query(
                pattern=BACKUP_NONCE_PATTERN,
                description="32 lowercase hex digits, chosen fresh by the verifier.",
            ),
        ],
    ) -> dict[str, Any]:
        """A key handover request (purpose ``backup``, request id ``nonce``) for this
        machine's backup key, bound by this machine's evidence."""
        return backup_request(platform, key, nonce).model_dump(mode="json")

    return router
