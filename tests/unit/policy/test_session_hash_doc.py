"""docs/session-hash.md's worked example is what the code computes."""

from __future__ import annotations

import re
from pathlib import Path

from opencas.crypto.canonical import canonical_json
from opencas.policy.hashing import session_hash
from opencas.policy.parse import parse_session

DOC = Path(__file__).parents[3] / "docs" / "session-hash.md"


def block(marker: str) -> str:
    """The fenced block that follows ``<!-- marker -->`` in the document."""
    match = re.search(
        rf"<!-- {re.escape(marker)} -->\n```[a-z]*\n(.*?)```", DOC.read_text(), re.DOTALL
    )
    assert match is not None, f"no block after <!-- {marker} --> in {DOC}"
    return match.group(1)


def test_example_hash_is_the_hash_of_the_example_session() -> None:
    session = parse_session(block("example-session"), "session-hash.md")

    assert session_hash(session) == block("example-hash").strip()


def test_example_normal_form_is_the_canonical_json_of_the_example_session() -> None:
    session = parse_session(block("example-session"), "session-hash.md")

    assert canonical_json(session.normal_form()).decode() == block("example-normal-form").strip()
