"""Benchmark workload attestation on the enclave API against the goals and bounds it is held to.

What it measures, all in one run on one machine:

1. **Over the network, sustained.** A self-provisioned ``cas`` (``start_self_provisioned_cas`` of
   :mod:`opencas.testing`, in a temporary directory, free ports of 127.0.0.1) gets one session,
   ``bench``, created by its owner (``CasClient.create_session``): one service ``bench/app`` with
   a fixed ``simulated_measurement``, ``tolerate: [simulated]``, an ascii secret in its
   environment, an injection file, and an ``x509-ca`` plus an ``x509`` server certificate issued
   by it that the service references, so every attestation also issues a certificate for the
   workload's key. First one workload attests as ``casctl run`` does
   (``fetch_configuration`` of :mod:`opencas.runtime.exchange`) and its configuration is checked.
   Then ``--clients`` simulated workloads, each an
   :class:`~opencas.client.enclave.AsyncEnclaveClient` with exactly one TLS connection pinned to
   the attested CAS and one :class:`~opencas.runtime.exchange.WorkloadExchange` (a P-256 key made
   up front), repeat for ``--seconds``: ``attest_async`` (fresh evidence from the simulated
   platform over the workload binding and the nonce the previous answer handed out, the
   attestation: one request; with ``--two-step`` each asks for a nonce first, as a workload that
   ignores ``CAS-Next-Nonce`` does). Latency is that whole exchange, evidence included. Every
   50th answer of each workload is opened (``WorkloadExchange.open``, the runtime's strict
   parser) and checked: the secret is in the environment and the per-workload certificate
   certifies the workload's key. Any error answer
   (and, for a sample, an answer that does not open and check) is an error. Then ``health()``
   (``GET /healthz``) on the same enclave listener, same clients, same duration, as the bound,
   and the same through ``wrk`` when it is installed. The clients of both phases are spread over
   ``--generator-processes`` load generator processes (:func:`common.run_load`), whose every
   latency sample and CPU time is added up.
2. **A burst.** ``--burst`` new workloads (own connection, own key each) attest once, all at
   the same moment; every answer is opened and checked; the time until the last answer is
   printed beside what the attest phase's rate and CPU per answer predict. A burst over the
   per-source limit runs on a CAS whose limits are raised to it (as behind a NAT), unless
   ``--burst-retry SECONDS`` keeps the defaults and lets each workload turned away try again.
3. **In-process, one call at a time**, after the server stopped: ``verify_evidence`` on real
   simulated evidence, raw Ed25519 verifications (its signature check) for comparison, and
   ``attest_workload`` itself on a CAS opened with ``open_cas`` (the same session), which bounds
   what one server process can do on one core; ``verify_evidence`` on the real SGX and TDX quotes
   of ``tests/data`` beside bare dcap-qvl, from which the cost of an attestation with real DCAP
   evidence is composed (a workload cannot make a real quote over the CAS's nonce).
   ``--profile N`` adds a cProfile of ``attest_workload``.

4. **On PostgreSQL** (``--postgres URL``, a server where the benchmark may create a database of
   its own, dropped at the end): the same attest phase against one instance on PostgreSQL, then
   against ``--instances`` (2) instances of that CAS (the others join the first by attesting),
   the clients spread evenly over them, beside the one instance on SQLite of phase 1. For each:
   attestations per second, p99, server CPU per answer (in all and per instance), and the CPU of
   the database's own backends and its transactions per answer. The scaling factor is given as
   measured and by server CPU per answer: each instance is one process, bound to one core, so
   ``sum(1 / CPU per answer of each instance)`` over ``1 / CPU per answer of one instance`` is
   what the instances serve when each has a core of its own (goal: >= 1.6 for two).

5. **A store of many sessions** (``--sessions N [N ...]``, instead of the above): for each N the
   store of a stopped CAS is filled to N sessions in-process, the server started again, and the
   attest phase and the owner's session creates and updates measured, on SQLite and with
   ``--postgres`` on PostgreSQL; each figure at the largest N against the smallest (goal
   +-20%), and ``--plot FILE`` draws the latency percentiles against N as an SVG.

It prints the figures, then one verdict per goal of the workload work for a 2-core machine:
attestation throughput >= 30% of ``/healthz`` throughput, p99 < 50 ms, no errors, the whole
burst succeeds ("met" / "NOT met"). The exit code is 0 whatever the verdicts say, 1 when the
benchmark cannot measure (the server does not start, a phase gets no correct answer at all) and
130 when interrupted. The server is stopped at the end, also on Ctrl-C or SIGTERM; each phase is
bounded by ``--seconds`` and ``--max-requests``; all traffic goes to 127.0.0.1.

Run it with the package installed::

    python benchmarks/workload_attestation.py [--clients 32] [--seconds 20]

The load generator shares the machine with the server and does real work per attestation (an
Ed25519 signature, canonical JSON, two TLS requests): when it uses most of a core (``gen CPU``),
the rates are lower bounds for the server and its latencies include the generator's own queueing;
the server's CPU per answer and its own latency histogram (from its ``/metrics``) do not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import io
import math
import os
import pstats
import re
import resource
import secrets
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path

import httpx
import psycopg
from common import (
    ATTEST_RATIO_GOAL,
    Attempt,
    BenchmarkError,
    CpuMark,
    PhaseResult,
    Send,
    arguments,
    capacity_line,
    cpu_notes,
    default_generator_processes,
    machine_line,
    main,
    met,
    ms,
    number_option,
    percentile,
    positive,
    print_load,
    print_rates,
    process_cpu_seconds,
    rate,
    raw_ed25519,
    run_async,
    run_load,
    running_cas,
    server_pid,
    share,
    timed,
    us,
)
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families
from verify import alternating_rates, dcap_case

from opencas.attestation.verify import verify_evidence
from opencas.attestation.workload_binding import ConfigId
from opencas.client.answers import HEALTH_PATH
from opencas.client.channel import pinned_ssl_context
from opencas.client.enclave import (
    ENCLAVE_ATTEST_PATH,
    ENCLAVE_NONCE_PATH,
    AsyncEnclaveClient,
    EnclaveClient,
    WorkloadConfig,
)
from opencas.config.availability import ConnectionLimits, load_availability_config
from opencas.errors import AttestationRefused, CasError
from opencas.platform.simulated import SimulatedPlatform
from opencas.policy.caller import Caller
from opencas.policy.hashing import session_hash
from opencas.policy.parse import parse_session
from opencas.policy.secret_values import generate_values
from opencas.runtime.exchange import (
    SealedAnswer,
    WorkloadExchange,
    attest_async,
    fetch_configuration,
)
from opencas.service.cas import Cas, open_cas
from opencas.service.nonces import NonceStore
from opencas.service.sessions import SESSIONS, SessionRecord, create_session, write_session
from opencas.service.workloads import WorkloadRequest, attest_workload
from opencas.testing import (
    CasProcess,
    SelfProvisionedCas,
    attest_as_owner,
    start_self_provisioned_cas,
    write_config,
)

#: The p99 goal: 99% of workloads wait less than this for nonce plus attest.
P99_GOAL = 0.050
#: Open and check every this many answers of each workload in the sustained phase (all of the
#: burst's).
SAMPLE_EVERY = 50
CONFIG_ID = ConfigId("bench", "app")
MEASUREMENT = "5e" * 32
SECRET_VARIABLE = "BENCH_TOKEN"
SESSION = f"""\
name: bench
version: "0.3"
services:
  - name: app
    command: ["/usr/bin/bench-app", "--tls-cert", "/etc/bench/server.crt"]
    environment:
      {SECRET_VARIABLE}: "$$CAS::token$$"
    image_name: bench-image
    attestation:
      simulated_measurement: "{MEASUREMENT}"
images:
  - name: bench-image
    injection_files:
      - path: /etc/bench/server.crt
        content: "$$CAS::server.crt$$"
secrets:
  - name: token
    kind: ascii
    size: 32
  - name: ca
    kind: x509-ca
    common_name: Bench CA
  - name: server
    kind: x509
    issuer: ca
    common_name: bench.example
    endpoint: server
    san: ["dns:bench.example"]
security:
  attestation:
    tolerate: [simulated]
