"""CAS instances for tests: real ``cas`` processes, and the ASGI apps served in-process.

Downstream projects and OpenCAS's own tests use :class:`CasProcess` to start a CAS exactly as an
operator would (``cas -c FILE serve``), wait until it answers ``/healthz``, and stop it with a
signal. :meth:`CasProcess.self_provision` starts it self-provisioned instead, from an owner config
(:func:`write_owner_config`) and an owner identity (:func:`create_owner_identity`);
:func:`start_self_provisioned_cas` does all of it and attests the CAS as its owner. The pytest
plugin :mod:`opencas.testing_plugin` builds its ``opencas_cas`` fixture on that.
:class:`InProcessServer` serves an ASGI app (``opencas.api.app``) to a :class:`CasClient` without
a network. This module needs only OpenCAS itself (no pytest), so benchmarks and scripts use it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
from starlette.types import ASGIApp

from opencas.api.app import create_client_api, create_enclave_api
from opencas.attestation.report import CasExpectations, VerifiedCas
from opencas.client.answers import Provisioned
from opencas.client.cas_client import CasClient, new_nonce
from opencas.client.channel import CasUnreachable, ProofAuth
from opencas.client.enclave import EnclaveClient
from opencas.client.identity import CERTIFICATE_FILE, ClientIdentity
from opencas.config.availability import AvailabilityConfig, load_availability_config
from opencas.config.owner import OwnerConfig, load_owner_config, owner_config_sha256
from opencas.errors import ClientError, ConflictError
from opencas.runtime.exchange import ConnectionTries
from opencas.service.cas import Cas, load_platform
from opencas.service.cas_records import read_provisioning_token
from opencas.sources.toml import toml_string
from opencas.store.keystore import key_store_path, load_key_store
from opencas.store.state import StateKeys

__all__ = [
    "ADMISSION_SECONDS",
    "DEVELOPMENT_OWNER_CONFIG",
    "CasProcess",
    "CasStartError",
    "InProcessCas",
    "InProcessServer",
    "SelfProvisionedCas",
    "attest_as_owner",
    "cas_command",
    "create_owner_identity",
    "free_port",
    "run_casctl",
    "self_provision_args",
    "start_self_provisioned_cas",
    "stored_record_id",
    "until_admitted",
    "write_config",
    "write_owner_config",
]

STARTUP_TIMEOUT = 60.0
POLL_INTERVAL = 0.05
PORT_RACE_ATTEMPTS = 3
ADMISSION_SECONDS = 10.0
"""How long :func:`until_admitted` tries again a call the CAS turned away at its connection."""
_T = TypeVar("_T")
DEVELOPMENT_OWNER_CONFIG = '[api_identity]\ncommon_name = "localhost"\n'
"""A small owner config for development and tests: it names the TLS certificate ``localhost``."""


#: Ports a test server may listen on: below Linux's default ephemeral range (32768 to 60999), so
#: no outgoing connection of any process on the machine takes one while a test server starts.
TEST_PORTS = range(20000, 32768)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, picked at random from TEST_PORTS.

    Random, not the kernel's next ephemeral port, so that test runs side by side on one machine
    seldom pick the same port; a server that loses a race anyway is restarted on other ports
    (:meth:`CasProcess.start_command`).
    """
    while True:
        port = TEST_PORTS[secrets.randbelow(len(TEST_PORTS))]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def listening_pids(port: int) -> set[int]:
    """The processes holding a listening TCP socket on ``port`` (any address), read from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text(encoding="ascii").splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "0A":  # 0A: LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    pids.add(int(entry.name))
                    break
    return pids


def _process_tree(pid: int) -> set[int]:
    """``pid`` and all its descendants (a server may run under a wrapper)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text(encoding="ascii")
                parent = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    tree, todo = set(), [pid]
    while todo:
        current = todo.pop()
        tree.add(current)
        todo.extend(children.get(current, []))
    return tree


