"""``benchmarks/snapshot_rollover.py`` measures a snapshot, a restore and a rollover at each
count, and on SQLite the same row changes without the record layer beside them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "snapshot_rollover.py"


def test_the_rollover_benchmark_shows_sqlites_part_and_the_record_layers_apart(
    tmp_path: Path,
) -> None:
    run = subprocess.run(
        [sys.executable, str(BENCHMARK), "--sessions", "30", "60", "--repeat", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"TMPDIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    floors = [line for line in lines if "the same row changes without the record layer" in line]
    # Two counts, two turns: each measured its floor on a copy holding every row of its store.
    assert len(floors) == 4
    for line in floors:
        found = re.search(r"layer: (\d+) rows", line)
        assert found is not None
        assert int(found.group(1)) >= 2 * 30
    assert sum("least of 2 at" in line for line in lines) == 2
    growth = next(line for line in lines if "of which SQLite's row changes x" in line)
    assert re.search(r"the record layer x\d+\.\d\d \(\d+ -> \d+ us", growth)
    # Every temporary file went to the directory the test gave it, and was removed.
    assert list(tmp_path.iterdir()) == []
