"""Registering backups and restoring snapshots on them, in process: the primary decides on the
backup's evidence itself, a snapshot carries the key only for registered backups, and a restore
goes on from the snapshot's commit and audit head."""

from __future__ import annotations

import json
import secrets
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from opencas.attestation.evidence import VerifiedEvidence
from opencas.attestation.peer_admission import SoftwareIdentity
from opencas.audit.chain import line_hash
from opencas.config.availability import AvailabilityConfig, load_availability_config
from opencas.config.owner import parse_owner_config
from opencas.config.owner_identity import OwnerIdentity
from opencas.crypto.snapshot_format import read_header
from opencas.errors import ConflictError, ForbiddenError, InvalidRequest, NotFoundError
from opencas.policy.caller import Caller
from opencas.service import backups
from opencas.service.backups import (
    RestoreRefused,
    backup_key,
    backup_request,
    list_backups,
    record_restored,
    register_backup,
    restore,
    unregister_backup,
)
from opencas.service.cas import Cas, load_platform, open_cas
from opencas.service.key_handover import HandoverRefused, HandoverRequest
from opencas.service.provisioning import provision
from opencas.service.snapshots import write_snapshot
from opencas.testing import write_config

OWNER = OwnerIdentity("a1" * 32, None)
AS_OWNER = Caller(OWNER.key_hash)


def _machine(directory: Path, extra: str = "") -> AvailabilityConfig:
    directory.mkdir(parents=True, exist_ok=True)
    return load_availability_config(write_config(directory, 18081, 18766, extra=extra))


def _asked(config: AvailabilityConfig) -> HandoverRequest:
    platform = load_platform(config)
    return backup_request(
        platform, backup_key(config, platform, create=True), secrets.token_hex(16)
    )


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[Cas]:
    (tmp_path / "snaps").mkdir()
    cas = open_cas(
        _machine(tmp_path / "primary", f'[backup]\ndirectory = "{tmp_path / "snaps"}"\n')
    )
    provision(cas, OWNER, parse_owner_config("", "o.toml", "toml").config, self_provisioned=True)
    with cas.store.transaction() as txn:
        txn.put("sessions", "kept", b"the session")
    yield cas
    cas.close()


def _events(cas: Cas) -> list[dict[str, object]]:
    lines = cas.config.audit_log_path.read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_a_registered_backup_restores_a_snapshot_that_goes_on_from_it(
    tmp_path: Path, primary: Cas
) -> None:
    standby = _machine(tmp_path / "standby")
    registered = register_backup(
        primary, AS_OWNER, "standby", "https://10.0.0.2:8081", _asked(standby)
    )
    assert registered.basis == "same-software"
    assert [each.name for each in list_backups(primary, AS_OWNER)] == ["standby"]
    written = write_snapshot(primary)
    path = tmp_path / "snaps" / written.name
    header, _ = read_header(path.read_bytes())
    assert [each.name for each in header.backups] == ["standby"]
    assert header.backups[0].key_hash == registered.key_hash
    assert b"the session" not in path.read_bytes()

    restored = restore(standby, path)
    cas = open_cas(standby)
    try:
        record_restored(cas, restored)
        assert cas.store.get("sessions", "kept") == b"the session"
        assert cas.identity.cas_key_hash == primary.identity.cas_key_hash
        assert cas.identity.instance_id == primary.identity.instance_id
        report = cas.report("00" * 16)
        assert report.restored_from is not None
        assert report.restored_from.snapshot_id == header.snapshot_id
        assert report.restored_from.state_counter == header.state_counter
        assert report.state.counter > header.state_counter
        # The chain goes on from the snapshot's head: this start's entry, then the restore's.
        lines = cas.config.audit_log_path.read_bytes().splitlines()
        assert line_hash(lines[header.audit_seq - 1]) == header.audit_head
        after = [json.loads(line) for line in lines[header.audit_seq :]]
        assert [entry["event"] for entry in after] == ["cas_started", "restored"]
        assert after[0]["prev"] == header.audit_head
        assert report.audit.seq == header.audit_seq + 2
    finally:
        cas.close()


def test_registration_is_the_owners_and_checked(tmp_path: Path, primary: Cas) -> None:
    request = _asked(_machine(tmp_path / "standby"))
    with pytest.raises(ForbiddenError):
        register_backup(primary, Caller("b2" * 32), "standby", "https://h:1", request)
    with pytest.raises(InvalidRequest, match="backup name"):
        register_backup(primary, AS_OWNER, "-bad", "https://h:1", request)
    with pytest.raises(InvalidRequest, match="backup URL"):
        register_backup(primary, AS_OWNER, "standby", "http://h:1", request)
    with pytest.raises(HandoverRefused, match="not 'backup'"):
        register_backup(
            primary,
            AS_OWNER,
            "standby",
            "https://h:1",
            request.model_copy(update={"purpose": "join"}),
        )
    other = _asked(_machine(tmp_path / "other"))
    with pytest.raises(HandoverRefused) as changed:
        register_backup(
            primary,
            AS_OWNER,
            "standby",
            "https://h:1",
            request.model_copy(update={"public_key": other.public_key}),
        )
    assert changed.value.check == "binding"
    register_backup(primary, AS_OWNER, "standby", "https://h:1", request)
    with pytest.raises(ConflictError, match="registered already"):
        register_backup(primary, AS_OWNER, "standby", "https://h:1", other)
    with pytest.raises(ConflictError, match="registered already as 'standby'"):
        register_backup(primary, AS_OWNER, "again", "https://h:1", request)
    assert [e["event"] for e in _events(primary)].count("backup_registered") == 1