"""
#: The server's connection limits when the benchmark does not need others.
DEFAULT_LIMITS = ConnectionLimits()
#: File descriptors the benchmark and the server need beyond two per burst connection.
OPEN_FILES_SPARE = 256
#: The largest store ``--sessions`` fills.
MAX_STORED_SESSIONS = 1_000_000
#: Routes of the enclave API whose server-side latency histogram is reported.
ENCLAVE_ROUTES = (ENCLAVE_NONCE_PATH, ENCLAVE_ATTEST_PATH)


# --- the simulated workload ----------------------------------------------------------------------


def config_problem(config: WorkloadConfig, key: ec.EllipticCurvePrivateKey) -> str | None:
    """What is wrong with an opened configuration of ``bench/app``, or None."""
    if not config.environment.get(SECRET_VARIABLE):
        return "the secret is missing from the environment"
    if [file.path for file in config.injection_files] != ["/etc/bench/server.crt"]:
        return "the injection file is missing"
    issued = config.certificates.get("server")
    if issued is None:
        return "no per-workload certificate"
    certificate = x509.load_pem_x509_certificate(issued.certificate.encode("ascii"))
    if certificate.public_key() != key.public_key():
        return "the per-workload certificate does not certify the workload's key"
    return None


def answer_problem(exchange: WorkloadExchange, answer: SealedAnswer) -> str | None:
    """Open a sealed answer and check what matters; ``None`` or what is wrong."""
    try:
        config = exchange.open(answer)
    except CasError as exc:
        return f"does not open: {exc}"
    return config_problem(config, exchange.key)


@dataclass(frozen=True)
class Exchanged:
    """One attestation as the workload saw it: its latency, and its answer or what went wrong."""

    latency: float
    answer: SealedAnswer | None = None
    problem: str | None = None


async def attest_once(
    client: AsyncEnclaveClient,
    exchange: WorkloadExchange,
    platform: SimulatedPlatform,
    two_step: bool = False,
    retry_for: float = 0.0,
) -> Exchanged:
    """Nonce, evidence, attestation; the sealed answer is returned unopened. The nonce is the
    one the client's last answer handed out, unless ``two_step`` asks for one; a CAS that
    turned the connection away is tried again for ``retry_for`` seconds."""
    if two_step:
        client.take_next_nonce()
    started = time.perf_counter()
    try:
        answer = await attest_async(client, exchange, platform, retry_for=retry_for)
    except AttestationRefused as exc:
        return Exchanged(time.perf_counter() - started, problem=f"refused: {exc.check}")
    except CasError as exc:
        return Exchanged(time.perf_counter() - started, problem=f"{type(exc).__name__} {exc.code}")
    return Exchanged(time.perf_counter() - started, answer)


def enclave_client(cas: SelfProvisionedCas, timeout: float) -> AsyncEnclaveClient:
    """A client of the CAS's enclave API with one connection, pinned to the attested CAS."""
    return AsyncEnclaveClient(
        enclave_url(cas), cas.verified.ca_certificate_pem, max_connections=1, timeout=timeout
    )


def enclave_url(cas: SelfProvisionedCas) -> str:
    """The enclave API of the benchmark's CAS."""
    return f"https://127.0.0.1:{cas.process.enclave_port}"


# --- sustained load ------------------------------------------------------------------------------


def attest_send(
    client: AsyncEnclaveClient,
    exchange: WorkloadExchange,
    platform: SimulatedPlatform,
    target: int = 0,
    two_step: bool = False,
) -> Send:
    """One workload's next attestation; its first answer and every 50th are opened and checked."""
    count = 0

    async def send() -> Attempt:
        nonlocal count
        count += 1
        exchanged = await attest_once(client, exchange, platform, two_step)
        if exchanged.answer is None or (count > 1 and count % SAMPLE_EVERY):
            return Attempt(exchanged.latency, exchanged.problem, target=target)
        # Opening is not part of the latency: the answer has arrived.
        problem = answer_problem(exchange, exchanged.answer)
        return Attempt(exchanged.latency, problem, checked=count > 1, target=target)

    return send


async def attest_clients(
    urls: Sequence[str],
    ca_certificate_pem: bytes,
    platform_key: Path,
    timeout: float,
    two_step: bool,
    stack: contextlib.AsyncExitStack[bool | None],
    indices: Sequence[int],
) -> list[Send]:
    """Workloads ``indices``, each with one connection to ``urls[index % len(urls)]`` and a key
    of its own, attesting with the simulated platform whose key is in ``platform_key`` (asking
    for a nonce before each attestation if ``two_step``)."""
    platform = SimulatedPlatform.load_or_create(platform_key, MEASUREMENT)
    sends = []
    for index in indices:
        target = index % len(urls)
        client = await stack.enter_async_context(
            AsyncEnclaveClient(urls[target], ca_certificate_pem, max_connections=1, timeout=timeout)
        )
        exchange = WorkloadExchange.new(CONFIG_ID)
        sends.append(attest_send(client, exchange, platform, target, two_step))
    return sends


async def healthz_clients(
    url: str,
    ca_certificate_pem: bytes,
    timeout: float,
    stack: contextlib.AsyncExitStack[bool | None],
    indices: Sequence[int],
) -> list[Send]:
    """Clients ``indices``, each with one connection to ``url``, asking ``health()``."""

    def healthz_send(client: AsyncEnclaveClient) -> Send:
        async def check() -> str | None:
            return None if await client.health() == "ok" else "wrong answer"

        return lambda: timed(check())

    sends = []
    for _ in indices:
        client = await stack.enter_async_context(
            AsyncEnclaveClient(url, ca_certificate_pem, max_connections=1, timeout=timeout)
        )
        sends.append(healthz_send(client))
    return sends


@dataclass(frozen=True)
class Target:
    """One instance the load goes to: its enclave API and its process."""

    enclave_url: str
    pid: int


def targets_of(cas: SelfProvisionedCas) -> list[Target]:
    """The one instance of ``cas``."""
    return [Target(enclave_url(cas), server_pid(cas))]


def run_attest_phase(
    targets: Sequence[Target],
    ca_certificate_pem: bytes,
    platform_key: Path,
    args: argparse.Namespace,
) -> PhaseResult:
    """``args.clients`` workloads, spread evenly over ``targets`` and over
    ``args.generator_processes`` load generators, attest back to back for ``args.seconds``.

    ``answered_by`` of the result counts the correct answers of each target, in order."""
    build = functools.partial(
        attest_clients,
        tuple(target.enclave_url for target in targets),
        ca_certificate_pem,
        platform_key,
        args.timeout,
        args.two_step,
    )
    return run_load(
        "attest",
        build,
        args.clients,
        [target.pid for target in targets],
        processes=args.generator_processes,
        seconds=args.seconds,
        max_requests=args.max_requests,
        connect_timeout=2 * args.timeout + 5.0,
        request_timeout=args.timeout,
    )


def run_healthz_phase(cas: SelfProvisionedCas, args: argparse.Namespace) -> PhaseResult:
    """``health()`` on the enclave listener from ``args.clients`` clients for ``args.seconds``."""
    build = functools.partial(
        healthz_clients, enclave_url(cas), cas.verified.ca_certificate_pem, args.timeout
    )
    return run_load(
        "healthz",
        build,
        args.clients,
        server_pid(cas),
        processes=args.generator_processes,
        seconds=args.seconds,
        max_requests=args.max_requests,
        connect_timeout=args.timeout + 5.0,
        request_timeout=args.timeout,
    )


# --- the burst -----------------------------------------------------------------------------------


@dataclass
class BurstResult:
    """``size`` new workloads attesting once, all at once."""

    size: int
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cpu: PhaseResult | None = None
    """The CPU the server, this generator and everything else used during the burst."""

    @property
    def succeeded(self) -> int:
        """Workloads whose answer opened and checked."""
        return len(self.latencies)


async def run_burst(
    cas: SelfProvisionedCas,
    platform: SimulatedPlatform,
    size: int,
    timeout: float,
    retry_for: float = 0.0,
) -> BurstResult:
    """``size`` workloads, each with its own new connection and key, attest at the same moment
    (each trying again for ``retry_for`` seconds when the CAS turns its connection away)."""
    result = BurstResult(size)
    exchanges = [WorkloadExchange.new(CONFIG_ID) for _ in range(size)]
    go = asyncio.Event()

    async def one(client: AsyncEnclaveClient, exchange: WorkloadExchange) -> Exchanged:
        await go.wait()
        try:
            return await attest_once(client, exchange, platform, retry_for=retry_for)
        finally:
            # As casctl run does: a configured workload holds no connection to the CAS.
            await client.aclose()

    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(enclave_client(cas, timeout)) for _ in exchanges]
        tasks = [
            asyncio.create_task(one(client, exchange))
            for client, exchange in zip(clients, exchanges, strict=True)
        ]
        mark = CpuMark.now(server_pid(cas))
        started = time.perf_counter()
        go.set()
        try:
            outcomes = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        result.elapsed = time.perf_counter() - started
        result.cpu = PhaseResult("burst", size, elapsed=result.elapsed)
        mark.charge(result.cpu, server_pid(cas))
    for exchange, outcome in zip(exchanges, outcomes, strict=True):
        problem = outcome.problem
        if outcome.answer is not None:
            problem = answer_problem(exchange, outcome.answer)
        if problem is None:
            result.latencies.append(outcome.latency)
        else:
            result.errors[problem] += 1
    return result


