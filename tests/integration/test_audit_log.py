"""The audit log of a real CAS: kill -9 amid writes, fetching and verifying it with casctl."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from opencas.audit.chain import line_hash
from opencas.client import ApiError
from opencas.client.channel import CasUnreachable
from opencas.testing import (
    SelfProvisionedCas,
    attest_as_owner,
    run_casctl,
    start_self_provisioned_cas,
)


def session(name: str) -> str:
    return f'name: {name}\nversion: "0.3"\nsecrets:\n  - name: s\n    kind: ascii\n'


def attest_with_casctl(cas: SelfProvisionedCas) -> Path:
    """casctl, as the owner, attests and pins the CAS under the alias ``audited``."""
    home = cas.owner_directory
    attested = run_casctl(
        home,
        [
            "attest",
            cas.url,
            "--only-for-testing-debug",
            "--expect-owner-identity",
            str(cas.owner_certificate_path),
            "--expect-owner-config",
            str(cas.owner_config_path),
            "--alias",
            "audited",
            "--accept-new-instance",
        ],
    )
    assert attested.returncode == 0, attested.stderr
    return home


def fetch(home: Path, output: Path) -> list[bytes]:
    fetched = run_casctl(home, ["audit", "fetch", "--cas", "audited", "-o", str(output)])
    assert fetched.returncode == 0, fetched.stderr
    return output.read_bytes().splitlines()


def test_kill_9_during_session_creates_loses_no_acknowledged_entry(tmp_path: Path) -> None:
    cas = start_self_provisioned_cas(tmp_path)
    acknowledged: list[str] = []
    enough = threading.Event()

    def create(worker: int) -> None:
        for number in range(10_000):
            name = f"w{worker}-{number}"
            try:
                cas.client.create_session(session(name))
            except (ApiError, CasUnreachable, OSError):
                return
            acknowledged.append(name)
            if len(acknowledged) >= 30:
                enough.set()

    writers = [threading.Thread(target=create, args=(worker,)) for worker in range(3)]
    try:
        for writer in writers:
            writer.start()
        assert enough.wait(timeout=300)
        # Killed while creates are in flight: no shutdown, no cas_stopped.
        cas.process.kill()
        for writer in writers:
            writer.join(timeout=120)
        cas.client.close()
        cas.process.start()
        home = attest_with_casctl(cas)
        lines = fetch(home, tmp_path / "fetched.log")
        entries = [json.loads(line) for line in lines]
        created = {entry["subject"] for entry in entries if entry["event"] == "session_created"}
        assert set(acknowledged) <= created
        verified = run_casctl(
            home, ["audit", "verify", str(tmp_path / "fetched.log"), "--cas", "audited"]
        )
        # 10: an entry whose create was cut off by the kill, said so by the next start.
        assert verified.returncode in (0, 10), verified.stdout + verified.stderr
        starts = [entry for entry in entries if entry["event"] == "cas_started"]
        assert len(starts) == 2
    finally:
        cas.process.stop()


def test_the_reported_head_is_the_last_line_of_the_fetched_log(tmp_path: Path) -> None:
    cas = start_self_provisioned_cas(tmp_path)
    try:
        cas.client.create_session(session("one"))
        cas.client.read_session("one")
        home = attest_with_casctl(cas)
        lines = fetch(home, tmp_path / "fetched.log")
        client, verified = attest_as_owner(cas.url, cas.owner, cas.owner_config_path)
        client.close()
        head = verified.report.audit
        assert head.seq == json.loads(lines[-1])["seq"]
        assert head.head == line_hash(lines[-1])
        shown = run_casctl(home, ["cas", "show", "audited", "--json"])
        assert json.loads(shown.stdout)["audit_seq"] >= head.seq - 1
        intact = run_casctl(
            home, ["audit", "verify", str(tmp_path / "fetched.log"), "--cas", "audited"]
        )
        assert intact.returncode == 0, intact.stdout + intact.stderr
        assert "intact" in intact.stdout
        offline = run_casctl(home, ["audit", "verify", str(tmp_path / "fetched.log")])
        assert offline.returncode == 16, offline.stdout + offline.stderr
        # One changed byte: an integrity violation that names its line.
        edited = [*lines[:-1], lines[-1].replace(b'"one"', b'"eno"')]
        (tmp_path / "edited.log").write_bytes(b"".join(line + b"\n" for line in edited))
        broken = run_casctl(
            home, ["audit", "verify", str(tmp_path / "edited.log"), "--cas", "audited"]
        )
        assert broken.returncode == 20, broken.stdout + broken.stderr
        assert f"line {len(lines)}:" in broken.stderr
    finally:
        cas.stop()


def test_only_the_owner_reads_the_log(tmp_path: Path) -> None:
    cas = start_self_provisioned_cas(tmp_path)
    try:
        home = tmp_path / "stranger"
        attested = run_casctl(home, ["attest", cas.url, "--only-for-testing-debug"])
        assert attested.returncode == 0, attested.stderr
        refused = run_casctl(home, ["audit", "fetch", "-o", str(tmp_path / "x.log")])
        assert refused.returncode == 1
        assert "only the CAS owner" in refused.stderr
    finally:
        cas.stop()
