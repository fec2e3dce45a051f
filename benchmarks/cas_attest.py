"""Benchmark the CAS attestation endpoint against the bounds it is measured by.

What it measures, all in one run on one machine:

1. **Over the network.** A real ``cas`` (started with :class:`opencas.testing.CasProcess` in a
   temporary directory, on free ports of 127.0.0.1) is driven by ``--clients`` concurrent clients,
   each an ``httpx.AsyncClient`` with exactly one pooled TLS connection (certificate checks off,
   TLS on), first against ``GET /healthz`` and then against ``GET /v1/attest?nonce=<fresh hex>``,
   each for ``--seconds`` seconds. For each it prints requests/s, p50/p95/p99 latency, errors,
   how much CPU the server and this load generator used and the server's CPU time per answer;
   then the attest/healthz ratio, both of throughput and of server CPU per answer.
2. **In-process, one call at a time**, after the server stopped. Raw Ed25519 signatures/s and
   verifications/s and ECDSA P-384 verifications/s (``cryptography``); ``verify_cas_attestation``
   per second on one real response fetched from that server (with ``peer_certificate_der=None``);
   on a second CAS opened in-process with ``open_cas``: the cost of ``Cas.attest`` and of its
   parts (state read, ``Cas.report``, report data, evidence), and of the whole client-API ASGI
   application answering ``/healthz`` and ``/v1/attest`` without TLS or sockets (its synchronous
   endpoints still hop to the framework's worker threads).

It then prints one verdict per figure next to its goal or bound, e.g. ``attest throughput = 41%
of healthz (goal >= 30%)``. The verdicts are information: the exit code is 0 whatever they say,
1 when the benchmark itself fails (the server does not start, a phase gets no answer at all, a
real response does not verify) and 130 when interrupted. The server is stopped at the end, also
on Ctrl-C. Each phase is bounded by ``--seconds`` and ``--max-requests``.

Run it from the repository root::

    .venv/bin/python benchmarks/cas_attest.py [--clients 32] [--seconds 10]

The load generator shares the machine with the server and costs about as much CPU per request
as the server does: when it uses most of a core (the ``gen CPU`` column), the throughput figures
are a lower bound for the server, and the ratio of server CPU per answer is the figure to trust.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar, cast

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opencas.api.app import create_client_api
from opencas.attestation.report import CasExpectations, report_data, verify_cas_attestation
from opencas.client.cas_client import new_nonce
from opencas.config.availability import load_availability_config
from opencas.service.cas import Cas, open_cas
from opencas.testing import CasProcess, CasStartError, write_config

#: The attest endpoint should serve at least this share of the healthz rate: what a report costs
#: (a store read, canonical JSON, one Ed25519 signature) must not dominate the HTTP stack.
ATTEST_RATIO_GOAL = 0.30
#: A CPU share (of one core) above which a process is taken to be the bottleneck.
SATURATED_CPU = 0.90
#: A CPU share (of one core) used by other processes above which the load figures are disturbed.
DISTURBING_CPU = 0.10
#: The length of the messages signed and verified for the raw signature rates: about the size of
#: the simulated evidence body that the CAS signs.
RAW_MESSAGE_BYTES = 300


T = TypeVar("T")


class BenchmarkError(Exception):
    """The benchmark cannot produce its figures (not a verdict about them)."""


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived: stop measuring, stop the server, exit."""


def raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted


async def _until_terminated(work: Coroutine[Any, Any, T]) -> T:
    # A signal handler that raised inside a running task could unwind it through httpx's and
    # anyio's cancel scopes out of order; cancelling the task unwinds everything cleanly.
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        if task is not None:
            task.cancel()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await work
    except asyncio.CancelledError:
        if terminated:
            raise Interrupted from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, raise_interrupted)


