"""The files of recovery: a sealed share, a recovery request, and a share sealed to a new CAS.

Each is one JSON object with a ``format`` member, parsed strictly (exactly these keys, exact
types; at most :data:`MAX_DOCUMENT_BYTES`). None is secret on its own:

- a **share** (``opencas-recovery-share/v1``) is sealed to one recovery key; the owner fetches
  them all (``casctl recovery shares``) and hands each to its key's holder;
- a **request** (``opencas-recovery-request/v1``) is what a CAS on a new machine asks for: an
  X25519 key it made and sealed to that machine, and the machine's evidence, whose report data is
  :func:`request_report_data` of that key;
- a **transfer** (``opencas-recovery-transfer/v1``) is one share, opened by its holder and sealed
  again to the key of a request (``casctl recovery open-share``).

This module is pure.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from opencas.crypto.canonical import canonical_sha512, strict_json_object
from opencas.crypto.recovery import MAX_RECOVERY_KEYS, ShareLabel

#: The largest recovery file read: a request carries evidence (a quote with its certificates).
MAX_DOCUMENT_BYTES = 256 * 1024
SHARE_FORMAT = "opencas-recovery-share/v1"
REQUEST_FORMAT = "opencas-recovery-request/v1"
TRANSFER_FORMAT = "opencas-recovery-transfer/v1"
_REQUEST_BINDING = "opencas-recovery-request/v1"

_Hash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
_SplitId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
_Base64 = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[A-Za-z0-9+/]+={0,2}$")]
_Index = Annotated[int, Field(ge=1, le=MAX_RECOVERY_KEYS)]
_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)
_Document = TypeVar("_Document", bound=BaseModel)


class _Labelled(BaseModel):
    model_config = _STRICT

    cas_key_hash: _Hash
    split_id: _SplitId
    threshold: _Index
    index: _Index
    key_hash: _Hash

    def label(self) -> ShareLabel:
        """What the share belongs to, as its HPKE ``info`` binds it."""
        return ShareLabel(
            self.cas_key_hash, self.split_id, self.threshold, self.index, self.key_hash
        )


class ShareDocument(_Labelled):
    """One share of the database key, HPKE-sealed (standard base64) to recovery key ``key_hash``."""

    format: Literal["opencas-recovery-share/v1"]
    sealed: _Base64


class RequestDocument(BaseModel):
    """A CAS on a new machine asks for shares: its X25519 key (base64 DER) and its evidence."""

    model_config = _STRICT

    format: Literal["opencas-recovery-request/v1"]
    public_key: _Base64
    evidence: dict[str, str]


class TransferDocument(_Labelled):
    """One share sealed to the key of a request, whose key hash is ``recipient``."""

    format: Literal["opencas-recovery-transfer/v1"]
    recipient: _Hash
    sealed: _Base64


def request_report_data(public_key_b64: str) -> bytes:
    """The 64 bytes a request's evidence binds: SHA-512 of the canonical JSON of the key."""
    return canonical_sha512({"purpose": _REQUEST_BINDING, "public_key": public_key_b64})


def parse_document(data: bytes, model: type[_Document], source: str) -> _Document:
    """``data`` as a ``model`` document; ``ValueError`` naming ``source`` and what is wrong."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{source}: larger than {MAX_DOCUMENT_BYTES} bytes, not a recovery file")
    try:
        document = strict_json_object(data, source)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "(document)"
        kind = model.__name__.removesuffix("Document").lower()
        raise ValueError(f"{source}: not a recovery {kind} file: {where}: {first['msg']}") from None


def document_json(document: BaseModel) -> dict[str, Any]:
    """The JSON-able form of a recovery document, as it is written to its file."""
    return document.model_dump(mode="json")
