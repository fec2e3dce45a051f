"""Routes of sessions: create, update, read, and the public values they export."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field

from opencas.api.auth import caller_of
from opencas.api.routes.bodies import StrictBody
from opencas.config.availability import MAX_SESSION_BYTES
from opencas.errors import InvalidRequest
from opencas.policy.caller import Caller
from opencas.service.cas import Cas
from opencas.service.session_limits import UploadRateLimiter
from opencas.service.sessions import (
    create_session,
    exported_values,
    read_session,
    update_session,
)


class SessionRequest(StrictBody):
    """Body of ``POST /v1/sessions`` and ``PUT /v1/sessions/{name}``."""

    session: str = Field(max_length=MAX_SESSION_BYTES)
    signatures: list[dict[str, Any]] = Field(default_factory=list, max_length=64)


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


def sessions_router(cas: Cas) -> APIRouter:
    """The session endpoints; every decision is the stored session's access policy."""
    router = APIRouter()
    uploads = UploadRateLimiter(cas.config.session_limits, shared=cas.guards)

    def uploader(request: Request) -> Caller:
        """The caller of an upload, counted against its key's upload rate."""
        caller = caller_of(request)
        if caller.key_hash is not None:
            uploads.take(caller.key_hash)
        return caller

    # Plain functions: FastAPI runs them in its thread pool, so parsing, hashing, signature
    # checks and generating secrets happen off the event loop, in one hop per request.
    @router.post("/v1/sessions", status_code=201)
    def create(body: SessionRequest, request: Request) -> dict[str, Any]:
        """Create a session; the signer becomes its creator."""
        record = create_session(cas, body.session, uploader(request), body.signatures)
        return {"name": record.name, "hash": record.hash}

    @router.put("/v1/sessions/{name:path}")
    def update(name: str, body: SessionRequest, request: Request) -> dict[str, Any]:
        """Replace a session; its ``predecessor`` must name the current version's hash."""
        record = update_session(cas, name, body.session, uploader(request), body.signatures)
        return {"name": record.name, "hash": record.hash}

    @router.get("/v1/sessions/{name:path}")
    def read(name: str, request: Request) -> dict[str, Any]:
        """The session as stored and its hash (never generated secret values)."""
        record = read_session(cas, name, caller_of(request))
        return {
            "name": record.name,
            "hash": record.hash,
            "session": record.text,
            "creator": record.creator,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "revision": record.revision,
        }

    @router.get("/v1/values/{selector:path}")
    def values(selector: str) -> dict[str, Any]:
        """Public values a session exports (``session=NAME[,secret=S]``); no signature needed."""
        name, secret = parse_values_selector(selector)
        return {"session": name, "values": exported_values(cas, name, secret)}

    return router
