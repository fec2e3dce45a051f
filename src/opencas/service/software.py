"""Which build serves the CAS, which builds the owner registered to take over, and the check a
build passes before it serves a database it opened.

Records (table ``upgrades``, JSON of the models below):

- ``registered`` (:class:`RegisteredUpgrades`): the upgrades the owner registered
  (``casctl register-upgrade``), at most :data:`MAX_REGISTERED_UPGRADES`; created by store
  migration 1 (:mod:`opencas.service.store_migrations`).
- ``software`` (:class:`SoftwareRecord`): the build that serves the CAS (platform, measurement
  and, on SGX, signer, product and security version), written at the first start and again by
  every build that takes over.

**Taking over.** :func:`take_over` runs at every start, once the store is open. A build whose
measurement is the recorded one serves as before. Another build serves only when
:func:`opencas.attestation.peer_admission.admit_build` admits it: a registered upgrade on the
same platform (on SGX of the same signer and product, at an equal or higher security version).
It then applies the store migrations it knows and records itself as the serving build, in one
transaction; from then on the build it replaced is refused in turn (unless the owner registers
it, which a store migrated past what it knows still refuses). Any other build gets
:class:`SoftwareRefused` naming both measurements, and serves nothing.

How a new build gets the database key in the first place depends on the backend: on PostgreSQL
it attests to a running instance (:mod:`opencas.service.cluster`), which checks the same rule
with :func:`opencas.attestation.peer_admission.admit_peer`; on SQLite it unseals the key store
directly where the platform's sealing lets it (a simulated machine's key, a VM's key file), and
:func:`take_over` is then the check that decides; where it cannot (Gramine SGX's MRENCLAVE
sealing) it attests to the running instance through files beside the database
(:mod:`opencas.service.upgrade_in_place`), and :func:`take_over` checks again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from pydantic import BaseModel, ConfigDict

from opencas.attestation.peer_admission import (
    AdmissionBasis,
    RegisteredUpgrade,
    SoftwareIdentity,
    admit_build,
)
from opencas.audit.log import AuditLog
from opencas.errors import CasError
from opencas.platform.base import Platform
from opencas.service.identity import utc_now_text
from opencas.service.records import read_record, write_record
from opencas.service.store_migrations import (
    REGISTERED_KEY,
    STORE_SCHEMA_VERSION,
    UPGRADES_TABLE,
    check_store_schema,
    migrate_store,
)
from opencas.store.base import Reader, Store
from opencas.store.records import upgrade_tables

log = logging.getLogger("opencas")

_SOFTWARE: Final = "software"
#: The most upgrades registered at once; the owner unregisters one to register another.
MAX_REGISTERED_UPGRADES: Final = 16


class SoftwareRefused(CasError, code="software-refused"):
    """This build may not serve the CAS whose database it opened; the message says why."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class UpgradeEntry(_Record):
    """One registered upgrade: a measurement, or on SGX a signer form, and who registered it."""

    upgrade_id: str
    measurement: str | None = None
    mrsigner: str | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None
    registered_at: str
    registered_by: str

    def upgrade(self) -> RegisteredUpgrade:
        """The registration as the admission rule reads it."""
        return RegisteredUpgrade(
            measurement=self.measurement,
            mrsigner=self.mrsigner,
            isv_prod_id=self.isv_prod_id,
            min_isv_svn=self.min_isv_svn,
        )


class RegisteredUpgrades(_Record):
    """``upgrades/registered``: every registered upgrade, oldest first."""

    upgrades: tuple[UpgradeEntry, ...] = ()


class SoftwareRecord(_Record):
    """``upgrades/software``: the build that serves the CAS, since when."""

    platform: str
    measurement: str
    mrsigner: str | None = None
    isv_prod_id: int | None = None
    isv_svn: int | None = None
    since: str

    def identity(self) -> SoftwareIdentity:
        """The build as the admission rule reads it (its TCB is not recorded)."""
        return SoftwareIdentity(
            platform=self.platform,
            measurement=self.measurement,
            debug=False,
            tcb_status="",
            mrsigner=self.mrsigner,
            isv_prod_id=self.isv_prod_id,
            isv_svn=self.isv_svn,
        )


def read_registered(source: Reader) -> RegisteredUpgrades:
    """The registered upgrades (none before store migration 1)."""
    record = read_record(source, RegisteredUpgrades, UPGRADES_TABLE, REGISTERED_KEY)
    return RegisteredUpgrades() if record is None else record


def registered_upgrades(source: Reader) -> list[RegisteredUpgrade]:
    """The registered upgrades as the admission rule reads them."""
    return [entry.upgrade() for entry in read_registered(source).upgrades]


