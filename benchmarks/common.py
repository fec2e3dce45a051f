"""What the benchmarks share: a CAS to measure, load phases, CPU accounting, rates and printing.

A benchmark here starts a real, self-provisioned ``cas`` (:func:`running_cas`, through
:mod:`opencas.testing`), drives it from many concurrent clients for a fixed time
(:func:`run_phase`: one coroutine per client, each with one connection, warmed up before the clock
starts), charges the CPU the server, this load generator and everything else used
(:class:`CpuMark`), measures in-process bounds one call at a time (:func:`rate`), and prints the
figures next to their goals and bounds. :func:`main` gives every benchmark the same exit codes: 0
after measuring whatever the verdicts say, 1 when it could not measure, 130 when interrupted (the
server is stopped in every case).

Only the installed ``opencas`` package and its dependencies are needed (no test tools).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import os
import queue
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nacl.signing import VerifyKey

from opencas.errors import CasError
from opencas.testing import CasStartError, SelfProvisionedCas, start_self_provisioned_cas

#: An attestation endpoint should serve at least this share of the ``/healthz`` rate: what an
#: attestation costs must not dominate the HTTP stack.
ATTEST_RATIO_GOAL = 0.30
#: A CPU share (of one core) above which a process is taken to be the bottleneck.
SATURATED_CPU = 0.90
#: A CPU share (of one core) used by other processes above which the load figures are disturbed.
DISTURBING_CPU = 0.10
#: The length of the messages signed and verified for the raw signature rates: about the size of
#: the simulated evidence body that a platform signs.
RAW_MESSAGE_BYTES = 300

T = TypeVar("T")


class BenchmarkError(Exception):
    """The benchmark cannot produce its figures (not a verdict about them)."""


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived: stop measuring, stop the server, exit."""


def raise_interrupted(signum: int, frame: FrameType | None) -> None:
    """A signal handler that turns SIGTERM into :class:`Interrupted`."""
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


# --- the CAS under measurement -------------------------------------------------------------------


@contextlib.contextmanager
def running_cas(
    directory: Path,
    owner_config_text: str | None = None,
    limits: dict[str, float] | None = None,
) -> Iterator[SelfProvisionedCas]:
    """A self-provisioned, attested ``cas`` serving from ``directory``; stopped on leaving.

    ``owner_config_text`` replaces the development owner config; ``limits`` is the ``[limits]``
    section of its availability config."""
    cas = start_self_provisioned_cas(directory, owner_config_text, limits=limits)
    try:
        yield cas
    finally:
        cas.stop()


def server_pid(cas: SelfProvisionedCas) -> int:
    """The process id of the running ``cas``."""
    process = cas.process.process
    if process is None:
        raise BenchmarkError("the cas process is not running")
    return process.pid


# --- CPU accounting ------------------------------------------------------------------------------


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
    """User plus system CPU time of this process."""
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
    server_cpu_each: tuple[float, ...] = ()
    """With several server processes: the share of a core each used, in the order given."""
    checked: int = 0
    """Correct answers that were also opened and checked in full (a sample of them)."""
    answered_by: Counter[int] = field(default_factory=Counter)
    """Correct answers by the index of the server that gave them (:attr:`Attempt.target`)."""
    generators: int = 1
    """Load generator processes that drove the phase (``client_cpu`` is their sum)."""

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
        return percentile(self.latencies, p)


def percentile(latencies: Sequence[float], p: float) -> float:
    """The ``p``-th percentile of ``latencies`` (nearest rank); NaN when there are none."""
    if not latencies:
        return math.nan
    ordered = sorted(latencies)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


Pids = int | Sequence[int]
"""One server process, or several (instances of one CAS) whose CPU is added up."""


def _servers_cpu(pids: Pids) -> tuple[float | None, ...]:
    return tuple(process_cpu_seconds(pid) for pid in ([pids] if isinstance(pids, int) else pids))


