"""The records of the CAS's own table: typed reads and writes, and the on-disk format they keep."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from opencas.config.owner import owner_config_sha256, parse_owner_config
from opencas.errors import RecordDamagedError
from opencas.service.cas_records import (
    AuditHeadRecord,
    AuditKeyRecord,
    OwnerRecord,
    StateRecord,
    delete_provisioning_token,
    read_audit_checkpoints,
    read_audit_head,
    read_audit_key,
    read_identity,
    read_owner,
    read_owner_config,
    read_provisioning_token,
    read_state,
    read_tls,
    write_audit_head,
    write_audit_key,
    write_owner,
    write_owner_config,
    write_provisioning_token,
    write_state,
)
from opencas.service.identity import (
    instance_scope,
    populate_new_identity,
    register_joined_instance,
)
from opencas.store import SqliteStore, Transaction
from opencas.store.base import Reader

DMK = bytes(range(32))
CONFIG = parse_owner_config(
    '[api_identity]\ncommon_name = "cas.test"\n', "owner.toml", "toml"
).config


def _populate(txn: Transaction) -> None:
    populate_new_identity(txn, ("localhost",), db_key_injected=False)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore.create_atomically(tmp_path / "cas.db", DMK, _populate)
    yield opened
    opened.close()


def test_a_new_cas_has_identity_tls_state_and_token_under_their_keys(store: SqliteStore) -> None:
    assert store.list_keys("cas") == ["identity", "provisioning-token", "state", "tls"]
    identity, tls = read_identity(store), read_tls(store)
    assert identity.load_ca_certificate().subject == identity.load_ca_certificate().issuer
    assert tls.load_tls_certificate().issuer == identity.load_ca_certificate().subject
    assert tls.load_tls_key().public_key() == tls.load_tls_certificate().public_key()
    assert identity.load_cas_key().curve.name == "secp384r1"
    assert tls.hostnames == ("localhost",)
    assert read_state(store) == StateRecord()
    assert read_owner(store) is None
    assert read_owner_config(store) is None


def test_state_is_stored_as_its_json_object(store: SqliteStore) -> None:
    state = StateRecord(provisioned=True, provisioned_at="2026-12-01T09:00:00Z")
    with store.transaction() as txn:
        write_state(txn, state)
    stored = store.get("cas", "state")
    assert stored is not None
    assert json.loads(stored) == {
        "provisioned": True,
        "self_provisioned": False,
        "provisioned_at": "2026-12-01T09:00:00Z",
        "owner_identity_hash": None,
        "owner_config_sha256": None,
        "db_key_injected": False,
        "recovery_threshold": None,
        "recovery_key_hashes": [],
        "recovered": False,
        "recovered_at": None,
        "restored_from": None,
    }
    assert read_state(store) == state


def test_a_state_written_before_recovery_existed_reads_as_not_recovered(
    store: SqliteStore,
) -> None:
    old = b'{"provisioned": false, "self_provisioned": false, "provisioned_at": null, '
    old += b'"owner_identity_hash": null, "owner_config_sha256": null, "db_key_injected": false}'
    with store.transaction() as txn:
        txn.put("cas", "state", old)
    state = read_state(store)
    assert state.recovered is False
    assert state.recovery_threshold is None


def test_owner_and_owner_config_round_trip(store: SqliteStore) -> None:
    owner = OwnerRecord(key_hash="a1" * 32, certificate_pem=None)
    with store.transaction() as txn:
        write_owner(txn, owner)
        sha = write_owner_config(txn, CONFIG)
    assert sha == owner_config_sha256(CONFIG)
    assert read_owner(store) == owner
    assert read_owner_config(store) == CONFIG
    stored_owner = store.get("cas", "owner")
    stored_config = store.get("cas", "owner-config")
    assert stored_owner is not None
    assert stored_config is not None
    assert json.loads(stored_owner) == {"key_hash": "a1" * 32, "certificate_pem": None}
    assert json.loads(stored_config) == {"normal_form": CONFIG.normal_form(), "sha256": sha}


def test_the_provisioning_token_is_written_read_and_deleted(store: SqliteStore) -> None:
    with store.transaction() as txn:
        write_provisioning_token(txn, "t0ken")
    assert read_provisioning_token(store) == "t0ken"
    stored = store.get("cas", "provisioning-token")
    assert stored is not None
    assert json.loads(stored) == {"token": "t0ken"}
    with store.transaction() as txn:
        delete_provisioning_token(txn)
    assert read_provisioning_token(store) is None


@pytest.mark.parametrize(
    ("key", "read"),
    [
        ("identity", read_identity),
        ("tls", read_tls),
        ("state", read_state),
        ("owner", read_owner),
        ("owner-config", read_owner_config),
        ("provisioning-token", read_provisioning_token),
    ],
)
def test_a_record_that_does_not_fit_is_damaged_and_named(
    store: SqliteStore, key: str, read: Callable[[Reader], object]
) -> None:
    with store.transaction() as txn:
        txn.put("cas", key, b'{"unexpected": true}')
    with pytest.raises(RecordDamagedError) as damaged:
        read(store)
    assert (damaged.value.table, damaged.value.key) == ("cas", key)


def test_a_missing_record_that_must_exist_is_damaged(store: SqliteStore) -> None:
    with store.transaction() as txn:
        txn.delete("cas", "state")
    with pytest.raises(RecordDamagedError, match="missing"):
        read_state(store)


def test_a_key_that_does_not_load_is_damaged(store: SqliteStore) -> None:
    identity = read_identity(store)
    broken = identity.model_copy(update={"cas_key_pem": "not a key"})
    with pytest.raises(RecordDamagedError, match="private key does not load"):
        broken.load_cas_key()
    with pytest.raises(RecordDamagedError, match="certificate does not load"):
        broken.model_copy(update={"ca_certificate_pem": "not a certificate"}).load_ca_certificate()


def test_a_joined_instance_keeps_its_own_tls_key_and_audit_key(store: SqliteStore) -> None:
    joined = "0b7c4c2e-8a1e-4b59-9d3e-4f36a4a6b2a1"
    assert instance_scope(store, joined) == ""
    with store.transaction() as txn:
        register_joined_instance(txn, ("localhost",), joined, "ab" * 16)
    with store.transaction() as txn:
        register_joined_instance(txn, ("localhost",), joined, "cd" * 16)  # once only
    assert instance_scope(store, joined) == joined
    mine, creators = read_tls(store, joined), read_tls(store)
    assert mine.load_tls_key().public_key() != creators.load_tls_key().public_key()
    ca = read_identity(store).load_ca_certificate()
    assert mine.load_tls_certificate().issuer == ca.subject
    assert "tls/" + joined in store.list_keys("cas")
    # Each instance's audit key is its own; the creator's keeps its key.
    own = AuditKeyRecord(key_pem="joined", certificate_pem="joined")
    creator = AuditKeyRecord(key_pem="creator", certificate_pem="creator")
    with store.transaction() as txn:
        write_audit_key(txn, own, joined)
        write_audit_key(txn, creator)
    assert read_audit_key(store, joined) == own
    assert read_audit_key(store) == creator
    assert {"audit-key", "audit-key/" + joined} <= set(store.list_keys("cas"))
    # The log has one head and one set of checkpoints, whichever instance wrote it.
    with store.transaction() as txn:
        write_audit_head(txn, AuditHeadRecord(seq=3, hash="aa" * 32))
        write_audit_head(txn, AuditHeadRecord(seq=9, hash="bb" * 32))
    assert read_audit_head(store) == AuditHeadRecord(seq=9, hash="bb" * 32)
    assert [point.seq for point in read_audit_checkpoints(store)] == [3]
    assert "audit-head" in store.list_keys("cas")
