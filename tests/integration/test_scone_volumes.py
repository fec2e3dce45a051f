"""Encrypted volumes end to end: the SCONE corpus's exporter and importer on a real CAS, and
``casctl run`` of a program that reads and writes its volume; a rolled-back or damaged store is
refused, and of two writers from the same tag the second loses with a clear error."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from opencas.testing import SelfProvisionedCas, run_casctl

CORPUS = Path(__file__).parent.parent / "data" / "sessions" / "scone"
Casctl = Callable[..., subprocess.CompletedProcess[str]]

PROGRAM = """\
import os, sys, time
from pathlib import Path

ledger = Path(os.environ["LEDGER_DIR"])
entries = ledger / "entries.txt"
print("before", entries.read_text().replace("\\n", ",") if entries.exists() else "-", flush=True)
print("private", str(ledger).startswith(os.environ["CAS_INJECTION_DIR"] + "/"), flush=True)
action = sys.argv[1]
if action == "wait":
    go = Path(sys.argv[3])
    while not go.exists():
        time.sleep(0.02)  # waits for the test's signal file, not for a server
if action in ("append", "wait", "fail"):
    (ledger / "log").mkdir(exist_ok=True)
    entries.write_text((entries.read_text() if entries.exists() else "") + sys.argv[2] + "\\n")
if action == "fail":
    sys.exit(7)
"""


@pytest.fixture
def casctl(attested_casctl: Callable[[Path], Casctl], tmp_path: Path) -> Casctl:
    return attested_casctl(tmp_path / "home")


def created(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    match = re.search(r"hash ([0-9a-f]{64})", result.stdout)
    assert match, result.stdout
    return match.group(1)


@pytest.fixture
def volume_sessions(casctl: Casctl, tmp_path: Path) -> Path:
    """The corpus's exporter and importer created for the measured program; returns it."""
    program = tmp_path / "ledger.py"
    program.write_text(PROGRAM)
    measured = casctl("measure", "--", sys.executable, str(program))
    assert measured.returncode == 0, measured.stderr
    variable = f"-eMEASUREMENT={measured.stdout.strip()}"
    importer = casctl("session", "hash", str(CORPUS / "volume-import.yaml"), variable)
    assert importer.returncode == 0, importer.stderr
    exporter = tmp_path / "volume-export.yaml"
    exporter.write_text(
        re.sub(
            r"session_hash: [0-9a-f]{64}",
            f"session_hash: {importer.stdout.strip()}",
            (CORPUS / "volume-export.yaml").read_text(),
        )
    )
    created(casctl("session", "create", str(exporter), variable))
    created(casctl("session", "create", str(CORPUS / "volume-import.yaml"), variable))
    return program


def run(
    casctl: Casctl, stores: Path, program: Path, *args: str, service: str = "volume-ledger/writer"
) -> subprocess.CompletedProcess[str]:
    volumes = ["--volume-store", f"ledger={stores / 'ledger'}"]
    if service.endswith("/writer"):
        volumes += ["--volume-store", f"seeded={stores / 'seeded'}"]
    else:
        volumes = ["--volume-store", f"shared-ledger={stores / 'ledger'}"]
    return casctl(
        "run", "--config-id", service, *volumes, "--", sys.executable, str(program), *args
    )


def before(result: subprocess.CompletedProcess[str]) -> str:
    assert result.stdout.startswith("before "), (result.stdout, result.stderr)
    return result.stdout.splitlines()[0].removeprefix("before ")


def test_a_program_reads_and_writes_its_volume_and_an_importer_sees_it(
    casctl: Casctl, volume_sessions: Path, tmp_path: Path
) -> None:
    stores = tmp_path / "stores"
    stores.mkdir()

    first = run(casctl, stores, volume_sessions, "append", "one")
    assert first.returncode == 0, first.stderr
    assert before(first) == "-"
    assert "private True" in first.stdout
    manifests = list((stores / "ledger" / "manifests").iterdir())
    assert len(manifests) == 1
    assert b"one" not in b"".join(p.read_bytes() for p in (stores / "ledger" / "objects").iterdir())

    second = run(casctl, stores, volume_sessions, "append", "two")
    assert second.returncode == 0, second.stderr
    assert before(second) == "one,"
    # The old manifest went once the new tag was accepted.
    assert len(list((stores / "ledger" / "manifests").iterdir())) == 1

    imported = run(
        casctl, stores, volume_sessions, "append", "three", service="volume-reports/reader"
    )
    assert imported.returncode == 0, imported.stderr
    assert before(imported) == "one,two,"
    assert before(run(casctl, stores, volume_sessions, "read", "-")) == "one,two,three,"

    failed = run(casctl, stores, volume_sessions, "fail", "lost")
    assert failed.returncode == 7
    assert "nothing it wrote there is kept" in failed.stderr
    assert before(run(casctl, stores, volume_sessions, "read", "-")) == "one,two,three,"


