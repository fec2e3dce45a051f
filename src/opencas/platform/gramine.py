"""The Gramine-SGX platform: SGX DCAP quotes and sealing through Gramine's ``/dev/attestation``.

Inside a Gramine-SGX enclave (``sgx.remote_attestation = "dcap"`` in the manifest) the pseudo
file system ``/dev/attestation`` gives the enclave its quote: write 64 bytes to
``user_report_data``, read ``quote``. It also gives sealing keys: ``keys/_sgx_mrenclave`` is the
SGX sealing key bound to this enclave's MRENCLAVE, ``keys/_sgx_mrsigner`` the one bound to its
signer.

The database key is sealed with the **MRENCLAVE** key: only this exact build of the CAS, on this
CPU, can unseal it. With the MRSIGNER key, every enclave the same signer ever signed (with the
same product id and no lower security version) could unseal it, and so read every secret the CAS
holds, while a client that attests the CAS by its measurement would never see that enclave. The
price is that a new CAS build cannot open an older build's database by itself: registered by the
owner as an upgrade, it gets the key by attesting to a running instance of the old build
(:mod:`opencas.service.cluster` on PostgreSQL, :mod:`opencas.service.upgrade_in_place` on
SQLite).
"""

from __future__ import annotations

import threading
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from opencas.attestation.evidence import MAX_EVIDENCE_BYTES, Evidence
from opencas.crypto.envelope import EnvelopeError, open_envelope, seal
from opencas.errors import PlatformError
from opencas.platform.own_evidence import REPORT_DATA_SIZE, read_sgx_quote
from opencas.platform.pseudo_files import read_bounded, write_whole

#: The evidence type of an SGX DCAP quote.
EVIDENCE_TYPE = "sgx-dcap"
#: Where Gramine mounts its attestation pseudo file system.
DEFAULT_ATTESTATION_DIR = Path("/dev/attestation")
#: The sealing key the database key is sealed with (see the module's documentation for why).
SEALING_KEY_NAME = "_sgx_mrenclave"
KEY_PROTECTION = "sealed with the enclave's SGX MRENCLAVE sealing key (Gramine)"

_SEALING_KEY_SIZE = 16
_SEAL_INFO = b"opencas/v1/gramine-sgx-seal"
_SEAL_AAD = b"opencas-gramine-sgx-seal/v1"
# Gramine reports its attestation type as a short word; more than this is not that file.
_MAX_TYPE_BYTES = 64


class GramineSgxPlatform:
    """The SGX enclave this process runs in under Gramine, through its ``/dev/attestation``.

    ``kind`` is ``"sgx-dcap"``. The measurement (MRENCLAVE) and debug mode (the DEBUG attribute)
    come from a quote made when the platform is opened, so a CAS that cannot get a quote does not
    start. Sealing is AES-256-GCM, in the envelope format of :mod:`opencas.crypto.envelope` with
    AAD ``b"opencas-gramine-sgx-seal/v1"``, under HKDF-SHA256 (no salt, info
    ``b"opencas/v1/gramine-sgx-seal"``) of the 16-byte MRENCLAVE sealing key: a KDF, because
    Gramine warns against using its keys directly where they may also key encrypted mounts.
    """

    def __init__(self, attestation_dir: Path = DEFAULT_ATTESTATION_DIR) -> None:
        """Open the platform behind ``attestation_dir``: check it, make a first quote, read keys.

        Raises :class:`PlatformError` naming the file when the directory is not Gramine's
        attestation file system with DCAP attestation, the quote is not an SGX quote, or the
        sealing key cannot be read.
        """
        self._dir = attestation_dir
        # Writing the report data and reading the quote are two steps on one shared file: two
        # threads interleaving them would each get a quote for the other's report data.
        self._lock = threading.Lock()
        if not attestation_dir.is_dir():
            raise PlatformError(
                f"{attestation_dir} does not exist: this process does not run inside Gramine-SGX "
                "(or the availability config's gramine_attestation_dir is wrong)"
            )
        self._check_attestation_type()
        own = read_sgx_quote(self._quote(bytes(REPORT_DATA_SIZE)))
        self._measurement = own.measurement
        self._debug = own.debug
        sealing_key = read_bounded(
            attestation_dir / "keys" / SEALING_KEY_NAME, _SEALING_KEY_SIZE, "the sealing key"
        )
        if len(sealing_key) != _SEALING_KEY_SIZE:
            raise PlatformError(
                f"the sealing key {attestation_dir / 'keys' / SEALING_KEY_NAME} is "
                f"{len(sealing_key)} bytes, not {_SEALING_KEY_SIZE}"
            )
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEAL_INFO)
        self._seal_key = hkdf.derive(sealing_key)

    def _check_attestation_type(self) -> None:
        path = self._dir / "attestation_type"
        kind = read_bounded(path, _MAX_TYPE_BYTES, "Gramine's attestation type").strip()
        if kind != b"dcap":
            shown = kind.decode("ascii", "replace")[:20]
            raise PlatformError(
                f"Gramine's attestation type ({path}) is {shown!r}, not 'dcap': set "
                'sgx.remote_attestation = "dcap" in the manifest'
            )

    def _quote(self, report_data: bytes) -> bytes:
        with self._lock:
            write_whole(self._dir / "user_report_data", report_data, "Gramine's user report data")
            return read_bounded(self._dir / "quote", MAX_EVIDENCE_BYTES, "Gramine's quote")

    @property
    def kind(self) -> str:
        """Always ``"sgx-dcap"``: the evidence is an SGX DCAP quote."""
        return EVIDENCE_TYPE

    @property
    def debug(self) -> bool:
        """True when the enclave was launched in debug mode (its memory can be read)."""
        return self._debug

    @property
    def measurement(self) -> str:
        """The enclave's MRENCLAVE, lowercase hex."""
        return self._measurement

    @property
    def key_protection(self) -> str:
        """The MRENCLAVE sealing key protects sealed data."""
        return KEY_PROTECTION

    def evidence(self, report_data: bytes) -> Evidence:
        """An SGX DCAP quote from Gramine that binds the 64-byte ``report_data``.

        Raises ``ValueError`` for report data of another size and :class:`PlatformError` when
        Gramine gives no quote, or one that is not an SGX quote of this enclave.
        """
        if len(report_data) != REPORT_DATA_SIZE:
            raise ValueError(f"report data must be {REPORT_DATA_SIZE} bytes")
        quote = self._quote(report_data)
        if read_sgx_quote(quote).measurement != self._measurement:
            raise PlatformError(
                "Gramine's quote measures another enclave than the one this platform opened as"
            )
        return Evidence(type=EVIDENCE_TYPE, data=quote)

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext`` so that only this enclave build, on this CPU, can unseal it."""
        return seal(self._seal_key, plaintext, _SEAL_AAD)

    def unseal(self, sealed: bytes) -> bytes:
        """Return what :meth:`seal` sealed in this enclave build on this CPU.

        Raises :class:`PlatformError` when ``sealed`` was sealed by another enclave build
        (another MRENCLAVE), on another CPU, or was changed.
        """
        try:
            return open_envelope(self._seal_key, sealed, _SEAL_AAD)
        except EnvelopeError as exc:
            raise PlatformError(
                "cannot unseal: sealed by another enclave build (MRENCLAVE) or CPU, or damaged"
            ) from exc
