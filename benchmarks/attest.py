"""Benchmark workload attestation on the enclave API against the goals and bounds it is held to.

What it measures, all in one run on one machine:

1. **Over the network, sustained.** A self-provisioned ``cas`` (``start_self_provisioned_cas`` in
   a temporary directory, free ports of 127.0.0.1) gets one session, ``bench``, created by its
   owner: one service ``bench/app`` with a fixed ``simulated_measurement``, ``tolerate:
   [simulated]``, an ascii secret in its environment, an injection file, and an ``x509-ca`` plus
   an ``x509`` server certificate issued by it that the service references, so every attestation
   also issues a certificate for the workload's key. ``--clients`` simulated workloads, each an
   ``httpx.AsyncClient`` with exactly one pooled TLS connection to the enclave port (certificate
   checks off, TLS on) and one P-256 key pair made up front, then repeat for ``--seconds``:
   ``POST /v1/enclave/nonce``, fresh simulated evidence over ``workload_report_data(config_id,
   nonce, public_key)``, ``POST /v1/enclave/attest``. Latency is that whole pair, evidence included.
   Every 50th answer is opened (``open_config``, the runtime's strict parser) and checked: the
   secret is in the environment and the per-workload certificate certifies the workload's key.
   Anything but a 200 (and, for a sample, an answer that opens and checks) is an error. Then
   ``GET /healthz`` on the same enclave listener, same clients, same duration, as the bound.
2. **A burst.** ``--burst`` new workloads (own connection, own key each) attest once, all at
   the same moment; every answer is opened and checked.
3. **In-process, one call at a time**, after the server stopped: ``verify_evidence`` on real
   simulated evidence, raw Ed25519 verifications (its signature check) for comparison, and
   ``attest_workload`` itself on a CAS opened with ``open_cas`` (the same session), which bounds
   what one server process can do on one core. ``--profile N`` adds a cProfile of those calls.

It prints the figures, then one verdict per goal of the workload work for a 2-core machine:
attestation throughput >= 30% of ``/healthz`` throughput, p99 < 50 ms, no errors, the whole
burst succeeds ("met" / "NOT met"). The exit code is 0 whatever the verdicts say, 1 when the
benchmark cannot measure (the server does not start, a phase gets no correct answer at all) and
130 when interrupted. The server is stopped at the end, also on Ctrl-C or SIGTERM; each phase is
bounded by ``--seconds`` and ``--max-requests``; all traffic goes to 127.0.0.1.

Run it from the repository root::

    .venv/bin/python benchmarks/attest.py [--clients 32] [--seconds 20]

The load generator shares the machine with the server and does real work per attestation (an
Ed25519 signature, canonical JSON, two TLS requests): when it uses most of a core (``gen CPU``),
the rates are lower bounds for the server and its latencies include the generator's own queueing;
the server's CPU per answer and its own latency histogram (from its ``/metrics``) do not.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import io
import math
import os
import pstats
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from cas_attest import (
    ATTEST_RATIO_GOAL,
    DISTURBING_CPU,
    SATURATED_CPU,
    BenchmarkError,
    Interrupted,
    PhaseResult,
    PhaseState,
    healthz_target,
    machine_busy_seconds,
    ms,
    own_cpu_seconds,
    positive,
    print_load,
    process_cpu_seconds,
    raise_interrupted,
    rate,
    raw_ed25519,
    run_async,
    run_phase,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from opencas.attestation.evidence import Evidence
from opencas.attestation.simulated import create_simulated_evidence
from opencas.attestation.verify import verify_evidence
from opencas.attestation.workload_binding import ConfigId, workload_report_data
from opencas.client.enclave import WorkloadConfig, open_config
from opencas.config.availability import load_availability_config
from opencas.errors import CasError
from opencas.policy.caller import Caller
from opencas.service.cas import Cas, open_cas
from opencas.service.sessions import create_session
from opencas.service.workloads import NonceStore, WorkloadRequest, attest_workload
from opencas.testing import CasStartError, write_config
from opencas.testing_plugin import SelfProvisionedCas, start_self_provisioned_cas

#: The p99 goal: 99% of workloads wait less than this for nonce plus attest.
P99_GOAL = 0.050
#: Open and check every this many answers of the sustained phase (all of the burst's).
SAMPLE_EVERY = 50
CONFIG_ID = ConfigId("bench", "app")
MEASUREMENT = "5e" * 32
#: The verification time of the in-process figures (simulated evidence does not depend on it).
AT = datetime.now(UTC)
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
#: Routes of the enclave API whose server-side latency histogram is reported.
ENCLAVE_ROUTES = ("/v1/enclave/nonce", "/v1/enclave/attest")


# --- the simulated workload ----------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """A simulated workload: its HPKE key pair (P-256, so it can be certified) made up front."""

    key: ec.EllipticCurvePrivateKey
    public_key: str
    """Base64 DER SubjectPublicKeyInfo, as sent."""

    @classmethod
    def generate(cls) -> Workload:
        """A workload with a fresh P-256 key pair."""
        key = ec.generate_private_key(ec.SECP256R1())
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(key, base64.b64encode(der).decode("ascii"))

    def request_body(self, platform_key: Ed25519PrivateKey, nonce: str) -> dict[str, Any]:
        """The body of ``POST /v1/enclave/attest`` with fresh evidence binding ``nonce``."""
        evidence = create_simulated_evidence(
            platform_key, MEASUREMENT, workload_report_data(CONFIG_ID, nonce, self.public_key)
        )
        return {
            "config_id": str(CONFIG_ID),
            "nonce": nonce,
            "public_key": self.public_key,
            "evidence": evidence.to_json(),
        }

    def check_answer(self, sealed: str, nonce: str) -> str | None:
        """Open a sealed answer and check what matters; ``None`` or what is wrong."""
        try:
            config = open_config(self.key, sealed, CONFIG_ID, nonce)
        except CasError as exc:
            return f"does not open: {exc}"
        return _config_problem(config, self.key.public_key())


def _config_problem(config: WorkloadConfig, key: ec.EllipticCurvePublicKey) -> str | None:
    if not config.environment.get(SECRET_VARIABLE):
        return "the secret is missing from the environment"
    if [file.path for file in config.injection_files] != ["/etc/bench/server.crt"]:
        return "the injection file is missing"
    issued = config.certificates.get("server")
    if issued is None:
        return "no per-workload certificate"
    certificate = x509.load_pem_x509_certificate(issued.certificate.encode("ascii"))
    if certificate.public_key() != key:
        return "the per-workload certificate does not certify the workload's key"
    return None


@dataclass(frozen=True)
class Exchange:
    """One nonce + attest pair as the workload saw it."""

    latency: float
    problem: str | None
    nonce: str = ""
    sealed: str = ""


async def attest_once(
    client: httpx.AsyncClient, workload: Workload, platform_key: Ed25519PrivateKey
) -> Exchange:
    """Ask for a nonce, make evidence, attest; the sealed answer is returned unopened."""
    started = time.perf_counter()
    try:
        answer = await client.post("/v1/enclave/nonce")
        if answer.status_code != 200:
            return Exchange(time.perf_counter() - started, f"nonce: HTTP {answer.status_code}")
        nonce = _member(answer, "nonce")
        body = workload.request_body(platform_key, nonce)
        answer = await client.post("/v1/enclave/attest", json=body)
        latency = time.perf_counter() - started
        if answer.status_code == 403:
            return Exchange(latency, f"attest: HTTP 403 {_member(answer, 'check')}")
        if answer.status_code != 200:
            return Exchange(latency, f"attest: HTTP {answer.status_code}")
        return Exchange(latency, None, nonce, _member(answer, "sealed"))
    except httpx.HTTPError as exc:
        return Exchange(time.perf_counter() - started, type(exc).__name__)
    except ValueError as exc:
        return Exchange(time.perf_counter() - started, f"malformed answer: {exc}")


def _member(answer: httpx.Response, name: str) -> str:
    """The string member ``name`` of a JSON object answer; ``ValueError`` otherwise."""
    body = answer.json()
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, str):
        raise ValueError(f"{answer.request.url.path} answered without a string '{name}'")
    return value


def _client(url: str, timeout: float) -> httpx.AsyncClient:
    # Throughput, not trust, is measured here: TLS stays on, certificate checks are off.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return httpx.AsyncClient(base_url=url, verify=False, timeout=timeout, limits=limits)


# --- sustained load ------------------------------------------------------------------------------


@dataclass
class CpuMark:
    """CPU counters at the start of a phase (seconds; ``None`` without ``/proc``)."""

    server: float | None
    own: float
    machine: float | None

    @classmethod
    def now(cls, server_pid: int) -> CpuMark:
        """The counters now."""
        return cls(process_cpu_seconds(server_pid), own_cpu_seconds(), machine_busy_seconds())

    def charge(self, result: PhaseResult, server_pid: int) -> None:
        """Fill in the result's CPU shares since this mark (as ``cas_attest`` does)."""
        if result.elapsed <= 0:
            return
        later = CpuMark.now(server_pid)
        result.client_cpu = (later.own - self.own) / result.elapsed
        if self.server is None or later.server is None:
            return
        result.server_cpu = (later.server - self.server) / result.elapsed
        if self.machine is not None and later.machine is not None:
            machine = (later.machine - self.machine) / result.elapsed
            result.other_cpu = max(0.0, machine - result.server_cpu - result.client_cpu)


