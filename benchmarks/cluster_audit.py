"""Benchmark workload attestation on a CAS on PostgreSQL with its audit log on and off.

A CAS whose instances share one PostgreSQL database writes one audit log for the cluster: each
instance batches its entries and appends each batch under the cluster's head row in the database
(four statements in two round trips per batch, whatever its size), then writes the batch to its
own file and fsyncs it. This benchmark measures what that costs attestation throughput:

- Two CASes are started (``start_self_provisioned_cas`` of :mod:`opencas.testing`), each in a
  PostgreSQL database of its own that the benchmark creates on ``--postgres`` (a server URL,
  e.g. ``postgresql://postgres@127.0.0.1:5432``) and drops at the end: one with the audit log
  ``signed`` (the default), one with it ``disabled``. With ``--instances N`` each CAS runs N
  instances (the others join by attestation), and the clients are spread over them.
- Each gets the session ``bench`` (one service, simulated attestation tolerated, an ascii
  secret in its environment). Then ``--clients`` simulated workloads (one pinned TLS connection
  and one key each) attest back to back (``attest_async`` of :mod:`opencas.runtime.exchange`:
  a nonce, fresh simulated evidence, the attestation) for ``--seconds``, on one CAS and then on
  the other, for ``--rounds`` alternating turns: the host's speed drifts within minutes on a
  shared machine, and alternating keeps that drift out of the ratio.

It prints each turn's rates, the CPU of the servers, of this generator and of everything else,
and the ratio log on / log off of the summed rates, beside the goal (>= 80%). From PostgreSQL's
statistics of each CAS's database it counts, per answer over all turns, the transactions
committed or rolled back (the instances' background work, heartbeats and polls, included), the
audit batches appended (updates of the head row) and the audit entries stored. Before the turns
it counts the round trips of one batch's append (the requests that follow an answer, through a
proxy that holds each answer back a little, so that what the client sends without waiting is
one request) against the bound of two.
The exit code is 0 whatever the verdict says, 1 when it cannot measure, 130 when interrupted.

    python benchmarks/cluster_audit.py --postgres postgresql://postgres@127.0.0.1:5432 \\
        [--instances 2] [--clients 32] [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from common import (
    Attempt,
    BenchmarkError,
    CpuMark,
    PhaseResult,
    Send,
    arguments,
    machine_line,
    main,
    met,
    number_option,
    print_load,
    run_async,
    run_phase,
    share,
    us,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opencas.attestation.workload_binding import ConfigId
from opencas.audit.chain import ChainedBatch, Head, PendingEntry, chain_batch
from opencas.client.enclave import AsyncEnclaveClient
from opencas.errors import AttestationRefused, CasError
from opencas.platform.simulated import SimulatedPlatform
from opencas.runtime.exchange import WorkloadExchange, attest_async
from opencas.store.audit_entries import AUDIT_SETTINGS, AUDIT_TABLES, AuditEntries
from opencas.testing import CasProcess, SelfProvisionedCas, start_self_provisioned_cas

#: With the audit log on, attestation keeps at least this share of its log-off throughput.
AUDIT_LOG_RATIO_GOAL = 0.80
CONFIG_ID = ConfigId("bench", "app")
MEASUREMENT = "5e" * 32
SESSION = f"""\
name: bench
version: "0.3"
services:
  - name: app
    command: ["/usr/bin/bench-app"]
    environment:
      BENCH_TOKEN: "$$CAS::token$$"
    attestation:
      simulated_measurement: "{MEASUREMENT}"
secrets:
  - name: token
    kind: ascii
    size: 32
security:
  attestation:
    tolerate: [simulated]
"""
DISABLED = '[audit_log]\nmode = "disabled"\n'


#: PostgreSQL's counters of one database: transactions, audit batches (head row updates) and
#: audit entries (rows inserted). A backend reports them at most once a second, when idle.
COUNTERS = (
    "SELECT (SELECT xact_commit + xact_rollback FROM pg_stat_database "
    "WHERE datname = current_database()), "
    "(SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'audit_head'), "
    "(SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'audit_entries')"
)
#: How long to wait for every backend's counters to be reported (PostgreSQL's 1 s, and more).
COUNTERS_SETTLE_SECONDS = 2.5


def counters(url: str) -> tuple[int, int, int]:
    """The database's transactions, audit batches and audit entries so far."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(COUNTERS).fetchone()
    if row is None or None in row:
        raise BenchmarkError(f"no statistics for the database {url}")
    return int(row[0]), int(row[1]), int(row[2])


