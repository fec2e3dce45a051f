"""Three `cas` instances of one CAS on PostgreSQL under load: the database server restarts (a
crash, in a private PostgreSQL cluster of this test's own) and every instance serves again with
nothing acknowledged lost; two instances updating one session at once never lose an update."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from opencas.client.cas_client import CasClient
from opencas.client.channel import ApiError
from opencas.errors import CasError
from opencas.testing import (
    POLL_INTERVAL,
    CasProcess,
    SelfProvisionedCas,
    attest_as_owner,
    free_port,
    start_self_provisioned_cas,
)

READY_WITHIN = 90.0
#: The writers here upload sessions as fast as the instances take them.
LIMITS = {"session_uploads_per_minute": 100_000, "session_upload_burst": 100_000}


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        pytest.fail("no PostgreSQL server programs under /usr/lib/postgresql/*/bin", pytrace=False)
    return found[-1].parent


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of this test's own on a free port: restarting it hurts nobody."""

    directory: Path
    port: int
    programs: Path

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        command = [str(self.programs / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            # The server refuses to run as root.
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = self.directory / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.fail(f"{argv[0]} failed: {done.stderr.strip()}\n{tail}", pytrace=False)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        log = str(self.directory / "server.log")
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "-t", "60", "start"
        )
        self._wait_accepting()

    def crash(self) -> None:
        """Stop the server as a crash does: no checkpoint, every connection cut."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def _wait_accepting(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(POLL_INTERVAL)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    # Not under pytest's tmp_path: the server's user must reach the directory.
    directory = Path(tempfile.mkdtemp(prefix="opencas-pg-"))
    os.chmod(directory, 0o755)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    server = PrivatePostgres(directory, free_port(), _postgres_bin())
    try:
        server.init()
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _session(name: str) -> str:
    return f'name: {name}\nversion: "0.3"\nsecrets:\n  - name: token\n    kind: ascii\n'


def _ready(probe: httpx.Client, url: str) -> bool:
    try:
        return probe.get(f"{url}/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def _wait_ready(probe: httpx.Client, url: str) -> None:
    deadline = time.monotonic() + READY_WITHIN
    while not _ready(probe, url):
        if time.monotonic() > deadline:
            pytest.fail(f"{url} did not become ready within {READY_WITHIN:g} s")
        time.sleep(POLL_INTERVAL)


@dataclass
class Three:
    """The first instance (self-provisioned) and two that joined it, each with a client."""

    first: SelfProvisionedCas
    others: list[CasProcess]
    clients: list[CasClient]

    @property
    def urls(self) -> list[str]:
        return [self.first.url, *(other.url for other in self.others)]


def _three(root: Path, url: str) -> Iterator[Three]:
    first = start_self_provisioned_cas(root / "first", database_url=url, limits=LIMITS)
    others: list[CasProcess] = []
    clients = [first.client]
    try:
        for name in ("second", "third"):
            others.append(CasProcess(root / name, database_url=url, limits=LIMITS).start())
            client, _ = attest_as_owner(others[-1].url, first.owner, first.owner_config_path)
            clients.append(client)
        yield Three(first, others, clients)
    finally:
        for client in clients:
            client.close()
        for process in [first.process, *others]:
            process.stop()


def test_a_postgresql_restart_under_load_loses_nothing_acknowledged(
    tmp_path: Path, private_postgres: PrivatePostgres
) -> None:
    acknowledged: list[tuple[int, str]] = []
    refused = [0, 0, 0]
    lock = threading.Lock()
    stop = threading.Event()
    crashed = threading.Event()
    crashed_at = threading.Event()
    after_crash = [0, 0, 0]
    unexpected: list[BaseException] = []

    def write(index: int, client: CasClient) -> None:
        number = 0
        while not stop.is_set():
            name = f"i{index}n{number}"
            number += 1  # a name is tried once: a failed create may still have committed
            try:
                client.create_session(_session(name))
            except (CasError, httpx.HTTPError) as exc:
                if not crashed_at.is_set():
                    unexpected.append(exc)  # before the crash nothing may fail
                    return
                with lock:
                    refused[index] += 1
                time.sleep(POLL_INTERVAL)  # the database is away; ask again shortly
                continue
            with lock:
                acknowledged.append((index, name))
                if crashed.is_set():
                    after_crash[index] += 1

    cluster = _three(tmp_path, private_postgres.url)
    three = next(cluster)
    probe = httpx.Client(verify=False, timeout=30)
    writers = [
        threading.Thread(target=write, args=(index, client))
        for index, client in enumerate(three.clients)
    ]
    try:
        for writer in writers:
            writer.start()
        deadline = time.monotonic() + 120
        while len(acknowledged) < 30:
            assert not unexpected, unexpected
            assert time.monotonic() < deadline, "the instances did not take writes"
            time.sleep(POLL_INTERVAL)
        crashed_at.set()
        private_postgres.crash()
        with lock:
            acknowledged_before = len(acknowledged)
        for url in three.urls:
            assert not _ready(probe, url)
        private_postgres.start()
        crashed.set()
        for url in three.urls:
            _wait_ready(probe, url)
        # Every instance takes writes again, by itself.
        deadline = time.monotonic() + READY_WITHIN
        while min(after_crash) < 5:
            assert not unexpected, unexpected
            assert time.monotonic() < deadline, f"writes after the restart: {after_crash}"
            time.sleep(POLL_INTERVAL)
        stop.set()
        for writer in writers:
            writer.join(60)
        assert acknowledged_before >= 30
        assert sum(refused) > 0  # the restart was felt
        # Nothing acknowledged is lost, seen from every instance.
        names = [name for _, name in acknowledged]
        for client in three.clients:
            for name in names:
                assert client.read_session(name).revision == 1
    finally:
        stop.set()
        probe.close()
        for writer in writers:
            writer.join(60)
        cluster.close()
    for process in [three.first.process, *three.others]:
        log = process.log()
        assert "record-damaged" not in log
        assert "internal error" not in log


def _secret_names(text: str) -> list[str]:
    return re.findall(r"name: (w\d+x\d+)$", text, re.MULTILINE)


def _with_secrets(names: list[str], predecessor: str) -> str:
    lines = ["name: shared", 'version: "0.3"', f"predecessor: {predecessor}", "secrets:"]
    for name in names:
        lines += [f"  - name: {name}", "    kind: ascii"]
    return "\n".join(lines) + "\n"


def test_two_instances_updating_one_session_at_once_never_lose_an_update(
    tmp_path: Path, postgres_url: str
) -> None:
    cluster = _three(tmp_path, postgres_url)
    three = next(cluster)
    created = three.clients[0].create_session(
        'name: shared\nversion: "0.3"\nsecrets:\n  - name: w9x0\n    kind: ascii\n'
    )
    rounds = 20
    # Each round, per writer: the hash it read, what its first update got (the new hash, or
    # the conflict's current_hash), whether it won, when that request was sent and answered,
    # and the hash its retry wrote (losers only).
    outcomes: list[list[tuple[str, str, bool, float, float, str | None]]] = [[], []]
    both_read = threading.Barrier(2)
    round_done = threading.Barrier(2)
    failures: list[BaseException] = []

    def update(index: int, client: CasClient) -> None:
        try:
            for number in range(rounds):
                mine = f"w{index}x{number}"
                current = client.read_session("shared")  # from its own instance
                text = _with_secrets([*_secret_names(current.text), mine], current.hash)
                both_read.wait(60)  # both read the same version, and send at once
                sent = time.monotonic()
                refused: ApiError | None = None
                try:
                    written = client.update_session("shared", text)
                except ApiError as exc:
                    refused = exc
                answered = time.monotonic()
                if refused is None:
                    outcome = (current.hash, written.hash, True, sent, answered, None)
                else:
                    assert (refused.status, refused.code) == (409, "stale-predecessor"), refused
                    current_hash = str(refused.details["current_hash"])
                    assert current_hash in refused.message
                    # The retry: read again, merge, name the current version.
                    again = client.read_session("shared")
                    assert again.hash == current_hash
                    names = [*_secret_names(again.text), mine]
                    retried = client.update_session("shared", _with_secrets(names, again.hash))
                    outcome = (current.hash, current_hash, False, sent, answered, retried.hash)
                outcomes[index].append(outcome)
                round_done.wait(60)  # the retry is in before the next round reads
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)
            both_read.abort()
            round_done.abort()

    # Two instances, one session: each reads from its own instance and writes there.
    writers = [
        threading.Thread(target=update, args=(index, three.clients[index])) for index in (0, 1)
    ]
    try:
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(300)
        assert not failures, failures
        assert [len(done) for done in outcomes] == [rounds, rounds]
        versions = [created.hash]
        overlapping = 0
        for first, second in zip(*outcomes, strict=True):
            # Both named the version they read, the same one: exactly one update won, and the
            # other was refused with the winner's version as the current one.
            assert first[0] == second[0] == versions[-1]
            assert first[2] != second[2], (first, second)
            winner, loser = (first, second) if first[2] else (second, first)
            assert loser[1] == winner[1]
            assert loser[5] is not None
            versions += [winner[1], loser[5]]
            # Whether both requests were in flight at once (the database decided, not timing).
            overlapping += max(first[3], second[3]) < min(first[4], second[4])
        assert overlapping > 0, "the two updates never were in flight together"
        final = three.clients[2].read_session("shared")
        assert final.hash == versions[-1]
        assert final.revision == 1 + 2 * rounds
        # No update is lost: every writer's secret of every round is in the final version.
        assert sorted(_secret_names(final.text)) == sorted(
            ["w9x0", *(f"w{index}x{number}" for index in (0, 1) for number in range(rounds))]
        )
    finally:
        cluster.close()
