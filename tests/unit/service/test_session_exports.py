"""Storing a session refuses an unpinned export to a session or namespace nobody created yet."""

from __future__ import annotations

import pytest

from opencas.policy.caller import Caller
from opencas.policy.errors import SessionError
from opencas.service.cas import Cas
from opencas.service.sessions import create_session, load_session, update_session

AUTHOR = Caller("a1" * 32)
OTHER = Caller("b2" * 32)
EXPORTER = """\
name: exporter
version: "0.3"
secrets:
  - name: shared
    kind: ascii
"""
EXPORT = "    export:\n      - {target}\n"


def exporting(target: str) -> str:
    return EXPORTER + EXPORT.format(target=target)


def test_create_is_refused_until_the_importer_exists(cas: Cas) -> None:
    with pytest.raises(SessionError) as refused:
        create_session(cas, exporting("session: importer"), AUTHOR)
    assert refused.value.problems[0].line == 7
    assert load_session(cas.store, "exporter") is None

    create_session(cas, 'name: importer\nversion: "0.3"\n', OTHER)
    create_session(cas, exporting("session: importer"), AUTHOR)


def test_create_is_refused_until_the_namespace_exists(cas: Cas) -> None:
    with pytest.raises(SessionError, match="namespace 'team'"):
        create_session(cas, exporting("namespace: team"), AUTHOR)

    create_session(cas, 'name: team\nversion: "0.3"\n', OTHER)
    create_session(cas, exporting("namespace: team"), AUTHOR)


def test_a_pinned_export_or_one_to_its_own_namespace_needs_no_importer(cas: Cas) -> None:
    pinned = "session: importer\n        session_hash: " + "cd" * 32
    create_session(cas, exporting(pinned).replace("exporter", "pinned"), AUTHOR)
    create_session(cas, exporting("namespace: own").replace("exporter", "own"), AUTHOR)


def test_an_update_that_adds_an_unclaimed_export_is_refused(cas: Cas) -> None:
    first = create_session(cas, EXPORTER, AUTHOR)
    update = f'predecessor: "{first.hash}"\n' + exporting("session: importer")

    with pytest.raises(SessionError) as refused:
        update_session(cas, "exporter", update, AUTHOR)
    assert refused.value.problems[0].line == 8
    stored = load_session(cas.store, "exporter")
    assert stored is not None
    assert stored.record.hash == first.hash
