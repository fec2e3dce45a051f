"""Fixtures that start real `cas` processes on free ports in private directories."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from opencas.testing import CasProcess, SelfProvisionedCas, run_casctl

Casctl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cas_process(tmp_path: Path) -> Iterator[CasProcess]:
    """A configured, not yet started CAS; stopped at the end of the test."""
    process = CasProcess(tmp_path / "cas")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def cas(cas_process: CasProcess) -> CasProcess:
    """A running, healthy CAS."""
    return cas_process.start()


@pytest.fixture
def casctl_home(tmp_path: Path) -> Path:
    """casctl's private state directory for this test."""
    return tmp_path / "casctl"


@pytest.fixture
def casctl(casctl_home: Path) -> Casctl:
    """Run casctl with this test's state directory."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_casctl(casctl_home, args)

    return run


@pytest.fixture
def attested_casctl(opencas_cas: SelfProvisionedCas) -> Callable[[Path], Casctl]:
    """casctl with a home of its own (so its own self-made identity), having attested the CAS."""

    def make(home: Path) -> Casctl:
        attested = run_casctl(home, ["attest", opencas_cas.url, "--only-for-testing-debug"])
        assert attested.returncode == 0, attested.stderr

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return run_casctl(home, args)

        return run

    return make


@pytest.fixture
def program(tmp_path: Path) -> Path:
    """A workload program that prints the SHA-256 of its ``SHARED`` environment variable."""
    path = tmp_path / "app.py"
    path.write_text(
        "import hashlib, os\n"
        'print("shared-sha256", hashlib.sha256(os.environ["SHARED"].encode()).hexdigest())\n'
    )
    return path
