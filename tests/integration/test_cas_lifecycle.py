"""Starting, restarting, stopping and refusing to start a real `cas` process."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest

from opencas.testing import CasProcess, listening_pids


def show(cas: CasProcess) -> dict[str, object]:
    result = cas.run("show-identification", "--json")
    assert result.returncode == 0, result.stderr
    facts: dict[str, object] = json.loads(result.stdout)
    return facts


def test_first_start_logs_identity_and_token(cas: CasProcess) -> None:
    log = cas.log()
    assert "CAS key hash:" in log
    assert "provisioning token:" in log
    # A new store has no earlier schema to have been migrated from.
    assert "store record schema: version" in log
    assert "migrated from version" not in log
    assert cas.database.exists()
    assert (cas.directory / "cas.db.key-store").exists()


def test_restart_keeps_instance_and_key(cas_process: CasProcess) -> None:
    cas_process.start()
    before = httpx.get(
        f"{cas_process.url}/v1/attest", params={"nonce": "00" * 16}, verify=False
    ).json()["report"]
    assert cas_process.stop() == 0
    cas_process.start()
    after = httpx.get(
        f"{cas_process.url}/v1/attest", params={"nonce": "00" * 16}, verify=False
    ).json()["report"]
    assert after["instance_id"] == before["instance_id"]
    assert after["cluster_id"] == before["cluster_id"]
    assert after["cas_key_hash"] == before["cas_key_hash"]
    assert after["tls_key_hash"] == before["tls_key_hash"]


def test_sigterm_and_sigint_stop_cleanly(cas_process: CasProcess) -> None:
    cas_process.start()
    assert cas_process.stop(signal.SIGTERM) == 0
    cas_process.start()
    assert cas_process.stop(signal.SIGINT) == 0
    log = cas_process.log()
    assert "stopped" in log
    # Two starts, each line once per start: uvicorn's own line for each of its two servers is
    # not repeated beside the CAS's.
    assert log.count("serving the client API") == log.count("serving the enclave API") == 2
    assert log.count(" stopped") == 2
    for per_server in ("Started server process", "Finished server process", "Shutting down"):
        assert per_server not in log


def test_show_identification_without_server(cas_process: CasProcess) -> None:
    facts = show(cas_process)
    assert facts["platform"] == "simulated"
    assert facts["mode"] == "debug"
    assert facts["provisioned"] is False
    assert len(str(facts["cas_key_hash"])) == 64
    assert len(str(facts["software_measurement"])) == 64
    assert facts == {**show(cas_process), "instance_id": facts["instance_id"]}


def test_second_cas_on_same_database_refuses(cas: CasProcess) -> None:
    other = CasProcess(cas.directory)  # same directory, same database, other ports
    result = subprocess.run(
        other.command("serve"), capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "in use by another cas process" in result.stderr


def test_port_taken_refuses(cas_process: CasProcess) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", cas_process.api_port))
        holder.listen()
        result = cas_process.run("serve")
    assert result.returncode == 1
    assert "address already in use" in result.stderr
    assert "api_listen" in result.stderr


def test_start_moves_to_other_ports_when_a_port_was_taken(tmp_path: Path) -> None:
    process = CasProcess(tmp_path / "cas")
    taken = process.api_port
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        process.start()
    try:
        assert process.api_port != taken
        assert process.process is not None
        assert process.process.pid in listening_pids(process.api_port)
        assert f"127.0.0.1:{process.api_port}" in process.config_path.read_text()
        assert "address already in use" in process.log()
    finally:
        process.stop()


def test_invalid_config_refuses(cas_process: CasProcess) -> None:
    cas_process.config_path.write_text('[database]\npath = "cas.db"\nbogus = 1\n')
    result = cas_process.run("serve")
    assert result.returncode == 2
    assert "bogus" in result.stderr
    assert str(cas_process.config_path) in result.stderr


def test_flipped_byte_in_cas_key_record_refuses_start(cas_process: CasProcess) -> None:
    cas_process.start()
    cas_process.stop()
    record_id = cas_process.record_id("cas", "identity")
    with sqlite3.connect(cas_process.database) as db:
        (value,) = db.execute(
            "SELECT value FROM records WHERE tbl = 'cas' AND key = ?", (record_id,)
        ).fetchone()
        damaged = bytearray(value)
        damaged[len(damaged) // 2] ^= 0x01
        db.execute(
            "UPDATE records SET value = ? WHERE tbl = 'cas' AND key = ?",
            (bytes(damaged), record_id),
        )
    result = cas_process.run("serve")
    assert result.returncode == 1
    assert "cas/identity" in result.stderr
    assert "damaged" in result.stderr


def test_missing_key_store_refuses(cas_process: CasProcess) -> None:
    cas_process.start()
    cas_process.stop()
    (cas_process.directory / "cas.db.key-store").unlink()
    result = cas_process.run("serve")
    assert result.returncode == 1
    assert "key-store" in result.stderr


def test_corrupt_key_store_refuses(cas_process: CasProcess) -> None:
    cas_process.start()
    cas_process.stop()
    key_store = cas_process.directory / "cas.db.key-store"
    data = bytearray(key_store.read_bytes())
    data[-1] ^= 0xFF
    key_store.write_bytes(bytes(data))
    result = cas_process.run("serve")
    assert result.returncode == 1
    assert "key-store" in result.stderr


def test_foreign_database_refuses(cas_process: CasProcess) -> None:
    with sqlite3.connect(cas_process.database) as db:
        db.execute("CREATE TABLE t (x)")
    result = cas_process.run("serve")
    assert result.returncode == 1
    assert "not an OpenCAS database" in result.stderr


@pytest.mark.parametrize("moment", ["spawned", "init-file", "key-store", "database"])
def test_kill_during_first_start_leaves_no_or_complete_database(
    cas_process: CasProcess, moment: str
) -> None:
    directory = cas_process.directory
    markers = {
        "spawned": lambda: True,
        "init-file": lambda: any(directory.glob("cas.db.init-*")),
        "key-store": (directory / "cas.db.key-store").exists,
        "database": (directory / "cas.db").exists,
    }
    cas_process.start(wait=False)
    assert cas_process.process is not None
    ready = markers[moment]
    while not ready() and cas_process.process.poll() is None:
        pass  # busy-poll on purpose: the moment to kill is a file appearing, microseconds wide
    cas_process.kill()
    if cas_process.database.exists():
        with sqlite3.connect(cas_process.database) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert "records" in tables
    cas_process.start()  # the next start works, whatever the moment was
    report = httpx.get(
        f"{cas_process.url}/v1/attest", params={"nonce": "ab" * 16}, verify=False
    ).json()["report"]
    assert report["provisioned"] is False


def test_key_store_without_database_refuses(cas_process: CasProcess) -> None:
    cas_process.start()
    cas_process.stop()
    cas_process.database.rename(cas_process.directory / "moved.db")
    result = cas_process.run("serve")
    assert result.returncode == 1
    assert "is missing but its key store" in result.stderr
    assert (cas_process.directory / "cas.db.key-store").exists()


def test_database_key_injection_errors_are_one_line(cas_process: CasProcess) -> None:
    key_file = cas_process.directory / "short.hex"
    key_file.write_text("abcd")
    result = cas_process.run("serve", "--database-key-file", str(key_file))
    assert result.returncode == 2
    assert "64 hex digits" in result.stderr
    assert result.stderr.count("\n") == 1
