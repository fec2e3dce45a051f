"""Reading and writing the pseudo files a TEE's kernel or library OS offers (``/dev/attestation``,
configfs-tsm): bounded reads to the end, whole writes, errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

from opencas.errors import PlatformError


def read_bounded(path: Path, limit: int, what: str, *, empty_ok: bool = False) -> bytes:
    """The contents of ``path``, at most ``limit`` bytes; :class:`PlatformError` naming ``what``.

    Reads until the end of the file, as pseudo files may answer in several pieces. Missing,
    unreadable and over-long files are refused with the path in the message, and so are empty
    ones unless ``empty_ok``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PlatformError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise PlatformError(f"cannot open {what} {path}: {exc.strerror or exc}") from exc
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise PlatformError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if size == 0 and not empty_ok:
        raise PlatformError(f"{what} {path} is empty")
    if size > limit:
        raise PlatformError(f"{what} {path} is larger than the limit of {limit} bytes")
    return b"".join(chunks)


def write_whole(path: Path, data: bytes, what: str) -> None:
    """Write ``data`` to the existing ``path`` in one ``write``; :class:`PlatformError` if not.

    Pseudo files take their value from one write, so a short write is an error, not a retry.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PlatformError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise PlatformError(f"cannot open {what} {path}: {exc.strerror or exc}") from exc
    try:
        written = os.write(fd, data)
    except OSError as exc:
        raise PlatformError(f"cannot write {what} {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if written != len(data):
        raise PlatformError(f"{what} {path} took {written} of {len(data)} bytes")