@dataclass
class AttestPhase:
    """The sustained attestation phase: the load figures and the sampled answers."""

    result: PhaseResult
    sampled: int = 0


async def _attest_worker(
    client: httpx.AsyncClient,
    workload: Workload,
    platform_key: Ed25519PrivateKey,
    state: PhaseState,
    phase: AttestPhase,
) -> None:
    # The first exchange opens the connection (TCP and TLS handshakes); it is not measured but
    # its answer is checked.
    warm = await attest_once(client, workload, platform_key)
    problem = warm.problem or workload.check_answer(warm.sealed, warm.nonce)
    if problem is not None:
        state.result.errors[f"warm-up: {problem}"] += 1
    state.warmed += 1
    if state.warmed == state.result.clients:
        state.ready.set()
    await state.go.wait()
    while state.running():
        state.issued += 1
        sample = state.issued % SAMPLE_EVERY == 0
        exchange = await attest_once(client, workload, platform_key)
        problem = exchange.problem
        if problem is None and sample:
            phase.sampled += 1
            problem = workload.check_answer(exchange.sealed, exchange.nonce)
        if problem is None:
            state.result.latencies.append(exchange.latency)
        else:
            state.result.errors[problem] += 1


async def run_attest_phase(
    url: str,
    server_pid: int,
    platform_key: Ed25519PrivateKey,
    *,
    clients: int,
    seconds: float,
    max_requests: int,
    timeout: float,
) -> AttestPhase:
    """Drive ``clients`` workloads through nonce + attest for ``seconds``."""
    phase = AttestPhase(PhaseResult("attest", clients))
    state = PhaseState(phase.result, max_requests)
    workloads = [Workload.generate() for _ in range(clients)]
    async with contextlib.AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(_client(url, timeout)) for _ in workloads]
        tasks = [
            asyncio.create_task(_attest_worker(session, workload, platform_key, state, phase))
            for session, workload in zip(sessions, workloads, strict=True)
        ]
        try:
            try:
                await asyncio.wait_for(state.ready.wait(), 2 * timeout + 5.0)
            except TimeoutError:
                raise BenchmarkError("attest: the workloads did not connect in time") from None
            mark = CpuMark.now(server_pid)
            started = time.perf_counter()
            state.deadline = started + seconds
            state.go.set()
            await asyncio.gather(*tasks)
            phase.result.elapsed = time.perf_counter() - started
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    mark.charge(phase.result, server_pid)
    return phase


