"""The in-process CAS that unit tests share: the real ASGI apps behind the real clients.

Like python-tuf's repository simulator, one harness serves every unit test that needs a CAS:
``cas`` opens a fresh CAS (simulated platform, not provisioned) in the test's own directory, and
``api`` serves its client API and enclave API in-process (:class:`opencas.testing.InProcessCas`)
to a real :class:`~opencas.client.CasClient` and :class:`~opencas.client.enclave.EnclaveClient`.
``pinned_cas`` builds what casctl keeps for a CAS it pinned, for tests of that state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from opencas.client.state import PinnedCas
from opencas.config.availability import load_availability_config
from opencas.service.cas import Cas, open_cas
from opencas.testing import InProcessCas, write_config


@pytest.fixture
def cas(tmp_path: Path) -> Iterator[Cas]:
    """A fresh CAS (simulated platform, not provisioned) in this test's own directory."""
    opened = open_cas(load_availability_config(write_config(tmp_path, 18081, 18766)))
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def api(cas: Cas) -> Iterator[InProcessCas]:
    """``cas`` served in-process and attested, with clients for both of its APIs."""
    with InProcessCas(cas) as served:
        yield served


@pytest.fixture
def pinned_cas() -> Callable[..., PinnedCas]:
    """Builds what casctl keeps for a pinned CAS; keyword arguments replace the defaults."""

    def build(**fields: Any) -> PinnedCas:
        defaults: dict[str, Any] = {
            "url": "https://cas.test:8081",
            "cas_key_hash": "aa" * 32,
            "ca_certificate_pem": "(pinned)",
            "instance_id": "instance-1",
            "audit_seq": 0,
            "software_measurement": "cc" * 32,
            "platform": "simulated",
            "mode": "debug",
            "attested_at": "2026-11-29T00:00:00Z",
            "enclave_port": 18765,
        }
        return PinnedCas(**{**defaults, **fields})

    return build
