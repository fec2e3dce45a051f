"""Sessions through the client API, in-process: the access-control matrix and concurrency."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from opencas.client import ApiError, ClientIdentity
from opencas.service.sessions import load_secret_values
from opencas.testing import InProcessCas

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


def refusal(call: Callable[[], object]) -> int | None:
    """The HTTP status the CAS refused ``call`` with, or None when it was allowed."""
    try:
        call()
    except ApiError as exc:
        return exc.status
    return None


def refusal_of(response: httpx.Response) -> int | None:
    """The status of a request sent by hand, as :func:`refusal` gives it."""
    return None if response.is_success else response.status_code


def create(api: InProcessCas, text: str, who: ClientIdentity | None) -> int | None:
    """Create as ``who``; an anonymous request is sent by hand (the SDK signs every write)."""
    if who is None:
        return refusal_of(api.send("POST", "/v1/sessions", json={"session": text}))
    return refusal(lambda: api.client(who).create_session(text))


def update(api: InProcessCas, name: str, text: str, who: ClientIdentity | None) -> int | None:
    """Update as ``who``, as :func:`create` does."""
    if who is None:
        return refusal_of(api.send("PUT", f"/v1/sessions/{name}", json={"session": text}))
    return refusal(lambda: api.client(who).update_session(name, text))


def read(api: InProcessCas, name: str, who: ClientIdentity | None) -> int | None:
    """Read as ``who`` (anonymously without one)."""
    return refusal(lambda: api.client(who).read_session(name, signed=who is not None))


@pytest.fixture
def api(api: InProcessCas) -> InProcessCas:
    """The shared in-process CAS, owned by OWNER."""
    api.provision(OWNER)
    return api


def with_predecessor(text: str, predecessor: str) -> str:
    return f'predecessor: "{predecessor}"\n' + text


def test_create_read_update(api: InProcessCas) -> None:
    creator = api.client(CREATOR)
    created = api.send(
        "POST", "/v1/sessions", signer=CREATOR, json={"session": session_text("app")}
    )
    assert created.status_code == 201, created.text
    first = created.json()["hash"]
    read_back = creator.read_session("app")
    assert read_back.hash == first
    assert read_back.creator == CREATOR.key_hash
    assert "db_password" in read_back.text
    updated = creator.update_session(
        "app", with_predecessor(session_text("app", measurement="cd" * 32), first)
    )
    assert updated.hash != first
    assert creator.read_session("app").revision == 2


def test_duplicate_create_is_409(api: InProcessCas) -> None:
    api.client(CREATOR).create_session(session_text("app"))
    with pytest.raises(ApiError) as again:
        api.client(OTHER).create_session(session_text("app"))
    assert again.value.status == 409
    assert again.value.code == "session-exists"


def test_invalid_session_names_path_and_line(api: InProcessCas) -> None:
    with pytest.raises(ApiError) as invalid:
        api.client(CREATOR).create_session(session_text("app", extra="bogus: 1\n"))
    assert invalid.value.status == 400
    assert invalid.value.code == "invalid-session"
    assert "bogus" in invalid.value.message


def test_anonymous_writes_are_refused(api: InProcessCas) -> None:
    response = api.send("POST", "/v1/sessions", json={"session": session_text("app")})
    assert response.status_code == 401
    assert response.json()["error"] == "signature-required"


@pytest.mark.parametrize(
    ("who", "read_status"),
    [("creator", None), ("other", 404), ("anonymous", 404), ("owner", 404)],
)
def test_default_policy_matrix(api: InProcessCas, who: str, read_status: int | None) -> None:
    identities = {"creator": CREATOR, "other": OTHER, "anonymous": None, "owner": OWNER}
    caller = identities[who]
    first = api.client(CREATOR).create_session(session_text("team")).hash
    assert read(api, "team", caller) == read_status
    changed = with_predecessor(session_text("team", measurement="cd" * 32), first)
    expected_update = {"creator": None, "other": 403, "anonymous": 401, "owner": 403}[who]
    assert update(api, "team", changed, caller) == expected_update
    expected_create = {"creator": None, "other": 403, "anonymous": 401, "owner": 403}[who]
    assert create(api, session_text("team/child"), caller) == expected_create


def test_open_policy_matrix(api: InProcessCas) -> None:
    policy = (
        f'access_policy:\n  read: [ANY]\n  update: ["{OTHER.key_hash}"]\n  create_sessions: [ANY]\n'
    )
    first = api.client(CREATOR).create_session(session_text("open", extra=policy)).hash
    for who in (CREATOR, OTHER, OWNER, None):
        assert read(api, "open", who) is None
    changed = with_predecessor(session_text("open", extra=policy, measurement="cd" * 32), first)
    assert update(api, "open", changed, CREATOR) == 403
    assert update(api, "open", changed, OWNER) == 403
    assert update(api, "open", changed, OTHER) is None
    assert create(api, session_text("open/child"), OWNER) is None


def test_namespace_needs_parent(api: InProcessCas) -> None:
    with pytest.raises(ApiError) as missing:
        api.client(CREATOR).create_session(session_text("missing/child"))
    assert missing.value.status == 404
    assert "missing" in missing.value.message


def test_stale_predecessor_gets_current_hash(api: InProcessCas) -> None:
    creator = api.client(CREATOR)
    first = creator.create_session(session_text("app")).hash
    second = creator.update_session(
        "app", with_predecessor(session_text("app", measurement="cd" * 32), first)
    ).hash
    with pytest.raises(ApiError) as stale:
        creator.update_session(
            "app", with_predecessor(session_text("app", measurement="ef" * 32), first)
        )
    assert stale.value.status == 409
    assert stale.value.code == "stale-predecessor"
    assert stale.value.details["current_hash"] == second


def test_concurrent_updates_exactly_one_wins(api: InProcessCas) -> None:
    creator = api.client(CREATOR)
    first = creator.create_session(session_text("race")).hash

    def attempt(index: int) -> str | ApiError:
        text = session_text("race", measurement=f"{index:02x}" * 32)
        try:
            return creator.update_session("race", with_predecessor(text, first)).hash
        except ApiError as exc:
            return exc

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(attempt, range(1, 5)))
    winners = [o for o in outcomes if isinstance(o, str)]
    losers = [o for o in outcomes if isinstance(o, ApiError)]
    assert len(winners) == 1
    assert sorted(loser.status for loser in losers) == [409, 409, 409]
    for loser in losers:
        assert loser.details["current_hash"] == winners[0]
    assert creator.read_session("race").hash == winners[0]


def test_read_never_returns_generated_secret_values(api: InProcessCas) -> None:
    api.client(CREATOR).create_session(session_text("app"))
    body = api.send("GET", "/v1/sessions/app", signer=CREATOR).text
    values = api.cas.store.get("session-secrets", "app")
    assert values is not None  # stored (encrypted) ...
    password = load_secret_values(api.cas.store, "app")["db_password"]
    assert len(password.data) == 24
    assert password.data.decode() not in body  # ... but never returned


def test_public_values_are_anonymous_and_only_public(api: InProcessCas) -> None:
    creator, anonymous = api.client(CREATOR), api.client()
    extra = "  - name: ca\n    kind: x509-ca\n    export_public: true\n"
    creator.create_session(session_text("pki", extra=extra))
    values = anonymous.session_values("pki")
    assert values.session == "pki"
    assert list(values.values) == ["ca"]
    assert "BEGIN CERTIFICATE" in values.values["ca"]
    assert "PRIVATE KEY" not in api.send("GET", "/v1/values/session=pki").text
    with pytest.raises(ApiError) as one:
        anonymous.session_values("pki", "db_password")
    assert one.value.status == 404
    with pytest.raises(ApiError) as missing:
        anonymous.session_values("nothing-here")
    assert missing.value.status == 404
    creator.create_session(session_text("app"))  # exports nothing public
    with pytest.raises(ApiError) as private:
        anonymous.session_values("app")
    assert private.value.status == 404
    assert private.value.message == "no public values for session app"
    assert missing.value.message == "no public values for session nothing-here"
    bad = api.send("GET", "/v1/values/sessions=pki")
    assert bad.status_code == 400
