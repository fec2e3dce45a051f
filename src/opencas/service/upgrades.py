"""The owner's registered upgrades: register, list and unregister the builds that may take over
the CAS (``casctl register-upgrade``, ``list-upgrades``, ``unregister-upgrade``).

A registration names one measurement (any platform), or on SGX a signer form: MRSIGNER, ISV
product id and the lowest ISV SVN accepted. Each is owner only and, for the changes, audit-logged
in the transaction that stores it (``upgrade_registered``, ``upgrade_unregistered``). What a
registration allows is decided in :mod:`opencas.service.software` (a build that opened the
database) and :mod:`opencas.service.cluster` (a build that asks a running instance for the key).
"""

from __future__ import annotations

import logging

from opencas.attestation.peer_admission import RegisteredUpgrade
from opencas.errors import ConflictError, InvalidRequest, NotFoundError
from opencas.policy.caller import Caller
from opencas.service.audit import actor_of, state_change
from opencas.service.cas import Cas
from opencas.service.identity import utc_now_text
from opencas.service.provisioning import require_owner
from opencas.service.records import write_record
from opencas.service.software import (
    MAX_REGISTERED_UPGRADES,
    RegisteredUpgrades,
    UpgradeEntry,
    read_registered,
    read_software,
)
from opencas.service.store_migrations import REGISTERED_KEY, UPGRADES_TABLE

log = logging.getLogger("opencas")


def make_upgrade(
    measurement: str | None,
    mrsigner: str | None,
    isv_prod_id: int | None,
    min_isv_svn: int | None,
) -> RegisteredUpgrade:
    """The upgrade these fields name; :class:`InvalidRequest` when they name none or both forms
    (the field shapes are checked where the request is parsed)."""
    try:
        return RegisteredUpgrade(measurement, mrsigner, isv_prod_id, min_isv_svn)
    except ValueError as exc:
        raise InvalidRequest(
            f"{exc}: give measurement alone, or mrsigner, isv_prod_id and isv_svn together"
        ) from None


def list_upgrades(cas: Cas, caller: Caller) -> RegisteredUpgrades:
    """The registered upgrades, oldest first (owner only)."""
    require_owner(cas, caller)
    return read_registered(cas.store)


def register_upgrade(cas: Cas, caller: Caller, upgrade: RegisteredUpgrade) -> UpgradeEntry:
    """Register ``upgrade`` (owner only); registering one already registered changes nothing
    and returns it as it was.

    Raises :class:`ConflictError` (``upgrade-is-running-build``) for the build that serves the
    CAS, (``too-many-upgrades``) beyond :data:`MAX_REGISTERED_UPGRADES`.
    """
    require_owner(cas, caller)
    with state_change(cas.audit_log) as entry, cas.store.transaction() as txn:
        registered = read_registered(txn)
        for existing in registered.upgrades:
            if existing.upgrade_id == upgrade.upgrade_id:
                return existing
        software = read_software(txn)
        if software is not None and upgrade.measurement == software.measurement:
            raise ConflictError(
                f"measurement {upgrade.measurement} is the build that serves this CAS now; "
                "an upgrade names another build",
                code="upgrade-is-running-build",
            )
        if len(registered.upgrades) >= MAX_REGISTERED_UPGRADES:
            raise ConflictError(
                f"{MAX_REGISTERED_UPGRADES} upgrades are registered already, the most a CAS "
                "keeps; unregister one (casctl unregister-upgrade) first",
                code="too-many-upgrades",
            )
        added = UpgradeEntry(
            upgrade_id=upgrade.upgrade_id,
            measurement=upgrade.measurement,
            mrsigner=upgrade.mrsigner,
            isv_prod_id=upgrade.isv_prod_id,
            min_isv_svn=upgrade.min_isv_svn,
            registered_at=utc_now_text(),
            registered_by=actor_of(caller),
        )
        write_record(
            txn,
            UPGRADES_TABLE,
            REGISTERED_KEY,
            RegisteredUpgrades(upgrades=(*registered.upgrades, added)),
        )
        entry.record(
            txn,
            "upgrade_registered",
            actor=actor_of(caller),
            subject=added.upgrade_id,
            details=_details(added),
        )
    log.info("upgrade %s registered: %s", added.upgrade_id, upgrade.describe())
    return added


def unregister_upgrade(cas: Cas, caller: Caller, upgrade_id: str) -> UpgradeEntry:
    """Unregister the upgrade named ``upgrade_id`` (owner only) and return it.

    A build that took over already keeps serving; from then on no instance of it is admitted
    or takes over again. Raises :class:`NotFoundError` (``upgrade-not-found``).
    """
    require_owner(cas, caller)
    with state_change(cas.audit_log) as entry, cas.store.transaction() as txn:
        registered = read_registered(txn)
        found = next((e for e in registered.upgrades if e.upgrade_id == upgrade_id), None)
        if found is None:
            raise NotFoundError(
                f"no upgrade {upgrade_id} is registered (casctl list-upgrades lists them)",
                code="upgrade-not-found",
            )
        remaining = tuple(e for e in registered.upgrades if e.upgrade_id != upgrade_id)
        write_record(txn, UPGRADES_TABLE, REGISTERED_KEY, RegisteredUpgrades(upgrades=remaining))
        entry.record(
            txn,
            "upgrade_unregistered",
            actor=actor_of(caller),
            subject=found.upgrade_id,
            details=_details(found),
        )
    log.info("upgrade %s unregistered: %s", found.upgrade_id, found.upgrade().describe())
    return found


def _details(entry: UpgradeEntry) -> dict[str, str | int | None]:
    return {
        "measurement": entry.measurement,
        "mrsigner": entry.mrsigner,
        "isv_prod_id": entry.isv_prod_id,
        "min_isv_svn": entry.min_isv_svn,
    }