def read_software(source: Reader) -> SoftwareRecord | None:
    """The build recorded as serving the CAS, or ``None`` before any was recorded."""
    return read_record(source, SoftwareRecord, UPGRADES_TABLE, _SOFTWARE)


def serving_build(source: Reader) -> SoftwareIdentity | None:
    """The build recorded as serving the CAS, as the admission rule reads it; ``None`` before
    any was recorded."""
    record = read_software(source)
    return None if record is None else record.identity()


@dataclass(frozen=True)
class TakeOver:
    """What :func:`take_over` found and did: the build before and now, and the migrations."""

    previous: str | None
    """The measurement recorded before (``None`` on a store that had none recorded)."""
    measurement: str
    basis: AdmissionBasis | None
    """Why this build serves: ``same-software``, ``registered-upgrade``, or ``None`` when no
    build was recorded yet (the first start, or a store from before builds were recorded)."""
    schema_before: int
    schema_after: int

    @property
    def upgraded(self) -> bool:
        """Whether another build served the CAS before this one."""
        return self.basis == "registered-upgrade"


def _record_of(build: SoftwareIdentity) -> SoftwareRecord:
    return SoftwareRecord(
        platform=build.platform,
        measurement=build.measurement,
        mrsigner=build.mrsigner,
        isv_prod_id=build.isv_prod_id,
        isv_svn=build.isv_svn,
        since=utc_now_text(),
    )


def take_over(
    store: Store,
    platform: Platform,
    build_identity: Callable[[], SoftwareIdentity],
    where: str,
) -> TakeOver:
    """Check that this build may serve ``store`` and make it the serving build.

    ``build_identity`` gives this build's identity from its own verified evidence; it is asked
    only when this build is not the recorded one (a quote can cost a round trip to the TEE);
    ``where`` names the database in messages.
    Raises :class:`SoftwareRefused` when another build serves the CAS and this one is not a
    registered upgrade of it, and :class:`StoreError` when the store's record schema is newer
    than this build knows; in both cases nothing was written. A build that takes the store
    over converts the backend's tables to its schema in the transaction that records it
    (:func:`opencas.store.records.upgrade_tables`).
    """
    schema = check_store_schema(store)
    recorded = read_software(store)
    if recorded is not None and recorded.measurement == platform.measurement:
        if schema == STORE_SCHEMA_VERSION:
            same = recorded.measurement
            return TakeOver(same, same, "same-software", schema, schema)
        build: SoftwareIdentity | None = None
        basis: AdmissionBasis | None = "same-software"
    else:
        build = build_identity()
        basis = None
        if recorded is not None:
            decision = admit_build(build, recorded.identity(), registered_upgrades(store))
            if not decision.admitted:
                raise SoftwareRefused(
                    f"this build may not serve the CAS in {where}: "
                    f"{decision.reason}; it stops without serving"
                )
            basis = decision.basis
    with store.transaction() as txn:
        # The backend's tables too, in this transaction: a crash before it commits, or a build
        # refused above, leaves them as the build that served the store left them.
        converted = upgrade_tables(txn)
        before, after = migrate_store(txn, platform.measurement)
        if build is not None:
            write_record(txn, UPGRADES_TABLE, _SOFTWARE, _record_of(build))
    previous = None if recorded is None else recorded.measurement
    if converted:
        log.info("the database's tables were converted to this build's schema")
    if before == 0:
        # A store made by this start (or before stores recorded their schema) has no version
        # to migrate from: its records are simply laid out as this build's.
        log.info("store record schema: version %d", after)
    elif before != after:
        log.info("store record schema migrated from version %d to %d", before, after)
    if basis == "registered-upgrade":
        log.info(
            "this build (measurement %s) takes over from %s as a registered upgrade",
            platform.measurement,
            previous,
        )
    return TakeOver(previous, platform.measurement, basis, before, after)


def log_take_over(audit: AuditLog, took_over: TakeOver | None, *, created: bool) -> None:
    """Write ``software_upgraded`` when this start replaced the serving build or migrated the
    store (not for a store created by this start), durable before the CAS serves."""
    if took_over is None or created:
        return
    if not took_over.upgraded and took_over.schema_before == took_over.schema_after:
        return
    audit.append(
        "software_upgraded",
        actor="cas",
        subject=took_over.measurement,
        details={
            "previous": took_over.previous,
            "basis": took_over.basis,
            "store_schema_before": took_over.schema_before,
            "store_schema_after": took_over.schema_after,
        },
    ).wait()
