"""A snapshot of the store, its restore on a backup and a database key rollover, timed for
growing numbers of sessions.

    python benchmarks/snapshot_rollover.py [--sessions 10000 100000] [--repeat K]
        [--postgres URL [--backup-postgres URL]]

For each count it opens a CAS in-process in a temporary directory (SQLite, or a PostgreSQL
database it is given, which must be empty), provisions it, creates one real session through the
session service and stores that session's two records (``sessions``, ``session-secrets``) under
as many names as asked, 5000 per transaction, and registers a backup machine (a second
simulated machine in the same directory). Then it times one snapshot to a directory
(``write_snapshot``: read in one view, sealed, written, fsynced, with the database key sealed
for the backup), its restore on the backup (``restore``: the key opened, every frame checked,
the database created from the records; on PostgreSQL in a second database, ``--backup-postgres``)
and one whole rollover
(``start_key_rollover`` and every batch in this thread, 1000 records per transaction, as
``[limits] key_rollover_batch`` defaults). It prints the time, the records per second and, against
the smallest count, how the cost per record grew: linear growth keeps it near 1.0. For the
rollover it also prints this process's CPU time and its read and write system calls per record
(``/proc/self/io``): on a machine shared with other work the CPU time moves less than the wall
time, and the system calls (SQLite reading a page its cache lost, writing the log) not at all.
Against the smallest count it prints how each of them per record grew; the rollover's CPU per
record counts as near-constant within x1.15. On PostgreSQL the CPU and system calls are this
process's only, not the server's.

On SQLite it then measures the floor under that figure: on a copy of the same file taken before
the rollover (SQLite's online backup, page for page), the same row changes without the record
layer. The store's own row statements (``rekey_rows``, ``delete_record``, ``write_record``,
``write_state``) move every row to a random 32-byte id in batches of the same size, written in
id order, one commit each, on a connection set up like the store's writer, but nothing is
opened, checked, sealed or hashed. What SQLite's B-trees cost grows with the store (each moved
row changes leaves of the id-ordered trees at random places, and a larger tree shares fewer of
them within a batch); the rollover's CPU less that floor is what the CAS adds per record, and
that part must stay near-constant (bound x1.15).

With ``--repeat K`` every count is measured K times, the counts in turns, and the growth is
taken between each figure's least: on a shared or virtual machine the CPU time of the same work
moves by a fifth from one run to the next, and the first run of a process pays for its start.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from opencas.config.availability import AvailabilityConfig, load_availability_config
from opencas.config.owner import parse_owner_config
from opencas.config.owner_identity import OwnerIdentity
from opencas.policy.caller import Caller
from opencas.service import key_rollover
from opencas.service.backups import backup_key, backup_request, register_backup, restore
from opencas.service.cas import Cas, load_platform, open_cas
from opencas.service.provisioning import provision
from opencas.service.sessions import create_session
from opencas.service.snapshots import write_snapshot
from opencas.store import sqlite as sqlite_store
from opencas.store.records import WalkedRow, WalkPosition
from opencas.testing import write_config

OWNER = OwnerIdentity("a1" * 32, None)
SESSION = (
    'name: bench-template\nversion: "0.3"\n'
    "services:\n  - name: app\n    mrenclaves: ['" + "ab" * 32 + "']\n"
    "    command: app --serve\n    environment:\n      PASSWORD: $$CAS::password$$\n"
    "secrets:\n  - name: password\n    kind: ascii\n    size: 24\n"
    "  - name: ca\n    kind: x509-ca\n    export_public: true\n"
)
#: The tolerance within which the cost per record counts as linear.
LINEAR_WITHIN = 1.5
#: The tolerance within which the rollover's CPU per record counts as near-constant: CPU time
#: moves less with the machine's load than wall time, so its bound is tighter.
CPU_WITHIN = 1.15


def _fill(cas: Cas, sessions: int) -> int:
    create_session(cas, SESSION, Caller(OWNER.key_hash))
    session = cas.store.get("sessions", "bench-template")
    values = cas.store.get("session-secrets", "bench-template")
    assert session is not None
    assert values is not None
    for start in range(0, sessions, 5000):
        with cas.store.transaction() as txn:
            for number in range(start, min(start + 5000, sessions)):
                txn.put("sessions", f"bench-{number:06}", session)
                txn.put("session-secrets", f"bench-{number:06}", values)
    return len(session) + len(values)


def _register_backup(cas: Cas, directory: Path, url: str | None) -> AvailabilityConfig:
    """A backup machine in ``directory``, registered with ``cas``; its availability config."""
    directory.mkdir()
    config = load_availability_config(write_config(directory, 18082, 18767, database_url=url))
    platform = load_platform(config)
    key = backup_key(config, platform, create=True)
    request = backup_request(platform, key, secrets.token_hex(16))
    register_backup(cas, Caller(OWNER.key_hash), "bench", "https://127.0.0.1:18082", request)
    return config


def _io_calls() -> tuple[int, int]:
    """This process's read and write system calls so far (Linux ``/proc/self/io``)."""
    counts = {}
    with open("/proc/self/io", encoding="ascii") as file:
        for line in file:
            name, value = line.split(":")
            counts[name] = int(value)
    return counts["syscr"], counts["syscw"]


