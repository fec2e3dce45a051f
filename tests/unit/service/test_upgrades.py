"""Registered upgrades (owner only, audit-logged, bounded), the check a build passes before it
serves a database it opened, and the versioned store migrations an older build refuses."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest

from opencas.attestation.peer_admission import RegisteredUpgrade
from opencas.client.channel import ApiError
from opencas.client.identity import ClientIdentity
from opencas.config.availability import load_availability_config
from opencas.errors import ConflictError, ForbiddenError, NotFoundError, StoreError
from opencas.policy.caller import Caller
from opencas.service import cas as cas_module
from opencas.service.cas import Cas, open_cas
from opencas.service.software import (
    MAX_REGISTERED_UPGRADES,
    SoftwareRefused,
    read_software,
)
from opencas.service.store_migrations import (
    STORE_SCHEMA_VERSION,
    StoreSchemaRecord,
    read_store_schema,
)
from opencas.service.upgrades import list_upgrades, register_upgrade, unregister_upgrade
from opencas.store.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from opencas.testing import InProcessCas, rewrite_as_sqlite_schema_2

NEXT = "ab" * 32
OTHER = "cd" * 32


@pytest.fixture
def owned(api: InProcessCas, tmp_path: Path) -> tuple[InProcessCas, ClientIdentity]:
    owner = ClientIdentity.load_or_create(tmp_path / "owner")
    api.provision(owner)
    return api, owner


def _events(cas: Cas) -> list[dict[str, object]]:
    lines = cas.config.audit_log_path.read_text().splitlines()
    return [json.loads(line) for line in lines]


def _reopen_as(cas: Cas, monkeypatch: pytest.MonkeyPatch, measurement: str) -> Cas:
    """Close ``cas`` and open its database as the build ``measurement``."""
    cas.close()
    monkeypatch.setattr(cas_module, "package_measurement", lambda: measurement)
    return open_cas(load_availability_config(cas.config.source))


def test_the_owner_registers_lists_and_unregisters_upgrades_each_audit_logged(
    owned: tuple[InProcessCas, ClientIdentity],
) -> None:
    api, owner = owned
    client = api.client(owner)
    entry = client.register_upgrade(NEXT)
    assert entry.upgrade_id == RegisteredUpgrade(measurement=NEXT).upgrade_id
    assert entry.registered_by == owner.key_hash
    again = client.register_upgrade(NEXT)
    assert again == entry
    signer = client.register_upgrade(mrsigner="ef" * 32, isv_prod_id=3, isv_svn=2)
    assert signer.min_isv_svn == 2
    assert [each.upgrade_id for each in client.list_upgrades()] == [
        entry.upgrade_id,
        signer.upgrade_id,
    ]
    removed = client.unregister_upgrade(entry.upgrade_id)
    assert removed.measurement == NEXT
    assert [each.upgrade_id for each in client.list_upgrades()] == [signer.upgrade_id]
    events = [(e["event"], e["subject"]) for e in _events(api.cas)]
    assert events.count(("upgrade_registered", entry.upgrade_id)) == 1
    assert ("upgrade_registered", signer.upgrade_id) in events
    assert ("upgrade_unregistered", entry.upgrade_id) in events
    with pytest.raises(ApiError) as missing:
        client.unregister_upgrade(entry.upgrade_id)
    assert missing.value.code == "upgrade-not-found"


def test_only_the_owner_may_see_or_change_upgrades(
    owned: tuple[InProcessCas, ClientIdentity], tmp_path: Path
) -> None:
    api, _ = owned
    stranger = api.client(ClientIdentity.load_or_create(tmp_path / "stranger"))
    for attempt in (
        lambda: stranger.register_upgrade(NEXT),
        stranger.list_upgrades,
        lambda: stranger.unregister_upgrade("0" * 16),
    ):
        with pytest.raises(ApiError) as refused:
            attempt()
        assert refused.value.code == "not-owner"
    anonymous = api.send("POST", "/v1/owner/upgrades", json={"measurement": NEXT})
    assert anonymous.status_code == 401
    assert list_upgrades(api.cas, Caller(owned[1].key_hash)).upgrades == ()


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({}, "measurement alone"),
        ({"measurement": NEXT, "mrsigner": "ef" * 32, "isv_prod_id": 1, "isv_svn": 1}, "alone"),
        ({"mrsigner": "ef" * 32, "isv_prod_id": 1}, "together"),
        ({"measurement": "AB" * 32}, "measurement"),
        ({"measurement": "ab" * 65}, "measurement"),
        ({"mrsigner": "ef" * 32, "isv_prod_id": 70000, "isv_svn": 1}, "isv_prod_id"),
        ({"measurement": NEXT, "note": "x"}, "note"),
    ],
)
def test_a_malformed_registration_is_refused_naming_what_is_wrong(
    owned: tuple[InProcessCas, ClientIdentity], body: dict[str, object], names: str
) -> None:
    api, owner = owned
    response = api.send("POST", "/v1/owner/upgrades", json=body, signer=owner)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid-request"
    assert names in response.text


def test_an_upgrade_id_that_is_not_16_hex_digits_is_refused(
    owned: tuple[InProcessCas, ClientIdentity],
) -> None:
    api, owner = owned
    response = api.send("DELETE", "/v1/owner/upgrades/not-an-id", signer=owner)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid-request"


def test_the_running_build_and_more_than_the_limit_are_refused(
    owned: tuple[InProcessCas, ClientIdentity],
) -> None:
    api, owner = owned
    caller = Caller(owner.key_hash)
    with pytest.raises(ConflictError) as running:
        register_upgrade(
            api.cas, caller, RegisteredUpgrade(measurement=api.cas.platform.measurement)
        )
    assert running.value.code == "upgrade-is-running-build"
    for number in range(MAX_REGISTERED_UPGRADES):
        register_upgrade(api.cas, caller, RegisteredUpgrade(measurement=f"{number:064x}"))
    with pytest.raises(ConflictError) as full:
        register_upgrade(api.cas, caller, RegisteredUpgrade(measurement=NEXT))
    assert full.value.code == "too-many-upgrades"
    with pytest.raises(ForbiddenError):
        unregister_upgrade(api.cas, Caller("0f" * 32), "0" * 16)
    with pytest.raises(NotFoundError):
        unregister_upgrade(api.cas, caller, "0" * 16)


def test_a_build_takes_over_the_database_only_as_a_registered_upgrade(
    owned: tuple[InProcessCas, ClientIdentity], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, owner = owned
    cas = api.cas
    old = cas.platform.measurement
    software = read_software(cas.store)
    assert software is not None
    assert software.measurement == old
    api.close()
    cas.close()
    monkeypatch.setattr(cas_module, "package_measurement", lambda: NEXT)
    with pytest.raises(SoftwareRefused) as refused:
        open_cas(load_availability_config(cas.config.source))
    assert NEXT in refused.value.message
    assert old in refused.value.message
    assert "no registered upgrade names it" in refused.value.message

    monkeypatch.setattr(cas_module, "package_measurement", lambda: old)
    cas = open_cas(load_availability_config(cas.config.source))
    register_upgrade(cas, Caller(owner.key_hash), RegisteredUpgrade(measurement=NEXT))
    cas = _reopen_as(cas, monkeypatch, NEXT)
    try:
        assert cas.took_over is not None
        assert cas.took_over.upgraded
        assert cas.took_over.previous == old
        now = read_software(cas.store)
        assert now is not None
        assert now.measurement == NEXT
    finally:
        cas.close()
    # The build it replaced is not an upgrade of the new one: refused in turn.
    monkeypatch.setattr(cas_module, "package_measurement", lambda: old)
    with pytest.raises(SoftwareRefused, match="no registered upgrade names it"):
        open_cas(load_availability_config(cas.config.source))


def test_a_store_migrated_by_a_newer_build_is_refused_naming_that_build(cas: Cas) -> None:
    assert read_store_schema(cas.store) is not None
    with cas.store.transaction() as txn:
        newer = StoreSchemaRecord(
            version=STORE_SCHEMA_VERSION + 1, migrated_by=OTHER, migrated_at="2026-01-01T00:00:00Z"
        )
        txn.put("store", "schema", newer.model_dump_json().encode())
    assert cas.readiness_problem() is not None
    cas.close()
    with pytest.raises(StoreError) as refused:
        open_cas(load_availability_config(cas.config.source))
    message = refused.value.message
    assert f"record schema version {STORE_SCHEMA_VERSION + 1}" in message
    assert OTHER in message
    assert f"up to {STORE_SCHEMA_VERSION}" in message


def test_a_store_from_before_migrations_is_migrated_and_its_build_recorded(cas: Cas) -> None:
    with cas.store.transaction() as txn:
        for table, key in (
            ("store", "schema"),
            ("upgrades", "registered"),
            ("upgrades", "software"),
        ):
            assert txn.delete(table, key)
    cas.close()
    reopened = open_cas(load_availability_config(cas.config.source))
    try:
        assert reopened.took_over is not None
        assert (reopened.took_over.schema_before, reopened.took_over.schema_after) == (
            0,
            STORE_SCHEMA_VERSION,
        )
        assert reopened.took_over.basis is None
        schema = read_store_schema(reopened.store)
        assert schema is not None
        assert schema.migrated_by == reopened.platform.measurement
        software = read_software(reopened.store)
        assert software is not None
        assert software.measurement == reopened.platform.measurement
    finally:
        reopened.close()


def _sqlite_schema(cas: Cas) -> int:
    with contextlib.closing(sqlite3.connect(cas.config.database_path)) as conn:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)


def test_a_store_of_sqlite_schema_2_is_converted_by_the_build_that_takes_it_over_only(
    owned: tuple[InProcessCas, ClientIdentity], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, owner = owned
    cas = api.cas
    old = cas.platform.measurement
    with cas.store.transaction() as txn:
        txn.put("sessions", "kept", b"across the conversion")
    register_upgrade(cas, Caller(owner.key_hash), RegisteredUpgrade(measurement=NEXT))
    api.close()
    cas.close()
    rewrite_as_sqlite_schema_2(cas.config.database_path)
    # A build that may not serve the CAS leaves the tables as they are, so the build that
    # serves it still opens them.
    monkeypatch.setattr(cas_module, "package_measurement", lambda: OTHER)
    with pytest.raises(SoftwareRefused):
        open_cas(load_availability_config(cas.config.source))
    assert _sqlite_schema(cas) == 2
    # The build that serves it opens them as they are, and leaves them so.
    cas = _reopen_as(cas, monkeypatch, old)
    assert cas.store.get("sessions", "kept") == b"across the conversion"
    assert _sqlite_schema(cas) == 2
    # The registered upgrade converts them as it takes over.
    cas = _reopen_as(cas, monkeypatch, NEXT)
    try:
        assert cas.took_over is not None
        assert cas.took_over.upgraded
        assert _sqlite_schema(cas) == SQLITE_SCHEMA_VERSION
        assert cas.store.get("sessions", "kept") == b"across the conversion"
    finally:
        cas.close()
