"""Snapshots of a CAS's store: one commit's records, encrypted under the database key, named
by the CAS, the commit and the audit head, written to a directory or shipped by a command."""

from __future__ import annotations

import json
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from opencas.audit.chain import line_hash
from opencas.config.availability import load_availability_config
from opencas.config.owner import parse_owner_config
from opencas.config.owner_identity import OwnerIdentity
from opencas.crypto.snapshot_format import decode_snapshot, read_header, split_audit_log
from opencas.errors import ConfigError, ConflictError, ForbiddenError
from opencas.policy.caller import Caller
from opencas.service.cas import Cas, open_cas
from opencas.service.cas_records import read_audit_head
from opencas.service.provisioning import provision
from opencas.service.snapshots import SnapshotFailed, request_snapshot, write_snapshot
from opencas.testing import write_config

OWNER = OwnerIdentity("a1" * 32, None)


def _open(tmp_path: Path, backup: str) -> Cas:
    config = write_config(tmp_path, 18081, 18766, extra=f"[backup]\n{backup}")
    cas = open_cas(load_availability_config(config))
    provision(cas, OWNER, parse_owner_config("", "o.toml", "toml").config, self_provisioned=True)
    with cas.store.transaction() as txn:
        for number in range(20):
            txn.put("sessions", f"s{number}", f"value {number}".encode())
    return cas


@pytest.fixture
def cas(tmp_path: Path) -> Iterator[Cas]:
    (tmp_path / "snaps").mkdir()
    opened = _open(tmp_path, 'directory = "snaps"\n')
    yield opened
    opened.close()


def test_a_snapshot_holds_every_record_of_one_commit_and_names_it(cas: Cas, tmp_path: Path) -> None:
    written = request_snapshot(cas, Caller(OWNER.key_hash))
    path = tmp_path / "snaps" / written.name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = path.read_bytes()
    assert len(data) == written.size
    header, records = decode_snapshot(data, cas.database_key)
    assert header.cluster_id == cas.identity.cluster_id
    assert header.cas_key_hash == cas.identity.cas_key_hash
    assert header.state_counter == cas.store.state().counter
    head = read_audit_head(cas.store)
    assert head is not None
    assert (header.audit_seq, header.audit_head) == (head.seq, head.hash)
    store_records, lines = split_audit_log(records)
    found = {(table, key): value for table, key, _, value in store_records}
    assert found["sessions", "s7"] == b"value 7"
    assert ("cas", "identity") in found
    assert not any(table.startswith("_") for table, _ in found)
    # The audit log rides along up to the committed head, so a restore continues its chain.
    assert len(lines) == head.seq
    assert line_hash(lines[-1]) == head.hash
    assert header.instance_id == cas.identity.instance_id
    assert header.backups == ()
    assert written.name.startswith(f"{header.cluster_id}-{header.state_counter:016}-")
    entries = [json.loads(line) for line in cas.config.audit_log_path.read_text().splitlines()]
    logged = [entry for entry in entries if entry["event"] == "snapshot_written"]
    assert len(logged) == 1
    assert logged[0]["actor"] == OWNER.key_hash
    assert logged[0]["details"]["state_counter"] == header.state_counter
    assert not [p for p in (tmp_path / "snaps").iterdir() if p.name.endswith(".tmp")]


def test_only_the_owner_asks_for_a_snapshot(cas: Cas, tmp_path: Path) -> None:
    with pytest.raises(ForbiddenError):
        request_snapshot(cas, Caller("b2" * 32))
    assert list((tmp_path / "snaps").iterdir()) == []


def test_a_command_ships_the_snapshot_and_a_failing_one_fails_it(tmp_path: Path) -> None:
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    script = tmp_path / "ship.py"
    script.write_text(
        "import shutil, sys\n"
        f"shutil.copy(sys.argv[1], {str(shipped)!r})\n"
        f"sys.exit(3 if __import__('os').path.exists({str(tmp_path / 'refuse')!r}) else 0)\n"
    )
    cas = _open(tmp_path, f"command = [{json.dumps(sys.executable)}, {json.dumps(str(script))}]\n")
    try:
        written = write_snapshot(cas)
        header, _ = read_header((shipped / written.name).read_bytes())
        assert header.snapshot_id == written.header.snapshot_id
        # Nothing is left beside the database.
        assert not list(cas.config.database_path.parent.glob("*.ocas-snapshot"))
        (tmp_path / "refuse").touch()
        with pytest.raises(SnapshotFailed, match="failed with exit code 3"):
            write_snapshot(cas)
    finally:
        cas.close()


def test_a_command_that_outlasts_its_timeout_is_stopped_and_fails_the_snapshot(
    tmp_path: Path,
) -> None:
    script = tmp_path / "slow.py"
    script.write_text("import time\ntime.sleep(60)\n")
    command = f"command = [{json.dumps(sys.executable)}, {json.dumps(str(script))}]\n"
    cas = _open(tmp_path, command + "command_timeout = 0.5\n")
    try:
        assert cas.config.backup.command_timeout == 0.5
        with pytest.raises(SnapshotFailed, match=r"within 0\.5 s \(\[backup\] command_timeout\)"):
            write_snapshot(cas)
        assert not list(cas.config.database_path.parent.glob("*.ocas-snapshot"))
    finally:
        cas.close()


def test_a_command_has_ten_minutes_unless_the_config_says(tmp_path: Path) -> None:
    config = write_config(tmp_path, 18081, 18766, extra='[backup]\ncommand = ["ship"]\n')
    assert load_availability_config(config).backup.command_timeout == 600


def test_without_a_target_a_snapshot_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, 18081, 18766)
    cas = open_cas(load_availability_config(config))
    try:
        with pytest.raises(ConflictError, match=r"no \[backup\] directory or command"):
            write_snapshot(cas)
    finally:
        cas.close()


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ("interval = 60\n", "interval needs a target"),
        ('directory = "a"\ncommand = ["b"]\n', "write only one"),
        ('interval = 0\ndirectory = "a"\n', "interval"),
        ("command = []\n", "command"),
        ('directory = "a"\nevery = 3\n', "every"),
        ('directory = "a"\ncommand_timeout = 5\n', "command_timeout .* needs a command"),
        ('command = ["b"]\ncommand_timeout = 0\n', "command_timeout"),
        ('command = ["b"]\ncommand_timeout = 86401\n', "command_timeout"),
        ('command = ["b"]\ncommand_timeout = "5"\n', "command_timeout"),
    ],
)
def test_the_backup_section_is_validated(tmp_path: Path, section: str, problem: str) -> None:
    config = write_config(tmp_path, 18081, 18766, extra=f"[backup]\n{section}")
    with pytest.raises(ConfigError, match=problem) as caught:
        load_availability_config(config)
    assert "[backup]" in str(caught.value)
