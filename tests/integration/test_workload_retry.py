"""A workload turned away over the CAS's per-source connection limit tries again and gets its
configuration, against a real CAS: the reset it meets is one that is safe to try again after."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from opencas.attestation.workload_binding import ConfigId
from opencas.cli.casctl_common import EXIT_UNREACHABLE
from opencas.client.channel import CasUnreachable
from opencas.client.enclave import EnclaveClient
from opencas.platform.simulated import SimulatedPlatform
from opencas.runtime.exchange import fetch_configuration
from opencas.testing import (
    ADMISSION_SECONDS,
    SelfProvisionedCas,
    run_casctl,
    start_self_provisioned_cas,
    until_admitted,
)

MEASUREMENT = "7a" * 32
SESSION = f"""\
name: retry
version: "0.3"
services:
  - name: app
    command: ["/bin/app"]
    environment:
      TOKEN: "$$CAS::token$$"
    attestation:
      simulated_measurement: "{MEASUREMENT}"
secrets:
  - name: token
    kind: ascii
security:
  attestation:
    tolerate: [simulated]
"""
CONFIG_ID = ConfigId("retry", "app")


@pytest.fixture
def limited_cas(tmp_path: Path) -> Iterator[SelfProvisionedCas]:
    """A CAS whose enclave listener takes one connection per source; a stalled one is reset
    only after a long handshake timeout, so it holds the one place as long as the test wants."""
    cas = start_self_provisioned_cas(
        tmp_path, limits={"max_connections_per_source": 1, "tls_handshake_timeout": 60}
    )
    try:
        # The owner's pinned client makes its first connection here, racing the close of the
        # attestation's: under a limit of one it may be turned away once.
        until_admitted(lambda: cas.client.create_session(SESSION))
        yield cas
    finally:
        cas.stop()


def _holding_the_one_place(cas: SelfProvisionedCas) -> socket.socket:
    """A TCP connection that never starts its TLS handshake; once the CAS counts it (the first
    TLS connection after it is reset), it holds the source's one place."""
    return socket.create_connection(("127.0.0.1", cas.process.enclave_port), timeout=10)


def test_a_workload_turned_away_over_the_limit_tries_again_and_is_configured(
    limited_cas: SelfProvisionedCas, tmp_path: Path
) -> None:
    platform = SimulatedPlatform.load_or_create(tmp_path / "platform.key", MEASUREMENT)
    url = f"https://127.0.0.1:{limited_cas.process.enclave_port}"
    ca = limited_cas.verified.ca_certificate_pem
    blocker = _holding_the_one_place(limited_cas)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        # The CAS reset the workload's connection: now the place comes free.
        waits.append(seconds)
        blocker.close()

    try:
        with EnclaveClient(url, ca) as client:
            with pytest.raises(CasUnreachable) as caught:
                fetch_configuration(client, CONFIG_ID, platform)
            assert caught.value.retryable, caught.value.message
            attested = fetch_configuration(client, CONFIG_ID, platform, retry_for=30, sleep=sleep)
    finally:
        blocker.close()
    assert attested.config.config_id == CONFIG_ID
    assert len(attested.config.environment["TOKEN"]) > 0
    assert len(waits) >= 1
    assert all(0.05 <= wait <= 2.0 for wait in waits)


PROBE = """\
import socket, ssl, sys, time
# The CAS takes one connection from this host: casctl's must be closed while this one runs.
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE  # what is tested is whether the CAS takes the connection
REQUEST = b"GET /healthz HTTP/1.1\\r\\nHost: cas\\r\\nConnection: close\\r\\n\\r\\n"
deadline = time.monotonic() + 5
while True:
    try:
        with socket.create_connection(("127.0.0.1", {port}), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(REQUEST)
                print("answered", tls.recv(64).split(b"\\r\\n")[0].decode())
                sys.exit(0)
    except (ConnectionError, ssl.SSLError, OSError) as exc:
        # casctl closes its connection before the program starts; the CAS may take a moment
        # to see it gone, so a reset is tried again for a while, not taken as the answer.
        if time.monotonic() > deadline:
            print("turned away", type(exc).__name__)
            sys.exit(1)
"""
SERVICE = """\
name: running
version: "0.3"
services:
  - name: app
    attestation:
      simulated_measurement: "{measurement}"
security:
  attestation:
    tolerate: [simulated]
"""


def _casctl_admitted(home: Path, arguments: list[str]) -> subprocess.CompletedProcess[str]:
    """casctl, run again while it exits because the CAS turned its connection away (the CAS
    may still count the connection the owner's client has just closed)."""
    give_up = time.monotonic() + ADMISSION_SECONDS
    while True:
        ran = run_casctl(home, arguments)
        if ran.returncode != EXIT_UNREACHABLE or time.monotonic() >= give_up:
            return ran


def test_a_running_workload_holds_no_connection_to_the_cas(
    limited_cas: SelfProvisionedCas, tmp_path: Path
) -> None:
    program = tmp_path / "probe.py"
    program.write_text(PROBE.format(port=limited_cas.process.enclave_port))
    home = tmp_path / "casctl"
    measured = run_casctl(home, ["measure", "--", sys.executable, str(program)])
    assert measured.returncode == 0, measured.stderr
    limited_cas.client.create_session(SERVICE.format(measurement=measured.stdout.strip()))
    # The owner's client keeps a connection to the client API, whose one place casctl needs.
    limited_cas.client.close()
    attested = _casctl_admitted(home, ["attest", limited_cas.url, "--only-for-testing-debug"])
    assert attested.returncode == 0, attested.stderr

    ran = run_casctl(
        home, ["run", "--config-id", "running/app", "--", sys.executable, str(program)]
    )

    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.strip() == "answered HTTP/1.1 200 OK"
