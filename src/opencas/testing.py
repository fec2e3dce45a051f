"""Run real ``cas`` processes for tests: free ports, a private directory, health polling.

Downstream projects and OpenCAS's own integration tests use :class:`CasProcess` to start a CAS
exactly as an operator would (``cas -c FILE serve``), wait until it answers ``/healthz``, and stop
it with a signal. :meth:`CasProcess.self_provision` starts it self-provisioned instead, from an
owner config (:func:`write_owner_config`) and an owner identity (:func:`create_owner_identity`);
:func:`start_self_provisioned_cas` does all of it and attests the CAS as its owner; the pytest
plugin :mod:`opencas.testing_plugin` builds its ``opencas_cas`` fixture on it. Nothing here
needs pytest, so benchmarks and other programs can use it with the package alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from opencas.attestation.report import CasExpectations, VerifiedCas
from opencas.client.cas_client import CasClient, new_nonce
from opencas.client.identity import CERTIFICATE_FILE, ClientIdentity
from opencas.config.owner import load_owner_config, owner_config_sha256

STARTUP_TIMEOUT = 60.0
POLL_INTERVAL = 0.05
DEVELOPMENT_OWNER_CONFIG = '[api_identity]\ncommon_name = "localhost"\n'
"""A small owner config for development and tests: it names the TLS certificate ``localhost``."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(
    directory: Path,
    api_port: int,
    enclave_port: int,
    database: str = "cas.db",
    limits: Mapping[str, float] | None = None,
) -> Path:
    """Write an availability config for a simulated CAS in ``directory``; returns its path.

    ``limits``, when given, is written as the ``[limits]`` section (key to number).
    """
    path = directory / "cas.toml"
    limit_lines = "".join(f"{key} = {value!r}\n" for key, value in (limits or {}).items())
    path.write_text(
        f'[database]\npath = "{database}"\n\n'
        f'[api]\napi_listen = "127.0.0.1:{api_port}"\n'
        f'enclave_listen = "127.0.0.1:{enclave_port}"\n'
        'hostnames = ["localhost", "127.0.0.1"]\n\n'
        '[platform]\nkind = "simulated"\n' + (f"\n[limits]\n{limit_lines}" if limits else ""),
        encoding="utf-8",
    )
    return path


def cas_command(*args: str) -> list[str]:
    """The argv of ``cas ARGS...``, run by the current interpreter."""
    return [sys.executable, "-m", "opencas.cli.cas", *args]