def run_async(work: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(work)``; SIGTERM (like SIGINT) cancels it and raises :class:`Interrupted`."""
    try:
        return asyncio.run(_until_terminated(work))
    except KeyboardInterrupt:
        raise Interrupted from None


# --- load over the network -----------------------------------------------------------------------

#: A request to send: its path with query, and bytes its 200 answer must contain.
Target = tuple[str, bytes]


def healthz_target() -> Target:
    """``GET /healthz``; the answer says ``"ok"``."""
    return "/healthz", b'"ok"'


def attest_target() -> Target:
    """``GET /v1/attest`` with a fresh 256-bit nonce; the answer must echo that nonce."""
    nonce = new_nonce()
    return f"/v1/attest?nonce={nonce}", nonce.encode("ascii")


@dataclass
class PhaseResult:
    """What one load phase observed."""

    name: str
    clients: int
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    server_cpu: float | None = None
    client_cpu: float | None = None
    other_cpu: float | None = None

    @property
    def ok(self) -> int:
        """Requests answered correctly within the phase."""
        return len(self.latencies)

    @property
    def error_count(self) -> int:
        """Requests that failed, timed out, or got a wrong answer."""
        return sum(self.errors.values())

    @property
    def rate(self) -> float:
        """Correct answers per second."""
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def server_cpu_per_answer(self) -> float | None:
        """Server CPU seconds spent per correct answer: its cost, whoever was the bottleneck."""
        if self.server_cpu is None or self.ok == 0:
            return None
        return self.server_cpu * self.elapsed / self.ok

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile latency in seconds (nearest rank); NaN without answers."""
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[rank - 1]


@dataclass
class PhaseState:
    """Shared by the workers of one phase (one event loop, so no locks)."""

    result: PhaseResult
    max_requests: int
    warmed: int = 0
    issued: int = 0
    deadline: float = math.inf
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    go: asyncio.Event = field(default_factory=asyncio.Event)

    def running(self) -> bool:
        return self.issued < self.max_requests and time.perf_counter() < self.deadline


async def _send(client: httpx.AsyncClient, target: Target) -> tuple[float, str | None]:
    """Send one request; its latency and ``None``, or the latency and what went wrong."""
    path, expected = target
    started = time.perf_counter()
    try:
        response = await client.get(path)
    except httpx.HTTPError as exc:
        return time.perf_counter() - started, type(exc).__name__
    latency = time.perf_counter() - started
    if response.status_code != 200:
        return latency, f"HTTP {response.status_code}"
    if expected not in response.content:
        return latency, "wrong answer"
    return latency, None


async def _worker(
    client: httpx.AsyncClient, make_target: Callable[[], Target], state: PhaseState
) -> None:
    # The first request opens the connection (TCP and TLS handshakes); it is not measured.
    _, problem = await _send(client, make_target())
    if problem is not None:
        state.result.errors[f"warm-up: {problem}"] += 1
    state.warmed += 1
    if state.warmed == state.result.clients:
        state.ready.set()
    await state.go.wait()
    while state.running():
        state.issued += 1
        latency, problem = await _send(client, make_target())
        if problem is None:
            state.result.latencies.append(latency)
        else:
            state.result.errors[problem] += 1


def process_cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of process ``pid`` (all threads), or None without ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def machine_busy_seconds() -> float | None:
    """CPU time all processes on this machine used (not idle, not waiting for I/O), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already counted in user time.
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


async def run_phase(
    name: str,
    url: str,
    server_pid: int,
    make_target: Callable[[], Target],
    *,
    clients: int,
    seconds: float,
    max_requests: int,
    timeout: float,
) -> PhaseResult:
    """Drive ``clients`` connections with requests from ``make_target`` for ``seconds``."""
    result = PhaseResult(name, clients)
    state = PhaseState(result, max_requests)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        sessions = [
            await stack.enter_async_context(
                # Throughput, not trust, is measured here: TLS stays on, checks are off.
                httpx.AsyncClient(base_url=url, verify=False, timeout=timeout, limits=limits)
            )
            for _ in range(clients)
        ]
        tasks = [asyncio.create_task(_worker(s, make_target, state)) for s in sessions]
        try:
            try:
                await asyncio.wait_for(state.ready.wait(), timeout + 5.0)
            except TimeoutError:
                raise BenchmarkError(f"{name}: the clients did not connect in time") from None
            server_cpu = process_cpu_seconds(server_pid)
            client_cpu = own_cpu_seconds()
            machine_cpu = machine_busy_seconds()
            started = time.perf_counter()
            state.deadline = started + seconds
            state.go.set()
            await asyncio.gather(*tasks)
            result.elapsed = time.perf_counter() - started
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    server_after = process_cpu_seconds(server_pid)
    machine_after = machine_busy_seconds()
    if result.elapsed <= 0:
        return result
    result.client_cpu = (own_cpu_seconds() - client_cpu) / result.elapsed
    if server_cpu is not None and server_after is not None:
        result.server_cpu = (server_after - server_cpu) / result.elapsed
        if machine_cpu is not None and machine_after is not None:
            machine = (machine_after - machine_cpu) / result.elapsed
            result.other_cpu = max(0.0, machine - result.server_cpu - result.client_cpu)
    return result


# --- in-process measurements ---------------------------------------------------------------------


def rate(operation: Callable[[], object], seconds: float) -> float:
    """Calls of ``operation`` per second, run back to back in this thread for about ``seconds``."""
    operation()  # warm caches and lazy imports outside the measurement
    count = 0
    batch = 1
    started = time.perf_counter()
    while True:
        for _ in range(batch):
            operation()
        count += batch
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return count / elapsed
        batch = min(batch * 2, 4096)


async def _async_rate(operation: Callable[[], Awaitable[object]], seconds: float) -> float:
    await operation()
    count = 0
    started = time.perf_counter()
    while True:
        for _ in range(16):
            await operation()
        count += 16
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return count / elapsed


def _asgi_get(app: Any, path: str, query: str = "") -> Callable[[], Awaitable[int]]:
    """A call of the ASGI ``app`` for ``GET path?query`` as uvicorn would make it; its status."""

    async def call() -> int:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "https",
            "path": path,
            "raw_path": path.encode("ascii"),
            "query_string": query.encode("ascii"),
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1"), (b"accept", b"*/*")],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8081),
        }
        status = 0

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])

        await app(scope, receive, send)
        if status != 200:
            raise BenchmarkError(f"in-process GET {path} answered {status}")
        return status

    return call


@dataclass
class MicroResult:
    """In-process rates, per second, one thread."""

    ed25519_sign: float
    ed25519_verify: float
    p384_verify: float
    verify_attestation: float
    cas_attest: float
    state_read: float
    cas_report: float
    report_data: float
    evidence: float
    app_healthz: float
    app_attest: float


def raw_ed25519(seconds: float) -> tuple[float, float]:
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    message = os.urandom(RAW_MESSAGE_BYTES)
    signature = key.sign(message)
    return rate(lambda: key.sign(message), seconds), rate(
        lambda: public.verify(signature, message), seconds
    )


def _raw_p384_verify(seconds: float) -> float:
    # The CAS CA key is ECDSA P-384 and signs the TLS certificate: a client checks one such
    # signature per attestation, on top of the Ed25519 evidence signature.
    key = ec.generate_private_key(ec.SECP384R1())
    public = key.public_key()
    message = os.urandom(RAW_MESSAGE_BYTES)
    algorithm = ec.ECDSA(hashes.SHA384())
    signature = key.sign(message, algorithm)
    return rate(lambda: public.verify(signature, message, algorithm), seconds)


def _expectations(nonce: str) -> CasExpectations:
    """What a client accepts from the benchmark's CAS: simulated (debug) and never provisioned."""
    accepted = {"allow_debug": True, "allow_unprovisioned": True}
    known = {option.name for option in dataclasses.fields(CasExpectations)}
    # Builds without the unprovisioned check have no option for it; passing it would fail.
    make: Any = CasExpectations
    return cast(
        CasExpectations,
        make(nonce=nonce, **{name: value for name, value in accepted.items() if name in known}),
    )


def _verification_rate(response: object, nonce: str, seconds: float) -> float:
    expectations = _expectations(nonce)
    now = datetime.now(UTC)
    try:
        verify_cas_attestation(response, expectations, None, at=now)
    except Exception as exc:
        raise BenchmarkError(f"the server's attestation response does not verify: {exc}") from exc
    return rate(lambda: verify_cas_attestation(response, expectations, None, at=now), seconds)


def _cas_rates(cas: Cas, seconds: float) -> dict[str, float]:
    nonce = new_nonce()
    report = cas.report(nonce)
    data = report_data(report)
    app = create_client_api(cas)
    attest_query = f"nonce={nonce}"

    async def app_rates() -> tuple[float, float]:
        healthz = await _async_rate(_asgi_get(app, "/healthz"), seconds)
        attest = await _async_rate(_asgi_get(app, "/v1/attest", attest_query), seconds)
        return healthz, attest

    app_healthz, app_attest = run_async(app_rates())
    return {
        "cas_attest": rate(lambda: cas.attest(nonce), seconds),
        "state_read": rate(cas.state, seconds),
        "cas_report": rate(lambda: cas.report(nonce), seconds),
        "report_data": rate(lambda: report_data(report), seconds),
        "evidence": rate(lambda: cas.platform.evidence(data), seconds),
        "app_healthz": app_healthz,
        "app_attest": app_attest,
    }


def measure_in_process(
    directory: Path, response: object, nonce: str, seconds: float
) -> MicroResult:
    """The in-process rates; a second CAS is created under ``directory`` for the CAS figures."""
    sign, verify = raw_ed25519(seconds)
    p384_verify = _raw_p384_verify(seconds)
    verification = _verification_rate(response, nonce, seconds)
    # Ports are never bound: the in-process CAS only needs a valid config.
    directory.mkdir(parents=True, exist_ok=True)
    config = load_availability_config(write_config(directory, 1, 2))
    cas = open_cas(config)
    try:
        parts = _cas_rates(cas, seconds)
    finally:
        cas.close()
    return MicroResult(
        ed25519_sign=sign,
        ed25519_verify=verify,
        p384_verify=p384_verify,
        verify_attestation=verification,
        **parts,
    )


def fetch_attestation(url: str, timeout: float) -> tuple[object, str]:
    """One real ``/v1/attest`` answer from the server, and the nonce it answers."""
    nonce = new_nonce()
    try:
        with httpx.Client(base_url=url, verify=False, timeout=timeout) as client:
            response = client.get("/v1/attest", params={"nonce": nonce})
    except httpx.HTTPError as exc:
        raise BenchmarkError(f"GET /v1/attest failed: {exc}") from exc
    if response.status_code != 200:
        raise BenchmarkError(f"GET /v1/attest answered HTTP {response.status_code}")
    return response.json(), nonce


# --- reporting -----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _us(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e6:,.0f}"


def print_load(healthz: PhaseResult, attest: PhaseResult) -> None:
    """The network figures, one row per endpoint, with the kinds of errors seen."""
    print(
        f"  {'endpoint':<9} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
        f"{'errors':>6} {'answers':>8} {'srv CPU':>7} {'us/ans':>6} {'gen CPU':>7} "
        f"{'other':>6}"
    )
    for result in (healthz, attest):
        print(
            f"  {result.name:<9} {result.rate:>7,.0f} {ms(result.percentile(50)):>7} "
            f"{ms(result.percentile(95)):>7} {ms(result.percentile(99)):>7} "
            f"{result.error_count:>6} {result.ok:>8,} {_share(result.server_cpu):>7} "
            f"{_us(result.server_cpu_per_answer):>6} {_share(result.client_cpu):>7} "
            f"{_share(result.other_cpu):>6}"
        )
        for kind, count in result.errors.most_common(5):
            print(f"            {count:>6} x {kind}")
    print(
        "  srv CPU / gen CPU / other: share of one core used by the cas process / by this load "
        "generator /\n  by everything else on the machine; us/ans: server CPU microseconds per "
        "correct answer"
    )


def print_micro(micro: MicroResult) -> None:
    """The in-process figures."""
    rows = [
        ("Ed25519 sign (raw, 300 B)", micro.ed25519_sign),
        ("Ed25519 verify (raw, 300 B)", micro.ed25519_verify),
        ("ECDSA P-384 verify (raw, 300 B)", micro.p384_verify),
        ("verify_cas_attestation", micro.verify_attestation),
        ("Cas.attest (report+evidence+body)", micro.cas_attest),
        ("  Cas.state (store read)", micro.state_read),
        ("  Cas.report (incl. state read)", micro.cas_report),
        ("  report_data (JCS + SHA-512)", micro.report_data),
        ("  platform.evidence (JCS + sign)", micro.evidence),
        ("ASGI app GET /healthz", micro.app_healthz),
        ("ASGI app GET /v1/attest", micro.app_attest),
    ]
    for label, value in rows:
        print(f"  {label:<36} {value:>10,.0f}/s  {1e6 / value:>8.1f} us")


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.0%}" if denominator > 0 else "n/a"