# --- the server's own latency histogram ----------------------------------------------------------

#: Cumulative request counts by route and bucket upper bound (seconds; ``inf`` last).
Histogram = dict[str, dict[float, float]]


def server_histogram(cas: SelfProvisionedCas, timeout: float) -> Histogram | None:
    """The enclave routes' latency histogram from the client API's ``/metrics``, or ``None``."""
    context = pinned_ssl_context(cas.verified.ca_certificate_pem)
    try:
        with httpx.Client(base_url=cas.url, verify=context, timeout=timeout) as client:
            answer = client.get("/metrics")
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    histogram: Histogram = {route: {} for route in ENCLAVE_ROUTES}
    for family in text_string_to_metric_families(answer.text):
        if family.name != "opencas_http_request_duration_seconds":
            continue
        for sample in family.samples:
            route = sample.labels.get("route", "")
            enclave = sample.labels.get("listener") == "enclave"
            if enclave and sample.name.endswith("_bucket") and route in histogram:
                histogram[route][float(sample.labels["le"])] = sample.value
    return histogram


def histogram_percentile(before: Histogram, after: Histogram, route: str, p: float) -> float:
    """The upper bound of the bucket holding the ``p``-th percentile between two scrapes."""
    counts = {le: after[route].get(le, 0.0) - before[route].get(le, 0.0) for le in after[route]}
    total = counts.get(math.inf, 0.0)
    if total <= 0:
        return math.nan
    for le in sorted(counts):
        if counts[le] >= p / 100 * total:
            return le
    return math.inf


# --- in-process figures --------------------------------------------------------------------------


@dataclass
class MicroResult:
    """In-process rates, per second, one thread."""

    verify_evidence: float
    ed25519_verify: float
    attest_workload: float
    attest_workload_best: float
    """The fastest batch: the least disturbed figure."""
    dcap: list[DcapCost] = field(default_factory=list)
    profile: str = ""


def _verify_rate(platform: SimulatedPlatform, seconds: float) -> float:
    evidence = WorkloadExchange.new(CONFIG_ID).evidence("ab" * 32, platform)
    now = datetime.now(UTC)
    if verify_evidence(evidence, at=now).measurement != MEASUREMENT:
        raise BenchmarkError("the simulated evidence does not verify to its measurement")
    return rate(lambda: verify_evidence(evidence, at=now), seconds)


def _prepared_requests(
    nonces: NonceStore, platform: SimulatedPlatform, count: int
) -> list[WorkloadRequest]:
    exchange = WorkloadExchange.new(CONFIG_ID)
    requests = []
    for _ in range(count):
        nonce = nonces.issue()
        evidence = exchange.evidence(nonce, platform)
        requests.append(WorkloadRequest(CONFIG_ID, nonce, exchange.public_key, evidence.to_json()))
    return requests


def _attest_workload_rates(
    cas: Cas, platform: SimulatedPlatform, seconds: float
) -> tuple[float, float]:
    """``attest_workload`` calls per second, overall and in the fastest batch of 32.

    Each call has its own nonce and evidence, made beforehand and not timed. The fastest batch
    is the least disturbed by other processes: the bound for one server process.
    """
    nonces = NonceStore()
    for request in _prepared_requests(nonces, platform, 4):  # warm caches, lazy imports
        attest_workload(cas, nonces, request)
    count, timed_seconds, best = 0, 0.0, math.inf
    while timed_seconds < seconds:
        batch = _prepared_requests(nonces, platform, 32)
        started = time.perf_counter()
        for request in batch:
            attest_workload(cas, nonces, request)
        elapsed = time.perf_counter() - started
        timed_seconds += elapsed
        best = min(best, elapsed / len(batch))
        count += len(batch)
    return count / timed_seconds, 1 / best


def profile_attest_workload(
    cas: Cas, platform: SimulatedPlatform, seconds: float, lines: int
) -> str:
    """The ``lines`` top functions of a cProfile of ``attest_workload`` calls, two orders."""
    nonces = NonceStore()
    profiler = cProfile.Profile()
    count, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        batch = _prepared_requests(nonces, platform, 32)
        profiler.enable()
        for request in batch:
            attest_workload(cas, nonces, request)
        profiler.disable()
        count += len(batch)
    text = []
    for order in ("tottime", "cumulative"):
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream)
        stats.strip_dirs().sort_stats(order).print_stats(lines)
        text.append(f"--- {count} calls of attest_workload, by {order} ---\n{stream.getvalue()}")
    return "\n".join(text)


def measure_in_process(
    directory: Path, platform: SimulatedPlatform, seconds: float, profile_lines: int
) -> MicroResult:
    """The in-process rates; a CAS with the benchmark's session is opened under ``directory``."""
    verify = _verify_rate(platform, seconds)
    _, ed25519_verify = raw_ed25519(seconds)
    directory.mkdir(parents=True, exist_ok=True)
    # Ports are never bound: the in-process CAS only needs a valid config.
    cas = open_cas(load_availability_config(write_config(directory, 1, 2)))
    try:
        create_session(cas, SESSION, Caller("be" * 32))
        attest, attest_best = _attest_workload_rates(cas, platform, seconds)
        profile = ""
        if profile_lines > 0:
            profile = profile_attest_workload(cas, platform, seconds, profile_lines)
    finally:
        cas.close()
    return MicroResult(verify, ed25519_verify, attest, attest_best, measure_dcap(seconds), profile)


# --- real DCAP evidence, composed ----------------------------------------------------------------

#: An attestation with real DCAP evidence costs at most the simulated one plus this many times
#: the bare dcap-qvl verification.
DCAP_FACTOR_GOAL = 1.25


@dataclass(frozen=True)
class DcapCost:
    """Seconds per call, measured in one run: our verifier on a real quote of the vectors and the
    bare dcap-qvl verification of the same quote and collateral."""

    name: str
    verify: float
    bare: float


def measure_dcap(seconds: float) -> list[DcapCost]:
    """``verify_evidence`` on the SGX and TDX quotes of ``tests/data`` (time pinned, collateral
    in memory, caches warm) against bare dcap-qvl, in alternating slices."""
    costs = []
    for name, tee, quote, collateral in (
        ("SGX", "sgx", "sgx_quote", "sgx_quote_collateral.json"),
        ("TDX", "tdx", "tdx_quote", "tdx_quote_collateral.json"),
    ):
        ours, bare = dcap_case(tee, quote, collateral)
        ours_rate, bare_rate = alternating_rates(ours, bare, seconds, min(0.1, seconds / 4))
        costs.append(DcapCost(name, 1 / ours_rate, 1 / bare_rate))
    return costs


def dcap_verdicts(attest: PhaseResult, micro: MicroResult) -> list[str]:
    """The composed cost of an attestation with real DCAP evidence against its bound."""
    measured = attest.server_cpu_per_answer
    if not measured:
        return ["DCAP: no server CPU per answer measured; nothing to compose"]
    simulated = 1 / micro.verify_evidence
    lines = [
        "DCAP (composed: a workload cannot make a real quote over this run's nonce, so the "
        "simulated verify_evidence in the measured server CPU per attestation is replaced by "
        "verify_evidence on a real quote of tests/data, time pinned, collateral cached, all "
        "measured in this run):"
    ]
    for cost in micro.dcap:
        composed = measured - simulated + cost.verify
        bound = measured + DCAP_FACTOR_GOAL * cost.bare
        lines.append(
            f"  {cost.name}: {us(measured)} - {us(simulated)} + {us(cost.verify)} = "
            f"{us(composed)} us per attestation; bound {us(measured)} + {DCAP_FACTOR_GOAL:g} x "
            f"{us(cost.bare)} (bare dcap-qvl) = {us(bound)} us: {met(composed <= bound)}"
        )
    return lines


# --- /healthz through wrk ------------------------------------------------------------------------

WRK_LATENCY = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
WRK_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
WRK_REQUESTS = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
WRK_ERRORS = re.compile(r"^\s*(?:Non-2xx or 3xx responses|Socket errors):.*$", re.MULTILINE)
WRK_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


