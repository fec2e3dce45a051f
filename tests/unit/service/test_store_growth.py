"""An attestation and a session write cost the store the same work with ten times the sessions.

The work is counted as SQLite virtual-machine instructions (a progress handler called for every
one) on every connection of the store: a point lookup costs the same whatever the size of the
table, while a scan of the sessions, a list of every key or a digest over every record grows
with it. Clock time would say the same only on a quiet machine.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from opencas.attestation.workload_binding import ConfigId
from opencas.config.availability import load_availability_config
from opencas.platform.simulated import SimulatedPlatform
from opencas.policy.caller import Caller
from opencas.policy.hashing import session_hash
from opencas.policy.parse import parse_session
from opencas.policy.secret_values import generate_values
from opencas.runtime.exchange import WorkloadExchange
from opencas.service.cas import Cas, open_cas
from opencas.service.identity import utc_now_text
from opencas.service.nonces import NonceStore
from opencas.service.sessions import (
    SessionRecord,
    create_session,
    update_session,
    write_session,
)
from opencas.service.workloads import WorkloadRequest, attest_workload
from opencas.store import sqlite as sqlite_store
from opencas.testing import write_config

OWNER_HASH = "c3" * 32
OWNER = Caller(OWNER_HASH)
MEASUREMENT = "6d" * 32
CONFIG_ID = ConfigId("app", "svc")
SESSION = f"""\
name: app
version: "0.3"
services:
  - name: svc
    command: ["/bin/app"]
    environment:
      TOKEN: "$$CAS::token$$"
    attestation:
      simulated_measurement: "{MEASUREMENT}"
secrets:
  - name: token
    kind: ascii
    size: 24
security:
  attestation:
    tolerate: [simulated]
"""
SMALL, LARGE = 20, 200


class InstructionCounter:
    """Counts the SQLite VM instructions of every connection the store opens."""

    def __init__(self) -> None:
        self.count = 0

    def tick(self) -> int:
        self.count += 1
        return 0  # go on

    def counted(self, work: Callable[[], object]) -> int:
        """The instructions ``work`` made the store run."""
        before = self.count
        work()
        return self.count - before


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> InstructionCounter:
    found = InstructionCounter()
    connect = sqlite_store._connect

    def counting(path: Path) -> sqlite3.Connection:
        conn = connect(path)
        conn.set_progress_handler(found.tick, 1)
        return conn

    monkeypatch.setattr(sqlite_store, "_connect", counting)
    return found


def fill(cas: Cas, first: int, count: int) -> None:
    """``count`` more sessions like ``app``, written as a create writes them, in one commit."""
    template = parse_session(SESSION, purpose="create")
    now = utc_now_text()
    with cas.store.transaction() as txn:
        for number in range(first, first + count):
            name = f"other-{number:04d}"
            session = template.model_copy(update={"name": name})
            record = SessionRecord(
                name=name,
                text=SESSION.replace("name: app\n", f"name: {name}\n", 1),
                normal_form=session.normal_form(),
                hash=session_hash(session),
                creator=OWNER_HASH,
                created_at=now,
                updated_at=now,
                revision=1,
            )
            write_session(txn, record, session, generate_values(session))


def costs(cas: Cas, counter: InstructionCounter, label: str) -> tuple[int, int, int]:
    """The store's instructions for one attestation, one session create and one update."""
    platform = SimulatedPlatform.load_or_create(cas.config.database_path.parent / "p", MEASUREMENT)
    nonces = NonceStore()
    exchange = WorkloadExchange.new(CONFIG_ID)
    nonce = nonces.issue()
    evidence = exchange.evidence(nonce, platform).to_json()
    request = WorkloadRequest(CONFIG_ID, nonce, exchange.public_key, evidence)
    name = f"probe-{label}"
    text = SESSION.replace("name: app\n", f"name: {name}\n", 1)
    attest = counter.counted(lambda: attest_workload(cas, nonces, request))
    created: list[str] = []
    create = counter.counted(lambda: created.append(create_session(cas, text, OWNER).hash))
    updated = text.replace('version: "0.3"\n', f'version: "0.3"\npredecessor: "{created[0]}"\n')
    update = counter.counted(lambda: update_session(cas, name, updated, OWNER))
    return attest, create, update


def test_store_work_does_not_grow_with_the_sessions_stored(
    tmp_path: Path, counter: InstructionCounter
) -> None:
    cas = open_cas(load_availability_config(write_config(tmp_path, 1, 2)))
    try:
        create_session(cas, SESSION, OWNER)
        fill(cas, 0, SMALL)
        costs(cas, counter, "warm")  # caches and lazily prepared statements
        small = costs(cas, counter, "small")
        fill(cas, SMALL, LARGE - SMALL)
        large = costs(cas, counter, "large")
    finally:
        cas.close()
    assert all(count > 0 for count in small), small
    for what, before, after in zip(("attest", "create", "update"), small, large, strict=True):
        # A scan of the 180 sessions added would cost thousands of instructions more.
        assert after <= before * 1.05, f"{what}: {before} -> {after} instructions"
