"""A real CAS whose owner config sends its audit log to an HTTPS server: the server's copy is the
log, and while the server is down a session create fails and leaves nothing behind."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from opencas.audit.chain import Expectations, Outcome, line_hash
from opencas.audit.verify import verify_log
from opencas.client import ApiError
from opencas.testing import SelfProvisionedCas, start_self_provisioned_cas
from opencas.testing_https import Answer, FixedAnswersServer

PATH = "/audit"


def session(name: str) -> str:
    return f'name: {name}\nversion: "0.3"\nsecrets:\n  - name: s\n    kind: ascii\n'


def network_owner_config(server: FixedAnswersServer) -> str:
    return (
        f'[audit_log]\nsink = "network"\nurl = "{server.url}{PATH}"\n'
        f"server_ca_certificate = '''\n{server.ca_pem.decode('ascii')}'''\n"
    )


def stored(cas: SelfProvisionedCas, name: str) -> bool:
    record_id = cas.process.record_id("sessions", name)
    with sqlite3.connect(cas.process.database) as db:
        row = db.execute(
            "SELECT 1 FROM records WHERE tbl = ? AND key = ?", ("sessions", record_id)
        ).fetchone()
    return row is not None


def test_a_sink_that_is_down_fails_a_session_create_and_leaves_no_session(
    tmp_path: Path,
) -> None:
    server = FixedAnswersServer({PATH: Answer(b"", status=204)}).start()
    cas = start_self_provisioned_cas(tmp_path, network_owner_config(server))
    try:
        cas.client.create_session(session("kept"))
        local = (cas.process.directory / "audit.log").read_bytes()
        assert b"".join(server.accepted) == local
        copy = tmp_path / "received.log"
        copy.write_bytes(b"".join(server.accepted))
        last = line_hash(local.splitlines()[-1])
        assert verify_log(copy, Expectations(last=last), workers=1).outcome == Outcome.INTACT
        server.close()
        with pytest.raises(ApiError) as refused:
            cas.client.create_session(session("lost"))
        assert refused.value.status == 503
        assert refused.value.code == "audit-log-unavailable"
        assert "cannot be reached" in refused.value.message
    finally:
        cas.stop()
    assert stored(cas, "kept")
    assert not stored(cas, "lost")