@dataclass(frozen=True)
class _RowsOnly:
    """The row changes of a rollover without the record layer: CPU seconds, system calls, rows."""

    cpu: float
    reads: int
    writes: int
    moved: int


@dataclass(frozen=True)
class _Measured:
    """One count's figures: seconds, the rollover's CPU seconds and system calls, records, and
    on SQLite the same row changes without the record layer."""

    snapshot_seconds: float
    rollover_seconds: float
    rollover_cpu: float
    reads: int
    writes: int
    records: int
    rows_only: _RowsOnly | None

    def per_record(self) -> tuple[float, ...]:
        """Snapshot and rollover seconds, rollover CPU, reads and writes, each per record."""
        figures = (
            self.snapshot_seconds,
            self.rollover_seconds,
            self.rollover_cpu,
            self.reads,
            self.writes,
        )
        return tuple(figure / self.records for figure in figures)

    def split_cpu(self) -> tuple[float, float] | None:
        """The rollover's CPU per record in SQLite's row changes and in the rest; ``None``
        without the row-only figure."""
        if self.rows_only is None:
            return None
        floor = self.rows_only.cpu / self.rows_only.moved
        return floor, self.rollover_cpu / self.records - floor


def _best(runs: list[_Measured]) -> _Measured:
    """Each figure's least over ``runs`` of one count: what the work costs when the machine
    takes the least from it (other processes, a cold start)."""
    floors = [run.rows_only for run in runs if run.rows_only is not None]
    return _Measured(
        min(run.snapshot_seconds for run in runs),
        min(run.rollover_seconds for run in runs),
        min(run.rollover_cpu for run in runs),
        min(run.reads for run in runs),
        min(run.writes for run in runs),
        runs[0].records,
        min(floors, key=lambda floor: floor.cpu / floor.moved) if floors else None,
    )


def _copy_database(source: Path, copy: Path) -> None:
    """A consistent page-for-page copy of the SQLite database ``source`` (its log included)."""
    with (
        contextlib.closing(sqlite3.connect(source)) as reading,
        contextlib.closing(sqlite3.connect(copy)) as writing,
    ):
        reading.backup(writing)


def _moved_row(walked: WalkedRow) -> tuple[str, bytes, int, bytes, bytes]:
    """A walked row of a whole store as typed values: table, id, version, envelope, entry."""
    assert walked.row is not None
    version, envelope = walked.row
    assert isinstance(walked.table, str)
    assert isinstance(walked.record_id, bytes)
    assert isinstance(version, int)
    assert isinstance(envelope, bytes)
    assert isinstance(walked.sealed, bytes)
    return walked.table, walked.record_id, version, envelope, walked.sealed


