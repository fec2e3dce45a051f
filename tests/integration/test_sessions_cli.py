"""Sessions through casctl against a real, self-provisioned CAS: the realistic sample set
round-trips through create / read / verify; updates, templates, governance and imports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from opencas.client import ApiError
from opencas.testing import SelfProvisionedCas, run_casctl

SAMPLES = Path(__file__).parent.parent / "data" / "sessions"
# The order of tests/data/sessions/README.md: a namespace before the session that exports to it
# without a pin, exporters before importers (an import is checked against its exporter at upload).
ORDER = [
    "team.yaml",
    "exporter.yaml",
    "importer.yaml",
    "team-worker.yaml",
    "tls-service.yaml",
    "multi-service.yaml",
    "tdx.yaml",
    "snp.yaml",
    "simulated.yaml",
    "scone-legacy.yaml",
    "governance.yaml",
]

Casctl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def author(opencas_cas: SelfProvisionedCas, tmp_path: Path) -> Casctl:
    """casctl as a policy author (not the owner) who attested the CAS."""
    home = tmp_path / "author"
    attested = run_casctl(
        home,
        [
            "attest",
            opencas_cas.url,
            "--only-for-testing-debug",
            "--expect-owner-identity",
            str(opencas_cas.owner_certificate_path),
        ],
    )
    assert attested.returncode == 0, attested.stderr

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_casctl(home, args)

    return run


def created_hash(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    match = re.search(r"hash ([0-9a-f]{64})", result.stdout)
    assert match, result.stdout
    return match.group(1)


def test_sample_sessions_round_trip(author: Casctl, tmp_path: Path) -> None:
    assert sorted(ORDER) == sorted(p.name for p in SAMPLES.glob("*.yaml"))
    hashes = {}
    for name in ORDER:
        path = SAMPLES / name
        offline = author("session", "hash", str(path))
        assert offline.returncode == 0, offline.stderr
        assert author("session", "check", str(path)).returncode == 0
        server_hash = created_hash(author("session", "create", str(path)))
        assert server_hash == offline.stdout.strip(), name
        hashes[name] = server_hash
        verify = author("session", "verify", str(path))
        assert verify.returncode == 0, (name, verify.stderr)
    # Read back and verify what was read: the stored policy is the uploaded one.
    read_back = tmp_path / "tls.yaml"
    assert author("session", "read", "tls-service", "-o", str(read_back)).returncode == 0
    assert read_back.read_text() == (
        f"# hash: {hashes['tls-service.yaml']}\n" + (SAMPLES / "tls-service.yaml").read_text()
    )
    assert author("session", "verify", str(read_back)).returncode == 0
    listing = json.loads(author("session", "read", "team/worker", "--json").stdout)
    assert listing["name"] == "team/worker"
    assert (
        listing["hash"]
        == author("session", "hash", str(SAMPLES / "team-worker.yaml")).stdout.strip()
    )


def test_owner_has_no_special_access(author: Casctl, opencas_cas: SelfProvisionedCas) -> None:
    created_hash(author("session", "create", str(SAMPLES / "simulated.yaml")))
    owner = opencas_cas.client
    with pytest.raises(ApiError) as refused:
        owner.read_session("simulated-dev")
    assert (refused.value.status, refused.value.code) == (404, "not-found")


def test_read_output_goes_back_as_an_update_of_that_version(author: Casctl, tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    shutil.copy(SAMPLES / "simulated.yaml", path)
    first = created_hash(author("session", "create", str(path)))
    shown = author("session", "read", "simulated-dev")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == f"# hash: {first}\n" + path.read_text()
    # -o writes the same text; with --json, the whole answer, to stdout or to the file.
    edited = tmp_path / "edited.yaml"
    assert author("session", "read", "simulated-dev", "-o", str(edited)).returncode == 0
    assert edited.read_text() == shown.stdout
    answer = tmp_path / "answer.json"
    assert author("session", "read", "simulated-dev", "--json", "-o", str(answer)).returncode == 0
    stdout_answer = author("session", "read", "simulated-dev", "--json").stdout
    assert answer.read_text() == stdout_answer
    assert json.loads(stdout_answer)["hash"] == first
    assert json.loads(stdout_answer)["session"] == path.read_text()

    # Edit what was read and send it back: it replaces the version it was read from.
    edited.write_text(edited.read_text().replace("hello from the CAS", "hello again"))
    second = created_hash(author("session", "update", str(edited)))
    assert second != first
    again = author("session", "read", "simulated-dev").stdout
    assert again.startswith(f"# hash: {second}\n")
    assert again.count("# hash:") == 1  # the comment is shown, never stored
    assert f'predecessor: "{first}"' in again
    # Read back again, the text names its own predecessor; the update replaces that version.
    edited.write_text(again.replace("hello again", "hello a third time"))
    third = created_hash(author("session", "update", str(edited)))
    assert author("session", "read", "simulated-dev").stdout.startswith(f"# hash: {third}\n")
    # A read-back of a version that was replaced since is refused, naming the current hash.
    lost = tmp_path / "lost.yaml"
    lost.write_text(again.replace("hello again", "a lost update"))
    refused = author("session", "update", str(lost))
    assert refused.returncode == 1
    assert third in refused.stderr
    assert "a lost update" not in author("session", "read", "simulated-dev").stdout


def test_update_fills_predecessor_and_refuses_stale(author: Casctl, tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    shutil.copy(SAMPLES / "simulated.yaml", path)
    first = created_hash(author("session", "create", str(path)))
    path.write_text(path.read_text().replace("hello from the CAS", "hello again"))
    updated = author("session", "update", str(path))
    second = created_hash(updated)
    assert second != first
    # An explicit, stale predecessor is sent as written and refused with the current hash.
    stale = tmp_path / "stale.yaml"
    stale.write_text(f'predecessor: "{first}"\n' + path.read_text())
    refused = author("session", "update", str(stale))
    assert refused.returncode == 1
    assert second in refused.stderr
    # verify: the file that is no longer active differs.
    differs = author("session", "verify", str(SAMPLES / "simulated.yaml"))
    assert differs.returncode == 1
    assert "differs" in differs.stderr


def test_template_variables(author: Casctl, tmp_path: Path) -> None:
    path = tmp_path / "templated.yaml"
    path.write_text(
        (SAMPLES / "simulated.yaml")
        .read_text()
        .replace("name: simulated-dev", "name: ${SESSION_NAME}")
    )
    missing = author("session", "create", str(path))
    assert missing.returncode == 1
    assert "${SESSION_NAME} is not set" in missing.stderr
    assert f"{path}:" in missing.stderr
    created = author("session", "create", str(path), "-e", "SESSION_NAME=from-template")
    assert created.returncode == 0, created.stderr
    assert "from-template" in created.stdout


def test_governed_update_needs_two_signatures(author: Casctl, tmp_path: Path) -> None:
    first = created_hash(author("session", "create", str(SAMPLES / "governance.yaml")))
    changed = tmp_path / "governed.yaml"
    changed.write_text(
        f'predecessor: "{first}"\n'
        + (SAMPLES / "governance.yaml").read_text().replace("isvsvn_min: 2", "isvsvn_min: 3")
    )
    signatures = []
    for index in (1, 2):
        out = tmp_path / f"sig-{index}.json"
        signed = author(
            "session",
            "sign",
            str(changed),
            "--key",
            str(SAMPLES / "keys" / f"signer-{index}.key.pem"),
            "-o",
            str(out),
        )
        assert signed.returncode == 0, signed.stderr
        signatures += ["--signature", str(out)]
    one = author("session", "update", str(changed), *signatures[:2])
    assert one.returncode == 1
    assert "does not allow" in one.stderr
    two = author("session", "update", str(changed), *signatures)
    assert two.returncode == 0, two.stderr


def test_pinned_import_breaks_when_exporter_changes(author: Casctl, tmp_path: Path) -> None:
    for name in ("team.yaml", "exporter.yaml", "importer.yaml", "team-worker.yaml"):
        created_hash(author("session", "create", str(SAMPLES / name)))
    # team-worker pins the exporter's hash; change the exporter.
    exporter = tmp_path / "exporter.yaml"
    exporter.write_text((SAMPLES / "exporter.yaml").read_text().replace("size: 32", "size: 33", 1))
    assert author("session", "update", str(exporter)).returncode == 0
    worker = tmp_path / "worker.yaml"
    worker.write_text(
        (SAMPLES / "team-worker.yaml")
        .read_text()
        .replace("environment:", 'environment:\n      CHANGED: "1"', 1)
    )
    refused = author("session", "update", str(worker))
    assert refused.returncode == 1
    assert "exporter" in refused.stderr
    assert "hash" in refused.stderr


def test_check_reports_path_and_line(author: Casctl, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text('name: broken\nversion: "0.3"\nservices:\n  - name: a\n    bogus: 1\n')
    result = author("session", "check", str(broken))
    assert result.returncode == 1
    assert f"{broken}:5:" in result.stderr
    assert "bogus" in result.stderr