#: How long the round-trip proxy holds each answer of the database server back, so that what
#: the client sends without waiting is seen as one request however the kernel cuts it.
ANSWER_DELAY = 0.005
#: Round trips a batch's append may take: the lock (with BEGIN), then the store (with COMMIT).
BATCH_ROUND_TRIPS_BOUND = 2
#: Appends counted through the proxy, and entries in each.
COUNTED_APPENDS = 40
ENTRIES_PER_BATCH = 4


@dataclass
class Turns:
    """Round trips seen by the proxy: a client's request that follows an answer it was given."""

    count: int = 0
    answered: bool = True


async def _forward(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, turns: Turns
) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay`` seconds after it came, in order; a
    request (``delay`` 0) that follows an answer counts one round trip."""
    chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await chunks.get()
            if not data:
                writer.close()
                return
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(data)
            await writer.drain()
            if delay:
                turns.answered = True

    sender = asyncio.ensure_future(send())
    while True:
        data = await reader.read(65536)
        if data and not delay and turns.answered:
            turns.count += 1
            turns.answered = False
        chunks.put_nowait((time.monotonic() + delay, data))
        if not data:
            break
    await sender


@contextlib.contextmanager
def counting_proxy(host: str, port: int) -> Iterator[tuple[int, Turns]]:
    """A TCP proxy to ``host:port`` on a free local port that counts round trips and holds
    every answer back by :data:`ANSWER_DELAY`; its port and its count."""
    loop = asyncio.new_event_loop()
    turns = Turns()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        await asyncio.gather(
            _forward(reader, upstream_writer, 0.0, turns),
            _forward(upstream_reader, writer, ANSWER_DELAY, turns),
            return_exceptions=True,
        )

    server = loop.run_until_complete(asyncio.start_server(connection, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, name="counting-proxy", daemon=True)
    thread.start()
    try:
        yield int(server.sockets[0].getsockname()[1]), turns
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        server.close()
        # The client hung up already: its connection's copying ends by itself.
        pending = asyncio.all_tasks(loop)
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=10))
        loop.close()


def batch_round_trips(server: str) -> tuple[int, int, int]:
    """The round trips of one audit batch's append through the proxy, over
    :data:`COUNTED_APPENDS` appends: the median, the fewest and the most (a client descheduled
    for longer than :data:`ANSWER_DELAY` amid what it sends without waiting counts one more)."""
    address = server.rsplit("/", 1)[-1]
    user, _, hostport = address.rpartition("@")
    host, _, port = hostport.partition(":")
    key = Ed25519PrivateKey.generate()
    entries = [
        PendingEntry("session_read", "cas", f"s{number}", {}, "2026-12-01T12:00:00Z", True)
        for number in range(ENTRIES_PER_BATCH)
    ]

    def extend(head: Head, settings: str) -> tuple[ChainedBatch, str]:
        return chain_batch(head, entries, sign=key.sign), settings

    counts = []
    with (
        database(server) as url,
        counting_proxy(host or "127.0.0.1", int(port or 5432)) as (
            proxied,
            turns,
        ),
    ):
        name = url.rsplit("/", 1)[1]
        through = f"postgresql://{user + '@' if user else ''}127.0.0.1:{proxied}/{name}"
        with psycopg.connect(through, autocommit=True) as conn:
            for statement in (*AUDIT_TABLES, *AUDIT_SETTINGS):
                conn.execute(statement)

            @contextlib.contextmanager
            def connect() -> Iterator[psycopg.Connection[Any]]:
                yield conn

            appends = AuditEntries(connect, lambda: None, lambda _: contextlib.nullcontext())
            for _ in range(COUNTED_APPENDS):
                before = turns.count
                appends.append(extend)
                counts.append(turns.count - before)
    counts.sort()
    return counts[len(counts) // 2], counts[0], counts[-1]


@dataclass
class Cluster:
    """One CAS of the comparison: its instances (the first self-provisioned) and its turns."""

    name: str
    first: SelfProvisionedCas
    url: str = ""
    joined: list[CasProcess] = field(default_factory=list)
    turns: list[PhaseResult] = field(default_factory=list)
    counted: tuple[int, int, int] = (0, 0, 0)

    @property
    def processes(self) -> list[CasProcess]:
        return [self.first.process, *self.joined]

    def enclave_urls(self) -> list[str]:
        return [f"https://127.0.0.1:{process.enclave_port}" for process in self.processes]


@contextlib.contextmanager
def database(server: str) -> Iterator[str]:
    """A new, empty database on ``server``, dropped on leaving."""
    name = "opencas_bench_" + secrets.token_hex(6)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{server}/{name}"
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@contextlib.contextmanager
def running_cluster(
    name: str, directory: Path, url: str, instances: int, owner_config: str | None
) -> Iterator[Cluster]:
    """A CAS of ``instances`` instances on the database ``url``, with the session; stopped on
    leaving."""
    first = start_self_provisioned_cas(directory / "first", owner_config, database_url=url)
    cluster = Cluster(name, first, url)
    try:
        for number in range(1, instances):
            process = CasProcess(directory / f"instance-{number}", database_url=url)
            cluster.joined.append(process)
            process.start()
        first.client.create_session(SESSION)
        yield cluster
    finally:
        for process in cluster.joined:
            process.stop()
        first.stop()


def attest_send(client: AsyncEnclaveClient, platform: SimulatedPlatform) -> Send:
    """One workload's next attestation (nonce, evidence, attest)."""
    exchange = WorkloadExchange.new(CONFIG_ID)

    async def send() -> Attempt:
        started = time.perf_counter()
        try:
            await attest_async(client, exchange, platform)
        except AttestationRefused as exc:
            return Attempt(time.perf_counter() - started, f"refused: {exc.check}")
        except CasError as exc:
            return Attempt(time.perf_counter() - started, f"{type(exc).__name__} {exc.code}")
        return Attempt(time.perf_counter() - started)

    return send


