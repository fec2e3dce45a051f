"""The open-file limit is raised to what the connection limits need, where the system allows."""

from __future__ import annotations

import logging
import resource

import pytest

from opencas.api import server


def _limits(monkeypatch: pytest.MonkeyPatch, soft: int, hard: int) -> list[tuple[int, int]]:
    set_to: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (soft, hard))
    monkeypatch.setattr(resource, "setrlimit", lambda _, value: set_to.append(value))
    return set_to


def test_the_soft_limit_is_raised_to_what_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    set_to = _limits(monkeypatch, 1024, 1_048_576)
    server.allow_file_descriptors(2256)
    assert set_to == [(2256, 1_048_576)]


def test_a_sufficient_limit_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    set_to = _limits(monkeypatch, 4096, 4096)
    server.allow_file_descriptors(2256)
    assert set_to == []


def test_a_hard_limit_too_low_is_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    set_to = _limits(monkeypatch, 1024, 2048)
    with caplog.at_level(logging.WARNING, logger="opencas"):
        server.allow_file_descriptors(2256)
    assert set_to == [(2048, 2048)]
    assert "max_connections" in caplog.text