def verdicts(healthz: PhaseResult, attest: PhaseResult, micro: MicroResult) -> list[str]:
    """One line per figure, next to the goal or bound it is compared with."""
    ratio = attest.rate / healthz.rate if healthz.rate > 0 else 0.0
    met = "met" if ratio >= ATTEST_RATIO_GOAL else "NOT met"
    lines = [
        f"attest throughput = {ratio:.0%} of healthz ({attest.rate:,.0f} vs "
        f"{healthz.rate:,.0f} req/s; goal >= {ATTEST_RATIO_GOAL:.0%}: {met})",
    ]
    attest_cost, healthz_cost = attest.server_cpu_per_answer, healthz.server_cpu_per_answer
    if attest_cost and healthz_cost:
        cpu_ratio = healthz_cost / attest_cost
        cpu_met = "met" if cpu_ratio >= ATTEST_RATIO_GOAL else "NOT met"
        lines.append(
            f"attest server capacity = {cpu_ratio:.0%} of healthz by server CPU per answer "
            f"({_us(attest_cost)} vs {_us(healthz_cost)} us; goal >= {ATTEST_RATIO_GOAL:.0%}: "
            f"{cpu_met})"
        )
    app_ratio = _ratio(micro.app_attest, micro.app_healthz)
    lines += [
        f"in-process ASGI app: attest = {app_ratio} of healthz ({micro.app_attest:,.0f} vs "
        f"{micro.app_healthz:,.0f}/s; no TLS, no sockets: diagnostic, not the goal)",
        f"attest over TLS = {attest.rate:,.0f}/s vs {micro.app_attest:,.0f}/s for the ASGI app "
        f"alone ({_ratio(attest.rate, micro.app_attest)}; bound for one server process)",
        f"healthz over TLS = {healthz.rate:,.0f}/s vs {micro.app_healthz:,.0f}/s for the ASGI "
        f"app alone ({_ratio(healthz.rate, micro.app_healthz)}; bound for one server process)",
        f"ASGI app attest = {micro.app_attest:,.0f}/s vs Cas.attest {micro.cas_attest:,.0f}/s "
        f"(bound; Cas.attest is {_ratio(micro.app_attest, micro.cas_attest)} of the app's "
        "time per request)",
        f"Cas.attest = {micro.cas_attest:,.0f}/s vs {micro.ed25519_sign:,.0f} raw Ed25519 "
        f"signs/s (bound; {_ratio(micro.cas_attest, micro.ed25519_sign)} of it)",
    ]
    # A client checks the Ed25519 evidence signature and the CA's P-384 signature on the TLS
    # certificate; nothing can verify faster than those two signature checks back to back.
    signatures = 1 / (1 / micro.ed25519_verify + 1 / micro.p384_verify)
    lines += [
        f"client verification = {micro.verify_attestation:,.0f}/s vs "
        f"{micro.ed25519_verify:,.0f} raw Ed25519 verifies/s (bound; "
        f"{_ratio(micro.verify_attestation, micro.ed25519_verify)} of it)",
        f"client verification = {micro.verify_attestation:,.0f}/s vs {signatures:,.0f}/s for "
        f"one Ed25519 + one ECDSA P-384 verify (tight bound; "
        f"{_ratio(micro.verify_attestation, signatures)} of it)",
        f"attest latency p50/p99 = {ms(attest.percentile(50))}/{ms(attest.percentile(99))} ms "
        f"vs healthz {ms(healthz.percentile(50))}/{ms(healthz.percentile(99))} ms "
        f"at {attest.clients} clients",
    ]
    for result in (healthz, attest):
        if result.other_cpu is not None and result.other_cpu >= DISTURBING_CPU:
            lines.append(
                f"note: other processes (or the kernel) used {result.other_cpu:.0%} of a core "
                f"during {result.name}: its rate is disturbed; CPU per answer much less so"
            )
        if result.client_cpu is not None and result.client_cpu >= SATURATED_CPU:
            lines.append(
                f"note: the load generator used {result.client_cpu:.0%} of a core during "
                f"{result.name}, so that rate is a lower bound for the server; the CPU-based "
                "capacity ratio above does not depend on it"
            )
    return lines