@dataclass(frozen=True)
class WrkResult:
    """What ``wrk`` measured of ``/healthz``, with the CPU it and the server used."""

    rate: float
    requests: int
    percentiles: dict[int, float]
    cpu: PhaseResult
    errors: tuple[str, ...]
    """wrk's lines on wrong answers and socket errors (none when all went well)."""

    @property
    def server_cpu_per_answer(self) -> float | None:
        """Server CPU seconds per answer wrk counted."""
        if self.cpu.server_cpu is None or self.requests == 0:
            return None
        return self.cpu.server_cpu * self.cpu.elapsed / self.requests


def run_wrk(cas: SelfProvisionedCas, args: argparse.Namespace) -> WrkResult | str:
    """``GET /healthz`` on the enclave listener through ``wrk`` (C, not Python), same clients and
    duration; what it measured, or why it could not."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return "wrk is not installed (Debian: apt-get install wrk): the C-client line is skipped"
    threads = max(1, min(args.clients, os.cpu_count() or 1))
    command = [
        wrk,
        f"-t{threads}",
        f"-c{args.clients}",
        f"-d{max(1, round(args.seconds))}s",
        "--latency",
        f"{enclave_url(cas)}{HEALTH_PATH}",
    ]
    cpu = PhaseResult("healthz wrk", args.clients)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    mark = CpuMark.now(server_pid(cas))
    started = time.perf_counter()
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=args.seconds + 60, check=False
    )
    cpu.elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    rate_found, requests = WRK_RATE.search(run.stdout), WRK_REQUESTS.search(run.stdout)
    if run.returncode != 0 or rate_found is None or requests is None:
        return f"wrk failed ({run.returncode}): {(run.stderr or run.stdout).strip()[:200]}"
    mark.charge(cpu, server_pid(cas), generator_seconds=used)
    percentiles = {
        int(p): float(value) * WRK_UNITS[unit] for p, value, unit in WRK_LATENCY.findall(run.stdout)
    }
    return WrkResult(
        float(rate_found.group(1)),
        int(requests.group(1)),
        percentiles,
        cpu,
        tuple(line.strip() for line in WRK_ERRORS.findall(run.stdout)),
    )


def print_wrk(result: WrkResult | str) -> None:
    """The ``wrk`` line: rate, latency percentiles, CPU."""
    if isinstance(result, str):
        print(f"  {result}")
        return
    latency = " / ".join(ms(result.percentiles.get(p, math.nan)) for p in (50, 90, 99))
    print(
        f"  healthz through wrk: {result.rate:,.0f} req/s, p50 / p90 / p99 {latency} ms, server "
        f"CPU {share(result.cpu.server_cpu)} ({us(result.server_cpu_per_answer)} us per "
        f"answer), wrk {share(result.cpu.client_cpu)}, other {share(result.cpu.other_cpu)} of a "
        "core"
    )
    for line in result.errors:
        print(f"    wrk: {line}")


# --- a store of many sessions --------------------------------------------------------------------

#: Sessions written per transaction when the store is filled before a server starts.
FILL_BATCH = 1000
#: A CAS of the sessions sweep lets its owner upload this many sessions a minute, and at once:
#: the creates and updates it times are more than the default 30 of one signing key.
SWEEP_UPLOADS = 100_000
#: From the smallest store to the largest, every figure stays within this share of its value.
GROWTH_GOAL = 0.20


def filler_text(name: str, predecessor: str | None = None) -> str:
    """The benchmark's session under another ``name`` (an update of ``predecessor``, if given)."""
    text = SESSION.replace("name: bench\n", f"name: {name}\n", 1)
    if predecessor is None:
        return text
    return text.replace('version: "0.3"\n', f'version: "0.3"\npredecessor: "{predecessor}"\n', 1)


def fill_store(config_path: Path, first: int, count: int, creator: str) -> int:
    """Store the sessions ``fill-<first>`` to ``fill-<first + count - 1>`` in the stopped CAS of
    ``config_path``; returns how many sessions the store holds then.

    Each is the benchmark's session under its own name, written as ``create_session`` writes
    one, in transactions of :data:`FILL_BATCH`, parsed once and without an audit entry each; the
    sessions of one transaction share one set of generated secret values (a token, a CA and a
    certificate it issued: each record is still sealed on its own, so the store holds what as
    many uploads would leave, byte for byte in size). Issuing two certificates per session
    would take most of the time; one upload each, an hour for 10^5.
    """
    cas = open_cas(load_availability_config(config_path))
    try:
        template = parse_session(SESSION, purpose="create")
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        end = first + count
        for start in range(first, end, FILL_BATCH):
            values = generate_values(template)
            with cas.store.transaction() as txn:
                for number in range(start, min(end, start + FILL_BATCH)):
                    name = f"fill-{number:06d}"
                    session = template.model_copy(update={"name": name})
                    record = SessionRecord(
                        name=name,
                        text=filler_text(name),
                        normal_form=session.normal_form(),
                        hash=session_hash(session),
                        creator=creator,
                        created_at=now,
                        updated_at=now,
                        revision=1,
                    )
                    write_session(txn, record, session, values)
        return len(cas.store.list_keys(SESSIONS))
    finally:
        cas.close()


def restarted(cas: SelfProvisionedCas) -> SelfProvisionedCas:
    """The stopped ``cas`` started again on its directory and attested again as its owner."""
    cas.process.self_provision(cas.owner_config_path, cas.owner_certificate_path)
    try:
        client, verified = attest_as_owner(cas.url, cas.owner, cas.owner_config_path)
    except BaseException:
        cas.process.stop()
        raise
    return SelfProvisionedCas(
        cas.process, cas.owner, cas.owner_directory, cas.owner_config_path, verified, client
    )


def timed_writes(
    cas: SelfProvisionedCas, name: str, writes: Sequence[Callable[[], object]]
) -> PhaseResult:
    """Each of ``writes`` (a call of the owner API) one after the other, timed, with the server's
    CPU; one that raises is an error."""
    result = PhaseResult(name, 1)
    mark = CpuMark.now(server_pid(cas))
    started = time.perf_counter()
    for write in writes:
        begun = time.perf_counter()
        try:
            write()
        except CasError as exc:
            result.errors[f"{type(exc).__name__} {exc.code}"] += 1
            continue
        result.latencies.append(time.perf_counter() - begun)
    result.elapsed = time.perf_counter() - started
    mark.charge(result, server_pid(cas))
    return result


def probe_writes(
    cas: SelfProvisionedCas, label: str, count: int
) -> tuple[PhaseResult, PhaseResult]:
    """``count`` session creations, then an update of each, through the owner API."""
    names = [f"probe-{label}-{number}" for number in range(count)]
    hashes: dict[str, str] = {}

    def create(name: str) -> Callable[[], object]:
        def call() -> object:
            hashes[name] = cas.client.create_session(filler_text(name)).hash
            return None

        return call

    def update(name: str) -> Callable[[], object]:
        return lambda: cas.client.update_session(name, filler_text(name, hashes[name]))

    creates = timed_writes(cas, "create", [create(name) for name in names])
    updates = timed_writes(cas, "update", [update(name) for name in names if name in hashes])
    return creates, updates


@dataclass(frozen=True)
class StoreSize:
    """The figures measured with ``sessions`` sessions in the store."""

    sessions: int
    attest: PhaseResult
    creates: PhaseResult
    updates: PhaseResult


def sweep_store_sizes(
    directory: Path, platform_key: Path, args: argparse.Namespace, database_url: str | None
) -> list[StoreSize]:
    """For each of ``args.sessions`` (ascending), fill the store of one CAS up to that many
    sessions (server stopped), start it again, and measure the attest phase and the owner's
    session writes."""
    cas = start_self_provisioned_cas(
        directory,
        database_url=database_url,
        limits={"session_uploads_per_minute": SWEEP_UPLOADS, "session_upload_burst": SWEEP_UPLOADS},
    )
    sizes = []
    try:
        cas.client.create_session(SESSION)
        stored, filled = 1, 0
        for target in sorted(set(args.sessions)):
            if target > stored:
                cas.stop()
                began = time.perf_counter()
                stored = fill_store(
                    cas.process.config_path, filled, target - stored, cas.owner.key_hash
                )
                filled = stored  # numbers are unique: fillers never exceed the sessions stored
                print(f"  filled to {stored:,} sessions in {time.perf_counter() - began:.1f} s")
                cas = restarted(cas)
            check_runtime_exchange(cas, platform_key)
            attest = run_attest_phase(
                targets_of(cas), cas.verified.ca_certificate_pem, platform_key, args
            )
            if attest.ok == 0:
                raise BenchmarkError(
                    f"{stored} sessions: no correct attestation: {dict(attest.errors)}"
                )
            creates, updates = probe_writes(cas, str(target), args.session_writes)
            sizes.append(StoreSize(stored, attest, creates, updates))
            stored += creates.ok
    finally:
        cas.stop()
    return sizes