@dataclass
class CpuMark:
    """CPU counters at the start of a phase (seconds; ``None`` without ``/proc``)."""

    server: float | None
    own: float
    machine: float | None
    servers: tuple[float | None, ...] = ()

    @classmethod
    def now(cls, pids: Pids) -> CpuMark:
        """The counters now, for the server process(es) ``pids``."""
        each = _servers_cpu(pids)
        total = None if any(value is None for value in each) else sum(v or 0.0 for v in each)
        return cls(total, own_cpu_seconds(), machine_busy_seconds(), each)

    def charge(
        self,
        result: PhaseResult,
        pids: Pids,
        generator_seconds: float | None = None,
        later: CpuMark | None = None,
    ) -> None:
        """Fill in the result's CPU shares (of one core) from this mark to ``later`` (now).

        ``generator_seconds`` is the CPU the load generator processes used, when they are not
        this process alone."""
        if result.elapsed <= 0:
            return
        later = later or CpuMark.now(pids)
        own = later.own - self.own
        result.client_cpu = (own + (generator_seconds or 0.0)) / result.elapsed
        if self.server is None or later.server is None:
            return
        result.server_cpu = (later.server - self.server) / result.elapsed
        result.server_cpu_each = tuple(
            ((after or 0.0) - (before or 0.0)) / result.elapsed
            for before, after in zip(self.servers, later.servers, strict=True)
        )
        if self.machine is not None and later.machine is not None:
            machine = (later.machine - self.machine) / result.elapsed
            result.other_cpu = max(0.0, machine - result.server_cpu - result.client_cpu)


# --- load over the network -----------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One measured request (or exchange): its latency, and what went wrong (None: nothing)."""

    latency: float
    problem: str | None = None
    checked: bool = False
    """The answer was opened and checked in full, beyond its status."""
    target: int = 0
    """Which server answered, when a phase spreads its clients over several."""


#: One client's next request: sends it, checks the answer, says how long it took.
Send = Callable[[], Awaitable[Attempt]]


async def timed(call: Awaitable[str | None]) -> Attempt:
    """Await ``call`` (it answers what went wrong, or None) and time it.

    A :class:`~opencas.errors.CasError` it raises is a problem named by its class and code.
    """
    started = time.perf_counter()
    try:
        problem = await call
    except CasError as exc:
        problem = f"{type(exc).__name__} {exc.code}"
    return Attempt(time.perf_counter() - started, problem)


@dataclass
class _PhaseState:
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


async def _worker(send: Send, state: _PhaseState) -> None:
    # The first request opens the connection (TCP and TLS handshakes); it is checked but not
    # measured.
    warm = await send()
    if warm.problem is not None:
        state.result.errors[f"warm-up: {warm.problem}"] += 1
    state.warmed += 1
    if state.warmed == state.result.clients:
        state.ready.set()
    await state.go.wait()
    while state.running():
        state.issued += 1
        attempt = await send()
        if attempt.problem is None:
            state.result.latencies.append(attempt.latency)
            state.result.checked += attempt.checked
            state.result.answered_by[attempt.target] += 1
        else:
            state.result.errors[attempt.problem] += 1


async def run_phase(
    name: str,
    sends: Sequence[Send],
    pid: Pids,
    *,
    seconds: float,
    max_requests: int,
    connect_timeout: float,
) -> PhaseResult:
    """Drive one client per element of ``sends`` back to back for ``seconds``.

    Each client first sends one unmeasured request (it connects); the clock starts when all are
    connected, within ``connect_timeout``. At most ``max_requests`` are measured in all. The CPU
    of the server process ``pid`` (of each of several, added up), of this process and of the
    machine is charged to the phase.
    """
    result = PhaseResult(name, len(sends))
    state = _PhaseState(result, max_requests)
    tasks = [asyncio.create_task(_worker(send, state)) for send in sends]
    try:
        try:
            await asyncio.wait_for(state.ready.wait(), connect_timeout)
        except TimeoutError:
            raise BenchmarkError(f"{name}: the clients did not connect in time") from None
        mark = CpuMark.now(pid)
        started = time.perf_counter()
        state.deadline = started + seconds
        state.go.set()
        await asyncio.gather(*tasks)
        result.elapsed = time.perf_counter() - started
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    mark.charge(result, pid)
    return result


