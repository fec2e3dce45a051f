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
    temporary = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
