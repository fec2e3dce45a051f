"""opencas.testing: it needs no pytest, and its in-process server serves as a server does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from opencas.client import ClientIdentity
from opencas.testing import TEST_PORTS, InProcessCas, free_port, listening_pids


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


def test_free_ports_are_outside_the_ephemeral_range_and_free() -> None:
    ports = {free_port() for _ in range(20)}
    assert all(port in TEST_PORTS for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_listening_pids_names_the_process_holding_a_port() -> None:
    port = free_port()
    assert os.getpid() not in listening_pids(port)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        assert os.getpid() in listening_pids(port)
    assert os.getpid() not in listening_pids(port)
