"""Unpinned exports to names nobody has claimed yet: which ones, and the refusal that names them."""

from __future__ import annotations

import pytest

from opencas.policy.errors import SessionError
from opencas.policy.parse import export_place, parse_session
from opencas.policy.secret_values import check_exports_claimed, unpinned_export_targets

PIN = "ab" * 32
TEXT = f"""\
name: team
version: "0.3"
secrets:
  - name: zeta
    kind: ascii
    export: {{namespace: partners}}
  - name: alpha
    kind: ascii
    export:
      - session: app
      - session: pinned
        session_hash: "{PIN}"
      - namespace: team
"""


def test_targets_are_the_unpinned_names_other_than_the_exporter() -> None:
    session = parse_session(TEXT)

    assert unpinned_export_targets(session) == {"partners", "app"}


def test_existing_targets_are_accepted() -> None:
    check_exports_claimed(parse_session(TEXT), {"partners", "app"}, TEXT)


def test_each_unclaimed_export_is_refused_at_its_line_naming_both_fixes() -> None:
    with pytest.raises(SessionError) as refused:
        check_exports_claimed(parse_session(TEXT), {"elsewhere"}, TEXT)

    namespace, session = refused.value.problems
    assert (namespace.key, namespace.line, namespace.column) == ("secrets[0].export", 6, 5)
    assert "namespace 'partners'" in namespace.message
    assert "Create the namespace session 'partners' first" in namespace.message
    assert "pinned to its hash" in namespace.message
    assert (session.key, session.line, session.column) == ("secrets[1].export[0]", 10, 9)
    assert "session 'app' without a session_hash pin" in session.message
    assert "Create the session 'app' first" in session.message
    assert "session_hash: <hash of app>" in session.message
    assert str(refused.value).startswith("session:6:5: secrets[0].export: ")


def test_without_the_text_the_problem_names_the_export_by_the_normal_form() -> None:
    with pytest.raises(SessionError) as refused:
        check_exports_claimed(parse_session(TEXT), {"partners"})

    (problem,) = refused.value.problems
    # The normal form sorts secrets by name: alpha is secrets[0] there.
    assert (problem.key, problem.line) == ("secrets[0].export", None)


def test_export_place_finds_only_the_written_rule() -> None:
    session = parse_session(TEXT)
    alpha = session.secret("alpha")
    assert alpha is not None
    by_target = {rule.session or rule.namespace: rule for rule in alpha.export}

    assert export_place(TEXT, "alpha", by_target["pinned"]) == ("secrets[1].export[1]", 11, 9)
    assert export_place(TEXT, "zeta", by_target["app"]) is None
    assert export_place("secrets: [", "alpha", by_target["app"]) is None