def write_config(
    directory: Path,
    api_port: int,
    enclave_port: int,
    database: str = "cas.db",
    limits: Mapping[str, float] | None = None,
    database_url: str | None = None,
    extra: str = "",
    platform: str = "",
) -> Path:
    """Write an availability config for a simulated CAS in ``directory``; returns its path.

    ``limits``, when given, is written as the ``[limits]`` section (key to number);
    ``database_url``, when given, puts the store in that PostgreSQL database (``database`` then
    names only the local key store and lock); ``extra`` is TOML text appended (more sections);
    ``platform`` is TOML lines of the ``[platform]`` section after its ``kind``.
    """
    path = directory / "cas.toml"
    limit_lines = "".join(f"{key} = {value!r}\n" for key, value in (limits or {}).items())
    url_line = "" if database_url is None else f"url = {toml_string(database_url)}\n"
    path.write_text(
        f'[database]\npath = "{database}"\n{url_line}\n'
        f'[api]\napi_listen = "127.0.0.1:{api_port}"\n'
        f'enclave_listen = "127.0.0.1:{enclave_port}"\n'
        'hostnames = ["localhost", "127.0.0.1"]\n\n'
        '[platform]\nkind = "simulated"\n'
        + platform
        + (f"\n[limits]\n{limit_lines}" if limits else "")
        + (f"\n{extra}" if extra else ""),
        encoding="utf-8",
    )
    return path


def stored_record_id(config: AvailabilityConfig, table: str, key: str) -> bytes:
    """The id under which the CAS configured by ``config`` stores ``table``/``key``.

    It unseals the key store with the simulated platform, which only a debug CAS allows.
    """
    platform = load_platform(config)
    dmk = load_key_store(key_store_path(config.database_path), platform.unseal).dmk
    return StateKeys(dmk).record_id(table, key)


#: ``records`` as a cas of SQLite schema version 2 created it: ordered by ``(tbl, key)``.
SQLITE_SCHEMA_2_RECORDS = (
    "CREATE TABLE records (tbl TEXT NOT NULL, key BLOB NOT NULL, version INTEGER NOT NULL, "
    "value BLOB NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID"
)


