"""What the routes share: strict request bodies and the caller of a request."""

from __future__ import annotations

from fastapi import Request
from pydantic import BaseModel, ConfigDict

from opencas.api.auth import caller_of


class StrictBody(BaseModel):
    """A JSON request body: unknown fields and type coercion are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


def caller_hash(request: Request) -> str | None:
    """The key hash of the request's signer, or ``None`` when it is anonymous."""
    caller = caller_of(request)
    return caller.key_hash if caller else None
