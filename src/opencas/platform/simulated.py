"""The simulated platform: evidence signed by a key in a file, sealing under a key derived from it.

For development and tests only. It protects nothing that the file system does not protect: the
platform key file is the platform's whole identity, so whoever can read it can produce this
platform's evidence and unseal what it sealed. That is why it always reports debug mode.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opencas.attestation.evidence import Evidence
from opencas.attestation.simulated import (
    EVIDENCE_TYPE,
    create_simulated_evidence,
    is_simulated_measurement,
)
from opencas.crypto.envelope import EnvelopeError, derive_key, open_envelope, seal
from opencas.crypto.keys import KeyType, key_hash
from opencas.crypto.pem import load_private_key_pem, private_key_pem
from opencas.errors import PlatformError

_SEAL_PURPOSE = "simulated-seal"
_SEAL_AAD = b"opencas-simulated-seal/v1"
# A PKCS#8 PEM Ed25519 key is about 120 bytes; anything much larger is not a key file.
_MAX_KEY_FILE_BYTES = 16 * 1024
_PLATFORM_KEY_TYPES: tuple[KeyType, ...] = ("Ed25519",)


def _read_key_file(path: Path) -> Ed25519PrivateKey:
    """Load the platform key, refusing a file that other users can access or that is corrupt.

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


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_key_file(path: Path) -> None:
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
        _fsync_directory(parent)
    except OSError as exc:
        raise PlatformError(f"cannot create platform key file {path}: {exc}") from exc


class SimulatedPlatform:
    """A simulated TEE whose identity is an Ed25519 key kept in a file (PEM PKCS#8, mode 0600).

    ``kind`` is ``"simulated"`` and ``debug`` is always True. Evidence is simulated evidence
    signed by the platform key; sealing is AES-256-GCM under a key derived (HKDF-SHA256, info
    ``b"opencas/v1/simulated-seal"``) from the platform private key, in the envelope format of
    :mod:`opencas.crypto.envelope` with AAD ``b"opencas-simulated-seal/v1"``.
    """

    def __init__(self, key_file: Path, measurement: str) -> None:
        """Load the platform key from the existing ``key_file``.

        Raises :class:`PlatformError` when the file is missing, accessible by other users or
        corrupt, and ``ValueError`` when ``measurement`` is not lowercase hex of 1 to 64 bytes.
        """
        if not is_simulated_measurement(measurement):
            raise ValueError("measurement must be lowercase hex of 1 to 64 bytes")
        try:
            key = _read_key_file(key_file)
        except FileNotFoundError as exc:
            raise PlatformError(f"platform key file {key_file} does not exist") from exc
        self._key_file = key_file
        self._key = key
        self._measurement = measurement
        self._seal_key = derive_key(key.private_bytes_raw(), _SEAL_PURPOSE)

    @classmethod
    def load_or_create(cls, key_file: Path, measurement: str) -> SimulatedPlatform:
        """Load the platform key from ``key_file``, creating the file first if it is missing.

        A new file is created atomically with mode 0600 (its directory with mode 0700 if
        missing); when several processes start at once, all end up with the same key. An
        existing file must be accessible by its owner only and hold an Ed25519 key; otherwise
        :class:`PlatformError` says what to fix. Raises ``ValueError`` when ``measurement`` is
        not lowercase hex of 1 to 64 bytes.
        """
        if not is_simulated_measurement(measurement):
            raise ValueError("measurement must be lowercase hex of 1 to 64 bytes")
        if not key_file.exists():
            # Losing the creation race to another process is fine: its key is then loaded below.
            _create_key_file(key_file)
        return cls(key_file, measurement)

    @property
    def kind(self) -> str:
        """Always ``"simulated"``."""
        return EVIDENCE_TYPE

    @property
    def debug(self) -> bool:
        """Always True: nothing protects a simulated platform's memory or key."""
        return True

    @property
    def measurement(self) -> str:
        """The software measurement this platform reports, lowercase hex."""
        return self._measurement

    @property
    def key_file(self) -> Path:
        """The file that holds the platform key."""
        return self._key_file

    @property
    def platform_key_hash(self) -> str:
        """The key hash of the platform key, as verified evidence reports it."""
        return key_hash(self._key)

    def evidence(self, report_data: bytes) -> Evidence:
        """Simulated evidence binding the 64-byte ``report_data``; ``ValueError`` otherwise."""
        return create_simulated_evidence(self._key, self._measurement, report_data)

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext`` so that only a platform with the same key can unseal it."""
        return seal(self._seal_key, plaintext, _SEAL_AAD)

    def unseal(self, sealed: bytes) -> bytes:
        """Return what :meth:`seal` sealed under this platform key.

        Raises :class:`PlatformError` when ``sealed`` was sealed under another platform key or
        any byte of it changed.
        """
        try:
            return open_envelope(self._seal_key, sealed, _SEAL_AAD)
        except EnvelopeError as exc:
            raise PlatformError("cannot unseal: sealed by another platform key or damaged") from exc
