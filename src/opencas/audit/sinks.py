"""Where audit entries go: the file sink (an append-only file, fsynced).

A sink takes lines with :meth:`Sink.write` and makes every line written so far durable with
:meth:`Sink.sync`; the writer acknowledges an entry only after ``sync`` returned. Either raises
``OSError`` when it cannot, and the writer then fails the operation.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

#: The log file is readable by its owner only, like the database beside it.
LOG_FILE_MODE = 0o600
_TAIL_BLOCK = 64 * 1024


class Sink(Protocol):
    """An append-only destination of audit lines."""

    def write(self, line: bytes) -> None:
        """Append ``line`` (without its newline); it is durable only after :meth:`sync`."""
        ...

    def sync(self) -> None:
        """Make every line written so far durable."""
        ...

    def close(self) -> None:
        """Release the sink."""
        ...


class FileSink:
    """An append-only file: one entry per line, fsynced by :meth:`sync`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        created = not path.exists()
        self._fd = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_FILE_MODE
        )
        if created:
            os.fchmod(self._fd, LOG_FILE_MODE)
            os.fsync(self._fd)
            _fsync_directory(path.parent)

    def write(self, line: bytes) -> None:
        """Append ``line`` and its newline to the file (not yet fsynced)."""
        data = memoryview(line + b"\n")
        while data:
            written = os.write(self._fd, data)
            data = data[written:]

    def sync(self) -> None:
        """fsync the file."""
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file."""
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cut_partial_line(path: Path) -> int:
    """Remove a last line without its newline (a write a crash interrupted); bytes removed.

    Such a line was never acknowledged: the writer acknowledges an entry only once its whole
    line, newline included, is fsynced.
    """
    with path.open("r+b") as file:
        size = file.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - _TAIL_BLOCK)
            file.seek(start)
            block = file.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end == size:
            return 0
        file.truncate(end)
        file.flush()
        os.fsync(file.fileno())
        return size - end


def lines_backwards(path: Path) -> Iterator[bytes]:
    """The lines of ``path`` (without newlines), last first; reads only as far as asked."""
    with path.open("rb") as file:
        end = file.seek(0, os.SEEK_END)
        rest = b""
        while end > 0:
            start = max(0, end - _TAIL_BLOCK)
            file.seek(start)
            block = file.read(end - start) + rest
            end = start
            parts = block.split(b"\n")
            rest = parts[0]
            for part in reversed(parts[1:]):
                if part:
                    yield part
        if rest:
            yield rest
