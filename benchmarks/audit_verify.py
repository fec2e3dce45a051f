"""Benchmark ``casctl audit verify``'s core: a long audit log, every signature checked.

It opens a CAS in-process (``open_cas``, simulated platform, in a temporary directory), lets it
write its ``cas_started`` entry, and then appends ``--entries`` signed ``session_read`` entries
with the CAS's own audit key, chained as the CAS chains them (``next_entry`` of
:mod:`opencas.audit.chain`). It then verifies the file with ``verify_log`` (one process per CPU,
and one process), expecting the last entry's hash, and prints the rates beside raw Ed25519
verifications per second on this machine (through ``cryptography``, OpenSSL, and through PyNaCl,
libsodium, which the verifier uses), the CPU time per entry of all its processes (which hardly
depends on what else runs, unlike the rate), with the goal: a million entries in under 60 s.

Run it with the package installed::

    python benchmarks/audit_verify.py [--entries 1000000]

Exit code 0 after measuring (whatever the verdict), 1 when the log does not verify as intact.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

from common import machine_line, main, met, positive, raw_ed25519, raw_ed25519_libsodium

from opencas.audit.chain import Expectations, Head, Outcome, line_hash, next_entry, parse_entry
from opencas.audit.verify import verify_log
from opencas.config.availability import load_availability_config
from opencas.service.cas import open_cas
from opencas.service.cas_records import read_audit_key
from opencas.testing import write_config

#: The goal: this many entries verified, every signature checked, within this many seconds.
GOAL_ENTRIES = 1_000_000
GOAL_SECONDS = 60.0


def write_log(directory: Path, entries: int) -> tuple[Path, Head]:
    """A CAS's log of ``entries`` signed entries after its start entry; its path and head."""
    directory.mkdir()
    cas = open_cas(load_availability_config(write_config(directory, 18091, 18791)))
    try:
        cas.audit_log.write_start()
        record = read_audit_key(cas.store)
        assert record is not None
        key = record.load_key()
    finally:
        cas.close()
    path = cas.config.audit_log_path
    start = path.read_bytes().rstrip(b"\n")
    head = Head(parse_entry(start).seq, line_hash(start))
    with path.open("ab") as log:
        batch: list[bytes] = []
        for number in range(entries):
            _, line, head = next_entry(
                head,
                time="2026-12-01T12:00:00Z",
                event="session_read",
                actor="ab" * 32,
                subject=f"bench/session-{number % 1000}",
                details={"hash": "cd" * 32},
                sign=key.sign,
            )
            batch.append(line + b"\n")
            if len(batch) >= 10_000:
                log.write(b"".join(batch))
                batch.clear()
        log.write(b"".join(batch))
    return path, head


def cpu_seconds() -> float:
    """User and system CPU seconds of this process and of its children that ended."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed_verify(path: Path, head: Head, workers: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds (all processes) to verify ``path`` with ``workers``
    processes; raises unless it is intact."""
    started, cpu = time.perf_counter(), cpu_seconds()
    verdict = verify_log(path, Expectations(last=head.hash), workers=workers)
    elapsed, used = time.perf_counter() - started, cpu_seconds() - cpu
    if verdict.outcome != Outcome.INTACT:
        raise SystemExit(f"the log does not verify as intact: {verdict.message}")
    return elapsed, used


def benchmark(args: argparse.Namespace, workdir: Path) -> None:
    """Write the log, verify it, print the figures."""
    cpus = os.cpu_count() or 1
    print(machine_line(f"OpenCAS audit log verification benchmark: {args.entries} entries"))
    started = time.perf_counter()
    path, head = write_log(workdir / "cas", args.entries)
    written = time.perf_counter() - started
    size = path.stat().st_size
    print(f"log: {args.entries + 1} entries, {size / 2**20:.0f} MiB, written in {written:.1f} s")
    _, raw_openssl = raw_ed25519(2.0)
    raw_sodium = raw_ed25519_libsodium(2.0)
    every, cpu = timed_verify(path, head, cpus)
    one = timed_verify(path, head, 1)[0] if args.single else None
    rate_all = (args.entries + 1) / every
    cpu_per_entry = cpu / (args.entries + 1)
    needed = GOAL_ENTRIES / GOAL_SECONDS
    print(f"raw Ed25519 verifications, cryptography (OpenSSL): {raw_openssl:8.0f} /s (one core)")
    print(f"raw Ed25519 verifications, PyNaCl (libsodium):     {raw_sodium:8.0f} /s (one core)")
    print(f"verify_log, {cpus} processes: {rate_all:8.0f} entries/s ({every:.1f} s)")
    # CPU time per entry hardly depends on what else runs; the rate on idle cores follows.
    print(
        f"verify_log CPU, all processes: {cpu_per_entry * 1e6:.1f} us per entry; on {cpus} idle "
        f"cores at most {cpus / cpu_per_entry:,.0f} entries/s"
    )
    if one is not None:
        print(f"verify_log, 1 process:   {(args.entries + 1) / one:8.0f} entries/s ({one:.1f} s)")
    projected = GOAL_ENTRIES / rate_all
    print(
        f"a million entries in {projected:.1f} s (goal < {GOAL_SECONDS:g} s, "
        f"{needed:,.0f} entries/s): {met(projected < GOAL_SECONDS)}"
    )


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--entries", type=positive(int, 10_000_000), default=GOAL_ENTRIES, help="log entries"
    )
    parser.add_argument(
        "--single", action="store_true", help="also verify with one process, for comparison"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments_given = parse_arguments(sys.argv[1:])
    sys.exit(main(lambda workdir: benchmark(arguments_given, workdir)))