# --- the burst -----------------------------------------------------------------------------------


@dataclass
class BurstResult:
    """``size`` new workloads attesting once, all at once."""

    size: int
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def succeeded(self) -> int:
        """Workloads whose answer opened and checked."""
        return len(self.latencies)


async def run_burst(
    url: str, platform_key: Ed25519PrivateKey, size: int, timeout: float
) -> BurstResult:
    """``size`` workloads, each with its own new connection and key, attest at the same moment."""
    result = BurstResult(size)
    workloads = [Workload.generate() for _ in range(size)]
    go = asyncio.Event()

    async def one(client: httpx.AsyncClient, workload: Workload) -> Exchange:
        await go.wait()
        return await attest_once(client, workload, platform_key)

    async with contextlib.AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(_client(url, timeout)) for _ in workloads]
        tasks = [
            asyncio.create_task(one(session, workload))
            for session, workload in zip(sessions, workloads, strict=True)
        ]
        started = time.perf_counter()
        go.set()
        try:
            exchanges = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        result.elapsed = time.perf_counter() - started
    for workload, exchange in zip(workloads, exchanges, strict=True):
        problem = exchange.problem or workload.check_answer(exchange.sealed, exchange.nonce)
        if problem is None:
            result.latencies.append(exchange.latency)
        else:
            result.errors[problem] += 1
    return result