def test_a_volume_restored_from_an_older_copy_is_refused(
    casctl: Casctl, volume_sessions: Path, tmp_path: Path
) -> None:
    stores = tmp_path / "stores"
    stores.mkdir()
    assert run(casctl, stores, volume_sessions, "append", "one").returncode == 0
    shutil.copytree(stores / "ledger", tmp_path / "old-ledger")
    assert run(casctl, stores, volume_sessions, "append", "two").returncode == 0
    shutil.rmtree(stores / "ledger")
    shutil.copytree(tmp_path / "old-ledger", stores / "ledger")

    refused = run(casctl, stores, volume_sessions, "append", "rolled-back")

    assert refused.returncode == 1
    assert refused.stdout == ""
    assert "volume ledger:" in refused.stderr
    assert "restored from an older copy" in refused.stderr
    assert "mapped at /srv/ledger" in refused.stderr


def test_a_damaged_file_is_named(casctl: Casctl, volume_sessions: Path, tmp_path: Path) -> None:
    stores = tmp_path / "stores"
    stores.mkdir()
    assert run(casctl, stores, volume_sessions, "append", "one").returncode == 0
    for item in (stores / "ledger" / "objects").iterdir():
        data = bytearray(item.read_bytes())
        data[0] ^= 1
        item.write_bytes(bytes(data))

    refused = run(casctl, stores, volume_sessions, "read", "-")

    assert refused.returncode == 1
    assert refused.stdout == ""
    assert "file 'entries.txt' is damaged or was swapped" in refused.stderr


def test_of_two_writers_from_the_same_tag_the_second_loses(
    casctl: Casctl, volume_sessions: Path, tmp_path: Path
) -> None:
    stores = tmp_path / "stores"
    stores.mkdir()
    assert run(casctl, stores, volume_sessions, "append", "base").returncode == 0
    writers = {}
    for name in ("first", "second"):
        arguments = ["wait", name, str(tmp_path / f"go-{name}")]
        writers[name] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "opencas.cli.casctl",
                "run",
                "--config-id",
                "volume-ledger/writer",
                "--volume-store",
                f"ledger={stores / 'ledger'}",
                "--volume-store",
                f"seeded={stores / 'seeded'}",
                "--",
                sys.executable,
                str(volume_sessions),
                *arguments,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "CASCTL_HOME": str(tmp_path / "home")},
        )
        assert writers[name].stdout is not None
        assert writers[name].stdout.readline() == "before base,\n"

    (tmp_path / "go-first").touch()
    _, first_err = writers["first"].communicate(timeout=60)
    assert writers["first"].returncode == 0, first_err
    (tmp_path / "go-second").touch()
    _, second_err = writers["second"].communicate(timeout=60)

    assert writers["second"].returncode == 6
    assert "volume ledger" in second_err
    assert "changed since this workload opened it" in second_err
    assert "writes are not kept" in second_err
    assert before(run(casctl, stores, volume_sessions, "read", "-")) == "base,first,"
    # The loser's manifest and objects are gone again.
    assert len(list((stores / "ledger" / "manifests").iterdir())) == 1
    assert os.listdir(stores / "seeded" / "manifests") == []


def test_volume_tag_updates_are_in_the_audit_log(
    opencas_cas: SelfProvisionedCas, casctl: Casctl, volume_sessions: Path, tmp_path: Path
) -> None:
    stores = tmp_path / "stores"
    stores.mkdir()
    assert run(casctl, stores, volume_sessions, "append", "one").returncode == 0

    output = tmp_path / "audit.log"
    owner = opencas_cas.owner_directory
    attested = run_casctl(owner, ["attest", opencas_cas.url, "--only-for-testing-debug"])
    assert attested.returncode == 0, attested.stderr
    fetched = run_casctl(owner, ["audit", "fetch", "-o", str(output)])
    assert fetched.returncode == 0, fetched.stderr
    entries = [line for line in output.read_text().splitlines() if "volume_tag_updated" in line]
    assert len(entries) == 1
    assert '"subject":"volume-ledger/writer"' in entries[0]
    assert '"volume":"ledger"' in entries[0]
    assert '"previous_tag":null' in entries[0]


def test_an_accepted_tag_survives_kill_9(
    opencas_cas: SelfProvisionedCas, casctl: Casctl, volume_sessions: Path, tmp_path: Path
) -> None:
    stores = tmp_path / "stores"
    stores.mkdir()
    assert run(casctl, stores, volume_sessions, "append", "one").returncode == 0
    assert run(casctl, stores, volume_sessions, "append", "two").returncode == 0

    # No clean shutdown: the CAS dies right after it acknowledged the second tag.
    opencas_cas.process.kill()
    opencas_cas.process.start()

    after = run(casctl, stores, volume_sessions, "read", "-")
    assert after.returncode == 0, after.stderr
    assert before(after) == "one,two,"
