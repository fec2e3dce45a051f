"""Routes of the audit log: its owner reads it page by page."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from opencas.api.auth import caller_of
from opencas.audit.chain import MAX_SEQ
from opencas.service.audit import read_page
from opencas.service.cas import Cas
from opencas.service.provisioning import require_owner


def audit_router(cas: Cas) -> APIRouter:
    """``GET /v1/audit?from=SEQ``."""
    router = APIRouter()

    @router.get("/v1/audit")
    def read_audit(
        request: Request,
        start: Annotated[int, Query(alias="from", ge=1, le=MAX_SEQ)] = 1,
    ) -> dict[str, Any]:
        """The audit log's entries from ``seq`` ``from`` on, one page, with the current head
        and the committed checkpoints (owner only)."""
        require_owner(cas, caller_of(request))
        page = read_page(cas.audit_log, cas.store, cas.config.audit_log_path, start)
        return {
            "entries": page.entries,
            "next": page.next,
            "head": {"seq": page.head.seq, "hash": page.head.hash},
            "checkpoints": [{"seq": point.seq, "hash": point.hash} for point in page.checkpoints],
        }

    return router
