"""``benchmarks/verify.py`` runs on the vectors and prints a verdict for each evidence type."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "verify.py"


def test_the_verification_benchmark_measures_every_real_evidence_type() -> None:
    run = subprocess.run(
        [sys.executable, str(BENCHMARK), "--seconds", "0.3", "--slice", "0.05"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    for evidence in ("sgx-dcap", "tdx", "snp"):
        verdict = next(line for line in run.stdout.splitlines() if f"({evidence}):" in line)
        assert "goal >= 80%" in verdict