# --- the server's own latency histogram ----------------------------------------------------------

#: Cumulative request counts by route and bucket upper bound (seconds; ``inf`` last).
Histogram = dict[str, dict[float, float]]


def server_histogram(url: str, timeout: float) -> Histogram | None:
    """The enclave routes' latency histogram from the client API's ``/metrics``, or ``None``."""
    try:
        with httpx.Client(base_url=url, verify=False, timeout=timeout) as client:
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
    profile: str = ""


def _verify_rate(platform_key: Ed25519PrivateKey, seconds: float) -> float:
    workload = Workload.generate()
    evidence = Evidence.from_json(workload.request_body(platform_key, "ab" * 32)["evidence"])
    if verify_evidence(evidence, at=AT).measurement != MEASUREMENT:
        raise BenchmarkError("the simulated evidence does not verify to its measurement")
    return rate(lambda: verify_evidence(evidence, at=AT), seconds)


def _prepared_requests(
    nonces: NonceStore, platform_key: Ed25519PrivateKey, count: int
) -> list[WorkloadRequest]:
    workload = Workload.generate()
    requests = []
    for _ in range(count):
        body = workload.request_body(platform_key, nonces.issue())
        requests.append(
            WorkloadRequest(CONFIG_ID, body["nonce"], body["public_key"], body["evidence"])
        )
    return requests


def _attest_workload_rates(
    cas: Cas, platform_key: Ed25519PrivateKey, seconds: float
) -> tuple[float, float]:
    """``attest_workload`` calls per second, overall and in the fastest batch of 32.

    Each call has its own nonce and evidence, made beforehand and not timed. The fastest batch
    is the least disturbed by other processes: the bound for one server process.
    """
    nonces = NonceStore()
    for request in _prepared_requests(nonces, platform_key, 4):  # warm caches, lazy imports
        attest_workload(cas, nonces, request)
    count, timed, best = 0, 0.0, math.inf
    while timed < seconds:
        batch = _prepared_requests(nonces, platform_key, 32)
        started = time.perf_counter()
        for request in batch:
            attest_workload(cas, nonces, request)
        elapsed = time.perf_counter() - started
        timed += elapsed
        best = min(best, elapsed / len(batch))
        count += len(batch)
    return count / timed, 1 / best


def profile_attest_workload(
    cas: Cas, platform_key: Ed25519PrivateKey, seconds: float, lines: int
) -> str:
    """The ``lines`` top functions of a cProfile of ``attest_workload`` calls, two orders."""
    nonces = NonceStore()
    profiler = cProfile.Profile()
    count, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        batch = _prepared_requests(nonces, platform_key, 32)
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
    directory: Path, platform_key: Ed25519PrivateKey, seconds: float, profile_lines: int
) -> MicroResult:
    """The in-process rates; a CAS with the benchmark's session is opened under ``directory``."""
    verify = _verify_rate(platform_key, seconds)
    _, ed25519_verify = raw_ed25519(seconds)
    directory.mkdir(parents=True, exist_ok=True)
    # Ports are never bound: the in-process CAS only needs a valid config.
    cas = open_cas(load_availability_config(write_config(directory, 1, 2)))
    try:
        create_session(cas, SESSION, Caller("be" * 32))
        attest, attest_best = _attest_workload_rates(cas, platform_key, seconds)
        profile = ""
        if profile_lines > 0:
            profile = profile_attest_workload(cas, platform_key, seconds, profile_lines)
    finally:
        cas.close()
    return MicroResult(verify, ed25519_verify, attest, attest_best, profile)


