"""Property tests: every parser a peer can reach raises only its documented error.

A peer reaches: the owner config (TOML, JSON, YAML, and its normal form from a request body), the
availability config, request proofs and their compact JWS, evidence envelopes and simulated
evidence, the CAS attestation answer a client verifies, and the sealed workload configuration a
workload opens (the session YAML has its own module, tests/unit/policy/test_session_fuzz.py).
Inputs are arbitrary text or bytes and mutations of valid samples. Example counts are bounded so
that the module runs in seconds.
"""

from __future__ import annotations

import base64
import copy
import json
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from opencas.attestation.evidence import Evidence
from opencas.attestation.report import CasExpectations, verify_cas_attestation
from opencas.attestation.simulated import create_simulated_evidence, verify_simulated_evidence
from opencas.attestation.workload_binding import ConfigId
from opencas.client.enclave import parse_workload_config
from opencas.client.identity import ClientIdentity
from opencas.config.availability import load_availability_config
from opencas.config.owner import owner_config_from_normal_form, parse_owner_config
from opencas.crypto.canonical import canonical_json
from opencas.crypto.jws import parse_compact
from opencas.crypto.replay_cache import ReplayCache
from opencas.crypto.request_proof import create_request_proof, verify_request_proof
from opencas.errors import AttestationRefused, ConfigError, EvidenceError, RequestProofError
from opencas.service.cas import Cas, open_cas
from opencas.testing import write_config

E = TypeVar("E", bound=Exception)

SETTINGS = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=24)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def raised(call: Callable[[], object], allowed: type[E] | tuple[type[E], ...]) -> E | None:
    """The ``allowed`` error ``call()`` raised, or ``None``; any other exception fails the test."""
    try:
        call()
    except allowed as error:
        return error
    return None


def canonical(value: object) -> bytes:
    """``value`` as canonical JSON; examples it cannot write (such as huge integers) are skipped."""
    try:
        return canonical_json(value)
    except (ValueError, TypeError):
        assume(False)
        raise


