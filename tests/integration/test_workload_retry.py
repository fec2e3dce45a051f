"""A workload turned away over the CAS's per-source connection limit tries again and gets its
configuration, against a real CAS: the reset it meets is one that is safe to try again after."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from opencas.attestation.workload_binding import ConfigId
from opencas.client.channel import CasUnreachable
from opencas.client.enclave import EnclaveClient
from opencas.platform.simulated import SimulatedPlatform
from opencas.runtime.exchange import fetch_configuration
from opencas.testing import SelfProvisionedCas, start_self_provisioned_cas

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
        cas.client.create_session(SESSION)
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
