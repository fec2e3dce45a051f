"""Benchmark the CAS's own attestation (``GET /v1/attest``) against the bounds it is measured by.

What it measures, all in one run on one machine:

1. **Over the network.** A self-provisioned ``cas`` (``start_self_provisioned_cas`` of
   :mod:`opencas.testing`, in a temporary directory, on free ports of 127.0.0.1) is driven by
   ``--clients`` concurrent clients, each an :class:`~opencas.client.cas_client.AsyncCasClient`
   with exactly one TLS connection pinned to the CAS it attested, first with ``health()``
   (``GET /healthz``) and then with ``attestation(nonce)`` for a fresh nonce each time (the
   answer must name that nonce; it is not verified, which is the client's cost, measured in
   process), each for ``--seconds`` seconds. For each it prints requests/s, p50/p95/p99 latency,
   errors, how much CPU the server and this load generator used and the server's CPU time per
   answer; then the attest/healthz ratio, both of throughput and of server CPU per answer.
2. **In-process, one call at a time**, after the server stopped. Raw Ed25519 signatures/s and
   verifications/s and ECDSA P-384 verifications/s (``cryptography``); ``verify_cas_attestation``
   per second on one real response fetched from that server (with ``peer_certificate_der=None``);
   on a second CAS opened in-process with ``open_cas``: the cost of ``Cas.attest`` and of its
   parts (state read, ``Cas.report``, report data, evidence), and of the whole client-API ASGI
   application answering ``/healthz`` and the attestation without TLS or sockets (its
   synchronous endpoints still hop to the framework's worker threads).

It then prints one verdict per figure next to its goal or bound, e.g. ``attest throughput = 41%
of healthz (goal >= 30%)``. The verdicts are information: the exit code is 0 whatever they say,
1 when the benchmark itself fails (the server does not start, a phase gets no answer at all, a
real response does not verify) and 130 when interrupted. The server is stopped at the end, also
on Ctrl-C. Each phase is bounded by ``--seconds`` and ``--max-requests``.

Run it with the package installed::

    python benchmarks/cas_attestation.py [--clients 32] [--seconds 10]

The load generator shares the machine with the server and costs about as much CPU per request
as the server does: when it uses most of a core (the ``gen CPU`` column), the throughput figures
are a lower bound for the server, and the ratio of server CPU per answer is the figure to trust.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import (
    ATTEST_RATIO_GOAL,
    RAW_MESSAGE_BYTES,
    BenchmarkError,
    PhaseResult,
    Send,
    arguments,
    async_rate,
    capacity_line,
    cpu_notes,
    machine_line,
    main,
    met,
    ms,
    print_load,
    print_rates,
    rate,
    ratio,
    raw_ed25519,
    run_async,
    run_phase,
    running_cas,
    server_pid,
    timed,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from opencas.api.app import create_client_api
from opencas.attestation.report import CasExpectations, report_data, verify_cas_attestation
from opencas.client.answers import HEALTH_PATH
from opencas.client.cas_client import ATTEST_PATH, AsyncCasClient, new_nonce
from opencas.config.availability import load_availability_config
from opencas.service.cas import Cas, open_cas
from opencas.testing import SelfProvisionedCas, write_config

# --- load over the network -----------------------------------------------------------------------


def healthz_send(client: AsyncCasClient) -> Send:
    """``health()``; the answer says ``ok``."""

    async def check() -> str | None:
        return None if await client.health() == "ok" else "wrong answer"

    return lambda: timed(check())


def attest_send(client: AsyncCasClient) -> Send:
    """``attestation(nonce)`` with a fresh 256-bit nonce; the report must name that nonce."""

    async def check() -> str | None:
        nonce = new_nonce()
        response = await client.attestation(nonce)
        report = response.get("report") if isinstance(response, dict) else None
        return None if isinstance(report, dict) and report.get("nonce") == nonce else "wrong answer"

    return lambda: timed(check())


async def load_phase(
    name: str,
    make_send: Callable[[AsyncCasClient], Send],
    cas: SelfProvisionedCas,
    args: argparse.Namespace,
) -> PhaseResult:
    """``args.clients`` clients, one pinned connection each, sending for ``args.seconds``."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                AsyncCasClient(
                    cas.url,
                    ca_certificate_pem=cas.verified.ca_certificate_pem,
                    max_connections=1,
                    timeout=args.timeout,
                )
            )
            for _ in range(args.clients)
        ]
        return await run_phase(
            name,
            [make_send(client) for client in clients],
            server_pid(cas),
            seconds=args.seconds,
            max_requests=args.max_requests,
            connect_timeout=args.timeout + 5.0,
        )


async def fetch_attestation(cas: SelfProvisionedCas, timeout: float) -> tuple[Any, str]:
    """One real attestation response from the server, and the nonce it answers."""
    nonce = new_nonce()
    async with AsyncCasClient(
        cas.url, ca_certificate_pem=cas.verified.ca_certificate_pem, timeout=timeout
    ) as client:
        return await client.attestation(nonce), nonce


# --- in-process measurements ---------------------------------------------------------------------


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


def _raw_p384_verify(seconds: float) -> float:
    # The CAS CA key is ECDSA P-384 and signs the TLS certificate: a client checks one such
    # signature per attestation, on top of the Ed25519 evidence signature.
    key = ec.generate_private_key(ec.SECP384R1())
    public = key.public_key()
    message = os.urandom(RAW_MESSAGE_BYTES)
    algorithm = ec.ECDSA(hashes.SHA384())
    signature = key.sign(message, algorithm)
    return rate(lambda: public.verify(signature, message, algorithm), seconds)


