"""The simulated platform: evidence signed by a key in a file, sealing under a key derived from it.

For development and tests only. It protects nothing that the file system does not protect: the
platform key file is the platform's whole identity, so whoever can read it can produce this
platform's evidence and unseal what it sealed. That is why it always reports debug mode.
"""

from __future__ import annotations

from pathlib import Path

from opencas.attestation.evidence import Evidence
from opencas.attestation.simulated import (
    EVIDENCE_TYPE,
    create_simulated_evidence,
    is_simulated_measurement,
)
from opencas.crypto.envelope import EnvelopeError, derive_key, open_envelope, seal
from opencas.crypto.keys import key_hash
from opencas.errors import PlatformError
from opencas.platform.key_file import create_key_file, read_key_file

#: What protects what the simulated platform seals: nothing but the key file's permissions.
KEY_PROTECTION = "a key file that the operator can read (simulated platform)"

_SEAL_PURPOSE = "simulated-seal"
_SEAL_AAD = b"opencas-simulated-seal/v1"


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
            key = read_key_file(key_file)
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
            create_key_file(key_file)
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
    def key_protection(self) -> str:
        """What protects sealed data here: only the key file's permissions."""
        return KEY_PROTECTION

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
