"""A real `cas` on PostgreSQL whose database goes away: it fails closed, says why, and serves
again by itself once the database is back, with nothing acknowledged lost.

The database is cut by a proxy in front of it (the server, which other tests share, keeps
running): every pooled connection dies at once, as after a server restart or a network cut.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from opencas.client.channel import ApiError
from opencas.testing import POLL_INTERVAL, start_self_provisioned_cas

READY_WITHIN = 60.0


def _session(name: str) -> str:
    return f'name: {name}\nversion: "0.3"\nsecrets:\n  - name: token\n    kind: ascii\n'


def _wait_ready(probe: httpx.Client, url: str) -> None:
    deadline = time.monotonic() + READY_WITHIN
    while time.monotonic() < deadline:
        if probe.get(f"{url}/readyz").status_code == 200:
            return
        time.sleep(POLL_INTERVAL)
    pytest.fail(f"the CAS did not become ready within {READY_WITHIN:g} s")


def test_a_cas_without_its_database_fails_closed_and_recovers(
    tmp_path: Path, postgres_proxy: tuple[Any, str]
) -> None:
    proxy, url = postgres_proxy
    cas = start_self_provisioned_cas(tmp_path, database_url=url)
    # Health and readiness are anonymous; the probe needs no pin to read their status.
    probe = httpx.Client(verify=False, timeout=60)
    try:
        created = cas.client.create_session(_session("kept"))
        assert probe.get(f"{cas.url}/readyz").json() == {"status": "ready"}
        proxy.cut()
        assert probe.get(f"{cas.url}/healthz").status_code == 200
        not_ready = probe.get(f"{cas.url}/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["error"] == "not-ready"
        assert "database" in not_ready.json()["message"]
        attest = probe.get(f"{cas.url}/v1/attest", params={"nonce": "ab" * 16})
        assert attest.status_code == 503
        assert attest.json()["error"] == "database-unavailable"
        with pytest.raises(ApiError) as refused:
            cas.client.create_session(_session("refused"))
        assert refused.value.status == 503
        proxy.restore()
        _wait_ready(probe, cas.url)
        assert cas.client.read_session("kept").hash == created.hash
        cas.client.create_session(_session("after"))
        assert cas.client.read_session("after").revision == 1
    finally:
        probe.close()
        cas.stop()
    log = cas.process.log()
    assert "internal error" not in log
    assert "Traceback" not in log
