"""Rolling the database key over on a real ``cas``, killed with SIGKILL while it runs.

Each run is on SQLite and on PostgreSQL. The rollover moves records in small batches so that a
kill lands in the middle; after every restart it resumes, and once it finished every session and
secret reads as before, the audit log verifies, and the key store copied before the rollover
(what an old version of the CAS holds) opens nothing any more.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from opencas.client import CasClient
from opencas.client.answers import KeyRolloverAnswer
from opencas.client.channel import ApiError
from opencas.testing import (
    SelfProvisionedCas,
    attest_as_owner,
    create_owner_identity,
    run_casctl,
    start_self_provisioned_cas,
)

SESSIONS = 80
LIMITS = {
    "key_rollover_batch": 2,
    "key_rollover_pause": 0.1,
    "session_uploads_per_minute": 1000,
    "session_upload_burst": 1000,
}
#: How long a rollover of this store may take on a loaded machine before the test gives up.
FINISH_TIMEOUT = 120.0


def _session(number: int) -> str:
    return (
        f'name: rolled-{number:03}\nversion: "0.3"\n'
        "secrets:\n  - name: ca\n    kind: x509-ca\n    export_public: true\n"
    )


@pytest.fixture(params=["sqlite", "postgres"])
def primary(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SelfProvisionedCas]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    cas = start_self_provisioned_cas(tmp_path / "primary", database_url=url, limits=LIMITS)
    yield cas
    cas.stop()


def _fill(cas: SelfProvisionedCas) -> dict[str, tuple[str, str]]:
    """Every session's hash and exported CA certificate."""
    seen = {}
    for number in range(SESSIONS):
        name = f"rolled-{number:03}"
        written = cas.client.create_session(_session(number))
        seen[name] = (written.hash, cas.client.session_values(name).values["ca"])
    return seen


def _readback(cas: SelfProvisionedCas) -> dict[str, tuple[str, str]]:
    return {
        name: (
            cas.client.read_session(name).hash,
            cas.client.session_values(name).values["ca"],
        )
        for name in (f"rolled-{number:03}" for number in range(SESSIONS))
    }


def _progress_until(cas: SelfProvisionedCas, moved: int) -> KeyRolloverAnswer:
    """Poll the rollover's progress until ``moved`` records were moved (or it finished)."""
    deadline = time.monotonic() + FINISH_TIMEOUT
    while time.monotonic() < deadline:
        answer = cas.client.key_rollover()
        if answer.moved >= moved or answer.state == "finished":
            return answer
        time.sleep(0.005)
    raise AssertionError(f"the rollover did not get to {moved} records: {answer}")


def _restart(cas: SelfProvisionedCas) -> None:
    cas.client.close()
    cas.process.start()
    cas.client, _ = attest_as_owner(cas.url, cas.owner, cas.owner_config_path)


def _events(cas: SelfProvisionedCas) -> list[dict[str, object]]:
    lines = (cas.process.directory / "audit.log").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_a_rollover_killed_at_several_points_resumes_and_finishes(
    primary: SelfProvisionedCas,
) -> None:
    before = _fill(primary)
    key_store = primary.process.directory / "cas.db.key-store"
    old_key_store = primary.process.directory.parent / "old.key-store"
    shutil.copy2(key_store, old_key_store)

    started = primary.client.start_key_rollover()
    assert started.state == "running"
    total = started.total
    assert total > 2 * SESSIONS
    # Killed at once, then twice more in the middle: each restart resumes where it was.
    primary.process.kill()
    for fraction in (0.3, 0.6):
        _restart(primary)
        reached = _progress_until(primary, int(total * fraction))
        primary.process.kill()
        assert reached.state == "running", "the rollover finished before the kill; use more data"
    _restart(primary)
    done = _progress_until(primary, total + 1)
    deadline = time.monotonic() + FINISH_TIMEOUT
    while done.state != "finished" and time.monotonic() < deadline:
        done = primary.client.key_rollover()
    assert done.state == "finished"
    assert done.key_id == started.key_id
    assert done.damaged == 0
    assert _readback(primary) == before

    events = [entry["event"] for entry in _events(primary)]
    assert events.count("key_rollover_started") == 1
    assert events.count("key_rollover_finished") == 1
    home = primary.owner_directory
    attested = run_casctl(home, ["attest", primary.url, "--only-for-testing-debug"])
    assert attested.returncode == 0, attested.stderr
    log = str(primary.process.directory / "audit.log")
    alias = primary.url.removeprefix("https://")
    verified = run_casctl(home, ["audit", "verify", log, "--cas", alias])
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # The key store an older version holds opens nothing any more.
    primary.stop()
    current_key_store = primary.process.directory.parent / "new.key-store"
    shutil.copy2(key_store, current_key_store)
    shutil.copy2(old_key_store, key_store)
    refused = primary.process.run("show-identification")
    assert refused.returncode == 1
    assert "the database key does not open" in refused.stderr
    shutil.copy2(current_key_store, key_store)
    _restart(primary)
    assert _readback(primary) == before


def test_casctl_start_upgrade_shows_the_rollover_and_only_the_owner_may_start_one(
    tmp_path: Path, primary: SelfProvisionedCas
) -> None:
    primary.client.create_session(_session(1))
    home = primary.owner_directory
    attested = run_casctl(home, ["attest", primary.url, "--only-for-testing-debug"])
    assert attested.returncode == 0, attested.stderr
    none_yet = run_casctl(home, ["upgrade-status"])
    assert none_yet.returncode == 0, none_yet.stderr
    assert "no database key rollover has run" in none_yet.stdout

    rolled = run_casctl(home, ["start-upgrade"])
    assert rolled.returncode == 0, rolled.stderr
    assert "database key rollover finished" in rolled.stdout
    assert "the previous key" in rolled.stdout
    assert "is destroyed" in rolled.stdout
    status = run_casctl(home, ["upgrade-status"])
    assert "finished" in status.stdout

    stranger = create_owner_identity(tmp_path / "stranger")
    client, _ = attest_as_owner(primary.url, primary.owner, primary.owner_config_path)
    with client:
        client.start_key_rollover()
        with pytest.raises(ApiError, match="running already") as running:
            client.start_key_rollover()
        assert running.value.code == "key-rollover-running"
    with CasClient.pinned_to(primary.url, primary.verified, stranger) as other:
        for attempt in (other.start_key_rollover, other.key_rollover):
            with pytest.raises(ApiError, match="only the CAS owner") as refused:
                attempt()
            assert refused.value.code == "not-owner"
    assert primary.client.read_session("rolled-001").name == "rolled-001"