#: Builds the clients of one load generator: given the exit stack that closes them and the
#: indices (out of ``0 .. clients - 1``) of the clients it drives, one send per client. It must
#: pickle (a module-level function, or a :func:`functools.partial` of one) to reach a generator
#: process.
Build = Callable[[contextlib.AsyncExitStack[bool | None], Sequence[int]], Awaitable[list[Send]]]
#: How long a generator process may take to start (import everything) before its clients connect.
GENERATOR_START_SECONDS = 60.0


def default_generator_processes() -> int:
    """Load generator processes for this machine: one per CPU, at most four.

    One Python process saturates a core with TLS, JSON and signatures well before a CAS does; the
    processes share the machine with the server, so more than the CPUs would only queue.
    """
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class _Share:
    """What one generator process measured, sent back to the process that runs the phase."""

    latencies: list[float]
    errors: Counter[str]
    checked: int
    answered_by: Counter[int]
    cpu_seconds: float


async def _drive(
    build: Build,
    indices: Sequence[int],
    seconds: float,
    max_requests: int,
    connect_timeout: float,
    report: Any,
    go: Any,
) -> _Share:
    async with contextlib.AsyncExitStack() as stack:
        sends = await build(stack, indices)
        result = PhaseResult("share", len(sends))
        state = _PhaseState(result, max_requests)
        tasks = [asyncio.create_task(_worker(send, state)) for send in sends]
        try:
            await asyncio.wait_for(state.ready.wait(), connect_timeout)
            report.put(("ready", os.getpid()))
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            cpu = own_cpu_seconds()
            state.deadline = time.perf_counter() + seconds
            state.go.set()
            await asyncio.gather(*tasks)
            cpu = own_cpu_seconds() - cpu
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return _Share(result.latencies, result.errors, result.checked, result.answered_by, cpu)


def _generator_main(
    build: Build,
    indices: Sequence[int],
    seconds: float,
    max_requests: int,
    connect_timeout: float,
    report: Any,
    go: Any,
) -> None:
    """A load generator process: its clients connect, wait for the start, send for ``seconds``,
    and what they measured goes back on ``report`` (or what went wrong)."""
    # Ctrl-C reaches the whole process group: the parent stops the generators itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        share = asyncio.run(
            _drive(build, indices, seconds, max_requests, connect_timeout, report, go)
        )
    except Exception as exc:  # any failure goes to the parent as text: it cannot pickle all
        report.put(("failed", f"{type(exc).__name__}: {exc}"))
        return
    report.put(("share", share))


def _next_message(report: Any, deadline: float, name: str, waiting_for: str) -> tuple[str, Any]:
    try:
        kind, body = report.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        raise BenchmarkError(
            f"{name}: the load generator processes {waiting_for} in time"
        ) from None
    if kind == "failed":
        raise BenchmarkError(f"{name}: a load generator process failed: {body}")
    return str(kind), body


