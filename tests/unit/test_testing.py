"""opencas.testing: it needs no pytest, and its in-process server serves as a server does."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from opencas.client import ClientIdentity
from opencas.testing import InProcessCas


def test_importing_it_does_not_import_pytest() -> None:
    code = "import sys, opencas.testing; print(sorted({'pytest', '_pytest'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_a_closed_client_leaves_the_server_serving(api: InProcessCas) -> None:
    with api.client() as first:
        assert first.health() == "ok"
    identity = ClientIdentity.generate()
    assert api.client(identity).whoami() == identity.key_hash


def test_a_closed_server_refuses_to_serve(api: InProcessCas) -> None:
    client = api.client()
    api.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.health()


def test_requests_from_many_threads_are_served(api: InProcessCas) -> None:
    client = api.client()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.health(), range(32)))
    assert answers == ["ok"] * 32
    assert api.send("GET", "/healthz").status_code == httpx.codes.OK
