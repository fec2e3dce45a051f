"""Property tests: whatever text or structure it is given, parse_session raises only SessionError.

Three sources of input: arbitrary text; arbitrary YAML-serialisable structures (with the keys of
the session language mixed in, so that the parser gets past the first check); and random
mutations of the valid sample sessions (a key deleted, a value's type changed, an unknown key
inserted, a key duplicated in the text, lines dropped or swapped, placeholders mangled).
Whatever parses must round-trip through its normal form with the same hash.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opencas.policy.access import sign_session_hash, verify_signatures
from opencas.policy.errors import SessionError
from opencas.policy.hashing import session_hash
from opencas.policy.parse import Purpose, parse_session, session_from_normal_form
from opencas.sources.yaml import parse_yaml

SAMPLES = sorted((Path(__file__).parents[2] / "data" / "sessions").glob("*.yaml"))
SAMPLE_TEXTS = [path.read_text() for path in SAMPLES]
SAMPLE_DATA = [parse_yaml(text).data for text in SAMPLE_TEXTS]

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = [
    "name",
    "version",
    "predecessor",
    "services",
    "secrets",
    "images",
    "access_policy",
    "security",
    "command",
    "environment",
    "attestation",
    "mrenclave",
    "mrenclaves",
    "signer",
    "kind",
    "size",
    "value",
    "import",
    "export",
    "session",
    "namespace",
    "session_hash",
    "injection_files",
    "path",
    "content",
    "read",
    "update",
    "create_sessions",
    "require-all",
    "require-at-least-2",
    "tolerate",
    "volumes",
    "private_key",
    "issuer",
    "san",
    "dns",
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(
        [
            "0.3",
            "CREATOR",
            "ANY",
            "x509",
            "ascii",
            "/etc/x",
            "$$CAS::a$$",
            "$$CAS::",
            "$$SCONE::b.crt:pem$$",
            "a" * 64,
            "365d",
        ]
    )
)
STRUCTURES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=25,
)


def parses_or_refuses(text: str) -> None:
    try:
        session = parse_session(text, "fuzz")
    except SessionError as error:
        refused = error
    else:
        again = session_from_normal_form(json.loads(json.dumps(session.normal_form())))
        assert again == session
        assert session_hash(again) == session_hash(session)
        return
    assert refused.problems
    assert all(problem.message and problem.line for problem in refused.problems)


def dump(data: object) -> str:
    # JSON is YAML: a faithful, quick serialisation of any structure.
    return json.dumps(data, indent=1)


@SETTINGS
@given(text=st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    parses_or_refuses(text)


@SETTINGS
@given(
    text=st.lists(
        st.sampled_from(
            [
                "name: x",
                "version: '0.3'",
                "services:",
                "  - name: a",
                "    command: $$CAS::s$$",
                "secrets:",
                "  - name: s",
                "    kind: ascii",
                "  - &a x",
                "  - *a",
                "? [k]",
                ": v",
                "---",
                "\t",
                "<<: {}",
                "x: !!binary aGk=",
                "y: .nan",
            ]
        ),
        max_size=12,
    )
)
def test_arbitrary_yaml_lines(text: list[str]) -> None:
    parses_or_refuses("\n".join(text))


@SETTINGS
@given(data=st.dictionaries(st.sampled_from(KEYS), STRUCTURES, max_size=8))
def test_arbitrary_structures(data: dict[str, Any]) -> None:
    parses_or_refuses(dump(data))


def paths_of(data: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found.extend(paths_of(value, (*prefix, key)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found.extend(paths_of(value, (*prefix, index)))
    return found


def parent_and_key(data: Any, path: tuple[Any, ...]) -> tuple[Any, Any]:
    for part in path[:-1]:
        data = data[part]
    return data, path[-1]


@st.composite
def mutated_samples(draw: st.DrawFn) -> str:
    data = copy.deepcopy(draw(st.sampled_from(SAMPLE_DATA)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = [path for path in paths_of(data) if path]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = parent_and_key(data, path)
        action = draw(st.sampled_from(["delete", "retype", "unknown", "replace"]))
        if action == "delete":
            del parent[key]
        elif action == "retype":
            parent[key] = draw(SCALARS | st.lists(SCALARS, max_size=2) | st.just({}))
        elif action == "unknown" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS) | st.text(min_size=1, max_size=8))] = draw(SCALARS)
        else:
            parent[key] = draw(STRUCTURES)
    return dump(data)


@SETTINGS
@given(text=mutated_samples())
def test_mutated_sample_structures(text: str) -> None:
    parses_or_refuses(text)


@st.composite
def mutated_sample_texts(draw: st.DrawFn) -> str:
    lines = draw(st.sampled_from(SAMPLE_TEXTS)).splitlines()
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        index = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        action = draw(st.sampled_from(["duplicate", "drop", "swap", "indent", "mangle", "insert"]))
        if action == "duplicate":
            lines.insert(index, lines[index])
        elif action == "drop":
            del lines[index]
        elif action == "swap" and index + 1 < len(lines):
            lines[index], lines[index + 1] = lines[index + 1], lines[index]
        elif action == "indent":
            lines[index] = "  " + lines[index]
        elif action == "mangle":
            line = lines[index]
            cut = draw(st.integers(min_value=0, max_value=len(line)))
            lines[index] = (
                line[:cut]
                + draw(st.sampled_from(["$$", ":", "&x", "*x", "{", "'", "\t"]))
                + line[cut:]
            )
        else:
            lines.insert(
                index, draw(st.sampled_from(["extra: 1", "  volumes: []", "fspf_path: /x"]))
            )
        if not lines:
            lines = ["name: x"]
    return "\n".join(lines) + "\n"


@SETTINGS
@given(text=mutated_sample_texts())
def test_mutated_sample_texts(text: str) -> None:
    parses_or_refuses(text)


@SETTINGS
@given(text=mutated_sample_texts(), purpose=st.sampled_from(["create", "update"]))
def test_upload_purposes(text: str, purpose: Purpose) -> None:
    """What ``POST`` and ``PUT /v1/sessions`` parse: only SessionError, whatever the text."""
    try:
        parse_session(text, "fuzz", purpose=purpose)
    except SessionError as error:
        refused = error
    else:
        return
    assert refused.problems


SIGNATURE_SAMPLE = sign_session_hash(Ed25519PrivateKey.generate(), "ab" * 32)


@SETTINGS
@given(
    items=st.none()
    | STRUCTURES
    | st.lists(
        st.fixed_dictionaries({}, optional=dict.fromkeys(SIGNATURE_SAMPLE, STRUCTURES))
        | st.just(dict(SIGNATURE_SAMPLE)),
        max_size=4,
    )
)
def test_detached_signatures(items: object) -> None:
    """The ``signatures`` of a session upload: only SessionError, whatever the items."""
    try:
        verify_signatures(items, "ab" * 32)
    except SessionError as error:
        refused = error
    else:
        return
    assert refused.problems