def print_store_sizes(label: str, sizes: Sequence[StoreSize]) -> None:
    """One row per store size: attestation latency and CPU, session writes' latency and CPU."""
    print(f"\n{label}:")
    print(
        f"  {'sessions':>9} {'att/s':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'us/ans':>7} "
        f"{'errors':>6} {'create ms':>9} {'us/create':>9} {'update ms':>9} {'us/update':>9} "
        f"{'gen CPU':>7} {'other':>6}"
    )
    for size in sizes:
        attest, creates, updates = size.attest, size.creates, size.updates
        errors = attest.error_count + creates.error_count + updates.error_count
        print(
            f"  {size.sessions:>9,} {attest.rate:>6,.0f} {ms(attest.percentile(50)):>7} "
            f"{ms(attest.percentile(95)):>7} {ms(attest.percentile(99)):>7} "
            f"{us(attest.server_cpu_per_answer):>7} {errors:>6} "
            f"{ms(creates.percentile(50)):>9} {us(creates.server_cpu_per_answer):>9} "
            f"{ms(updates.percentile(50)):>9} {us(updates.server_cpu_per_answer):>9} "
            f"{share(attest.client_cpu):>7} {share(attest.other_cpu):>6}"
        )
        for kind, count in (attest.errors + creates.errors + updates.errors).most_common(3):
            print(f"            {count:>6} x {kind}")
    print(
        "  attestation percentiles over every sample of all generators; us/ans: server CPU per "
        "answer;\n  create / update ms: median of the owner API's session writes, us/...: "
        "server CPU per write"
    )


def growth_verdicts(label: str, sizes: Sequence[StoreSize]) -> list[str]:
    """Each figure at the largest store against the smallest, with the goal of +-20%."""
    if len(sizes) < 2:
        return []
    small, large = sizes[0], sizes[-1]

    def cpu(result: PhaseResult) -> float:
        return result.server_cpu_per_answer or math.nan

    figures: list[tuple[str, Callable[[StoreSize], float]]] = [
        ("attestation p50", lambda size: size.attest.percentile(50)),
        ("attestation p95", lambda size: size.attest.percentile(95)),
        ("attestation p99", lambda size: size.attest.percentile(99)),
        ("server CPU per attestation", lambda size: cpu(size.attest)),
        ("session create (median)", lambda size: size.creates.percentile(50)),
        ("server CPU per create", lambda size: cpu(size.creates)),
        ("session update (median)", lambda size: size.updates.percentile(50)),
        ("server CPU per update", lambda size: cpu(size.updates)),
    ]
    lines = []
    for name, figure in figures:
        before, after = figure(small), figure(large)
        if math.isnan(before) or math.isnan(after) or before <= 0:
            lines.append(f"{label}: {name}: not measured")
            continue
        change = after / before - 1
        lines.append(
            f"{label}: {name} {change:+.0%} from {small.sessions:,} to {large.sessions:,} "
            f"sessions (goal within +-{GROWTH_GOAL:.0%}: {met(abs(change) <= GROWTH_GOAL)})"
        )
    return lines + cpu_notes([size.attest for size in sizes])


# --- the plot ------------------------------------------------------------------------------------

PLOT_WIDTH, PLOT_HEIGHT = 640, 400
PLOT_MARGIN = (70, 20, 30, 50)  # left, right, top, bottom
PLOT_COLOURS = {50: "#1f77b4", 95: "#ff7f0e", 99: "#d62728"}
PLOT_DASHES = ("", "6,4", "2,3")


def latency_plot(series: Sequence[tuple[str, Sequence[StoreSize]]], title: str) -> str:
    """An SVG of attestation p50 / p95 / p99 (ms) against sessions stored (log scale), one set
    of lines per backend of ``series``."""
    left, right, top, bottom = PLOT_MARGIN
    inner_w, inner_h = PLOT_WIDTH - left - right, PLOT_HEIGHT - top - bottom
    points = [size for _, sizes in series for size in sizes]
    low = math.floor(math.log10(min(size.sessions for size in points)))
    high = max(low + 1, math.ceil(math.log10(max(size.sessions for size in points))))
    values = [size.attest.percentile(p) * 1000 for size in points for p in PLOT_COLOURS]
    top_ms = max(1.0, max(value for value in values if not math.isnan(value)) * 1.1)

    def x(sessions: int) -> float:
        return left + (math.log10(sessions) - low) / (high - low) * inner_w

    def y(milliseconds: float) -> float:
        return top + inner_h - milliseconds / top_ms * inner_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{PLOT_WIDTH}" height="{PLOT_HEIGHT}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{PLOT_WIDTH}" height="{PLOT_HEIGHT}" fill="white"/>',
        f'<text x="{PLOT_WIDTH / 2}" y="18" text-anchor="middle">{escape(title)}</text>',
        f'<line x1="{left}" y1="{top + inner_h}" x2="{left + inner_w}" y2="{top + inner_h}" '
        'stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + inner_h}" stroke="black"/>',
    ]
    for exponent in range(low, high + 1):
        px = x(10**exponent)
        parts.append(
            f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{top + inner_h}" stroke="#ddd"/>'
            f'<text x="{px:.1f}" y="{top + inner_h + 16}" text-anchor="middle">10^{exponent}</text>'
        )
    for step in range(6):
        value = top_ms * step / 5
        py = y(value)
        parts.append(
            f'<line x1="{left}" y1="{py:.1f}" x2="{left + inner_w}" y2="{py:.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{py + 4:.1f}" text-anchor="end">{value:.0f}</text>'
        )
    parts.append(
        f'<text x="{left + inner_w / 2}" y="{PLOT_HEIGHT - 12}" text-anchor="middle">'
        "sessions stored (log scale)</text>"
        f'<text x="16" y="{top + inner_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {top + inner_h / 2})">attestation latency, ms</text>'
    )
    legend_y = top + 8
    for number, (backend, sizes) in enumerate(series):
        dash = PLOT_DASHES[number % len(PLOT_DASHES)]
        for p, colour in PLOT_COLOURS.items():
            drawn = [
                (x(size.sessions), y(size.attest.percentile(p) * 1000))
                for size in sizes
                if not math.isnan(size.attest.percentile(p))
            ]
            dashing = f' stroke-dasharray="{dash}"' if dash else ""
            line = " ".join(f"{px:.1f},{py:.1f}" for px, py in drawn)
            parts.append(
                f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"'
                f"{dashing}/>"
            )
            parts.extend(
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>' for px, py in drawn
            )
            parts.append(
                f'<line x1="{left + 10}" y1="{legend_y}" x2="{left + 34}" y2="{legend_y}" '
                f'stroke="{colour}" stroke-width="2"{dashing}/>'
                f'<text x="{left + 40}" y="{legend_y + 4}">{escape(backend)} p{p}</text>'
            )
            legend_y += 16
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def run_sessions_sweep(workdir: Path, platform_key: Path, args: argparse.Namespace) -> None:
    """The sessions sweep on SQLite and, with ``--postgres``, on PostgreSQL; the plot."""
    series: list[tuple[str, list[StoreSize]]] = []
    print("\nSQLite: filling and measuring")
    series.append(("SQLite", sweep_store_sizes(workdir / "sweep-sqlite", platform_key, args, None)))
    if args.postgres:
        print("\nPostgreSQL: filling and measuring")
        with bench_database(args.postgres) as (url, _, _):
            sizes = sweep_store_sizes(workdir / "sweep-postgres", platform_key, args, url)
        series.append(("PostgreSQL", sizes))
    for backend, sizes in series:
        print_store_sizes(f"Attestation and session writes by sessions stored, {backend}", sizes)
    print(f"\nVerdicts (load average now {os.getloadavg()[0]:.2f}):")
    for backend, sizes in series:
        for line in growth_verdicts(backend, sizes):
            print(f"  {line}")
    if args.plot is not None:
        title = f"Workload attestation latency, {args.clients} clients"
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        args.plot.write_text(latency_plot(series, title), encoding="utf-8")
        print(f"\nplot written to {args.plot}")


# --- reporting -----------------------------------------------------------------------------------


