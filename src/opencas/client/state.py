"""What casctl remembers between runs: the CAS instances it attested, and which is the default.

For each pinned CAS it keeps the URL, the CAS key hash and CA certificate it pinned, and the
freshness facts (instance id, highest audit sequence seen), so that a CAS presented in place of a
known one, or one whose state went back, is noticed at the next attestation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from opencas.client.files import write_private_file
from opencas.errors import ClientError

STATE_FILE = "state.json"
ALIAS_PATTERN = r"^[A-Za-z0-9\[][A-Za-z0-9_.:\-\[\]]{0,127}$"


def casctl_home() -> Path:
    """The state directory: ``$CASCTL_HOME``, or ``~/.config/opencas``."""
    configured = os.environ.get("CASCTL_HOME")
    return Path(configured) if configured else Path.home() / ".config" / "opencas"


class PinnedCas(BaseModel):
    """One attested CAS."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: str
    cas_key_hash: str
    ca_certificate_pem: str
    instance_id: str
    """The instance last attested (in state files written before clusters: the CAS's id)."""
    #: The CAS's id, shared by its instances; None in state files written before clusters,
    #: where ``instance_id`` holds it (:meth:`cluster`).
    cluster_id: str | None = None
    #: The instances of this CAS attested so far, the latest last (at most
    #: :data:`MAX_INSTANCES_REMEMBERED`).
    instances: list[str] = Field(default_factory=list, max_length=64)
    audit_seq: int = Field(ge=0)
    """The audit sequence of the instance last attested (each instance keeps its own chain)."""
    #: The highest audit sequence seen of each instance in :attr:`instances`; optional so that
    #: state files written before it still load (their ``audit_seq`` is the one chain they knew).
    audit_seqs: dict[str, int] = Field(default_factory=dict, max_length=64)
    #: The highest store commit counter seen; optional so that older state files still load.
    state_counter: int = Field(default=0, ge=0)
    software_measurement: str
    platform: str
    mode: str
    attested_at: str
    #: The port of its enclave API (``GET /v1/version``), None if the CAS did not say; optional
    #: so that state files written before it existed still load.
    enclave_port: int | None = Field(default=None, ge=1, le=65535)
    #: The snapshot id of the restore this CAS last reported (``restored_from``), None before
    #: one was seen; optional so that older state files still load.
    restored_from: str | None = Field(default=None, max_length=64)

    @property
    def cluster(self) -> str:
        """The id of the CAS pinned, whichever of its instances was attested."""
        return self.cluster_id if self.cluster_id is not None else self.instance_id

    def audit_seq_of(self, instance_id: str) -> int:
        """The highest audit sequence seen of the instance ``instance_id`` (0: none seen)."""
        if not self.audit_seqs:
            return self.audit_seq
        return self.audit_seqs.get(instance_id, 0)


#: How many instances of one CAS casctl remembers having attested.
MAX_INSTANCES_REMEMBERED = 64


class CasctlState(BaseModel):
    """The whole state file."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: int = 1
    default: str | None = None
    cas: dict[str, PinnedCas] = Field(default_factory=dict)

    def resolve(self, name: str | None) -> tuple[str, PinnedCas]:
        """The CAS called ``name`` (or the default); :class:`ClientError` when there is none."""
        chosen = name or self.default
        if chosen is None:
            raise ClientError("no CAS attested yet; run `casctl attest URL` first")
        if chosen not in self.cas:
            known = ", ".join(sorted(self.cas)) or "none"
            raise ClientError(f"no attested CAS called {chosen!r} (known: {known})")
        return chosen, self.cas[chosen]


def load_state(home: Path) -> CasctlState:
    """Read the state file in ``home`` (an empty state if there is none)."""
    path = home / STATE_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return CasctlState()
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return CasctlState.model_validate(json.loads(data))
    except (ValueError, ValidationError) as exc:
        raise ClientError(f"{path} is damaged ({exc.__class__.__name__}); move it away") from exc


def save_state(home: Path, state: CasctlState) -> None:
    """Write the state file atomically, mode 0600."""
    write_private_file(home / STATE_FILE, state.model_dump_json(indent=2).encode("utf-8"))
