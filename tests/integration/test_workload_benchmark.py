"""``benchmarks/workload_attestation.py`` runs its options at tiny sizes and prints what it must.

Several generator processes, a burst with its predicted time, the composed DCAP figure, and the
sessions sweep on SQLite and PostgreSQL with its plot: the full sizes are for a quiet machine
(docs/performance.md); these runs only show that every path measures and reports.
"""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "workload_attestation.py"
TINY = ("--clients", "4", "--seconds", "1", "--timeout", "20")


def run_benchmark(*args: str) -> str:
    run = subprocess.run(
        [sys.executable, str(BENCHMARK), *TINY, *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def test_the_default_phases_run_with_generator_processes_and_a_burst() -> None:
    out = run_benchmark("--micro-seconds", "0.1", "--burst", "20", "--generator-processes", "2")
    assert "4 clients in 2 generator processes" in out
    assert re.search(r"errors = 0 of [1-9]", out), out
    assert "20 of 20 succeeded" in out
    assert re.search(r"predicted by the attest phase: [\d.]+ s \(20 / [\d,]+ attestations/s", out)
    assert "healthz through wrk:" in out or "wrk is not installed" in out
    composed = [line for line in out.splitlines() if re.match(r"\s+(SGX|TDX): .* us: ", line)]
    assert len(composed) == 2, out
    assert "DCAP (composed" in out
    floor = re.search(r"so at most ([\d,]+) attestations/s with every CPU busy; 4 clients", out)
    assert floor is not None, out
    assert int(floor.group(1).replace(",", "")) > 0, out


def test_the_sessions_sweep_fills_measures_and_plots_on_both_backends(
    tmp_path: Path, postgres_url: str
) -> None:
    server = postgres_url.rsplit("/", 1)[0]  # the benchmark makes a database of its own
    plot = tmp_path / "plot.svg"
    out = run_benchmark(
        "--sessions",
        "10",
        "20",
        "--session-writes",
        "3",
        "--plot",
        str(plot),
        "--postgres",
        server,
        "--generator-processes",
        "1",
    )
    for backend in ("SQLite", "PostgreSQL"):
        table = out.split(f"sessions stored, {backend}:")[1].split("\n\n")[0]
        sizes = [int(row.split()[0]) for row in table.splitlines()[2:4]]
        # The store holds exactly the sessions asked for: the fill counts the bench session
        # and the sessions the writes of the smaller size created.
        assert sizes == [10, 20], table
        assert f"{backend}: server CPU per attestation" in out
    svg = ElementTree.fromstring(plot.read_text(encoding="utf-8"))
    lines = svg.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 6  # p50, p95, p99 for each backend
    assert all(len(line.attrib["points"].split()) == 2 for line in lines)
