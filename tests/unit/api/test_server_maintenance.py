"""Periodic maintenance while serving: it runs, and its failures do not stop the server."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from opencas.api.server import run_periodically


def test_maintenance_runs_repeatedly_and_survives_errors(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def chore() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("first run fails")

    async def scenario() -> None:
        task = asyncio.create_task(run_periodically(chore, 0.001))
        while len(calls) < 3:
            await asyncio.sleep(0.001)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert len(calls) >= 3
    assert "periodic maintenance failed" in caplog.text