# --- main ----------------------------------------------------------------------------------------


def positive(kind: Callable[[str], float], upper: float) -> Callable[[str], Any]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not 0 < value <= upper:
            raise argparse.ArgumentTypeError(f"must be greater than 0 and at most {upper:g}")
        return value

    return parse


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description="Benchmark GET /v1/attest of a local CAS against GET /healthz and "
        "against in-process bounds."
    )
    parser.add_argument(
        "--clients", type=positive(int, 1024), default=32, help="concurrent clients (32)"
    )
    parser.add_argument(
        "--seconds", type=positive(float, 600), default=10.0, help="seconds per phase (10)"
    )
    parser.add_argument(
        "--max-requests",
        type=positive(int, 10_000_000),
        default=1_000_000,
        help="at most this many measured requests per phase (1000000)",
    )
    parser.add_argument(
        "--micro-seconds",
        type=positive(float, 60),
        default=1.0,
        help="seconds per in-process figure (1)",
    )
    parser.add_argument(
        "--timeout", type=positive(float, 120), default=10.0, help="per-request timeout (10)"
    )
    return parser.parse_args(argv)


@contextlib.contextmanager
def running_cas(directory: Path) -> Iterator[CasProcess]:
    """A healthy ``cas`` serving from ``directory``; stopped on leaving, whatever happens."""
    process = CasProcess(directory)
    try:
        process.start()
        yield process
    finally:
        process.stop()


