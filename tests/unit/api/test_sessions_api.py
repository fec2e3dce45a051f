"""Sessions through the client API, in-process: the access-control matrix and concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from opencas.api.app import create_client_api
from opencas.client.channel import ProofAuth
from opencas.client.identity import ClientIdentity
from opencas.config.availability import load_availability_config
from opencas.config.owner import parse_owner_config
from opencas.config.owner_identity import owner_identity_of
from opencas.service.cas import Cas, open_cas
from opencas.service.provisioning import provision
from opencas.service.sessions import load_secret_values
from opencas.testing import write_config

CREATOR = ClientIdentity.generate()
OTHER = ClientIdentity.generate()
OWNER = ClientIdentity.generate()

BASE = """\
name: {name}
version: "0.3"
services:
  - name: api
    command: ["python3", "/app/main.py"]
    environment:
      DB_PASSWORD: "$$CAS::db_password$$"
    attestation:
      simulated_measurement: "{measurement}"
secrets:
  - name: db_password
    kind: ascii
    size: 24
{extra}"""


def session_text(name: str, extra: str = "", measurement: str = "ab" * 32) -> str:
    return BASE.format(name=name, extra=extra, measurement=measurement)


class Api:
    """The client API in this process, called as a given identity (or anonymously)."""

    def __init__(self, cas: Cas) -> None:
        self.cas = cas
        self.app = create_client_api(cas)

    def call(
        self, method: str, path: str, who: ClientIdentity | None, body: Any = None
    ) -> httpx.Response:
        auth = ProofAuth(who, self.cas.identity.cas_key_hash) if who else None

        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="https://cas.test") as c:
                return await c.request(method, path, json=body, auth=auth)

        return asyncio.run(send())

    def create(self, text: str, who: ClientIdentity | None) -> httpx.Response:
        return self.call("POST", "/v1/sessions", who, {"session": text})

    def update(self, name: str, text: str, who: ClientIdentity | None) -> httpx.Response:
        return self.call("PUT", f"/v1/sessions/{name}", who, {"session": text})

    def read(self, name: str, who: ClientIdentity | None) -> httpx.Response:
        return self.call("GET", f"/v1/sessions/{name}", who)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    cas = open_cas(load_availability_config(write_config(tmp_path, 18081, 18766)))
    owner_config = parse_owner_config("", "owner.toml", "toml").config
    provision(cas, owner_identity_of(OWNER.certificate), owner_config, self_provisioned=True)
    try:
        yield Api(cas)
    finally:
        cas.close()


def with_predecessor(text: str, predecessor: str) -> str:
    return f'predecessor: "{predecessor}"\n' + text


def test_create_read_update(api: Api) -> None:
    created = api.create(session_text("app"), CREATOR)
    assert created.status_code == 201, created.text
    first = created.json()["hash"]
    read = api.read("app", CREATOR).json()
    assert read["hash"] == first
    assert read["creator"] == CREATOR.key_hash
    assert "db_password" in read["session"]
    updated = api.update(
        "app", with_predecessor(session_text("app", measurement="cd" * 32), first), CREATOR
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["hash"] != first
    assert api.read("app", CREATOR).json()["revision"] == 2


def test_duplicate_create_is_409(api: Api) -> None:
    assert api.create(session_text("app"), CREATOR).status_code == 201
    again = api.create(session_text("app"), OTHER)
    assert again.status_code == 409
    assert again.json()["error"] == "session-exists"


def test_invalid_session_names_path_and_line(api: Api) -> None:
    response = api.create(session_text("app", extra="bogus: 1\n"), CREATOR)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid-session"
    assert "bogus" in response.json()["message"]


def test_anonymous_writes_are_refused(api: Api) -> None:
    response = api.create(session_text("app"), None)
    assert response.status_code == 401
    assert response.json()["error"] == "signature-required"


@pytest.mark.parametrize(
    ("who", "read_status"),
    [("creator", 200), ("other", 403), ("anonymous", 403), ("owner", 403)],
)
def test_default_policy_matrix(api: Api, who: str, read_status: int) -> None:
    identities = {"creator": CREATOR, "other": OTHER, "anonymous": None, "owner": OWNER}
    caller = identities[who]
    first = api.create(session_text("team"), CREATOR).json()["hash"]
    assert api.read("team", caller).status_code == read_status
    update = api.update(
        "team", with_predecessor(session_text("team", measurement="cd" * 32), first), caller
    )
    expected_update = {"creator": 200, "other": 403, "anonymous": 401, "owner": 403}[who]
    assert update.status_code == expected_update, update.text
    child = api.create(session_text("team/child"), caller)
    expected_create = {"creator": 201, "other": 403, "anonymous": 401, "owner": 403}[who]
    assert child.status_code == expected_create, child.text


def test_open_policy_matrix(api: Api) -> None:
    policy = (
        f'access_policy:\n  read: [ANY]\n  update: ["{OTHER.key_hash}"]\n  create_sessions: [ANY]\n'
    )
    first = api.create(session_text("open", extra=policy), CREATOR).json()["hash"]
    for who in (CREATOR, OTHER, OWNER, None):
        assert api.read("open", who).status_code == 200
    changed = with_predecessor(session_text("open", extra=policy, measurement="cd" * 32), first)
    assert api.update("open", changed, CREATOR).status_code == 403
    assert api.update("open", changed, OWNER).status_code == 403
    assert api.update("open", changed, OTHER).status_code == 200
    assert api.create(session_text("open/child"), OWNER).status_code == 201


def test_namespace_needs_parent(api: Api) -> None:
    response = api.create(session_text("missing/child"), CREATOR)
    assert response.status_code == 404
    assert "missing" in response.json()["message"]


def test_stale_predecessor_gets_current_hash(api: Api) -> None:
    first = api.create(session_text("app"), CREATOR).json()["hash"]
    second = api.update(
        "app", with_predecessor(session_text("app", measurement="cd" * 32), first), CREATOR
    ).json()["hash"]
    stale = api.update(
        "app", with_predecessor(session_text("app", measurement="ef" * 32), first), CREATOR
    )
    assert stale.status_code == 409
    assert stale.json()["error"] == "stale-predecessor"
    assert stale.json()["current_hash"] == second


def test_concurrent_updates_exactly_one_wins(api: Api) -> None:
    first = api.create(session_text("race"), CREATOR).json()["hash"]

    def attempt(index: int) -> httpx.Response:
        text = session_text("race", measurement=f"{index:02x}" * 32)
        return api.update("race", with_predecessor(text, first), CREATOR)

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(attempt, range(1, 5)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 409, 409, 409]
    winner = next(r for r in responses if r.status_code == 200).json()["hash"]
    for loser in (r for r in responses if r.status_code == 409):
        assert loser.json()["current_hash"] == winner
    assert api.read("race", CREATOR).json()["hash"] == winner


def test_read_never_returns_generated_secret_values(api: Api) -> None:
    api.create(session_text("app"), CREATOR)
    body = api.read("app", CREATOR).text
    values = api.cas.store.get("session-secrets", "app")
    assert values is not None  # stored (encrypted) ...
    password = load_secret_values(api.cas.store, "app")["db_password"]
    assert len(password.data) == 24
    assert password.data.decode() not in body  # ... but never returned


def test_public_values_are_anonymous_and_only_public(api: Api) -> None:
    extra = "  - name: ca\n    kind: x509-ca\n    export_public: true\n"
    assert api.create(session_text("pki", extra=extra), CREATOR).status_code == 201
    values = api.call("GET", "/v1/values/session=pki", None)
    assert values.status_code == 200, values.text
    assert list(values.json()["values"]) == ["ca"]
    assert "BEGIN CERTIFICATE" in values.json()["values"]["ca"]
    assert "PRIVATE KEY" not in values.text
    one = api.call("GET", "/v1/values/session=pki,secret=db_password", None)
    assert one.status_code == 404
    missing = api.call("GET", "/v1/values/session=nothing-here", None)
    assert missing.status_code == 404
    assert api.create(session_text("app"), CREATOR).status_code == 201  # exports nothing public
    private = api.call("GET", "/v1/values/session=app", None)
    assert private.status_code == 404
    assert private.json()["message"] == "no public values for session app"
    assert missing.json()["message"] == "no public values for session nothing-here"
    bad = api.call("GET", "/v1/values/sessions=pki", None)
    assert bad.status_code == 400
