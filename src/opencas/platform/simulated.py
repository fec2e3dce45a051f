"""The simulated platform: evidence signed by a key in a file, sealing under a key derived from it.

For development and tests only. It protects nothing that the file system does not protect: the
platform key file is the platform's whole identity, so whoever can read it can produce this
platform's evidence and unseal what it sealed. That is why it always reports debug mode.

One key file is one *simulated machine*: its machine id is the key hash of the platform key, the
evidence carries that key (its verifier reports the id as ``platform_id["machine_id"]``), and
what it seals names the machine that sealed it, so that data brought to another machine is
refused with both machines named.

Its operator chooses what sealing binds (``[platform] simulated_sealing``): the machine alone
(``machine``, the default), so that every build on the machine unseals what another sealed, or
the machine and the software measurement (``measurement``), so that another build cannot unseal
it, as Gramine's MRENCLAVE sealing key on SGX. Unsealing opens both: the setting chooses how
this platform seals, and data sealed under a measurement opens only for that measurement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

from opencas.attestation.evidence import Evidence
from opencas.attestation.simulated import (
    EVIDENCE_TYPE,
    create_simulated_evidence,
    is_security_version,
    is_simulated_measurement,
)
from opencas.crypto.envelope import EnvelopeError, derive_key, open_envelope, seal
from opencas.crypto.keys import key_hash
from opencas.errors import PlatformError
from opencas.platform.key_file import create_key_file, read_key_file

#: What protects what the simulated platform seals: nothing but the key file's permissions.
KEY_PROTECTION = "a key file that the operator can read (simulated platform)"

SimulatedSealing = Literal["machine", "measurement"]
#: What ``[platform] simulated_sealing`` may say, the default first.
SIMULATED_SEALINGS: Final[tuple[SimulatedSealing, ...]] = ("machine", "measurement")

_SEAL_PURPOSE = "simulated-seal"
_MEASUREMENT_SEAL_PURPOSE = "simulated-seal-measurement/"
_SEAL_AAD = b"opencas-simulated-seal/v1"
# Sealed data of format 2 starts with this byte and the sealing machine's 32-byte id; format 1
# (a bare envelope, whose first byte is the envelope version 0x01) names no machine. Format 3
# adds the measurement it is sealed to (one length byte, then its bytes).
_SEAL_FORMAT_MACHINE = 0x02
_SEAL_FORMAT_MEASUREMENT = 0x03
_MACHINE_ID_SIZE = 32


class SimulatedPlatform:
    """A simulated TEE whose identity is an Ed25519 key kept in a file (PEM PKCS#8, mode 0600).

    ``kind`` is ``"simulated"`` and ``debug`` is always True. Evidence is simulated evidence
    signed by the platform key; sealing is AES-256-GCM under a key derived (HKDF-SHA256, info
    ``b"opencas/v1/simulated-seal"``) from the platform private key, in the envelope format of
    :mod:`opencas.crypto.envelope` with AAD ``b"opencas-simulated-seal/v1"``; with ``sealing``
    ``"measurement"`` the key and the AAD also bind the measurement (docs/formats.md).
    """

    def __init__(
        self,
        key_file: Path,
        measurement: str,
        *,
        security_version: int = 0,
        sealing: SimulatedSealing = "machine",
    ) -> None:
        """Load the platform key from the existing ``key_file``; the evidence states
        ``measurement`` at ``security_version``; :meth:`seal` binds what ``sealing`` says.

        Raises :class:`PlatformError` when the file is missing, accessible by other users or
        corrupt, and ``ValueError`` when ``measurement`` is not lowercase hex of 1 to 64 bytes,
        ``security_version`` not in 0..65535 or ``sealing`` not one of :data:`SIMULATED_SEALINGS`.
        """
        if not is_simulated_measurement(measurement):
            raise ValueError("measurement must be lowercase hex of 1 to 64 bytes")
        if not is_security_version(security_version):
            raise ValueError("a security version is an integer in 0..65535")
        if sealing not in SIMULATED_SEALINGS:
            raise ValueError(f"simulated sealing is one of {', '.join(SIMULATED_SEALINGS)}")
        try:
            key = read_key_file(key_file)
        except FileNotFoundError as exc:
            raise PlatformError(f"platform key file {key_file} does not exist") from exc
        self._key_file = key_file
        self._key = key
        self._measurement = measurement
        self._security_version = security_version
        self._sealing: SimulatedSealing = sealing
        self._seal_key = derive_key(key.private_bytes_raw(), _SEAL_PURPOSE)

    @classmethod
    def load_or_create(
        cls,
        key_file: Path,
        measurement: str,
        *,
        security_version: int = 0,
        sealing: SimulatedSealing = "machine",
    ) -> SimulatedPlatform:
        """Load the platform key from ``key_file``, creating the file first if it is missing.

        A new file is created atomically with mode 0600 (its directory with mode 0700 if
        missing); when several processes start at once, all end up with the same key. An
        existing file must be accessible by its owner only and hold an Ed25519 key; otherwise
        :class:`PlatformError` says what to fix. Raises ``ValueError`` when ``measurement`` is
        not lowercase hex of 1 to 64 bytes, ``security_version`` not in 0..65535 or ``sealing``
        not one of :data:`SIMULATED_SEALINGS`.
        """
        if not is_simulated_measurement(measurement):
            raise ValueError("measurement must be lowercase hex of 1 to 64 bytes")
        if not key_file.exists():
            # Losing the creation race to another process is fine: its key is then loaded below.
            create_key_file(key_file)
        return cls(key_file, measurement, security_version=security_version, sealing=sealing)

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
    def security_version(self) -> int:
        """The security version this platform's evidence states (its operator's setting)."""
        return self._security_version

    @property
    def sealing(self) -> SimulatedSealing:
        """What :meth:`seal` binds: the ``machine``, or the machine and the ``measurement``."""
        return self._sealing

    @property
    def key_protection(self) -> str:
        """What protects sealed data here: only the key file's permissions."""
        if self._sealing == "measurement":
            return f"{KEY_PROTECTION}, sealed to this build's measurement"
        return KEY_PROTECTION

    @property
    def key_file(self) -> Path:
        """The file that holds the platform key."""
        return self._key_file

    @property
    def platform_key_hash(self) -> str:
        """The key hash of the platform key, as verified evidence reports it."""
        return key_hash(self._key)

    @property
    def machine_id(self) -> str:
        """The simulated machine's id: the platform key hash, as its evidence's platform id."""
        return self.platform_key_hash

    def evidence(self, report_data: bytes) -> Evidence:
        """Simulated evidence binding the 64-byte ``report_data``; ``ValueError`` otherwise."""
        return create_simulated_evidence(
            self._key, self._measurement, report_data, self._security_version
        )

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext`` so that only a platform with the same key (and, sealing to the
        measurement, the same measurement) can unseal it.

        The result names this machine (``0x02 || machine id || envelope``, the id bound as AAD),
        sealing to the measurement also the measurement (``0x03 || machine id || length ||
        measurement || envelope``), so that :meth:`unseal` elsewhere can say who sealed it.
        """
        machine = bytes.fromhex(self.machine_id)
        if self._sealing == "machine":
            envelope = seal(self._seal_key, plaintext, _SEAL_AAD + machine)
            return bytes([_SEAL_FORMAT_MACHINE]) + machine + envelope
        header = bytes([_SEAL_FORMAT_MEASUREMENT]) + machine + _measurement_field(self._measurement)
        return header + seal(
            self._measurement_key(self._measurement), plaintext, _SEAL_AAD + header
        )

    def unseal(self, sealed: bytes) -> bytes:
        """Return what :meth:`seal` sealed under this platform key (and, when it was sealed to
        a measurement, by this measurement), whatever this platform's own sealing setting.

        Raises :class:`PlatformError` when ``sealed`` was sealed on another simulated machine or
        by another build (the message names both) or any byte of it changed. Data sealed before
        seals named their machine (a bare envelope) still opens on the machine that sealed it.
        """
        kind = sealed[:1]
        if kind not in (bytes([_SEAL_FORMAT_MACHINE]), bytes([_SEAL_FORMAT_MEASUREMENT])):
            return self._open(
                self._seal_key, sealed, _SEAL_AAD, "sealed by another platform key or damaged"
            )
        sealer = sealed[1 : 1 + _MACHINE_ID_SIZE]
        if len(sealer) != _MACHINE_ID_SIZE:
            raise PlatformError("cannot unseal: the sealed data is truncated")
        if sealer.hex() != self.machine_id:
            raise PlatformError(
                f"cannot unseal: sealed on simulated machine {sealer.hex()}, but this is machine "
                f"{self.machine_id} (platform key {self._key_file}); sealed data does not move "
                "between machines"
            )
        rest = sealed[1 + _MACHINE_ID_SIZE :]
        if kind == bytes([_SEAL_FORMAT_MACHINE]):
            return self._open(self._seal_key, rest, _SEAL_AAD + sealer, "damaged")
        length = rest[0] if rest else 0
        measurement = rest[1 : 1 + length].hex()
        if not 1 <= length <= len(rest) - 1 or not is_simulated_measurement(measurement):
            raise PlatformError("cannot unseal: the sealed data is truncated or damaged")
        if measurement != self._measurement:
            raise PlatformError(
                f"cannot unseal: sealed to the build with measurement {measurement}, but this "
                f"build's is {self._measurement} ([platform] simulated_sealing = "
                '"measurement": another build cannot unseal it, as with SGX\'s MRENCLAVE key)'
            )
        header_size = 1 + _MACHINE_ID_SIZE + 1 + length
        return self._open(
            self._measurement_key(measurement),
            sealed[header_size:],
            _SEAL_AAD + sealed[:header_size],
            "damaged",
        )

    def _measurement_key(self, measurement: str) -> bytes:
        return derive_key(self._seal_key, _MEASUREMENT_SEAL_PURPOSE + measurement)

    def _open(self, key: bytes, envelope: bytes, aad: bytes, why: str) -> bytes:
        try:
            return open_envelope(key, envelope, aad)
        except EnvelopeError as exc:
            raise PlatformError(f"cannot unseal: {why}") from exc


def _measurement_field(measurement: str) -> bytes:
    raw = bytes.fromhex(measurement)
    return bytes([len(raw)]) + raw