def run_load(
    name: str,
    build: Build,
    clients: int,
    pid: Pids,
    *,
    processes: int,
    seconds: float,
    max_requests: int,
    connect_timeout: float,
    request_timeout: float,
) -> PhaseResult:
    """:func:`run_phase` with ``clients`` clients made by ``build``, spread round-robin over
    ``processes`` load generator processes (in this process when 1).

    Every process connects its clients first; the clock starts when all have, and the latencies
    (every sample, so the percentiles are exact), errors and answers of all are added up, and
    ``client_cpu`` is the CPU all generators used. ``max_requests`` is shared out evenly.
    """
    if processes <= 1 or clients <= 1:

        async def here() -> PhaseResult:
            async with contextlib.AsyncExitStack() as stack:
                sends = await build(stack, range(clients))
                return await run_phase(
                    name,
                    sends,
                    pid,
                    seconds=seconds,
                    max_requests=max_requests,
                    connect_timeout=connect_timeout,
                )

        return run_async(here())
    groups = [list(range(clients))[first::processes] for first in range(min(processes, clients))]
    context = multiprocessing.get_context("spawn")
    report, go = context.Queue(), context.Event()
    each_max = max(1, max_requests // len(groups))
    workers = [
        context.Process(
            target=_generator_main,
            args=(build, group, seconds, each_max, connect_timeout, report, go),
            daemon=True,
        )
        for group in groups
    ]
    for worker in workers:
        worker.start()
    try:
        deadline = time.monotonic() + GENERATOR_START_SECONDS + connect_timeout
        for _ in workers:
            _next_message(report, deadline, name, "did not connect")
        mark = CpuMark.now(pid)
        started = time.perf_counter()
        go.set()
        deadline = time.monotonic() + seconds + request_timeout + GENERATOR_START_SECONDS
        shares: list[_Share] = [
            _next_message(report, deadline, name, "did not finish")[1] for _ in workers
        ]
        elapsed = time.perf_counter() - started
        # Before the generators exit: their exit is not the phase's.
        ended = CpuMark.now(pid)
    finally:
        go.set()
        for worker in workers:
            worker.join(timeout=5.0)
            if worker.is_alive():
                worker.terminate()
                worker.join()
    result = PhaseResult(name, clients, elapsed=elapsed, generators=len(workers))
    for share in shares:
        result.latencies += share.latencies
        result.errors += share.errors
        result.checked += share.checked
        result.answered_by += share.answered_by
    used = sum(share.cpu_seconds for share in shares)
    mark.charge(result, pid, generator_seconds=used, later=ended)
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


async def async_rate(operation: Callable[[], Awaitable[object]], seconds: float) -> float:
    """:func:`rate` for a coroutine function, awaited back to back."""
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


def raw_ed25519(seconds: float) -> tuple[float, float]:
    """Raw Ed25519 signatures and verifications per second, of :data:`RAW_MESSAGE_BYTES`."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    message = os.urandom(RAW_MESSAGE_BYTES)
    signature = key.sign(message)
    return rate(lambda: key.sign(message), seconds), rate(
        lambda: public.verify(signature, message), seconds
    )


def raw_ed25519_libsodium(seconds: float) -> float:
    """Raw Ed25519 verifications per second through PyNaCl (libsodium), of
    :data:`RAW_MESSAGE_BYTES`: what the audit log's verifier uses."""
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    message = os.urandom(RAW_MESSAGE_BYTES)
    signature = key.sign(message)
    verify_key = VerifyKey(raw)
    return rate(lambda: verify_key.verify(message, signature), seconds)


# --- reporting -----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    """Milliseconds, one decimal; ``n/a`` for NaN."""
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def us(seconds: float | None) -> str:
    """Whole microseconds; ``n/a`` for None."""
    return "n/a" if seconds is None else f"{seconds * 1e6:,.0f}"


def share(value: float | None) -> str:
    """A share as a percentage; ``n/a`` for None."""
    return "n/a" if value is None else f"{value:.0%}"


def ratio(numerator: float, denominator: float) -> str:
    """``numerator / denominator`` as a percentage; ``n/a`` when the denominator is 0."""
    return f"{numerator / denominator:.0%}" if denominator > 0 else "n/a"


def met(ok: bool) -> str:
    """A verdict: ``met`` or ``NOT met``."""
    return "met" if ok else "NOT met"


def print_load(*results: PhaseResult) -> None:
    """The network figures, one row per phase, with the kinds of errors seen."""
    print(
        f"  {'phase':<9} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
        f"{'errors':>6} {'answers':>8} {'srv CPU':>7} {'us/ans':>6} {'gen CPU':>7} "
        f"{'other':>6}"
    )
    for result in results:
        print(
            f"  {result.name:<9} {result.rate:>7,.0f} {ms(result.percentile(50)):>7} "
            f"{ms(result.percentile(95)):>7} {ms(result.percentile(99)):>7} "
            f"{result.error_count:>6} {result.ok:>8,} {share(result.server_cpu):>7} "
            f"{us(result.server_cpu_per_answer):>6} {share(result.client_cpu):>7} "
            f"{share(result.other_cpu):>6}"
        )
        for kind, count in result.errors.most_common(5):
            print(f"            {count:>6} x {kind}")
    print(
        "  srv CPU / gen CPU / other: share of one core used by the cas process / by this load "
        "generator /\n  by everything else on the machine; us/ans: server CPU microseconds per "
        "correct answer"
    )


def print_rates(rows: Sequence[tuple[str, float]]) -> None:
    """In-process figures: one ``(label, calls per second)`` per line, with the time per call."""
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}} {value:>10,.0f}/s  {1e6 / value:>8.1f} us")


