"""The database lock: at most one ``cas`` process works on a database at a time.

The lock is an exclusive ``flock`` on ``<database>.lock``. The kernel releases it when the holder
exits, however it exits, so a crashed process never leaves a stale lock behind. The holder writes
its pid into the file so that the refusal can say who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from opencas.errors import StoreError


class DatabaseInUse(StoreError, code="database-in-use"):
    """Another process holds the database lock; ``holder`` is its pid (``unknown`` when it
    is not written yet)."""

    def __init__(self, message: str, holder: str = "unknown") -> None:
        super().__init__(message)
        self.holder = holder


def lock_path(database: Path) -> Path:
    """The lock file that guards ``database``: ``<database>.lock``."""
    return database.with_name(database.name + ".lock")


class DatabaseLock:
    """An exclusive, non-blocking, inter-process lock on a database.

    Use it as a context manager or call :meth:`acquire` / :meth:`release`. Acquiring raises
    :class:`~opencas.errors.StoreError` at once when another process (or another lock object in
    this process) holds the lock; it never waits.
    """

    def __init__(self, database: Path) -> None:
        self._database = database
        self._path = lock_path(database)
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        """The lock file."""
        return self._path

    @property
    def held(self) -> bool:
        """Whether this object currently holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise ``StoreError`` naming the database and the holder's pid."""
        if self._fd is not None:
            raise RuntimeError(f"lock on {self._database} is already held by this object")
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(
                f"cannot open lock file {self._path} for database {self._database}: "
                f"{exc.strerror or exc}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise DatabaseInUse(
                f"database {self._database} is in use by another cas process (pid {holder})",
                holder,
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StoreError(
                f"cannot lock {self._path} for database {self._database}: {exc.strerror or exc}"
            ) from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot write lock file {self._path}: {exc.strerror or exc}") from exc
        self._fd = fd

    def release(self) -> None:
        """Give the lock up; does nothing when it is not held.

        The lock file stays: removing it would let a third process lock a new file while a
        second one still holds the old, unlinked one.
        """
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)

    def __enter__(self) -> DatabaseLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    # The holder may be between truncating and writing its pid; "unknown" is then the truth.
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return "unknown"
    return text if text.isdigit() else "unknown"
