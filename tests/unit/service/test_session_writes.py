"""Generating a session's secrets does not hold the store's write lock."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from opencas.errors import ConflictError
from opencas.policy.caller import Caller
from opencas.service import sessions
from opencas.service.cas import Cas

AUTHOR = Caller("a1" * 32)


def text(name: str) -> str:
    return f'name: {name}\nversion: "0.3"\nsecrets:\n  - name: s\n    kind: ascii\n'


def test_other_writes_proceed_while_secrets_are_generated(
    cas: Cas, monkeypatch: pytest.MonkeyPatch
) -> None:
    generating = threading.Event()
    other_write_done = threading.Event()
    real = sessions.generate_values

    def slow_generation(*args: Any, **kwargs: Any) -> Any:
        if args[0].name == "slow":
            generating.set()
            # Would time out if the slow session held the write lock the other write needs.
            assert other_write_done.wait(timeout=30)
        return real(*args, **kwargs)

    monkeypatch.setattr(sessions, "generate_values", slow_generation)
    errors: list[BaseException] = []

    def create_slow() -> None:
        try:
            sessions.create_session(cas, text("slow"), AUTHOR)
        except BaseException as exc:  # reported below
            errors.append(exc)

    worker = threading.Thread(target=create_slow)
    worker.start()
    assert generating.wait(timeout=30)
    sessions.create_session(cas, text("fast"), AUTHOR)
    other_write_done.set()
    worker.join(timeout=60)
    assert not errors
    assert sessions.load_session(cas.store, "slow") is not None
    assert sessions.load_session(cas.store, "fast") is not None


def test_a_session_created_meanwhile_makes_the_slow_create_a_conflict(
    cas: Cas, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = sessions.generate_values

    def racing_generation(*args: Any, **kwargs: Any) -> Any:
        values = real(*args, **kwargs)
        if sessions.load_session(cas.store, "twice") is None:
            monkeypatch.setattr(sessions, "generate_values", real)
            sessions.create_session(cas, text("twice"), Caller("b2" * 32))  # a rival wins meanwhile
        return values

    monkeypatch.setattr(sessions, "generate_values", racing_generation)
    with pytest.raises(ConflictError):
        sessions.create_session(cas, text("twice"), AUTHOR)
    stored = sessions.load_session(cas.store, "twice")
    assert stored is not None
    assert stored.record.creator == "b2" * 32
