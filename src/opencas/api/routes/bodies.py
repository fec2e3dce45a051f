"""What the routes share: strict request bodies."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictBody(BaseModel):
    """A JSON request body: unknown fields and type coercion are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)