def test_a_backup_with_a_lower_security_version_is_refused_at_registration(
    tmp_path: Path, primary: Cas, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SGX rule, as the primary applies it to the evidence it verified itself."""
    enclave = VerifiedEvidence(
        platform="sgx-dcap",
        measurement="a1" * 32,
        report_data=bytes(64),
        debug=False,
        platform_key_hash="9a" * 32,
        tcb_status="UpToDate",
        advisories=(),
        mrsigner="b1" * 32,
        isv_prod_id=7,
        isv_svn=3,
    )
    older_backup = replace(enclave, measurement="a2" * 32, isv_svn=2)
    monkeypatch.setattr(backups, "verified_request", lambda *_, **__: older_backup)
    monkeypatch.setattr(backups, "own_identity", lambda *_, **__: SoftwareIdentity.of(enclave))
    request = _asked(_machine(tmp_path / "standby"))
    with pytest.raises(HandoverRefused) as refused:
        register_backup(primary, AS_OWNER, "standby", "https://h:1", request)
    assert refused.value.check == "security-version"
    assert "security version 2 is below this CAS's 3" in refused.value.message
    assert list_backups(primary, AS_OWNER) == []
    assert "backup_registered" not in [e["event"] for e in _events(primary)]


def test_an_unregistered_machine_cannot_restore(tmp_path: Path, primary: Cas) -> None:
    standby, stranger = _machine(tmp_path / "standby"), _machine(tmp_path / "stranger")
    register_backup(primary, AS_OWNER, "standby", "https://h:1", _asked(standby))
    _asked(stranger)  # a backup machine too, never registered
    path = tmp_path / "snaps" / write_snapshot(primary).name
    with pytest.raises(RestoreRefused, match="is not registered as a backup of that CAS"):
        restore(stranger, path)
    assert not stranger.database_path.exists()
    with pytest.raises(RestoreRefused, match="has no backup key"):
        restore(_machine(tmp_path / "bystander"), path)

    unregister_backup(primary, AS_OWNER, "standby")
    with pytest.raises(NotFoundError):
        unregister_backup(primary, AS_OWNER, "standby")
    later = tmp_path / "snaps" / write_snapshot(primary).name
    with pytest.raises(RestoreRefused, match="only for the backups: none"):
        restore(standby, later)
    events = [e["event"] for e in _events(primary)]
    assert events.index("backup_registered") < events.index("backup_unregistered")
    # The snapshot taken while it was registered still restores there.
    restore(standby, path)
    with pytest.raises(RestoreRefused, match="exists already"):
        restore(standby, path)


def test_a_snapshot_put_together_from_two_is_refused(tmp_path: Path, primary: Cas) -> None:
    standby = _machine(tmp_path / "standby")
    register_backup(primary, AS_OWNER, "standby", "https://h:1", _asked(standby))
    path = tmp_path / "snaps" / write_snapshot(primary).name
    data = bytearray(path.read_bytes())
    data[-10] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(RestoreRefused, match="does not open"):
        restore(standby, path)
    assert not standby.database_path.exists()
    assert not standby.audit_log_path.exists()


def test_a_restore_reads_the_snapshot_a_frame_at_a_time(tmp_path: Path, primary: Cas) -> None:
    standby = _machine(tmp_path / "standby")
    register_backup(primary, AS_OWNER, "standby", "https://10.0.0.2:8081", _asked(standby))
    value = secrets.token_bytes(2048)
    with primary.store.transaction() as txn:
        for number in range(6000):
            txn.put("sessions", f"bulk-{number:05}", value)
    path = tmp_path / "snaps" / write_snapshot(primary).name
    size = path.stat().st_size
    assert size > 12_000_000

    # Cut short by its last frame: refused, and neither the database nor the log appears.
    cut = tmp_path / "cut.ocas-snapshot"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) - 100])
    del data
    with pytest.raises(RestoreRefused, match="cut short"):
        restore(standby, cut)
    assert not standby.database_path.exists()
    assert not standby.audit_log_path.exists()
    assert not [each for each in standby.audit_log_path.parent.iterdir() if ".tmp-" in each.name]

    tracemalloc.start()
    try:
        restore(standby, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Holding the file, or every record of it, takes more than the snapshot's size; one frame
    # (512 records) in its forms (sealed, opened, parsed, decoded) takes about a third of it.
    assert peak < size / 2, f"the restore held {peak} bytes of a {size}-byte snapshot"
    cas = open_cas(standby)
    try:
        assert cas.store.get("sessions", "bulk-05999") == value
        assert cas.store.get("sessions", "kept") == b"the session"
    finally:
        cas.close()