def _rows_only_rollover(database: Path, batch: int) -> _RowsOnly:
    """Move every row of the SQLite store ``database`` to a random id with the store's own row
    statements, ``batch`` rows per commit, and nothing of the record layer; what it cost."""
    conn = sqlite_store.writer_connection(database)
    try:
        state = secrets.token_bytes(200)
        calls_before = _io_calls()
        cpu_began = time.process_time()
        after: WalkPosition | None = None
        moved = 0
        while True:
            conn.execute("BEGIN IMMEDIATE")
            rows = sqlite_store._SqliteRows(conn, database)
            page = rows.rekey_rows(after, batch)
            moving = [_moved_row(walked) for walked in page]
            for table, record_id, *_ in moving:
                rows.delete_record(table, record_id)
            # New ids in their own order, as the record layer writes them.
            renamed = sorted(
                (table, secrets.token_bytes(32), version, envelope, sealed)
                for table, _, version, envelope, sealed in moving
            )
            for table, new_id, version, envelope, sealed in renamed:
                rows.write_record(table, new_id, version, envelope, sealed)
            rows.write_state(state)
            conn.execute("COMMIT")
            moved += len(page)
            if len(page) < batch:
                break
            after = page[-1].position
        cpu = time.process_time() - cpu_began
        calls_after = _io_calls()
    finally:
        conn.close()
    return _RowsOnly(cpu, calls_after[0] - calls_before[0], calls_after[1] - calls_before[1], moved)


def _measure(directory: Path, sessions: int, url: str | None, backup_url: str | None) -> _Measured:
    snapshots = directory / "snapshots"
    snapshots.mkdir()
    config = write_config(
        directory,
        18081,
        18766,
        database_url=url,
        extra=f'[backup]\ndirectory = "{snapshots}"\n',
    )
    cas = open_cas(load_availability_config(config))
    try:
        provision(
            cas, OWNER, parse_owner_config("", "owner.toml", "toml").config, self_provisioned=True
        )
        record_bytes = _fill(cas, sessions)
        standby = _register_backup(cas, directory / "backup", backup_url)
        began = time.perf_counter()
        written = write_snapshot(cas)
        snapshot_seconds = time.perf_counter() - began
        began = time.perf_counter()
        restore(standby, snapshots / written.name)
        restore_seconds = time.perf_counter() - began
        copy = None
        if url is None:
            copy = directory / "rows-only.db"
            _copy_database(cas.store.path, copy)  # type: ignore[attr-defined]
        # The batches run here, not in a thread, so the clock stops when the last one is done.
        key_rollover.run_in_background = key_rollover.run_batches  # type: ignore[assignment]
        calls_before = _io_calls()
        cpu_began = time.process_time()
        began = time.perf_counter()
        key_rollover.start_key_rollover(cas, Caller(OWNER.key_hash))
        rollover_seconds = time.perf_counter() - began
        rollover_cpu = time.process_time() - cpu_began
        calls_after = _io_calls()
        reads, writes = calls_after[0] - calls_before[0], calls_after[1] - calls_before[1]
        record = key_rollover.read_rollover(cas.store)
        assert record is not None
        assert record.state == "finished"
        print(
            f"  {sessions} sessions ({2 * sessions} records of {record_bytes} bytes per session): "
            f"snapshot {snapshot_seconds:.2f} s ({written.size / 1e6:.1f} MB, "
            f"{2 * sessions / snapshot_seconds:,.0f} records/s); restore on the backup "
            f"{restore_seconds:.2f} s ({2 * sessions / restore_seconds:,.0f} records/s); "
            f"rollover {rollover_seconds:.2f} s "
            f"({record.moved} records moved, {record.moved / rollover_seconds:,.0f} records/s; "
            f"{rollover_cpu * 1e6 / record.moved:.0f} us of this process's CPU, "
            f"{reads / record.moved:.1f} reads and {writes / record.moved:.1f} writes per record)"
        )
    finally:
        cas.close()
    rows_only = None
    if copy is not None:
        rows_only = _rows_only_rollover(copy, cas.config.key_rollover_batch)
        layer_part = rollover_cpu / record.moved - rows_only.cpu / rows_only.moved
        print(
            f"    the same row changes without the record layer: {rows_only.moved} rows, "
            f"{rows_only.cpu * 1e6 / rows_only.moved:.0f} us of CPU, "
            f"{rows_only.reads / rows_only.moved:.1f} reads and "
            f"{rows_only.writes / rows_only.moved:.1f} writes per row; the record layer's part of "
            f"the rollover {layer_part * 1e6:.0f} us per record"
        )
    return _Measured(
        snapshot_seconds, rollover_seconds, rollover_cpu, reads, writes, 2 * sessions, rows_only
    )


