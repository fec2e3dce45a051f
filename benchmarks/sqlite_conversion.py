"""The conversion of an SQLite store of schema version 2 to version 3 by a build taking it over.

    python benchmarks/sqlite_conversion.py [--records 20000 200000] [--value-bytes 1700]

For each count it creates a store in a temporary directory holding that many records of
``--value-bytes`` random bytes each (a session and its secrets are about 1.7 KB a record),
rewrites it as a cas of schema version 2 left it (``records`` ordered by ``(tbl, key)``, the file
vacuumed), and times two opens, each with the transaction in which a build taking the store over
converts its tables (``upgrade_tables``): the first converts the file and checks every record,
the second only checks them. Their difference is what the conversion (and the compaction of the
file after it) costs; it prints it per record and the file's size before and after.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

from opencas.store import SqliteStore, Transaction
from opencas.store.records import upgrade_tables
from opencas.testing import rewrite_as_sqlite_schema_2

DMK = secrets.token_bytes(32)
PER_TRANSACTION = 5000


def _fill(store: SqliteStore, records: int, value_bytes: int) -> None:
    value = secrets.token_bytes(value_bytes)
    for start in range(0, records, PER_TRANSACTION):
        with store.transaction() as txn:
            for number in range(start, min(start + PER_TRANSACTION, records)):
                txn.put("sessions", f"bench-{number:07}", value)


def _timed_open(path: Path) -> float:
    """Seconds to open the store and run the transaction in which a build taking it over
    converts its tables (nothing to convert: an empty one)."""
    began = time.perf_counter()
    with SqliteStore.open(path, DMK) as store, store.transaction() as txn:
        upgrade_tables(txn)
    return time.perf_counter() - began


def _measure(directory: Path, records: int, value_bytes: int) -> None:
    path = directory / "cas.db"

    def nothing(txn: Transaction) -> None:
        return None

    with SqliteStore.create_atomically(path, DMK, nothing) as store:
        _fill(store, records, value_bytes)
    rewrite_as_sqlite_schema_2(path)
    before = path.stat().st_size
    converting = _timed_open(path)
    after = path.stat().st_size
    checking = _timed_open(path)
    conversion = converting - checking
    print(
        f"  {records} records of {value_bytes} bytes: open with conversion {converting:.2f} s, "
        f"open of the converted file {checking:.2f} s, so the conversion {conversion:.2f} s "
        f"({conversion * 1e6 / records:.0f} us per record); file {before / 1e6:.0f} MB before, "
        f"{after / 1e6:.0f} MB after"
    )


def main() -> int:
    """Measure every count; 0 after measuring, 130 when interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--value-bytes", type=int, default=1700)
    options = parser.parse_args()
    print(
        f"SQLite schema 2 to 3 conversion, {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f} before the start"
    )
    try:
        for records in sorted(options.records):
            directory = Path(tempfile.mkdtemp(prefix="opencas-bench-"))
            try:
                _measure(directory, records, options.value_bytes)
            finally:
                shutil.rmtree(directory, ignore_errors=True)
    except KeyboardInterrupt:
        return 130
    print(f"  load average {os.getloadavg()[0]:.2f} after the run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
