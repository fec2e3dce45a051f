"""The CAS's state of each session's volumes: key, current tag and report key, kept encrypted.

Table ``session-volumes`` (key: session name) holds, for each of the session's own (not
imported) volumes, the volume key, its current tag (``None`` until something was written), the
key that report tickets are derived from, and what the session's text gave (``fspf_key``,
``fspf_tag``) when this state was made. The record is written in the transaction that stores
the session, and in the transaction that accepts a new tag, so a tag update and a session
update cannot lose each other (both run in ``BEGIN IMMEDIATE`` transactions, and the session
write reads the states inside its own).
"""

from __future__ import annotations

import hmac
import os

from pydantic import BaseModel, ConfigDict, Field

from opencas.crypto.volume_format import KEY_SIZE
from opencas.policy.model import Session, Volume
from opencas.service.records import read_record, write_record
from opencas.store.base import Reader, Transaction

VOLUMES = "session-volumes"
_HEX64 = r"^[0-9a-f]{64}$"


class VolumeState(BaseModel):
    """One volume as the CAS keeps it. ``key`` and ``report_key`` are secrets."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    key: str = Field(pattern=_HEX64, repr=False)
    tag: str | None = Field(default=None, pattern=_HEX64)
    report_key: str = Field(pattern=_HEX64, repr=False)
    given_key: bool = False
    given_tag: str | None = Field(default=None, pattern=_HEX64)


class VolumesRecord(BaseModel):
    """The states of one session's own volumes, by volume name."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    volumes: dict[str, VolumeState]


def load_volume_states(source: Reader, name: str) -> dict[str, VolumeState]:
    """The states of session ``name``'s own volumes (empty when it has none)."""
    record = read_record(source, VolumesRecord, VOLUMES, name)
    return dict(record.volumes) if record is not None else {}


def write_volume_state(txn: Transaction, name: str, volume: str, state: VolumeState) -> None:
    """Replace the state of volume ``volume`` of session ``name`` within ``txn``."""
    states = load_volume_states(txn, name)
    states[volume] = state
    write_record(txn, VOLUMES, name, VolumesRecord(volumes=states))


def write_session_volumes(txn: Transaction, session: Session) -> None:
    """Store the volume states of the version ``session`` being written within ``txn``.

    A volume keeps its state (key and current tag) when the new text gives the same
    ``fspf_key`` as the state was made from (or none, both times) and the same ``fspf_tag``;
    otherwise its state is made anew: the given key, or a fresh random one, at the given tag
    (``None``: empty). A volume the new version drops loses its state: its key is gone.
    """
    previous = load_volume_states(txn, session.name)
    states = {
        volume.name: _kept_or_new(volume, previous.get(volume.name))
        for volume in session.volumes
        if volume.import_ is None
    }
    if states or previous:
        write_record(txn, VOLUMES, session.name, VolumesRecord(volumes=states))


def _kept_or_new(volume: Volume, prior: VolumeState | None) -> VolumeState:
    if prior is not None and prior.given_tag == volume.fspf_tag:
        if volume.fspf_key is None and not prior.given_key:
            return prior
        if (
            volume.fspf_key is not None
            and prior.given_key
            and hmac.compare_digest(volume.fspf_key, prior.key)
        ):
            return prior
    return VolumeState(
        key=volume.fspf_key or os.urandom(KEY_SIZE).hex(),
        tag=volume.fspf_tag,
        report_key=os.urandom(32).hex(),
        given_key=volume.fspf_key is not None,
        given_tag=volume.fspf_tag,
    )