def print_burst(burst: BurstResult, attest: PhaseResult) -> None:
    """The burst's figures, and the time the attest phase's capacity predicts for it."""
    print(
        f"  {burst.succeeded} of {burst.size} succeeded; the last had its answer after "
        f"{burst.elapsed:.2f} s (latency incl. TCP + TLS handshake: p50 "
        f"{ms(percentile(burst.latencies, 50))} ms, max {ms(percentile(burst.latencies, 100))} ms)"
    )
    for kind, count in burst.errors.most_common(5):
        print(f"    {count:>6} x {kind}")
    if attest.rate > 0:
        print(
            f"  predicted by the attest phase: {burst.size / attest.rate:.2f} s "
            f"({burst.size} / {attest.rate:,.0f} attestations/s as measured)"
        )
    cost = attest.server_cpu_per_answer
    if cost:
        print(
            f"  predicted by server CPU per answer: {burst.size * cost:.2f} s "
            f"({burst.size} x {us(cost)} us on one core; a new connection's TLS handshake "
            "comes on top)"
        )
    if burst.cpu is not None:
        print(
            f"  during the burst: server CPU {share(burst.cpu.server_cpu)}, this generator "
            f"{share(burst.cpu.client_cpu)} (one process), other processes "
            f"{share(burst.cpu.other_cpu)} of a core"
        )


def print_server_latency(before: Histogram | None, after: Histogram | None) -> None:
    """The server's own view of the attest phase: bucket bounds of its latency percentiles."""
    if before is None or after is None:
        print("  (the server's /metrics could not be read)")
        return
    for route in ENCLAVE_ROUTES:
        p50, p99 = (histogram_percentile(before, after, route, p) for p in (50, 99))
        print(f"  {route:<20} p50 <= {ms(p50)} ms, p99 <= {ms(p99)} ms (histogram buckets)")


def print_micro(micro: MicroResult) -> None:
    """The in-process figures."""
    rows = [
        ("verify_evidence (simulated)", micro.verify_evidence),
        ("Ed25519 verify (raw, 300 B)", micro.ed25519_verify),
        ("attest_workload (whole)", micro.attest_workload),
        ("attest_workload, fastest batch", micro.attest_workload_best),
    ]
    for cost in micro.dcap:
        rows.append((f"verify_evidence ({cost.name} quote)", 1 / cost.verify))
        rows.append((f"bare dcap-qvl ({cost.name} quote)", 1 / cost.bare))
    print_rates(rows)


def verdicts(
    healthz: PhaseResult, load: PhaseResult, burst: BurstResult, micro: MicroResult
) -> list[str]:
    """One line per goal or bound."""
    throughput = load.rate / healthz.rate if healthz.rate > 0 else 0.0
    p99 = load.percentile(99)
    errors = load.error_count
    lines = [
        f"attestation throughput = {throughput:.0%} of enclave /healthz ({load.rate:,.0f} vs "
        f"{healthz.rate:,.0f}/s at {load.clients} clients; goal >= {ATTEST_RATIO_GOAL:.0%}: "
        f"{met(throughput >= ATTEST_RATIO_GOAL)})",
        f"attestation p99 = {ms(p99)} ms for nonce + attest (goal < {P99_GOAL * 1000:.0f} ms: "
        f"{met(p99 < P99_GOAL)})",
        f"errors = {errors} of {load.ok + errors} attestations, {load.checked} answers opened "
        f"and checked (goal 0: {met(errors == 0)})",
        f"burst: {burst.succeeded} of {burst.size} concurrent attestations succeeded (goal all: "
        f"{met(burst.succeeded == burst.size)})",
    ]
    capacity = capacity_line("attestation", load, healthz)
    if capacity is not None:
        lines.append(capacity)
    attest_cost = load.server_cpu_per_answer
    inside = 1 / micro.attest_workload_best
    if attest_cost:
        part = f"{inside / attest_cost:.0%}" if attest_cost > inside else "all (disturbed)"
        lines.append(
            f"server CPU per attestation = {attest_cost * 1e6:,.0f} us, of which attest_workload "
            f"in-process takes {inside * 1e6:,.0f} us ({part}); the rest is outside it: HTTP, "
            "TLS, JSON, the nonce request"
        )
    floor = latency_floor(load)
    if floor is not None:
        lines.append(floor)
    lines += [
        f"attestation over TLS = {load.rate:,.0f}/s vs {micro.attest_workload_best:,.0f}/s for "
        "attest_workload in-process (bound for one server process, one core)",
        f"verify_evidence = {micro.verify_evidence:,.0f}/s vs {micro.ed25519_verify:,.0f} raw "
        f"Ed25519 verifies/s (bound; {micro.verify_evidence / micro.ed25519_verify:.0%} of it)",
    ]
    return lines + cpu_notes((healthz, load))


def latency_floor(load: PhaseResult) -> str | None:
    """What the machine allows the attest phase at best: the server's and the load generators'
    CPU per attestation share the machine's CPUs, which bounds the rate, and with ``clients``
    always in flight the mean latency is at least ``clients`` over that rate (Little's law)."""
    server, clients_cpu = load.server_cpu_per_answer, load.client_cpu
    if not server or clients_cpu is None or load.ok == 0:
        return None
    generator = clients_cpu * load.elapsed / load.ok
    cpus = os.cpu_count() or 1
    best_rate = cpus / (server + generator)
    return (
        f"machine bound: the server's {server * 1e6:,.0f} us and the load generators' "
        f"{generator * 1e6:,.0f} us of CPU per attestation share {cpus} CPUs, so at most "
        f"{best_rate:,.0f} attestations/s with every CPU busy; {load.clients} clients in flight "
        f"then wait {load.clients / best_rate * 1000:.1f} ms on average (Little's law), a floor "
        f"under p50 that p99 < {P99_GOAL * 1000:.0f} ms needs well below it"
    )


# --- main ----------------------------------------------------------------------------------------


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = arguments(
        "Benchmark workload attestation (enclave API nonce + attest) of a local CAS against "
        "GET /healthz and in-process bounds.",
        seconds=20.0,
        micro_seconds=2.0,
        timeout=30.0,
    )
    number_option(parser, "--burst", int, 2000, 200, "workloads that attest once, all at once")
    parser.add_argument(
        "--burst-retry",
        type=positive(float, 600),
        default=None,
        metavar="SECONDS",
        help="keep the server's default connection limits for the burst, and let each workload "
        "try again for this long when the CAS turns its connection away (as casctl run "
        "--connect-retry does); without it a burst over the limits runs on a CAS configured as "
        "behind a NAT",
    )
    parser.add_argument(
        "--two-step",
        action="store_true",
        help="ask for a nonce before every attestation instead of using the one the previous "
        "answer handed out (CAS-Next-Nonce), as a workload that ignores it does",
    )
    parser.add_argument(
        "--compare-audit-log",
        action="store_true",
        help="also run the attest phase on a CAS whose audit log is disabled, and compare",
    )
    number_option(
        parser,
        "--audit-rounds",
        int,
        20,
        4,
        "turns of --seconds/2 each for the log on and the log off, with --compare-audit-log",
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        default=None,
        help="also run the attest phase on one and on --instances instances on this PostgreSQL "
        "server (e.g. postgresql://postgres@127.0.0.1:5432; a database of its own is made and "
        "dropped), clients spread over them",
    )
    number_option(parser, "--instances", int, 8, 2, "instances on PostgreSQL for --postgres")
    number_option(
        parser,
        "--generator-processes",
        int,
        64,
        default_generator_processes(),
        "load generator processes that share the clients of each phase",
    )
    parser.add_argument(
        "--sessions",
        type=positive(int, MAX_STORED_SESSIONS),
        nargs="+",
        metavar="N",
        default=None,
        help="instead of the default phases: for each N, a store of N sessions (filled with the "
        "server stopped), the attest phase and --session-writes creates and updates of "
        "sessions; on SQLite and, with --postgres, on PostgreSQL",
    )
    number_option(
        parser, "--session-writes", int, 1000, 20, "session creates and updates per N of --sessions"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE",
        help="with --sessions, write an SVG of attestation p50/p95/p99 against sessions stored",
    )
    parser.add_argument(
        "--profile",
        type=positive(int, 1000),
        default=None,
        metavar="N",
        help="also print the N top functions of a cProfile of attest_workload in-process",
    )
    return parser.parse_args(argv)


def check_runtime_exchange(cas: SelfProvisionedCas, platform_key: Path) -> None:
    """One workload attests as ``casctl run`` does; its configuration must check."""
    platform = SimulatedPlatform.load_or_create(platform_key, MEASUREMENT)
    with EnclaveClient(enclave_url(cas), cas.verified.ca_certificate_pem) as client:
        attested = fetch_configuration(client, CONFIG_ID, platform)
    problem = config_problem(attested.config, attested.key)
    if problem is not None:
        raise BenchmarkError(f"the runtime's exchange got a wrong configuration: {problem}")


