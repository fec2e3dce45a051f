"""The platform key file: an Ed25519 key in a PEM file that only its owner may read.

The simulated platform's whole identity is such a key; on a confidential VM (``tsm``) one seals
the database key. Both need the same care: the file is created atomically with mode 0600, never
replaced once it exists, and refused when other users can read or write it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opencas.crypto.keys import KeyType
from opencas.crypto.pem import load_private_key_pem, private_key_pem
from opencas.durable_files import fsync_directory
from opencas.errors import PlatformError

# A PKCS#8 PEM Ed25519 key is about 120 bytes; anything much larger is not a key file.
_MAX_KEY_FILE_BYTES = 16 * 1024
_PLATFORM_KEY_TYPES: tuple[KeyType, ...] = ("Ed25519",)


def read_key_file(path: Path) -> Ed25519PrivateKey:
    """Load the key in ``path``, refusing a file that other users can access or that is corrupt.

    Raises ``FileNotFoundError`` when there is no file, :class:`PlatformError` otherwise.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise PlatformError(f"cannot open platform key file {path}: {exc.strerror}") from exc
    try:
        # fstat on the open descriptor checks the very file that is read, not whatever the name
        # points to a moment later.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PlatformError(f"platform key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise PlatformError(
                f"platform key file {path} is accessible by other users "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run 'chmod 600 {path}' and start again"
            )
        data = os.read(fd, _MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise PlatformError(f"cannot read platform key file {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise PlatformError(f"platform key file {path} is corrupt: it is too large for a key")
    try:
        key = load_private_key_pem(data, _PLATFORM_KEY_TYPES)
    except ValueError as exc:
        raise PlatformError(f"platform key file {path} is corrupt: {exc}") from exc
    # Only Ed25519 was accepted; the check narrows the type for what follows.
    if not isinstance(key, Ed25519PrivateKey):
        raise PlatformError(f"platform key file {path} is corrupt: it holds no Ed25519 key")
    return key


def create_key_file(path: Path) -> None:
    """Create ``path`` holding a new key, mode 0600, unless another process creates it first.

    The key is written and fsynced under a temporary name (O_CREAT|O_EXCL) and then hard-linked
    to ``path``, which fails if ``path`` exists: no reader ever sees a partly written key file,
    and an existing key is never replaced.
    """
    parent = path.parent
    key = Ed25519PrivateKey.generate()
    temporary = parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(
            temporary,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
            0o600,
        )
        try:
            os.fchmod(fd, 0o600)
            data = private_key_pem(key)
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        fsync_directory(parent)
    except OSError as exc:
        raise PlatformError(f"cannot create platform key file {path}: {exc}") from exc


def load_or_create_key_file(path: Path) -> Ed25519PrivateKey:
    """The key in ``path``, creating the file first (mode 0600, directory 0700) if it is missing.

    When several processes start at once, all end up with the same key. Raises
    :class:`PlatformError` when the file is accessible by other users, corrupt, or cannot be
    created.
    """
    if not path.exists():
        # Losing the creation race to another process is fine: its key is then loaded below.
        create_key_file(path)
    try:
        return read_key_file(path)
    except FileNotFoundError as exc:
        raise PlatformError(f"platform key file {path} does not exist") from exc
