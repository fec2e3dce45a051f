"""The simulated software measurement: a hash over the files of the installed ``opencas`` package.

On real hardware the TEE measures the code it loads (MRENCLAVE, MRTD, MEASUREMENT). A simulated
platform has no such measurement, so OpenCAS computes one from its own package files; it changes
whenever any shipped file changes, which is what a verifier pinning a measurement needs.
"""

from __future__ import annotations

import hashlib
import os
import stat
from functools import cache
from pathlib import Path

from opencas.errors import PlatformError


def _default_root() -> Path:
    # This module lives in opencas/platform/, so the package directory is two levels up.
    return Path(__file__).resolve().parent.parent


def _collect(root: Path) -> list[tuple[bytes, Path]]:
    files: list[tuple[bytes, Path]] = []

    def raise_walk_error(error: OSError) -> None:
        raise error

    for directory, dirnames, filenames in os.walk(root, onerror=raise_walk_error):
        # Pruning in place keeps os.walk from descending into bytecode caches, whose contents
        # depend on the interpreter that happened to import the package.
        dirnames[:] = [name for name in dirnames if name != "__pycache__"]
        for name in filenames:
            if name.endswith(".pyc"):
                continue
            path = Path(directory) / name
            if not stat.S_ISREG(path.lstat().st_mode):
                continue
            relative = path.relative_to(root).as_posix()
            files.append((os.fsencode(relative), path))
    files.sort(key=lambda item: item[0])
    return files


def measure_directory(root: Path) -> str:
    """Compute the simulated software measurement of the directory ``root``, without caching.

    The measurement is the lowercase hex SHA-256 over the concatenation, for every regular file
    below ``root`` in ascending byte order of its relative path, of::

        path NUL length NUL content

    where ``path`` is the file's path relative to ``root`` with ``/`` separators, as bytes (the
    file system encoding, UTF-8 on Linux); ``length`` is the content's size in bytes written in
    decimal ASCII digits without leading zeros; ``content`` is the file's bytes; and NUL is one
    zero byte. Directories named ``__pycache__`` (at any depth) and files whose name ends in
    ``.pyc`` are skipped; symbolic links, and other entries that are not regular files, are
    neither followed nor measured. Because paths cannot contain NUL and the length says where
    the content ends, no two different trees produce the same byte stream.

    Raises :class:`PlatformError` when ``root`` is not a directory or a file cannot be read.
    """
    if not root.is_dir():
        raise PlatformError(f"cannot measure {root}: it is not a directory")
    digest = hashlib.sha256()
    try:
        for relative, path in _collect(root):
            content = path.read_bytes()
            digest.update(relative + b"\x00" + str(len(content)).encode("ascii") + b"\x00")
            digest.update(content)
    except OSError as exc:
        raise PlatformError(f"cannot measure {root}: {exc}") from exc
    return digest.hexdigest()


@cache
def _cached_measurement(root: Path) -> str:
    return measure_directory(root)


def package_measurement(root: Path | None = None) -> str:
    """The simulated software measurement of the installed ``opencas`` package (or of ``root``).

    The format is that of :func:`measure_directory`, applied to the directory that holds the
    ``opencas`` package when ``root`` is None. The value is computed once per root and process
    and then cached: a CAS reports the code it started with, even if its files change on disk
    later. Raises :class:`PlatformError` when the files cannot be read.
    """
    resolved = (root if root is not None else _default_root()).resolve()
    return _cached_measurement(resolved)
