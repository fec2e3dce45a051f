"""The database lock: one cas process per database, and a clear refusal naming the holder."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from opencas.errors import StoreError
from opencas.store import DatabaseLock, lock_path

_HOLDER = """
import sys
from pathlib import Path
from opencas.store import DatabaseLock

with DatabaseLock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "cas.db"


@pytest.fixture
def holder(database: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds the lock until its stdin closes."""
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(database)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "locked\n"
            yield child
        finally:
            if child.poll() is None:
                child.kill()


def test_lock_held_by_another_process_is_refused_with_its_pid(
    database: Path, holder: subprocess.Popen[str]
) -> None:
    lock = DatabaseLock(database)
    with pytest.raises(StoreError) as caught:
        lock.acquire()
    message = str(caught.value)
    assert message == (f"database {database} is in use by another cas process (pid {holder.pid})")
    assert not lock.held


def test_lock_released_by_exit_can_be_taken(database: Path, holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(30) == 0
    with DatabaseLock(database) as lock:
        assert lock.held
        assert lock.path == lock_path(database)
        assert lock.path.read_text().strip() != ""


def test_released_lock_can_be_reacquired(database: Path) -> None:
    lock = DatabaseLock(database)
    lock.acquire()
    assert lock.held
    lock.release()
    assert not lock.held
    lock.release()  # releasing twice is harmless
    with lock:
        assert lock.held
    assert not lock.held
    with DatabaseLock(database):
        pass


def test_lock_in_the_same_process_is_also_exclusive(database: Path) -> None:
    with DatabaseLock(database):
        with pytest.raises(StoreError, match="in use by another cas process"):
            DatabaseLock(database).acquire()
        assert lock_path(database).read_text().strip().isdigit()


def test_acquiring_twice_on_one_object_is_a_bug(database: Path) -> None:
    with DatabaseLock(database) as lock, pytest.raises(RuntimeError):
        lock.acquire()


def test_lock_file_name(database: Path) -> None:
    assert lock_path(database) == database.with_name("cas.db.lock")


def test_unusable_lock_location_is_a_store_error(tmp_path: Path) -> None:
    database = tmp_path / "missing-directory" / "cas.db"
    with pytest.raises(StoreError, match="cannot open lock file"):
        DatabaseLock(database).acquire()