def paths_of(data: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into ``data``'s dicts and lists, the empty path included."""
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found.extend(paths_of(value, (*prefix, key)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found.extend(paths_of(value, (*prefix, index)))
    return found


@st.composite
def mutated(draw: st.DrawFn, sample: object) -> Any:
    """``sample`` with one to three values deleted, retyped or replaced, or keys added."""
    data = copy.deepcopy(sample)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = [path for path in paths_of(data) if path]
        if not paths:
            return draw(JSON_VALUES)
        path = draw(st.sampled_from(paths))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["delete", "replace", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(JSON_VALUES)
        else:
            parent[path[-1]] = draw(JSON_VALUES)
    return data


# --- owner and availability configs ----------------------------------------------------------

OWNER_TOML = """\
[api]
hostnames = ["cas.example"]

[api_identity]
common_name = "cas.example"
organization = "Example"
"""


@SETTINGS
@given(text=st.text(max_size=300), fmt=st.sampled_from(["toml", "json", "yaml"]))
def test_owner_config_text(text: str, fmt: Any) -> None:
    error = raised(lambda: parse_owner_config(text, "fuzz", fmt), ConfigError)
    assert error is None or error.problems


@SETTINGS
@given(data=st.dictionaries(st.sampled_from(["api", "api_identity", "dcap", "audit_log"])
                            | st.text(max_size=8), JSON_VALUES, max_size=5),
       fmt=st.sampled_from(["json", "yaml"]))  # fmt: skip
def test_owner_config_structures(data: dict[str, Any], fmt: Any) -> None:
    error = raised(lambda: parse_owner_config(json.dumps(data), "fuzz", fmt), ConfigError)
    assert error is None or error.problems
    error = raised(lambda: owner_config_from_normal_form(data), ConfigError)
    assert error is None or error.problems


@SETTINGS
@given(
    text=st.lists(
        st.sampled_from(
            [
                "[api]",
                "[api_identity]",
                "[limits]",
                "[platform]",
                'kind = "simulated"',
                'hostnames = ["a.example"]',
                "hostnames = 3",
                'api_listen = "127.0.0.1:0"',
                'api_listen = "[::1]:99999"',
                'database = "../x.db"',
                "max_session_bytes = -1",
                "x = 1e999",
                'a."b" = 1',
                "[[api]]",
                '"' * 3,
            ]
        )
        | st.text(max_size=30),
        max_size=10,
    )
)
def test_availability_config(text: list[str]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "cas.toml"
        path.write_text("\n".join(text), encoding="utf-8")
        error = raised(lambda: load_availability_config(path), ConfigError)
        assert error is None or error.problems


# --- request proofs --------------------------------------------------------------------------

IDENTITY = ClientIdentity.generate()
AUDIENCE = "ab" * 32
URL = "https://cas.example:8081/v1/whoami"
NOW = 1_800_000_000
PROOF = create_request_proof(
    IDENTITY.key, IDENTITY.certificate, method="GET", url=URL, body=b"", audience=AUDIENCE, now=NOW
)


def _verify(token: str) -> None:
    error = raised(
        lambda: verify_request_proof(
            token,
            method="GET",
            url=URL,
            body=b"",
            audience=AUDIENCE,
            now=NOW,
            replay_cache=ReplayCache(),
        ),
        RequestProofError,
    )
    assert error is None or error.code.startswith("proof-")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@SETTINGS
@given(token=st.text(max_size=200))
def test_arbitrary_proof_text(token: str) -> None:
    _verify(token)


@SETTINGS
@given(header=st.data(), claims=st.data())
def test_mutated_proofs(header: st.DataObject, claims: st.DataObject) -> None:
    head, body, signature = PROOF.split(".")
    header_value = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    claims_value = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    new_header = header.draw(mutated(header_value))
    new_claims = claims.draw(mutated(claims_value))
    encoded = [_b64url(json.dumps(part).encode()) for part in (new_header, new_claims)]
    _verify(".".join([*encoded, signature]))


@SETTINGS
@given(parts=st.lists(st.text(alphabet="ABCabc012-_=.+/", max_size=40), max_size=5))
def test_compact_jws_form(parts: list[str]) -> None:
    raised(lambda: parse_compact(".".join(parts)), ValueError)


# --- evidence ----------------------------------------------------------------------------------

PLATFORM_KEY = Ed25519PrivateKey.generate()
EVIDENCE = create_simulated_evidence(PLATFORM_KEY, "cd" * 32, b"\x01" * 64)
EVIDENCE_DOCUMENT = json.loads(EVIDENCE.data)


@SETTINGS
@given(envelope=JSON_VALUES | mutated(EVIDENCE.to_json()))
def test_evidence_envelope(envelope: Any) -> None:
    error = raised(lambda: Evidence.from_json(envelope), EvidenceError)
    assert error is None or error.check


@SETTINGS
@given(document=mutated(EVIDENCE_DOCUMENT) | JSON_VALUES, raw=st.booleans())
def test_simulated_evidence(document: Any, raw: bool) -> None:
    data = json.dumps(document).encode() if raw else canonical(document)
    error = raised(
        lambda: verify_simulated_evidence(Evidence(type=EVIDENCE.type, data=data)), EvidenceError
    )
    assert error is None or error.check


# --- the CAS report ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def attested_cas(tmp_path_factory: pytest.TempPathFactory) -> Any:
    directory = tmp_path_factory.mktemp("report-fuzz")
    cas: Cas = open_cas(load_availability_config(write_config(directory, 18091, 18796)))
    try:
        yield cas.attest("ab" * 16)
    finally:
        cas.close()


@SETTINGS
@given(data=st.data())
def test_cas_attestation_answer(attested_cas: dict[str, Any], data: st.DataObject) -> None:
    answer = data.draw(mutated(attested_cas) | JSON_VALUES)
    expectations = CasExpectations(nonce="ab" * 16, allow_debug=True, allow_unprovisioned=True)
    error = raised(
        lambda: verify_cas_attestation(answer, expectations, None, at=datetime.now(UTC)),
        (AttestationRefused, EvidenceError),
    )
    assert error is None or error.check


# --- sealed workload configurations -----------------------------------------------------------

CONFIG_ID = ConfigId.parse("app/svc")
WORKLOAD_CONFIG = {
    "config_id": "app/svc",
    "session_hash": "ef" * 32,
    "command": ["python3", "app.py"],
    "environment": {"A": "b"},
    "pwd": "/srv",
    "injection_files": [{"path": "/etc/app/c.txt", "content": "x", "permission": "0600"}],
    "certificates": {},
}


@SETTINGS
@given(document=mutated(WORKLOAD_CONFIG) | JSON_VALUES, raw=st.binary(max_size=64))
def test_workload_configuration(document: Any, raw: bytes) -> None:
    for plaintext in (canonical(document), raw):
        error = raised(partial(parse_workload_config, plaintext, CONFIG_ID), ValueError)
        assert error is None or str(error)
