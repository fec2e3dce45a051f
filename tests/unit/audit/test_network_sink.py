"""The network sink: every entry reaches an HTTPS server before its operation is answered, the
server's copy verifies, and a server that is down or refuses fails the operation (fail closed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from opencas.audit.chain import Expectations, Outcome, line_hash
from opencas.audit.sinks import LINES_MEDIA_TYPE, MAX_ANSWER_BYTES, SENT_SUFFIX
from opencas.audit.verify import verify_log
from opencas.config.availability import load_availability_config
from opencas.config.owner import OwnerConfig, parse_owner_config
from opencas.config.owner_identity import OwnerIdentity
from opencas.errors import AuditLogError
from opencas.policy.caller import Caller
from opencas.service.cas import Cas, open_cas
from opencas.service.cas_records import read_owner_config, read_state
from opencas.service.provisioning import provision, update_owner_config
from opencas.service.sessions import create_session, read_session
from opencas.testing_https import Answer, FixedAnswersServer

OWNER = OwnerIdentity("a1" * 32, None)
OWNER_CALLER = Caller(OWNER.key_hash)
AUTHOR = Caller("b2" * 32)
PATH = "/v1/log"


def network(server: FixedAnswersServer, ca_pem: bytes | None = None) -> OwnerConfig:
    ca = (ca_pem or server.ca_pem).decode("ascii")
    text = (
        f'[audit_log]\nsink = "network"\nurl = "{server.url}{PATH}"\n'
        f"server_ca_certificate = '''\n{ca}'''\n"
    )
    return parse_owner_config(text, "owner.toml", "toml").config


def session(name: str) -> str:
    return f'name: {name}\nversion: "0.3"\nsecrets:\n  - name: s\n    kind: ascii\n'


def received(server: FixedAnswersServer) -> bytes:
    return b"".join(server.accepted)


@pytest.fixture
def server() -> Iterator[FixedAnswersServer]:
    with FixedAnswersServer({PATH: Answer(b"", status=204)}) as running:
        yield running


def test_every_entry_reaches_the_server_before_it_is_answered(
    cas: Cas, server: FixedAnswersServer
) -> None:
    provision(cas, OWNER, network(server), self_provisioned=True)
    create_session(cas, session("one"), AUTHOR)
    read_session(cas, "one", AUTHOR)
    local = cas.config.audit_log_path.read_bytes()
    # Each operation returned only after the server had its entry: the copies are equal now.
    assert received(server) == local
    events = [json.loads(line)["event"] for line in local.splitlines()]
    assert events == ["cas_started", "provisioned", "session_created", "session_read"]
    assert {headers.get("content-type") for _, headers in server.requests} == {LINES_MEDIA_TYPE}
    copy = cas.config.audit_log_path.with_name("received.log")
    copy.write_bytes(received(server))
    last = line_hash(local.splitlines()[-1])
    assert verify_log(copy, Expectations(last=last), workers=1).outcome == Outcome.INTACT


def test_a_server_that_answers_non_2xx_fails_the_operation_and_nothing_changes(
    cas: Cas, server: FixedAnswersServer
) -> None:
    provision(cas, OWNER, network(server), self_provisioned=True)
    server.answers[PATH] = Answer(b"full", status=507)
    with pytest.raises(AuditLogError, match="answered 507"):
        create_session(cas, session("refused"), AUTHOR)
    assert cas.store.get("sessions", "refused") is None
    # After a failed delivery nothing more is logged, nor done, until the CAS restarts.
    server.answers[PATH] = Answer(b"", status=204)
    with pytest.raises(AuditLogError):
        create_session(cas, session("still-refused"), AUTHOR)
    assert cas.store.get("sessions", "still-refused") is None


def test_after_a_restart_the_server_gets_what_it_missed(
    cas: Cas, server: FixedAnswersServer, tmp_path: Path
) -> None:
    provision(cas, OWNER, network(server), self_provisioned=True)
    server.answers[PATH] = Answer(b"", status=500)
    with pytest.raises(AuditLogError):
        create_session(cas, session("refused"), AUTHOR)
    cas.close()
    server.answers[PATH] = Answer(b"", status=204)
    reopened = open_cas(load_availability_config(tmp_path / "cas.toml"))
    try:
        create_session(reopened, session("two"), AUTHOR)
        local = reopened.config.audit_log_path.read_bytes()
    finally:
        reopened.close()
    assert received(server) == local
    copy = cas.config.audit_log_path.with_name("received.log")
    copy.write_bytes(local)
    last = line_hash(local.splitlines()[-1])
    # The refused create is in both copies, and the next start says it failed.
    verdict = verify_log(copy, Expectations(last=last), workers=1)
    assert verdict.outcome == Outcome.ONE_FAILED, verdict.message


def test_a_server_that_is_down_refuses_the_owner_config(
    cas: Cas, server: FixedAnswersServer
) -> None:
    config = network(server)
    server.close()
    with pytest.raises(AuditLogError, match="cannot be reached"):
        provision(cas, OWNER, config, self_provisioned=True)
    assert not read_state(cas.store).provisioned
    # The log itself still works: it was never switched.
    provision(cas, OWNER, parse_owner_config("", "o.toml", "toml").config, self_provisioned=True)
    with FixedAnswersServer({PATH: Answer(b"", status=204)}) as other:
        other.close()
        with pytest.raises(AuditLogError, match="was not changed"):
            update_owner_config(cas, OWNER_CALLER, network(other))
    assert read_owner_config(cas.store) == parse_owner_config("", "o.toml", "toml").config
    create_session(cas, session("fine"), AUTHOR)


def test_a_server_whose_certificate_is_not_of_the_ca_is_refused(
    cas: Cas, server: FixedAnswersServer
) -> None:
    with FixedAnswersServer() as stranger:
        config = network(server, ca_pem=stranger.ca_pem)
    with pytest.raises(AuditLogError, match="cannot be reached"):
        provision(cas, OWNER, config, self_provisioned=True)
    assert server.accepted == []


def test_switching_from_the_file_sends_the_whole_log_and_notes_how_far(
    cas: Cas, server: FixedAnswersServer
) -> None:
    provision(cas, OWNER, parse_owner_config("", "o.toml", "toml").config, self_provisioned=True)
    create_session(cas, session("before"), AUTHOR)
    assert server.accepted == []
    update_owner_config(cas, OWNER_CALLER, network(server))
    create_session(cas, session("after"), AUTHOR)
    path: Path = cas.config.audit_log_path
    assert received(server) == path.read_bytes()
    sent = path.with_name(path.name + SENT_SUFFIX).read_text("ascii")
    assert sent == f"{path.stat().st_size} {server.url}{PATH}\n"


def test_a_long_answer_does_not_stop_the_sink(cas: Cas, server: FixedAnswersServer) -> None:
    server.answers[PATH] = Answer(b"x" * (4 * MAX_ANSWER_BYTES), status=200)
    provision(cas, OWNER, network(server), self_provisioned=True)
    create_session(cas, session("one"), AUTHOR)
    create_session(cas, session("two"), AUTHOR)
    assert received(server) == cas.config.audit_log_path.read_bytes()