def benchmark(args: argparse.Namespace, workdir: Path) -> None:
    """Run every phase and print the figures and verdicts."""
    print(
        f"OpenCAS attestation benchmark: {args.clients} clients, {args.seconds:g} s per phase, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"load average {os.getloadavg()[0]:.2f} before the start"
    )
    with running_cas(workdir / "server") as cas:
        if cas.process is None:
            raise BenchmarkError("the cas process is not running")
        server_pid = cas.process.pid
        print(f"server: {cas.url} (pid {server_pid})")
        results = []
        for name, target in (("healthz", healthz_target), ("attest", attest_target)):
            result = run_async(
                run_phase(
                    name,
                    cas.url,
                    server_pid,
                    target,
                    clients=args.clients,
                    seconds=args.seconds,
                    max_requests=args.max_requests,
                    timeout=args.timeout,
                )
            )
            if result.ok == 0:
                raise BenchmarkError(f"no correct answer in the {name} phase: {result.errors}")
            results.append(result)
        response, nonce = fetch_attestation(cas.url, args.timeout)
    healthz, attest = results
    print("\nOver TLS to 127.0.0.1 (server stopped afterwards):")
    print_load(healthz, attest)
    print("\nIn-process, one request at a time (server stopped):")
    micro = measure_in_process(workdir / "in-process", response, nonce, args.micro_seconds)
    print_micro(micro)
    print("\nVerdicts:")
    for line in verdicts(healthz, attest, micro):
        print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 after measuring, 1 when it could not measure, 130 on interrupt."""
    args = parse_arguments(argv)
    signal.signal(signal.SIGTERM, raise_interrupted)
    with tempfile.TemporaryDirectory(prefix="opencas-bench-") as temporary:
        workdir = Path(temporary)
        try:
            benchmark(args, workdir)
        except (Interrupted, KeyboardInterrupt):
            print("\ninterrupted; the server was stopped", file=sys.stderr)
            return 130
        except (BenchmarkError, CasStartError) as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
