"""What makes a file's creation or rename survive a crash, for every module that writes one."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """fsync ``directory``, so that a file created or renamed in it stays after a power failure."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` whole or not at all, durably: a new file (``mode``) beside it,
    written and fsynced, renamed over ``path``, the directory fsynced. After a crash ``path``
    holds its old contents or the new ones, never a part."""
    draft = DraftFile(path, mode)
    try:
        draft.write(data)
        draft.publish()
    except BaseException:
        draft.discard()
        raise


class DraftFile:
    """A file written piece by piece beside ``path`` under a temporary name (``mode``), which
    :meth:`publish` puts in place as :func:`publish_file` does, and :meth:`discard` removes: for
    contents too large to hold in memory at once."""

    def __init__(self, path: Path, mode: int = 0o600) -> None:
        self._path = path
        self._temporary = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
        fd = os.open(self._temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        """Append ``data``."""
        self._file.write(data)

    def publish(self) -> None:
        """fsync what was written, rename it over the path, fsync the directory."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._temporary, self._path)
        fsync_directory(self._path.parent)

    def discard(self) -> None:
        """Remove the temporary file (nothing was published, or it was published already)."""
        self._file.close()
        self._temporary.unlink(missing_ok=True)
