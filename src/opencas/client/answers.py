"""What the client API answers, as typed values (docs/api.md has each answer's JSON).

Each is a frozen dataclass whose fields are the answer's members; :class:`StoredSession` calls the
session's text ``text``, as the CAS's own session record does. Members a newer CAS adds are
ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

Port = Annotated[int, Field(ge=1, le=65535)]


@dataclass(frozen=True)
class VersionInfo:
    """``GET /v1/version``: the CAS's software and API version, and where workloads attest."""

    cas_version: str
    api_version: int
    platform: str
    mode: str
    enclave_port: Port | None = None
    """The port of the CAS's enclave API (``enclave_listen``)."""


@dataclass(frozen=True)
class Provisioned:
    """``POST /v1/provision``: the CAS's provisioning facts after it got its owner."""

    provisioned: bool
    provisioned_at: str | None
    owner_identity_hash: str
    owner_config_sha256: str


@dataclass(frozen=True)
class OwnerConfigView:
    """``GET /v1/owner/config``: the owner config in its normal form, secrets redacted."""

    owner_config: dict[str, Any]
    owner_config_sha256: str


@dataclass(frozen=True)
class RecoverySharesAnswer:
    """``GET /v1/owner/recovery/shares``: one share file per recovery key, as the CAS made it."""

    shares: Annotated[list[dict[str, Any]], Field(max_length=16)]


@dataclass(frozen=True)
class KeyRolloverAnswer:
    """``GET`` / ``POST /v1/owner/key-rollover``: the running or last database key rollover
    (``state`` ``none`` when there never was one, and nothing else)."""

    state: str
    key_id: str | None = None
    previous_key_id: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    total: int = 0
    moved: int = 0
    damaged: int = 0


@dataclass(frozen=True)
class UpgradeAnswer:
    """One registered upgrade, as ``POST /v1/owner/upgrades`` (and the list) answers it."""

    upgrade_id: str
    registered_at: str
    registered_by: str
    measurement: str | None = None
    mrsigner: str | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None


@dataclass(frozen=True)
class UpgradesAnswer:
    """``GET /v1/owner/upgrades``: the registered upgrades, oldest first."""

    upgrades: Annotated[list[UpgradeAnswer], Field(max_length=64)]


@dataclass(frozen=True)
class SnapshotAnswer:
    """``POST /v1/owner/snapshots``: the snapshot written, as its header names it."""

    name: str
    bytes: int
    snapshot_id: str
    cluster_id: str
    cas_key_hash: str
    key_id: str
    state: dict[str, int]
    audit: dict[str, Any]
    taken_at: str
    format: str
    instance_id: str | None = None
    backups: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class BackupAnswer:
    """One registered backup (``GET`` / ``POST /v1/owner/backups``,
    ``DELETE /v1/owner/backups/{name}``): its name and URL, the key hash of its attested key,
    what its evidence showed at registration, and who registered it when."""

    name: str
    url: str
    key_hash: str
    platform: str
    measurement: str
    isv_svn: int | None
    tcb_status: str
    basis: str
    registered_at: str
    registered_by: str


@dataclass(frozen=True)
class BackupsAnswer:
    """``GET /v1/owner/backups``: every registered backup."""

    backups: list[BackupAnswer]


@dataclass(frozen=True)
class OwnerConfigUpdated:
    """``PUT /v1/owner/config``: the hash every later report carries."""

    owner_config_sha256: str


@dataclass(frozen=True)
class AuditHeadAnswer:
    """An audit head: the ``seq`` and hash of an entry."""

    seq: Annotated[int, Field(ge=0)]
    hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


@dataclass(frozen=True)
class AuditPageAnswer:
    """``GET /v1/audit?from=SEQ``: entry lines from ``seq`` on, where the next page starts
    (``None``: this was the last), the log's current head and the committed checkpoints."""

    entries: list[str]
    next: Annotated[int, Field(ge=1)] | None
    head: AuditHeadAnswer
    checkpoints: list[AuditHeadAnswer]


@dataclass(frozen=True)
class SessionWritten:
    """``POST /v1/sessions`` and ``PUT /v1/sessions/{name}``: the session version now stored."""

    name: str
    hash: str


@dataclass(frozen=True)
class StoredSession:
    """``GET /v1/sessions/{name}``: the session as stored (never generated secret values)."""

    name: str
    hash: str
    text: Annotated[str, Field(validation_alias="session")]
    """The session's YAML text, exactly as uploaded."""
    creator: str
    created_at: str
    updated_at: str
    revision: int
    """1 at creation, one more with each update."""

    def to_json(self) -> dict[str, Any]:
        """The answer's JSON form, as the CAS sent it (the text under ``session``)."""
        return {
            "name": self.name,
            "hash": self.hash,
            "session": self.text,
            "creator": self.creator,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "revision": self.revision,
        }


@dataclass(frozen=True)
class SessionValues:
    """``GET /v1/values/session=NAME[,secret=S]``: the public values a session exports."""

    session: str
    values: dict[str, str]


@dataclass(frozen=True)
class Whoami:
    """``GET /v1/whoami``: the caller's key hash, or ``anonymous``."""

    identity: str


#: Where every listener of a CAS answers :class:`Health`.
HEALTH_PATH = "/healthz"


@dataclass(frozen=True)
class Health:
    """``GET /healthz``, on every listener: ``status`` is ``"ok"`` while it serves."""

    status: str