async def turn(
    cluster: Cluster, platform: SimulatedPlatform, args: argparse.Namespace
) -> PhaseResult:
    """``args.clients`` workloads, spread over the instances, attest for ``args.seconds``."""
    urls = cluster.enclave_urls()
    ca = cluster.first.verified.ca_certificate_pem
    pids = [process.process.pid for process in cluster.processes if process.process is not None]
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                AsyncEnclaveClient(
                    urls[number % len(urls)], ca, max_connections=1, timeout=args.timeout
                )
            )
            for number in range(args.clients)
        ]
        marks = [CpuMark.now(pid) for pid in pids[1:]]
        result = await run_phase(
            cluster.name,
            [attest_send(client, platform) for client in clients],
            pids[0],
            seconds=args.seconds,
            max_requests=args.max_requests,
            connect_timeout=2 * args.timeout + 5.0,
        )
    # The servers' CPU is every instance's; run_phase charged the first one.
    for mark, pid in zip(marks, pids[1:], strict=True):
        extra = PhaseResult(cluster.name, 0, elapsed=result.elapsed)
        mark.charge(extra, pid)
        if result.server_cpu is not None and extra.server_cpu is not None:
            result.server_cpu += extra.server_cpu
            if result.other_cpu is not None:
                result.other_cpu = max(0.0, result.other_cpu - extra.server_cpu)
    return result


def summed_rate(results: Sequence[PhaseResult]) -> float:
    answers = sum(result.ok for result in results)
    seconds = sum(result.elapsed for result in results)
    return answers / seconds if seconds else 0.0


def cpu_per_answer(results: Sequence[PhaseResult]) -> float | None:
    costs = [result.server_cpu_per_answer for result in results]
    known = [cost for cost in costs if cost is not None]
    return sum(known) / len(known) if known else None


