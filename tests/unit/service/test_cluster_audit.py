"""The audit log of a CAS on PostgreSQL: kept in the database as one chain, served page by page
from it, checked at open against the head its state committed, and moved in from the log file
of a database whose log was kept there before."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from opencas.audit.chain import GENESIS_HASH, Expectations, Head, Outcome, line_hash
from opencas.audit.verify import verify_log
from opencas.config.availability import load_availability_config
from opencas.config.owner import parse_owner_config
from opencas.config.owner_identity import OwnerIdentity
from opencas.errors import AuditLogError
from opencas.policy.caller import Caller
from opencas.service.audit import read_page
from opencas.service.cas import Cas, open_cas
from opencas.service.cas_records import read_audit_head
from opencas.service.identity import register_joined_instance
from opencas.service.provisioning import provision
from opencas.service.sessions import create_session, read_session
from opencas.testing import write_config

OWNER = OwnerIdentity("a1" * 32, None)
AUTHOR = Caller("b2" * 32)


def session(name: str) -> str:
    return f'name: {name}\nversion: "0.3"\nsecrets:\n  - name: s\n    kind: ascii\n'


def open_on(directory: Path, postgres_url: str) -> Cas:
    directory.mkdir(exist_ok=True)
    path = write_config(directory, 18081, 18766, database_url=postgres_url)
    return open_cas(load_availability_config(path))


def database_lines(url: str) -> list[bytes]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT line FROM audit_entries ORDER BY position").fetchall()
    return [str(row[0]).encode() for row in rows]


@pytest.fixture
def written(tmp_path: Path, postgres_url: str) -> Path:
    """A CAS on PostgreSQL, provisioned, with two sessions and a read; closed. Its directory."""
    cas = open_on(tmp_path / "creator", postgres_url)
    config = parse_owner_config('[audit_log]\nmode = "signed"\n', "owner.toml", "toml").config
    provision(cas, OWNER, config, self_provisioned=True)
    create_session(cas, session("one"), AUTHOR)
    create_session(cas, session("two"), AUTHOR)
    read_session(cas, "one", AUTHOR)
    cas.close()
    return tmp_path / "creator"


def test_the_log_is_in_the_database_and_verifies(written: Path, postgres_url: str) -> None:
    lines = database_lines(postgres_url)
    events = [json.loads(line)["event"] for line in lines]
    assert events == [
        "cas_started",
        "provisioned",
        "session_created",
        "session_created",
        "session_read",
    ]
    # The instance's sink holds what it wrote: here, all of it.
    assert (written / "audit.log").read_bytes().splitlines() == lines
    path = written / "fetched.log"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    assert verify_log(path, Expectations(last=line_hash(lines[-1])), workers=1).outcome == (
        Outcome.INTACT
    )


def test_pages_and_the_report_give_the_database_head(written: Path, postgres_url: str) -> None:
    cas = open_on(written, postgres_url)
    try:
        lines = database_lines(postgres_url)
        head = Head(len(lines), line_hash(lines[-1]))
        page = read_page(cas.audit_log, cas.store, cas.config.audit_log_path, 3)
        assert page.entries == [line.decode() for line in lines[2:]]
        assert page.next is None
        assert page.head == head
        stored = read_audit_head(cas.store)
        assert stored is not None
        assert page.checkpoints == [Head(2, line_hash(lines[1]))]
        assert cas.report("00" * 16).audit.seq == head.seq
    finally:
        cas.close()


def test_a_log_cut_back_in_the_database_stops_the_start(written: Path, postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DELETE FROM audit_entries WHERE seq >= 3")
        row = conn.execute(
            "SELECT position, seq FROM audit_entries ORDER BY position DESC"
        ).fetchone()
        line = conn.execute("SELECT line FROM audit_entries WHERE seq = 2").fetchone()[0]
        conn.execute(
            "UPDATE audit_head SET position = %s, seq = %s, hash = %s",
            (row[0], row[1], line_hash(line.encode())),
        )
    with pytest.raises(AuditLogError, match="cut back or replaced"):
        open_on(written, postgres_url)


def _forget_the_database_log(url: str) -> None:
    """As a database from before the log was kept in it: no entries, an empty head."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM audit_entries")
        conn.execute("UPDATE audit_head SET position = 0, seq = 0, hash = %s", (GENESIS_HASH,))


def test_the_creating_instance_moves_its_log_file_in(written: Path, postgres_url: str) -> None:
    before = (written / "audit.log").read_bytes().splitlines()
    _forget_the_database_log(postgres_url)
    cas = open_on(written, postgres_url)
    try:
        create_session(cas, session("three"), AUTHOR)
    finally:
        cas.close()
    lines = database_lines(postgres_url)
    assert lines[: len(before)] == before
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, len(lines) + 1))
    path = written / "fetched.log"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    verdict = verify_log(path, Expectations(last=line_hash(lines[-1])), workers=1)
    assert verdict.outcome == Outcome.INTACT, verdict.message


def test_a_joined_instance_does_not_start_a_log_of_its_own(
    written: Path, tmp_path: Path, postgres_url: str
) -> None:
    _forget_the_database_log(postgres_url)
    cas = open_on(written, postgres_url)
    joined = tmp_path / "joined"
    joined.mkdir()
    # The joined instance's files: the same key store (and simulated machine), its own instance
    # id, recorded as joined.
    for name in ("cas.db.key-store", "simulated-platform.key"):
        (joined / name).write_bytes((written / name).read_bytes())
        (joined / name).chmod(0o600)
    instance_id = "0b7c4c2e-8a1e-4b59-9d3e-4f36a4a6b2a1"
    (joined / "cas.db.instance-id").write_text(instance_id + "\n", encoding="ascii")
    with cas.store.transaction() as txn:
        register_joined_instance(txn, ("localhost",), instance_id, "ab" * 16)
    cas.close()
    _forget_the_database_log(postgres_url)
    with pytest.raises(AuditLogError, match="start that instance first"):
        open_on(joined, postgres_url)