#: With the audit log on (signed, file sink), attestation keeps at least this share of the
#: throughput it has with the log disabled.
AUDIT_LOG_RATIO_GOAL = 0.80


def compare_audit_log(workdir: Path, platform_key: Path, args: argparse.Namespace) -> None:
    """The attest phase on two CASes, one with the default log and one with it disabled.

    Both run side by side and take the load in turns (on, off, off, on, ...), so a change in
    what else the machine does, or in its clock, falls on both alike; each figure is the sum
    over all rounds.
    """
    disabled_config = '[audit_log]\nmode = "disabled"\n'
    phase_args = argparse.Namespace(**vars(args))
    phase_args.seconds = args.seconds / 2
    turns: dict[str, list[PhaseResult]] = {"signed": [], "disabled": []}
    with (
        running_cas(workdir / "server-log-signed") as signed_cas,
        running_cas(workdir / "server-log-disabled", disabled_config) as disabled_cas,
    ):
        servers = {"signed": signed_cas, "disabled": disabled_cas}
        for cas in servers.values():
            cas.client.create_session(SESSION)
            check_runtime_exchange(cas, platform_key)
        for turn in range(args.audit_rounds):
            order = ("signed", "disabled") if turn % 2 == 0 else ("disabled", "signed")
            for mode in order:
                cas = servers[mode]
                turns[mode].append(
                    run_attest_phase(
                        targets_of(cas), cas.verified.ca_certificate_pem, platform_key, phase_args
                    )
                )
    print(
        f"\nAudit log on (signed, file, fsynced) and off, {args.audit_rounds} turns of "
        f"{phase_args.seconds:g} s each, alternating (on, off, off, on, ...):"
    )
    print("  turn   on: att/s  us CPU/answer   off: att/s  us CPU/answer   ratio  other")
    for turn, (on, off) in enumerate(zip(turns["signed"], turns["disabled"], strict=True)):
        other = max(on.other_cpu or 0.0, off.other_cpu or 0.0)
        print(
            f"  {turn + 1:>4} {on.rate:11.1f} {us(on.server_cpu_per_answer):>14} "
            f"{off.rate:11.1f} {us(off.server_cpu_per_answer):>14} "
            f"{rate_ratio(on, off):>7.0%} {share(other):>6}"
        )
    on, off = combined(turns["signed"]), combined(turns["disabled"])
    ratio = rate_ratio(on, off)
    for name, total in (("log signed:  ", on), ("log disabled:", off)):
        print(
            f"  {name} {total.rate:8.1f} attestations/s  ({total.ok} ok, {total.error_count} "
            f"errors); server CPU {us(total.server_cpu_per_answer)} us per answer, "
            f"{share(total.server_cpu)} of a core; other processes {share(total.other_cpu)} of "
            "a core"
        )
    print(
        f"  ratio {ratio:.0%} over all turns (goal >= {AUDIT_LOG_RATIO_GOAL:.0%}): "
        f"{met(ratio >= AUDIT_LOG_RATIO_GOAL)}"
    )
    cost_on, cost_off = on.server_cpu_per_answer, off.server_cpu_per_answer
    if cost_on and cost_off:
        # Throughput moves with whatever else runs on the machine; CPU per answer much less.
        print(
            f"  server CPU per answer, off / on: {cost_off / cost_on:.0%} (the throughput ratio "
            f"a CPU-bound server would reach); the log costs {us(cost_on - cost_off)} us per answer"
        )


def rate_ratio(on: PhaseResult, off: PhaseResult) -> float:
    """Throughput with the log on as a share of throughput with it off (0 without answers)."""
    return on.rate / off.rate if off.rate else 0.0


def combined(results: Sequence[PhaseResult]) -> PhaseResult:
    """Several turns of one phase as one: answers and time summed, CPU shares time-weighted."""
    total = PhaseResult(results[0].name, results[0].clients)
    total.elapsed = sum(result.elapsed for result in results)
    for result in results:
        total.latencies += result.latencies
        total.errors += result.errors

    def weighted(share_of: Callable[[PhaseResult], float | None]) -> float | None:
        shares = [share_of(result) for result in results]
        if total.elapsed <= 0 or any(value is None for value in shares):
            return None
        return (
            sum(
                value * result.elapsed
                for value, result in zip(shares, results, strict=True)
                if value is not None
            )
            / total.elapsed
        )

    total.server_cpu = weighted(lambda result: result.server_cpu)
    total.client_cpu = weighted(lambda result: result.client_cpu)
    total.other_cpu = weighted(lambda result: result.other_cpu)
    return total


# --- one and several instances on PostgreSQL -----------------------------------------------------

#: Two instances serve at least this many times the attestations of one, by server CPU per answer.
SCALING_GOAL = 1.6


@dataclass
class Setup:
    """One setup measured: its attest phase, the answers of each instance, the database's
    backends' CPU (seconds) and transactions in the phase (``None`` on SQLite)."""

    label: str
    result: PhaseResult
    instances: int
    database_cpu: float | None = None
    transactions: int | None = None

    @property
    def answered(self) -> list[int]:
        """The correct answers of each instance."""
        return [self.result.answered_by[index] for index in range(self.instances)]

    def cpu_per_answer_each(self) -> list[float | None]:
        """Server CPU seconds per correct answer of each instance."""
        result = self.result
        if len(result.server_cpu_each) != len(self.answered):
            return [result.server_cpu_per_answer] * len(self.answered)
        return [
            cpu * result.elapsed / answers if answers else None
            for cpu, answers in zip(result.server_cpu_each, self.answered, strict=True)
        ]

    def capacity(self) -> float | None:
        """Answers per second when each instance has a core of its own, from its CPU per
        answer."""
        costs = self.cpu_per_answer_each()
        if not costs or any(cost is None or cost <= 0 for cost in costs):
            return None
        return sum(1 / cost for cost in costs if cost)


def backend_cpu(database: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend serving ``database`` on this machine (from
    ``/proc``: a server elsewhere gives nothing)."""
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if command.startswith(b"postgres: ") and f" {database} ".encode() in command:
            seconds = process_cpu_seconds(int(entry.name))
            if seconds is not None:
                found[int(entry.name)] = seconds
    return found


def transactions(admin_url: str, database: str) -> int:
    """Transactions committed and rolled back in ``database`` so far."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (database,),
        ).fetchone()
    return 0 if row is None else int(row[0])


def measure_setup(
    label: str,
    targets: Sequence[Target],
    ca_certificate_pem: bytes,
    platform_key: Path,
    args: argparse.Namespace,
    database: tuple[str, str],
) -> Setup:
    """The spread attest phase on ``targets``, with the database's CPU and transactions."""
    admin_url, name = database
    cpu_before, xact_before = backend_cpu(name), transactions(admin_url, name)
    phase = run_attest_phase(targets, ca_certificate_pem, platform_key, args)
    cpu_after, xact_after = backend_cpu(name), transactions(admin_url, name)
    # A backend born during the phase counts whole; one gone before its end is missed.
    used = sum(after - cpu_before.get(pid, 0.0) for pid, after in cpu_after.items())
    if phase.ok == 0:
        raise BenchmarkError(f"{label}: no correct attestation: {dict(phase.errors)}")
    return Setup(label, phase, len(targets), used, xact_after - xact_before)


@contextlib.contextmanager
def bench_database(server: str) -> Iterator[tuple[str, str, str]]:
    """A new database on the PostgreSQL ``server``: its URL, the admin URL and its name;
    dropped on leaving."""
    name = "opencas_bench_" + secrets.token_hex(6)
    admin_url = f"{server.rstrip('/')}/postgres"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise BenchmarkError(f"cannot create a database on {server}: {exc}") from exc
    try:
        yield f"{server.rstrip('/')}/{name}", admin_url, name
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def compare_postgres(
    workdir: Path, platform_key: Path, args: argparse.Namespace, sqlite: PhaseResult
) -> list[Setup]:
    """The attest phase on one instance on PostgreSQL, then on ``args.instances`` of them."""
    setups = [Setup("SQLite, 1 instance", sqlite, 1)]
    with bench_database(args.postgres) as (url, admin_url, name):
        first = start_self_provisioned_cas(workdir / "pg-first", database_url=url)
        others: list[CasProcess] = []
        try:
            first.client.create_session(SESSION)
            check_runtime_exchange(first, platform_key)
            ca = first.verified.ca_certificate_pem
            targets = [Target(enclave_url(first), server_pid(first))]
            setups.append(
                measure_setup(
                    "PostgreSQL, 1 instance", targets, ca, platform_key, args, (admin_url, name)
                )
            )
            for number in range(2, args.instances + 1):
                other = CasProcess(workdir / f"pg-{number}", database_url=url).start()
                others.append(other)
                if other.process is None:
                    raise BenchmarkError("a joining instance is not running")
                targets.append(Target(f"https://127.0.0.1:{other.enclave_port}", other.process.pid))
            setups.append(
                measure_setup(
                    f"PostgreSQL, {args.instances} instances",
                    targets,
                    ca,
                    platform_key,
                    args,
                    (admin_url, name),
                )
            )
        finally:
            for other in others:
                other.stop()
            first.stop()
    return setups