def cpu_notes(results: Sequence[PhaseResult]) -> list[str]:
    """Notes on phases whose figures other processes or a saturated generator disturbed."""
    notes = []
    for result in results:
        if result.other_cpu is not None and result.other_cpu >= DISTURBING_CPU:
            notes.append(
                f"note: other processes (or the kernel) used {result.other_cpu:.0%} of a core "
                f"during {result.name}: its rate and latency are disturbed; CPU per answer much "
                "less so"
            )
        if result.client_cpu is not None and result.client_cpu >= SATURATED_CPU:
            notes.append(
                f"note: the load generator used {result.client_cpu:.0%} of a core during "
                f"{result.name}: that rate is a lower bound for the server and its latencies "
                "include the generator's own queueing; the CPU-based capacity does not depend "
                "on it"
            )
    return notes


def capacity_line(subject: str, attest: PhaseResult, healthz: PhaseResult) -> str | None:
    """The attest / healthz capacity by server CPU per answer, or None without CPU figures."""
    attest_cost, healthz_cost = attest.server_cpu_per_answer, healthz.server_cpu_per_answer
    if not attest_cost or not healthz_cost:
        return None
    capacity = healthz_cost / attest_cost
    return (
        f"{subject} server capacity = {capacity:.0%} of /healthz by server CPU per answer "
        f"({us(attest_cost)} vs {us(healthz_cost)} us; goal >= {ATTEST_RATIO_GOAL:.0%}: "
        f"{met(capacity >= ATTEST_RATIO_GOAL)}; does not depend on the load generator)"
    )


def machine_line(title: str) -> str:
    """The first line a benchmark prints: what runs, on how many CPUs, how busy before."""
    return (
        f"{title}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"load average {os.getloadavg()[0]:.2f} before the start"
    )


# --- the command line ----------------------------------------------------------------------------


def positive(kind: Callable[[str], float], upper: float) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` greater than 0 and at most ``upper``."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not 0 < value <= upper:
            raise argparse.ArgumentTypeError(f"must be greater than 0 and at most {upper:g}")
        return value

    return parse


def number_option(
    parser: argparse.ArgumentParser,
    name: str,
    kind: Callable[[str], float],
    upper: float,
    default: float,
    what: str,
) -> None:
    """Add the option ``name``: a number of ``kind`` in (0, ``upper``], ``what`` it bounds."""
    shown = str(default) if isinstance(default, int) else f"{default:g}"
    parser.add_argument(name, type=positive(kind, upper), default=default, help=f"{what} ({shown})")


def arguments(
    description: str, *, seconds: float, micro_seconds: float, timeout: float
) -> argparse.ArgumentParser:
    """The options every benchmark has, with its defaults: clients, durations, bounds."""
    parser = argparse.ArgumentParser(description=description)
    number_option(parser, "--clients", int, 1024, 32, "concurrent clients")
    number_option(parser, "--seconds", float, 600, seconds, "seconds per phase")
    number_option(
        parser,
        "--max-requests",
        int,
        10_000_000,
        1_000_000,
        "at most this many measured requests per phase",
    )
    number_option(
        parser, "--micro-seconds", float, 60, micro_seconds, "seconds per in-process figure"
    )
    number_option(parser, "--timeout", float, 120, timeout, "per-request timeout")
    return parser


def main(benchmark: Callable[[Path], None]) -> int:
    """Run ``benchmark`` in a temporary directory; the exit code a benchmark returns.

    0 after measuring, 1 when it could not measure (the server does not start, a phase gets no
    correct answer), 130 when interrupted by SIGINT or SIGTERM. The server is stopped in every
    case, by the ``with`` blocks inside ``benchmark``.
    """
    signal.signal(signal.SIGTERM, raise_interrupted)
    with tempfile.TemporaryDirectory(prefix="opencas-bench-") as temporary:
        try:
            benchmark(Path(temporary))
        except (Interrupted, KeyboardInterrupt):
            print("\ninterrupted; the server was stopped", file=sys.stderr)
            return 130
        except (BenchmarkError, CasStartError, CasError) as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
    return 0