def _verification_rate(response: object, nonce: str, seconds: float) -> float:
    # The self-provisioned CAS runs on the simulated platform: debug mode must be accepted.
    expectations = CasExpectations(nonce=nonce, allow_debug=True)
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

    async def app_rates() -> tuple[float, float]:
        healthz = await async_rate(_asgi_get(app, HEALTH_PATH), seconds)
        attest = await async_rate(_asgi_get(app, ATTEST_PATH, f"nonce={nonce}"), seconds)
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
    cas = open_cas(load_availability_config(write_config(directory, 1, 2)))
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


# --- reporting -----------------------------------------------------------------------------------


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
        (f"ASGI app GET {ATTEST_PATH}", micro.app_attest),
    ]
    print_rates(rows)


def verdicts(healthz: PhaseResult, attest: PhaseResult, micro: MicroResult) -> list[str]:
    """One line per figure, next to the goal or bound it is compared with."""
    throughput = attest.rate / healthz.rate if healthz.rate > 0 else 0.0
    lines = [
        f"attest throughput = {throughput:.0%} of healthz ({attest.rate:,.0f} vs "
        f"{healthz.rate:,.0f} req/s; goal >= {ATTEST_RATIO_GOAL:.0%}: "
        f"{met(throughput >= ATTEST_RATIO_GOAL)})",
    ]
    capacity = capacity_line("attest", attest, healthz)
    if capacity is not None:
        lines.append(capacity)
    app_ratio = ratio(micro.app_attest, micro.app_healthz)
    lines += [
        f"in-process ASGI app: attest = {app_ratio} of healthz ({micro.app_attest:,.0f} vs "
        f"{micro.app_healthz:,.0f}/s; no TLS, no sockets: diagnostic, not the goal)",
        f"attest over TLS = {attest.rate:,.0f}/s vs {micro.app_attest:,.0f}/s for the ASGI app "
        f"alone ({ratio(attest.rate, micro.app_attest)}; bound for one server process)",
        f"healthz over TLS = {healthz.rate:,.0f}/s vs {micro.app_healthz:,.0f}/s for the ASGI "
        f"app alone ({ratio(healthz.rate, micro.app_healthz)}; bound for one server process)",
        f"ASGI app attest = {micro.app_attest:,.0f}/s vs Cas.attest {micro.cas_attest:,.0f}/s "
        f"(bound; Cas.attest is {ratio(micro.app_attest, micro.cas_attest)} of the app's "
        "time per request)",
        f"Cas.attest = {micro.cas_attest:,.0f}/s vs {micro.ed25519_sign:,.0f} raw Ed25519 "
        f"signs/s (bound; {ratio(micro.cas_attest, micro.ed25519_sign)} of it)",
    ]
    # A client checks the Ed25519 evidence signature and the CA's P-384 signature on the TLS
    # certificate; nothing can verify faster than those two signature checks back to back.
    signatures = 1 / (1 / micro.ed25519_verify + 1 / micro.p384_verify)
    lines += [
        f"client verification = {micro.verify_attestation:,.0f}/s vs "
        f"{micro.ed25519_verify:,.0f} raw Ed25519 verifies/s (bound; "
        f"{ratio(micro.verify_attestation, micro.ed25519_verify)} of it)",
        f"client verification = {micro.verify_attestation:,.0f}/s vs {signatures:,.0f}/s for "
        f"one Ed25519 + one ECDSA P-384 verify (tight bound; "
        f"{ratio(micro.verify_attestation, signatures)} of it)",
        f"attest latency p50/p99 = {ms(attest.percentile(50))}/{ms(attest.percentile(99))} ms "
        f"vs healthz {ms(healthz.percentile(50))}/{ms(healthz.percentile(99))} ms "
        f"at {attest.clients} clients",
    ]
    return lines + cpu_notes((healthz, attest))


# --- main ----------------------------------------------------------------------------------------


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = arguments(
        f"Benchmark the CAS's own attestation (GET {ATTEST_PATH}) of a local CAS against "
        "GET /healthz and against in-process bounds.",
        seconds=10.0,
        micro_seconds=1.0,
        timeout=10.0,
    )
    return parser.parse_args(argv)


def benchmark(args: argparse.Namespace, workdir: Path) -> None:
    """Run every phase and print the figures and verdicts."""
    print(
        machine_line(
            f"OpenCAS attestation benchmark: {args.clients} clients, {args.seconds:g} s per phase"
        )
    )
    with running_cas(workdir / "server") as cas:
        print(f"server: {cas.url} (pid {server_pid(cas)})")
        results = []
        for name, make_send in (("healthz", healthz_send), ("attest", attest_send)):
            result = run_async(load_phase(name, make_send, cas, args))
            if result.ok == 0:
                raise BenchmarkError(f"no correct answer in the {name} phase: {result.errors}")
            results.append(result)
        response, nonce = run_async(fetch_attestation(cas, args.timeout))
    healthz, attest = results
    print("\nOver TLS to 127.0.0.1 (server stopped afterwards):")
    print_load(healthz, attest)
    print("\nIn-process, one request at a time (server stopped):")
    micro = measure_in_process(workdir / "in-process", response, nonce, args.micro_seconds)
    print_micro(micro)
    print("\nVerdicts:")
    for line in verdicts(healthz, attest, micro):
        print(f"  {line}")


if __name__ == "__main__":
    arguments_given = parse_arguments(sys.argv[1:])
    sys.exit(main(lambda workdir: benchmark(arguments_given, workdir)))