# --- reporting -----------------------------------------------------------------------------------


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def print_burst(burst: BurstResult) -> None:
    """The burst's figures."""
    ordered = sorted(burst.latencies)
    p50 = ordered[len(ordered) // 2] if ordered else math.nan
    slowest = ordered[-1] if ordered else math.nan
    print(
        f"  {burst.succeeded} of {burst.size} succeeded in {burst.elapsed:.2f} s "
        f"(latency incl. TCP + TLS handshake: p50 {ms(p50)} ms, max {ms(slowest)} ms)"
    )
    for kind, count in burst.errors.most_common(5):
        print(f"    {count:>6} x {kind}")


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
    for label, value in rows:
        print(f"  {label:<30} {value:>10,.0f}/s  {1e6 / value:>8.1f} us")


def verdicts(
    healthz: PhaseResult, attest: AttestPhase, burst: BurstResult, micro: MicroResult
) -> list[str]:
    """One line per goal or bound."""
    load = attest.result
    ratio = load.rate / healthz.rate if healthz.rate > 0 else 0.0
    p99 = load.percentile(99)
    errors = load.error_count
    lines = [
        f"attestation throughput = {ratio:.0%} of enclave /healthz ({load.rate:,.0f} vs "
        f"{healthz.rate:,.0f}/s at {load.clients} clients; goal >= {ATTEST_RATIO_GOAL:.0%}: "
        f"{_met(ratio >= ATTEST_RATIO_GOAL)})",
        f"attestation p99 = {ms(p99)} ms for nonce + attest (goal < {P99_GOAL * 1000:.0f} ms: "
        f"{_met(p99 < P99_GOAL)})",
        f"errors = {errors} of {load.ok + errors} attestations, {attest.sampled} answers opened "
        f"and checked (goal 0: {_met(errors == 0)})",
        f"burst: {burst.succeeded} of {burst.size} concurrent attestations succeeded (goal all: "
        f"{_met(burst.succeeded == burst.size)})",
    ]
    attest_cost, healthz_cost = load.server_cpu_per_answer, healthz.server_cpu_per_answer
    if attest_cost and healthz_cost:
        capacity = healthz_cost / attest_cost
        lines.append(
            f"attestation server capacity = {capacity:.0%} of /healthz by server CPU per answer "
            f"({attest_cost * 1e6:,.0f} us per nonce + attest vs {healthz_cost * 1e6:,.0f} us; "
            f"goal >= {ATTEST_RATIO_GOAL:.0%}: {_met(capacity >= ATTEST_RATIO_GOAL)}; does not "
            "depend on the load generator)"
        )
    inside = 1 / micro.attest_workload_best
    if attest_cost:
        share = f"{inside / attest_cost:.0%}" if attest_cost > inside else "all (disturbed)"
        lines.append(
            f"server CPU per attestation = {attest_cost * 1e6:,.0f} us, of which attest_workload "
            f"in-process takes {inside * 1e6:,.0f} us ({share}); the rest is outside it: HTTP, "
            "TLS, JSON, the nonce request"
        )
    lines += [
        f"attestation over TLS = {load.rate:,.0f}/s vs {micro.attest_workload_best:,.0f}/s for "
        "attest_workload in-process (bound for one server process, one core)",
        f"verify_evidence = {micro.verify_evidence:,.0f}/s vs {micro.ed25519_verify:,.0f} raw "
        f"Ed25519 verifies/s (bound; {micro.verify_evidence / micro.ed25519_verify:.0%} of it)",
    ]
    for result in (healthz, load):
        if result.other_cpu is not None and result.other_cpu >= DISTURBING_CPU:
            lines.append(
                f"note: other processes (or the kernel) used {result.other_cpu:.0%} of a core "
                f"during {result.name}: its rate and latency are disturbed"
            )
        if result.client_cpu is not None and result.client_cpu >= SATURATED_CPU:
            lines.append(
                f"note: the load generator used {result.client_cpu:.0%} of a core during "
                f"{result.name}: that rate is a lower bound for the server and its latencies "
                "include the generator's own queueing (see the server's histogram)"
            )
    return lines


# --- main ----------------------------------------------------------------------------------------


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description="Benchmark workload attestation (enclave API nonce + attest) of a local CAS "
        "against GET /healthz and in-process bounds."
    )
    parser.add_argument(
        "--clients", type=positive(int, 1024), default=32, help="concurrent workloads (32)"
    )
    parser.add_argument(
        "--seconds", type=positive(float, 600), default=20.0, help="seconds per phase (20)"
    )
    parser.add_argument(
        "--burst",
        type=positive(int, 2000),
        default=200,
        help="workloads that attest once, all at once (200)",
    )
    parser.add_argument(
        "--max-requests",
        type=positive(int, 10_000_000),
        default=1_000_000,
        help="at most this many measured requests (or attestations) per phase (1000000)",
    )
    parser.add_argument(
        "--micro-seconds",
        type=positive(float, 60),
        default=2.0,
        help="seconds per in-process figure (2)",
    )
    parser.add_argument(
        "--timeout", type=positive(float, 120), default=30.0, help="per-request timeout (30)"
    )
    parser.add_argument(
        "--profile",
        type=positive(int, 1000),
        default=None,
        metavar="N",
        help="also print the N top functions of a cProfile of attest_workload in-process",
    )
    return parser.parse_args(argv)