def benchmark(args: argparse.Namespace, workdir: Path) -> None:
    """Both CASes, alternating turns; the figures and the verdict."""
    print(
        machine_line(
            f"OpenCAS cluster audit log benchmark: {args.instances} instance(s) per CAS on "
            f"PostgreSQL, {args.clients} clients, {args.rounds} turns of {args.seconds:g} s each"
        )
    )
    median, fewest, most = batch_round_trips(args.postgres)
    print(
        f"Round trips to the database of one audit batch ({ENTRIES_PER_BATCH} entries), counted "
        f"over {COUNTED_APPENDS} appends: median {median}, {fewest} to {most} "
        f"(bound {BATCH_ROUND_TRIPS_BOUND}): {met(median <= BATCH_ROUND_TRIPS_BOUND)}"
    )
    platform = SimulatedPlatform.load_or_create(workdir / "platform.key", MEASUREMENT)
    with (
        database(args.postgres) as signed_url,
        database(args.postgres) as disabled_url,
        running_cluster("log on", workdir / "on", signed_url, args.instances, None) as on,
        running_cluster("log off", workdir / "off", disabled_url, args.instances, DISABLED) as off,
    ):
        time.sleep(COUNTERS_SETTLE_SECONDS)  # what the setup did is not counted
        for cluster in (on, off):
            cluster.counted = counters(cluster.url)
        for number in range(args.rounds):
            for cluster in (on, off) if number % 2 == 0 else (off, on):
                cluster.turns.append(run_async(turn(cluster, platform, args)))
                if cluster.turns[-1].ok == 0:
                    raise BenchmarkError(
                        f"{cluster.name}: no correct attestation: {dict(cluster.turns[-1].errors)}"
                    )
        time.sleep(COUNTERS_SETTLE_SECONDS)
        for cluster in (on, off):
            now = counters(cluster.url)
            cluster.counted = (
                now[0] - cluster.counted[0],
                now[1] - cluster.counted[1],
                now[2] - cluster.counted[2],
            )
    print("\nEach turn (srv CPU: all instances of that CAS together):")
    print_load(*[result for pair in zip(on.turns, off.turns, strict=True) for result in pair])
    rate_on, rate_off = summed_rate(on.turns), summed_rate(off.turns)
    ratio = rate_on / rate_off if rate_off else 0.0
    cost_on, cost_off = cpu_per_answer(on.turns), cpu_per_answer(off.turns)
    print(
        f"\nLog on: {rate_on:,.0f}/s, log off: {rate_off:,.0f}/s over all turns; "
        f"on / off = {ratio:.0%} (goal >= {AUDIT_LOG_RATIO_GOAL:.0%}): "
        f"{met(ratio >= AUDIT_LOG_RATIO_GOAL)}"
    )
    if cost_on and cost_off:
        print(
            f"Server CPU per answer: log on {us(cost_on)} us, off {us(cost_off)} us "
            f"(off / on {cost_off / cost_on:.0%}, the ratio a CPU-bound server reaches)"
        )
    print_counters(on, off)
    others = [result.other_cpu for result in [*on.turns, *off.turns] if result.other_cpu]
    if others:
        print(f"Other processes used up to {share(max(others))} of a core during a turn.")


def print_counters(*clusters: Cluster) -> None:
    """Per answer, over all turns: the database's transactions, audit batches and entries."""
    print("\nIn the database, per answer over all turns (background work included):")
    for cluster in clusters:
        answers = sum(result.ok for result in cluster.turns)
        if not answers:
            continue
        transactions, batches, entries = cluster.counted
        per_batch = f", {entries / batches:.2f} entries per batch" if batches else ""
        print(
            f"  {cluster.name}: {transactions / answers:.2f} transactions, "
            f"{batches / answers:.3f} audit batches, {entries / answers:.2f} audit entries"
            f"{per_batch} ({answers:,} answers)"
        )


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = arguments(
        "Benchmark attestation on a CAS on PostgreSQL with its audit log on and off.",
        seconds=10.0,
        micro_seconds=1.0,
        timeout=30.0,
    )
    parser.add_argument(
        "--postgres",
        required=True,
        help="a PostgreSQL server URL (no database): two databases are created there and dropped",
    )
    number_option(parser, "--instances", int, 5, 1, "instances per CAS")
    number_option(parser, "--rounds", int, 20, 3, "alternating turns per CAS")
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = parse_arguments(sys.argv[1:])
    sys.exit(main(lambda workdir: benchmark(options, workdir)))
