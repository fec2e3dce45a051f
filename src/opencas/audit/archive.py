"""The evidence archive beside the audit log: what workload decisions rested on, by digest.

With ``[audit_log] keep_evidence = true`` the CAS keeps, in the directory ``<log>.evidence/``,
each workload's evidence, the collateral documents and the collateral manifest its verifier
used, and its decision context (:func:`opencas.audit.replay.decision_context`), each in a file
named by the SHA-256 (lowercase hex) of its content. Items are written once (the same
collateral serves many decisions) and made durable before the decision's entry is written, so
an acknowledged decision always has its evidence. Nothing in it is secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

#: The archive of the log file ``audit.log`` is the directory ``audit.log.evidence``.
ARCHIVE_SUFFIX = ".evidence"
_FILE_MODE = 0o600
_DIRECTORY_MODE = 0o700
#: How many digests the writer remembers having stored (then it looks at the directory again).
_REMEMBERED = 4096
#: The largest item read back: evidence and collateral documents are at most 1 MiB.
MAX_ITEM_BYTES = 2 * 1024 * 1024


def archive_path(log_path: Path) -> Path:
    """The evidence archive of the audit log file at ``log_path``."""
    return log_path.with_name(log_path.name + ARCHIVE_SUFFIX)


class EvidenceArchive:
    """Writes items into an archive directory, each once, durably (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._known: set[str] = set()
        directory.mkdir(mode=_DIRECTORY_MODE, parents=True, exist_ok=True)

    def put(self, data: bytes) -> str:
        """Store ``data`` (unless the archive has it) durably; its SHA-256. ``OSError`` when
        it cannot be written."""
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            if digest in self._known:
                return digest
        path = self.directory / digest
        if not path.exists():
            _write_durably(path, data)
        with self._lock:
            if len(self._known) >= _REMEMBERED:
                self._known.clear()
            self._known.add(digest)
        return digest


def _write_durably(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file, fsynced, renamed, the directory
    fsynced (a crash leaves either nothing or the whole item under its name)."""
    temporary = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class ArchiveReader(Mapping[str, bytes]):
    """An archive directory read as the mapping :mod:`opencas.audit.replay` takes: each item
    read when asked for (a missing or unreadable one is absent)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __getitem__(self, digest: str) -> bytes:
        if len(digest) != 64 or not all(char in "0123456789abcdef" for char in digest):
            raise KeyError(digest)
        try:
            with (self.directory / digest).open("rb") as file:
                data = file.read(MAX_ITEM_BYTES + 1)
        except OSError:
            raise KeyError(digest) from None
        if len(data) > MAX_ITEM_BYTES:
            raise KeyError(digest)
        return data

    def __iter__(self) -> Iterator[str]:
        return (path.name for path in self.directory.iterdir() if len(path.name) == 64)

    def __len__(self) -> int:
        return sum(1 for _ in self)