def rewrite_as_sqlite_schema_2(path: Path) -> None:
    """Turn the closed SQLite store at ``path``, created by this build, into what a cas of
    schema version 2 wrote, every row unchanged: the file whose conversion on open is tested
    and measured."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ALTER TABLE records RENAME TO records_v3")
        conn.execute(SQLITE_SCHEMA_2_RECORDS)
        conn.execute(
            "INSERT INTO records (tbl, key, version, value) "
            "SELECT tbl, key, version, value FROM records_v3"
        )
        conn.execute("DROP TABLE records_v3")
        conn.execute("PRAGMA user_version = 2")
        conn.execute("COMMIT")
        conn.execute("VACUUM")
    finally:
        conn.close()


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


def _test_expectations() -> CasExpectations:
    """What a test accepts of its own CAS: debug mode, and no owner yet; a fresh nonce."""
    return CasExpectations(nonce=new_nonce(), allow_debug=True, allow_unprovisioned=True)


class CasStartError(RuntimeError):
    """The CAS process exited, or did not become healthy, during start-up."""


@dataclass
class CasProcess:
    """One ``cas`` server process with its own directory and ports.

    ``limits`` goes into the ``[limits]`` section of its availability config (for example a small
    ``max_connections_per_source`` for a test of that limit); ``database_url`` puts its store in
    that PostgreSQL database instead of the SQLite file :attr:`database`.
    """

    directory: Path
    api_port: int = field(default_factory=free_port)
    enclave_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    limits: Mapping[str, float] = field(default_factory=dict)
    database_url: str | None = None
    extra_config: str = ""
    """TOML text appended to the availability config (for example a ``[backup]`` section)."""
    platform_config: str = ""
    """TOML lines of its ``[platform]`` section (for example a simulated security version)."""

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path = write_config(
            self.directory,
            self.api_port,
            self.enclave_port,
            limits=self.limits,
            database_url=self.database_url,
            extra=self.extra_config,
            platform=self.platform_config,
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

    def record_id(self, table: str, key: str) -> bytes:
        """The id under which ``table``/``key`` is stored in :attr:`database` (column ``key``),
        for a test that edits the file as someone with the disk (and, in debug, the key) would.
        """
        return stored_record_id(load_availability_config(self.config_path), table, key)

    def attest(self) -> VerifiedCas:
        """Attest the running CAS as a test may: debug mode and no owner yet are accepted.

        Raises what :meth:`CasClient.attest` raises.
        """
        with CasClient(self.url) as bootstrap:
            return bootstrap.attest(_test_expectations())

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
        for attempt in range(PORT_RACE_ATTEMPTS):
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            log = self.log_path.open("ab")
            self.process = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            log.close()
            if not wait:
                return self
            try:
                self.wait_healthy()
                return self
            except CasStartError:
                lost_race = "address already in use" in self.log()[log_start:]
                if not lost_race or attempt == PORT_RACE_ATTEMPTS - 1:
                    raise
            # Another process took a port between free_port() and the bind: move both.
            self._move_to_new_ports()
        raise AssertionError("unreachable")

    def _move_to_new_ports(self) -> None:
        text = self.config_path.read_text(encoding="utf-8")
        old_ports = (self.api_port, self.enclave_port)
        self.api_port, self.enclave_port = free_port(), free_port()
        for old, new in zip(old_ports, (self.api_port, self.enclave_port), strict=True):
            text = re.sub(rf"127\.0\.0\.1:{old}\b", f"127.0.0.1:{new}", text)
        self.config_path.write_text(text, encoding="utf-8")

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
        # Unpinned: liveness only, nothing the answer says is trusted.
        with CasClient(self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise CasStartError(
                        f"cas exited with {self.process.returncode} during start:\n{self.log()}"
                    )
                with contextlib.suppress(ClientError):
                    if client.health() == "ok" and self._owns_its_port():
                        return
                time.sleep(POLL_INTERVAL)
        raise CasStartError(f"cas did not become healthy in {timeout} s:\n{self.log()}")

    def _owns_its_port(self) -> bool:
        # A healthy answer on our port may come from another test's server that took the port
        # first; ours is up only when it holds the listening socket itself.
        if self.process is None:
            return True
        return bool(listening_pids(self.api_port) & _process_tree(self.process.pid))

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
    verified = until_admitted(lambda: _attest_once(url, expectations))
    return CasClient.pinned_to(url, verified, owner), verified


def _attest_once(url: str, expectations: CasExpectations) -> VerifiedCas:
    with CasClient(url) as bootstrap:
        return bootstrap.attest(expectations)


def until_admitted(call: Callable[[], _T], deadline_seconds: float = ADMISSION_SECONDS) -> _T:
    """``call()``, tried again as the runtime tries an attestation again (``retry_for``) while
    the CAS resets its connection before anything was sent.

    A CAS with ``max_connections_per_source = 1`` may still count a connection its peer has
    just closed when the next one arrives (the close and the new connection race on its event
    loop), so a test of that limit would otherwise fail now and then. Raises the last
    :class:`CasUnreachable` once ``deadline_seconds`` have passed, and any other error at once.
    """
    tries = ConnectionTries(deadline_seconds, time.monotonic)
    while True:
        try:
            return call()
        except CasUnreachable as exc:
            time.sleep(tries.wait_after(exc))


def start_self_provisioned_cas(
    directory: Path,
    owner_config_text: str | None = None,
    database_url: str | None = None,
    limits: Mapping[str, float] | None = None,
    extra_config: str = "",
    platform_config: str = "",
) -> SelfProvisionedCas:
    """Start a CAS in ``directory``, self-provisioned, and attest it as its owner.

    ``directory`` receives ``owner/`` (the owner identity), ``owner-config.toml`` (the
    development owner config unless ``owner_config_text`` is given) and ``cas/`` (the CAS's
    config, database and log; with ``database_url``, the store is in that PostgreSQL database;
    ``limits`` is its ``[limits]`` section, ``extra_config`` more TOML for its availability
    config, ``platform_config`` lines of its ``[platform]`` section). Stop it with
    :meth:`SelfProvisionedCas.stop`.
    """
    owner_directory = directory / "owner"
    owner = create_owner_identity(owner_directory)
    config_path = directory / "owner-config.toml"
    if owner_config_text is None:
        write_owner_config(config_path)
    else:
        write_owner_config(config_path, owner_config_text)
    process = CasProcess(
        directory / "cas",
        database_url=database_url,
        limits=limits or {},
        extra_config=extra_config,
        platform_config=platform_config,
    )
    try:
        process.self_provision(config_path, owner_directory / CERTIFICATE_FILE)
        client, verified = attest_as_owner(process.url, owner, config_path)
    except BaseException:
        process.stop()
        raise
    return SelfProvisionedCas(process, owner, owner_directory, config_path, verified, client)


class InProcessServer:
    """An ASGI app served in this process, for synchronous ``httpx`` clients such as CasClient.

    :class:`~opencas.client.CasClient` is synchronous, ``httpx.ASGITransport`` is not: the server
    runs the app on an event loop of its own, in a background thread, and each of its
    :meth:`transport` objects hands requests to that loop and waits for the answer. Requests sent
    from several threads at once are served concurrently, as ``cas serve`` serves them; an
    exception in the app is answered with 500, as a server answers it. There is no TLS, so
    :meth:`CasClient.attest` has no peer certificate to compare with the report. Use it as a
    context manager, or call :meth:`close`, to stop the thread.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="opencas-in-process-server", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> InProcessServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def transport(self) -> httpx.BaseTransport:
        """A transport for one ``httpx.Client``; closing that client leaves the server running."""
        return _InProcessTransport(self)

    def serve(self, request: httpx.Request) -> httpx.Response:
        """The app's complete answer to ``request``."""
        if self._loop.is_closed():
            raise RuntimeError("the in-process server is closed")
        body = request.read()
        answer = asyncio.run_coroutine_threadsafe(self._serve(request, body), self._loop)
        status, headers, content = answer.result()
        return httpx.Response(status, headers=headers, content=content, request=request)

    async def _serve(
        self, request: httpx.Request, body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        forwarded = httpx.Request(
            request.method, request.url, headers=request.headers, content=body
        )
        response = await self._app.handle_async_request(forwarded)
        return response.status_code, response.headers.raw, await response.aread()

    def close(self) -> None:
        """Stop the event loop and its thread (idempotent)."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class _InProcessTransport(httpx.BaseTransport):
    def __init__(self, server: InProcessServer) -> None:
        self._server = server

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._server.serve(request)


#: Where the in-process listeners answer; request proofs are bound to these URLs.
API_URL = "https://cas.test"
ENCLAVE_URL = "https://enclave.cas.test"

Listener = Literal["api", "enclave"]


class InProcessCas:
    """The two APIs of an open :class:`~opencas.service.cas.Cas` served in this process, with
    clients that attested it.

    Tests drive the CAS through the real :class:`CasClient` (:meth:`client`) and
    :class:`EnclaveClient` (:meth:`enclave_client`); what the SDK never sends (raw, malformed or
    forged requests) goes through :meth:`send`. Close it to close the clients and stop serving;
    closing the ``Cas`` stays the caller's.
    """

    def __init__(self, cas: Cas) -> None:
        self.cas = cas
        self._servers = {
            "api": InProcessServer(create_client_api(cas)),
            "enclave": InProcessServer(create_enclave_api(cas)),
        }
        self._raw: dict[Listener, httpx.Client] = {}
        self._closing: list[CasClient | EnclaveClient] = []
        with CasClient(API_URL, transport=self._servers["api"].transport()) as unpinned:
            #: What attesting the CAS verified (debug mode, not provisioned yet is accepted).
            self.verified: VerifiedCas = unpinned.attest(_test_expectations())

    def client(self, identity: ClientIdentity | None = None) -> CasClient:
        """A client pinned to this CAS, signing as ``identity`` (anonymous without one)."""
        client = CasClient.pinned_to(
            API_URL, self.verified, identity, transport=self._servers["api"].transport()
        )
        self._closing.append(client)
        return client

    def enclave_client(self) -> EnclaveClient:
        """A client of the enclave API, trusting this CAS's CA certificate."""
        client = EnclaveClient(
            ENCLAVE_URL,
            self.verified.ca_certificate_pem,
            transport=self._servers["enclave"].transport(),
        )
        self._closing.append(client)
        return client

    def provision(self, owner: ClientIdentity, config: OwnerConfig | None = None) -> Provisioned:
        """Make ``owner`` the owner, through the client API with the CAS's provisioning token."""
        token = read_provisioning_token(self.cas.store)
        if token is None:
            raise ConflictError("the CAS is provisioned already", code="already-provisioned")
        return self.client(owner).provision(token, config or OwnerConfig())

    def send(
        self,
        method: str,
        path: str,
        *,
        listener: Listener = "api",
        signer: ClientIdentity | None = None,
        audience: str | None = None,
        **request: Any,
    ) -> httpx.Response:
        """Send a request as written, and return the answer whatever its status.

        ``signer`` adds a request proof for ``audience`` (default: this CAS's key hash);
        ``request`` goes to ``httpx.Client.request`` (``json``, ``params``, ``headers``, ...).
        """
        auth = ProofAuth(signer, audience or self.cas.identity.cas_key_hash) if signer else None
        if listener not in self._raw:
            self._raw[listener] = httpx.Client(
                base_url=API_URL if listener == "api" else ENCLAVE_URL,
                transport=self._servers[listener].transport(),
            )
        return self._raw[listener].request(method, path, auth=auth, **request)

    def close(self) -> None:
        """Close every client handed out, then stop serving."""
        for client in [*self._closing, *self._raw.values()]:
            client.close()
        for server in self._servers.values():
            server.close()

    def __enter__(self) -> InProcessCas:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