@contextlib.contextmanager
def running_cas(directory: Path) -> Iterator[SelfProvisionedCas]:
    """A self-provisioned ``cas`` with the benchmark's session; stopped on leaving."""
    cas = start_self_provisioned_cas(directory)
    try:
        cas.client.create_session(SESSION)
        yield cas
    finally:
        cas.stop()


def benchmark(args: argparse.Namespace, workdir: Path) -> None:
    """Run every phase and print the figures and verdicts."""
    print(
        f"OpenCAS workload attestation benchmark: {args.clients} clients, {args.seconds:g} s per "
        f"phase, burst of {args.burst}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"load average {os.getloadavg()[0]:.2f} before the start"
    )
    platform_key = Ed25519PrivateKey.generate()
    with running_cas(workdir / "server") as cas:
        process = cas.process.process
        if process is None:
            raise BenchmarkError("the cas process is not running")
        enclave_url = f"https://127.0.0.1:{cas.process.enclave_port}"
        print(f"server: enclave API {enclave_url}, client API {cas.url} (pid {process.pid})")
        before = server_histogram(cas.url, args.timeout)
        attest = run_async(
            run_attest_phase(
                enclave_url,
                process.pid,
                platform_key,
                clients=args.clients,
                seconds=args.seconds,
                max_requests=args.max_requests,
                timeout=args.timeout,
            )
        )
        after = server_histogram(cas.url, args.timeout)
        if attest.result.ok == 0:
            raise BenchmarkError(f"no correct attestation: {dict(attest.result.errors)}")
        healthz = run_async(
            run_phase(
                "healthz",
                enclave_url,
                process.pid,
                healthz_target,
                clients=args.clients,
                seconds=args.seconds,
                max_requests=args.max_requests,
                timeout=args.timeout,
            )
        )
        if healthz.ok == 0:
            raise BenchmarkError(f"no correct /healthz answer: {dict(healthz.errors)}")
        burst = run_async(run_burst(enclave_url, platform_key, args.burst, args.timeout))
    print(f"\nOver TLS to the enclave API (load average now {os.getloadavg()[0]:.2f}):")
    print_load(healthz, attest.result)
    print("  attest = POST /v1/enclave/nonce + evidence + POST /v1/enclave/attest (one answer)")
    print("\nThe server's own latency during the attest phase (its /metrics):")
    print_server_latency(before, after)
    print(f"\nBurst: {args.burst} new workloads (own connection each) attest once, all at once:")
    print_burst(burst)
    print("\nIn-process, one call at a time (server stopped):")
    micro = measure_in_process(
        workdir / "in-process", platform_key, args.micro_seconds, args.profile or 0
    )
    print_micro(micro)
    print("\nVerdicts:")
    for line in verdicts(healthz, attest, burst, micro):
        print(f"  {line}")
    if micro.profile:
        print(f"\n{micro.profile}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 after measuring, 1 when it could not measure, 130 on interrupt."""
    args = parse_arguments(argv)
    signal.signal(signal.SIGTERM, raise_interrupted)
    with tempfile.TemporaryDirectory(prefix="opencas-bench-") as temporary:
        try:
            benchmark(args, Path(temporary))
        except (Interrupted, KeyboardInterrupt):
            print("\ninterrupted; the server was stopped", file=sys.stderr)
            return 130
        except (BenchmarkError, CasStartError, CasError) as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