def _empty_database(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


def main() -> int:
    """Measure every count; 0 after measuring, 130 when interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--postgres", help="an empty PostgreSQL database to measure on (emptied)")
    parser.add_argument(
        "--backup-postgres", help="with --postgres: the backup's database to restore to (emptied)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure every count this many times, in turns, and compare each figure's least",
    )
    options = parser.parse_args()
    backend = "PostgreSQL" if options.postgres else "SQLite"
    print(
        f"snapshot and key rollover on {backend}, {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f} before the start"
    )
    runs: dict[int, list[_Measured]] = {sessions: [] for sessions in sorted(options.sessions)}
    try:
        for _ in range(options.repeat):
            for sessions, of_count in runs.items():
                directory = Path(tempfile.mkdtemp(prefix="opencas-bench-"))
                try:
                    for url in (options.postgres, options.backup_postgres):
                        if url:
                            _empty_database(url)
                    of_count.append(
                        _measure(directory, sessions, options.postgres, options.backup_postgres)
                    )
                finally:
                    shutil.rmtree(directory, ignore_errors=True)
    except KeyboardInterrupt:
        return 130
    results = [_best(of_count) for of_count in runs.values()]
    if options.repeat > 1:
        for best in results:
            split = best.split_cpu()
            shown = (
                ""
                if split is None
                else (
                    f"; SQLite's row changes {split[0] * 1e6:.0f} us, the record layer "
                    f"{split[1] * 1e6:.0f} us"
                )
            )
            print(
                f"  least of {options.repeat} at {best.records} records: rollover CPU "
                f"{best.rollover_cpu * 1e6 / best.records:.0f} us per record{shown}"
            )
    base = results[0]
    for measured in results[1:]:
        grew = [
            mine / theirs if theirs else float("nan")
            for mine, theirs in zip(measured.per_record(), base.per_record(), strict=True)
        ]
        verdict = "linear" if all(g <= LINEAR_WITHIN for g in grew[:2]) else "NOT linear"
        cpu_verdict = "near-constant" if grew[2] <= CPU_WITHIN else "NOT near-constant"
        print(
            f"  cost per record at {measured.records} records against {base.records}: snapshot "
            f"x{grew[0]:.2f}, rollover x{grew[1]:.2f} ({verdict}: bound x{LINEAR_WITHIN}); "
            f"rollover CPU of this process x{grew[2]:.2f} ({cpu_verdict}: bound x{CPU_WITHIN}), "
            f"reads x{grew[3]:.2f}, writes x{grew[4]:.2f}"
        )
        split, base_split = measured.split_cpu(), base.split_cpu()
        if split is not None and base_split is not None:
            layer = split[1] / base_split[1]
            layer_verdict = "near-constant" if layer <= CPU_WITHIN else "NOT near-constant"
            print(
                f"    of which SQLite's row changes x{split[0] / base_split[0]:.2f} "
                f"({base_split[0] * 1e6:.0f} -> {split[0] * 1e6:.0f} us) and the record layer "
                f"x{layer:.2f} ({base_split[1] * 1e6:.0f} -> {split[1] * 1e6:.0f} us; "
                f"{layer_verdict}: bound x{CPU_WITHIN})"
            )
    print(f"  load average {os.getloadavg()[0]:.2f} after the run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