def write_owner_config(path: Path, text: str = DEVELOPMENT_OWNER_CONFIG) -> Path:
    """Write an owner config (default: :data:`DEVELOPMENT_OWNER_CONFIG`) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def create_owner_identity(directory: Path) -> ClientIdentity:
    """The identity kept in ``directory`` as casctl keeps it, created on first use.

    Its certificate, ``directory / "identity-cert.pem"``, is the owner identity file of
    self-provisioning; with ``CASCTL_HOME=directory``, casctl signs as this owner.
    """
    return ClientIdentity.load_or_create(directory)


def self_provision_args(owner_config: Path, owner_certificate: Path) -> tuple[str, ...]:
    """The arguments of ``cas provision`` that self-provision and then serve, also on restart."""
    return (
        "provision",
        "--owner-config",
        str(owner_config),
        "--owner-identity",
        str(owner_certificate),
        "--skip-if-already-provisioned",
    )


class CasStartError(RuntimeError):
    """The CAS process exited, or did not become healthy, during start-up."""


@dataclass
class CasProcess:
    """One ``cas`` server process with its own directory and ports.

    ``limits`` goes into the ``[limits]`` section of its availability config (for example a small
    ``max_connections_per_source`` for a test of that limit).
    """

    directory: Path
    api_port: int = field(default_factory=free_port)
    enclave_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    limits: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path = write_config(
            self.directory, self.api_port, self.enclave_port, limits=self.limits
        )
        self.log_path = self.directory / "cas.log"

    @property
    def url(self) -> str:
        """The client API's URL."""
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def database(self) -> Path:
        """The SQLite database file."""
        return self.directory / "cas.db"

    def command(self, *args: str) -> list[str]:
        """The argv of ``cas -c CONFIG ARGS...``."""
        return cas_command("-c", str(self.config_path), *args)

    def run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a one-shot ``cas`` command to completion (not the server)."""
        return subprocess.run(
            self.command(*args), capture_output=True, text=True, timeout=timeout, check=False
        )

    def start(self, *args: str, wait: bool = True) -> CasProcess:
        """Start ``cas -c CONFIG [ARGS]`` (default: ``serve``); wait until healthy if ``wait``."""
        return self.start_command(self.command(*(args or ("serve",))), wait=wait)

    def start_command(self, argv: Sequence[str], wait: bool = True) -> CasProcess:
        """Start ``argv`` as this CAS's server process, logging to :attr:`log_path`.

        ``argv`` must serve on this CAS's ports (its config is :attr:`config_path`); use
        :func:`cas_command` to build it. Waits until healthy if ``wait``.
        """
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        if wait:
            self.wait_healthy()
        return self

    def self_provision(
        self, owner_config: Path, owner_certificate: Path, wait: bool = True
    ) -> CasProcess:
        """Start ``cas provision`` from these files, skipping it when already provisioned."""
        return self.start(*self_provision_args(owner_config, owner_certificate), wait=wait)

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Poll ``/healthz`` until it answers 200; raise :class:`CasStartError` otherwise."""
        deadline = time.monotonic() + timeout
        with httpx.Client(verify=False, timeout=2.0) as client:  # noqa: S501 - liveness only
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise CasStartError(
                        f"cas exited with {self.process.returncode} during start:\n{self.log()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return
                time.sleep(POLL_INTERVAL)
        raise CasStartError(f"cas did not become healthy in {timeout} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the process to end; returns its exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> None:
        """``kill -9`` the process."""
        self.stop(signal.SIGKILL)


@dataclass
class SelfProvisionedCas:
    """A running, self-provisioned CAS and a client that attested it and signs as its owner."""

    process: CasProcess
    """The ``cas`` process (its log: ``process.log()``)."""
    owner: ClientIdentity
    """The owner's identity; its certificate is ``owner_directory / "identity-cert.pem"``."""
    owner_directory: Path
    """Where the owner identity is kept, as casctl keeps it: use it as ``CASCTL_HOME``."""
    owner_config_path: Path
    """The owner config the CAS was provisioned with."""
    verified: VerifiedCas
    """What the attestation verified: the report, the evidence and the CAS certificates."""
    client: CasClient
    """Pinned to the CAS's CA certificate; signs its requests as the owner."""

    @property
    def url(self) -> str:
        """The client API's URL."""
        return self.process.url

    @property
    def owner_certificate_path(self) -> Path:
        """The owner identity file the CAS was provisioned with."""
        return self.owner_directory / CERTIFICATE_FILE

    def stop(self) -> int:
        """Close the client and stop the CAS (SIGTERM); returns the process's exit code."""
        self.client.close()
        return self.process.stop()


def attest_as_owner(
    url: str, owner: ClientIdentity, owner_config_path: Path
) -> tuple[CasClient, VerifiedCas]:
    """Attest the CAS at ``url`` as provisioned with ``owner`` and this owner config.

    Accepts debug mode (the simulated platform). Returns a client pinned to the attested CAS
    that signs as ``owner``, and what was verified. Raises :class:`AttestationRefused` if the
    CAS has another owner or owner config.
    """
    expectations = CasExpectations(
        nonce=new_nonce(),
        allow_debug=True,
        owner_identity_hash=owner.key_hash,
        owner_config_sha256=owner_config_sha256(load_owner_config(owner_config_path).config),
    )
    with CasClient(url) as bootstrap:
        verified = bootstrap.attest(expectations)
    return CasClient.pinned_to(url, verified, owner), verified


def start_self_provisioned_cas(
    directory: Path, owner_config_text: str | None = None
) -> SelfProvisionedCas:
    """Start a CAS in ``directory``, self-provisioned, and attest it as its owner.

    ``directory`` receives ``owner/`` (the owner identity), ``owner-config.toml`` (the
    development owner config unless ``owner_config_text`` is given) and ``cas/`` (the CAS's
    config, database and log). Stop it with :meth:`SelfProvisionedCas.stop`.
    """
    owner_directory = directory / "owner"
    owner = create_owner_identity(owner_directory)
    config_path = directory / "owner-config.toml"
    if owner_config_text is None:
        write_owner_config(config_path)
    else:
        write_owner_config(config_path, owner_config_text)
    process = CasProcess(directory / "cas")
    try:
        process.self_provision(config_path, owner_directory / CERTIFICATE_FILE)
        client, verified = attest_as_owner(process.url, owner, config_path)
    except BaseException:
        process.stop()
        raise
    return SelfProvisionedCas(process, owner, owner_directory, config_path, verified, client)


def run_casctl(
    home: Path, args: Sequence[str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``casctl ARGS`` with ``CASCTL_HOME=home``."""
    env = {**os.environ, "CASCTL_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "opencas.cli.casctl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