def print_setups(setups: Sequence[Setup]) -> None:
    """One row per setup, then what one PostgreSQL round trip costs and the scaling factor."""
    print(
        f"  {'setup':<26} {'att/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
        f"{'srv CPU':>7} {'us/ans':>7} {'per instance us/ans':>20} {'DB us/ans':>9} "
        f"{'xact/ans':>8} {'other':>6}"
    )
    for setup in setups:
        result = setup.result
        each = " + ".join(us(cost) for cost in setup.cpu_per_answer_each())
        database = us(setup.database_cpu / result.ok) if setup.database_cpu is not None else "-"
        xact = f"{setup.transactions / result.ok:.2f}" if setup.transactions is not None else "-"
        print(
            f"  {setup.label:<26} {result.rate:>7,.0f} {ms(result.percentile(50)):>7} "
            f"{ms(result.percentile(99)):>7} {result.error_count:>6} "
            f"{share(result.server_cpu):>7} {us(result.server_cpu_per_answer):>7} "
            f"{each:>20} {database:>9} {xact:>8} {share(result.other_cpu):>6}"
        )
    print(
        "  us/ans: server CPU (all instances) per correct answer; per instance: each one's CPU "
        "over its own answers;\n  DB us/ans: CPU of the database's backends per answer; "
        "xact/ans: database transactions per answer;\n  other: share of a core used by every "
        "other process (the load generator excluded)"
    )


def postgres_verdicts(setups: Sequence[Setup], instances: int) -> list[str]:
    """What PostgreSQL costs per answer, and the scaling factor with its goal."""
    sqlite, one, many = setups
    lines = []
    cost_sqlite = sqlite.result.server_cpu_per_answer
    cost_one = one.result.server_cpu_per_answer
    if cost_sqlite and cost_one and one.database_cpu is not None and one.transactions:
        lines.append(
            f"PostgreSQL instead of SQLite costs {us(cost_one - cost_sqlite)} us of server CPU "
            f"per attestation ({us(cost_one)} vs {us(cost_sqlite)}), plus "
            f"{us(one.database_cpu / one.result.ok)} us in the database's backends, for "
            f"{one.transactions / one.result.ok:.2f} transactions per attestation; p50 "
            f"{ms(one.result.percentile(50))} vs {ms(sqlite.result.percentile(50))} ms"
        )
    measured = many.result.rate / one.result.rate if one.result.rate else 0.0
    lines.append(
        f"{instances} instances served {many.result.rate:,.0f} attestations/s vs "
        f"{one.result.rate:,.0f}/s for one: x{measured:.2f} as measured (every instance, "
        "the database and the load generator share this machine's cores)"
    )
    capacity_one, capacity_many = one.capacity(), many.capacity()
    if capacity_one and capacity_many:
        factor = capacity_many / capacity_one
        goal = f"goal >= {SCALING_GOAL:g} for two: {met(factor >= SCALING_GOAL)}"
        lines.append(
            f"scaling by server CPU per answer = x{factor:.2f} ({capacity_many:,.0f} vs "
            f"{capacity_one:,.0f} attestations per second with a core per instance; {goal})"
        )
    return lines + cpu_notes([setup.result for setup in setups])


def burst_limits(burst: int, retried: bool = False) -> dict[str, float]:
    """The server's connection limits for a burst from one address: the defaults (250 per
    source, 1000 per listener) unless the burst needs more, as behind a NAT, and its workloads
    do not try again when turned away (``retried``)."""
    if retried or burst <= DEFAULT_LIMITS.max_connections_per_source:
        return {}
    return {
        "max_connections": max(DEFAULT_LIMITS.max_connections, burst),
        "max_connections_per_source": max(DEFAULT_LIMITS.max_connections, burst),
    }


def allow_open_files(burst: int) -> None:
    """Raise this process's open-file limit (inherited by the server) for ``burst``
    connections on both ends, or say why it cannot be."""
    needed = 2 * burst + OPEN_FILES_SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise BenchmarkError(
            f"a burst of {burst} needs {needed} open files, but the hard limit is {hard}"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def benchmark(args: argparse.Namespace, workdir: Path) -> None:
    """Run every phase and print the figures and verdicts."""
    what = (
        f"stores of {', '.join(f'{n:,}' for n in sorted(set(args.sessions)))} sessions"
        if args.sessions
        else f"burst of {args.burst}"
    )
    print(
        machine_line(
            f"OpenCAS workload attestation benchmark: {args.clients} clients in "
            f"{args.generator_processes} generator processes, {args.seconds:g} s per phase, {what}"
        )
    )
    platform_key = workdir / "platform.key"
    platform = SimulatedPlatform.load_or_create(platform_key, MEASUREMENT)
    if args.sessions:
        run_sessions_sweep(workdir, platform_key, args)
        return
    allow_open_files(args.burst)
    limits = burst_limits(args.burst, retried=args.burst_retry is not None)
    with running_cas(workdir / "server", limits=limits) as cas:
        cas.client.create_session(SESSION)
        print(
            f"server: enclave API {enclave_url(cas)}, client API {cas.url} (pid {server_pid(cas)})"
        )
        if limits:
            print(
                f"  connection limits raised to {limits} for the burst: every workload connects "
                f"from 127.0.0.1, and by default a listener resets connections past "
                f"{DEFAULT_LIMITS.max_connections_per_source} from one source"
            )
        check_runtime_exchange(cas, platform_key)
        ca = cas.verified.ca_certificate_pem
        before = server_histogram(cas, args.timeout)
        attest = run_attest_phase(targets_of(cas), ca, platform_key, args)
        after = server_histogram(cas, args.timeout)
        if attest.ok == 0:
            raise BenchmarkError(f"no correct attestation: {dict(attest.errors)}")
        healthz = run_healthz_phase(cas, args)
        if healthz.ok == 0:
            raise BenchmarkError(f"no correct /healthz answer: {dict(healthz.errors)}")
        wrk = run_wrk(cas, args)
        burst = run_async(
            run_burst(cas, platform, args.burst, args.timeout, args.burst_retry or 0.0)
        )
    print(f"\nOver TLS to the enclave API ({args.generator_processes} generator processes):")
    print_load(healthz, attest)
    print_wrk(wrk)
    if args.two_step:
        print("  attest = nonce + evidence + attestation, one exchange of the runtime (two-step)")
    else:
        print(
            "  attest = evidence + attestation over the nonce the previous answer handed out, "
            "one exchange of the runtime (a workload's first also asks for a nonce)"
        )
    print("\nThe server's own latency during the attest phase (its /metrics):")
    print_server_latency(before, after)
    print(f"\nBurst: {args.burst} new workloads (own connection each) attest once, all at once:")
    if args.burst_retry is not None:
        print(
            f"  the server keeps its default connection limits "
            f"({DEFAULT_LIMITS.max_connections_per_source} per source); a workload turned away "
            f"tries again for up to {args.burst_retry:g} s"
        )
    print_burst(burst, attest)
    if args.compare_audit_log:
        compare_audit_log(workdir, platform_key, args)
    setups = compare_postgres(workdir, platform_key, args, attest) if args.postgres else []
    if setups:
        print(f"\nThe attest phase on SQLite and PostgreSQL ({args.clients} clients):")
        print_setups(setups)
    print("\nIn-process, one call at a time (server stopped):")
    micro = measure_in_process(
        workdir / "in-process", platform, args.micro_seconds, args.profile or 0
    )
    print_micro(micro)
    print("\nVerdicts:")
    for line in verdicts(healthz, attest, burst, micro) + dcap_verdicts(attest, micro):
        print(f"  {line}")
    if setups:
        for line in postgres_verdicts(setups, args.instances):
            print(f"  {line}")
    if micro.profile:
        print(f"\n{micro.profile}")


if __name__ == "__main__":
    arguments_given = parse_arguments(sys.argv[1:])
    sys.exit(main(lambda workdir: benchmark(arguments_given, workdir)))
