"""The ``tsm`` platform: a TDX or SEV-SNP confidential VM, through Linux configfs-tsm reports.

Linux (6.7 and later) offers one interface for the attestation reports of confidential VMs under
``/sys/kernel/config/tsm/report/``: ``mkdir`` an entry, write up to 64 bytes to its ``inblob``,
read ``outblob``. ``provider`` names the kernel driver that answers: ``tdx_guest`` (the outblob
is a TDX quote, evidence type ``"tdx"``) or ``sev_guest`` (an SNP attestation report, ``"snp"``;
``auxblob`` then holds the host's certificate table, when the host provides one, and
``privlevel`` selects the VMPL the report is for). ``generation`` counts the writes to the entry,
so reading it before and after ``outblob`` tells whether another writer changed the request in
between.

Sealing: a confidential VM's memory and disk are encrypted with keys that only the VM holds, so
the database key needs no hardware sealing key of its own. It is sealed (AES-256-GCM) under a
key derived from a platform key file, mode 0600, that must lie on the VM's encrypted disk: whoever
can read that disk can read the database, and nobody outside the VM can. The report's platform
(``tdx`` or ``snp``) says so; docs/deployment.md says what the operator must set up for it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from opencas.attestation.evidence import Evidence
from opencas.crypto.envelope import EnvelopeError, derive_key, open_envelope, seal
from opencas.errors import PlatformError
from opencas.platform.key_file import load_or_create_key_file
from opencas.platform.own_evidence import (
    REPORT_DATA_SIZE,
    OwnEvidence,
    read_snp_report,
    read_tdx_quote,
)
from opencas.platform.pseudo_files import read_bounded, write_whole

#: Where configfs-tsm offers its reports.
DEFAULT_REPORT_DIR = Path("/sys/kernel/config/tsm/report")
#: The evidence type each provider's outblob is.
PROVIDERS = {"tdx_guest": "tdx", "sev_guest": "snp"}
#: The VMPLs an SNP report may be asked for.
MAX_PRIVLEVEL = 3
KEY_PROTECTION = (
    "a key file on the confidential VM's encrypted disk; the VM's memory is encrypted too"
)

_SEAL_PURPOSE = "tsm-seal"
_SEAL_AAD = b"opencas-tsm-seal/v1"
# The kernel's limit for outblob and auxblob (TSM_OUTBLOB_MAX) is 32 KiB.
_MAX_BLOB_BYTES = 32 * 1024
_MAX_ATTRIBUTE_BYTES = 64


class ReportEntries(Protocol):
    """How report entries come and go: configfs makes an entry's attributes on ``mkdir``."""

    def create(self, entry: Path) -> None:
        """Create the report entry ``entry``; ``OSError`` when it cannot be."""
        ...

    def remove(self, entry: Path) -> None:
        """Remove the report entry ``entry``; ``OSError`` when it cannot be."""
        ...


class ConfigfsEntries:
    """Report entries of configfs: ``mkdir`` and ``rmdir``."""

    def create(self, entry: Path) -> None:
        """``mkdir`` the entry; the kernel gives it its attributes."""
        entry.mkdir(mode=0o700)

    def remove(self, entry: Path) -> None:
        """``rmdir`` the entry; the kernel drops its attributes with it."""
        entry.rmdir()


CONFIGFS = ConfigfsEntries()


@dataclass(frozen=True)
class TsmReport:
    """One configfs-tsm report: the provider that made it, its outblob and auxblob (or None)."""

    provider: str
    outblob: bytes
    auxblob: bytes | None


def _read_text(path: Path, what: str) -> str:
    raw = read_bounded(path, _MAX_ATTRIBUTE_BYTES, what).strip()
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise PlatformError(f"{what} {path} is not ASCII text") from None


def _read_generation(entry: Path) -> int:
    path = entry / "generation"
    text = _read_text(path, "the report's generation")
    if not text.isdigit():
        raise PlatformError(f"the report's generation {path} is {text[:20]!r}, not a number")
    return int(text)


class TsmReports:
    """Makes configfs-tsm reports in ``report_dir``, one private entry per report.

    ``privlevel`` (SNP only, 0 to 3) is written before the inblob when set. ``entries`` is how
    an entry is made and removed: configfs in a confidential VM, something that fills a plain
    directory the same way in tests.
    """

    def __init__(
        self,
        report_dir: Path = DEFAULT_REPORT_DIR,
        *,
        privlevel: int | None = None,
        entries: ReportEntries = CONFIGFS,
    ) -> None:
        """Remember where and how to make reports; ``ValueError`` for a privlevel out of range."""
        if privlevel is not None and not 0 <= privlevel <= MAX_PRIVLEVEL:
            raise ValueError(f"privlevel must be 0 to {MAX_PRIVLEVEL}")
        self.report_dir = report_dir
        self.privlevel = privlevel
        self._entries = entries

    def provider(self) -> str:
        """The provider that answers in ``report_dir``, as the kernel names it.

        Raises :class:`PlatformError` when there is no report directory, no entry can be made,
        or no provider answers.
        """
        with self._entry() as entry:
            return _read_text(entry / "provider", "the report's provider")

    def report(self, inblob: bytes) -> TsmReport:
        """A report for the 64-byte ``inblob``.

        Raises :class:`PlatformError` when the provider is not one OpenCAS knows, privlevel is
        set for a provider that has none, a read is short or fails, or the entry's generation
        shows that another writer changed the request while it was read.
        """
        if len(inblob) != REPORT_DATA_SIZE:
            raise ValueError(f"inblob must be {REPORT_DATA_SIZE} bytes")
        with self._entry() as entry:
            provider = _read_text(entry / "provider", "the report's provider")
            if provider not in PROVIDERS:
                known = ", ".join(sorted(PROVIDERS))
                raise PlatformError(
                    f"the configfs-tsm provider in {self.report_dir} is {provider[:40]!r}; "
                    f"OpenCAS knows {known}"
                )
            writes = self._write_request(entry, provider, inblob)
            before = _read_generation(entry)
            outblob = read_bounded(entry / "outblob", _MAX_BLOB_BYTES, "the report's outblob")
            auxblob = self._auxblob(entry, provider)
            after = _read_generation(entry)
            if before != writes or after != before:
                raise PlatformError(
                    f"the report entry {entry} was written by someone else while it was read "
                    f"(generation {before} then {after}, after {writes} writes of ours); "
                    "ask again"
                )
            return TsmReport(provider, outblob, auxblob)

    def _write_request(self, entry: Path, provider: str, inblob: bytes) -> int:
        writes = 0
        if self.privlevel is not None:
            if provider != "sev_guest":
                raise PlatformError(
                    f"tsm_privlevel is set, but provider {provider} has no privilege levels "
                    "(only sev_guest has)"
                )
            write_whole(entry / "privlevel", str(self.privlevel).encode("ascii"), "privlevel")
            writes += 1
        write_whole(entry / "inblob", inblob, "the report's inblob")
        return writes + 1

    def _auxblob(self, entry: Path, provider: str) -> bytes | None:
        path = entry / "auxblob"
        if provider != "sev_guest" or not path.exists():
            return None
        # Empty when the host gave no certificates.
        return read_bounded(path, _MAX_BLOB_BYTES, "the report's auxblob", empty_ok=True) or None

    @contextlib.contextmanager
    def _entry(self) -> Iterator[Path]:
        if not self.report_dir.is_dir():
            raise PlatformError(
                f"{self.report_dir} does not exist: this is not a confidential VM with "
                "configfs-tsm (Linux 6.7 or later, configfs mounted), or tsm_report_dir is wrong"
            )
        entry = self.report_dir / f"opencas-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            self._entries.create(entry)
        except OSError as exc:
            raise PlatformError(
                f"cannot create the report entry {entry}: {exc.strerror or exc}"
            ) from exc
        try:
            yield entry
        finally:
            # A left-over entry only holds kernel memory; failing to remove it must not hide
            # the report (or the error) that came before.
            with contextlib.suppress(OSError):
                self._entries.remove(entry)


def _own_evidence(evidence_type: str, outblob: bytes) -> OwnEvidence:
    if evidence_type == "tdx":
        return read_tdx_quote(outblob)
    return read_snp_report(outblob)


class TsmPlatform:
    """A TDX or SEV-SNP confidential VM, attested through configfs-tsm.

    ``kind`` follows the provider: ``"tdx"`` (``tdx_guest``) or ``"snp"`` (``sev_guest``). The
    measurement (MRTD or MEASUREMENT) and debug mode (the DEBUG TD attribute, the DEBUG policy
    bit) come from a report made when the platform is opened. Sealing is AES-256-GCM in the
    envelope format of :mod:`opencas.crypto.envelope`, AAD ``b"opencas-tsm-seal/v1"``, under a
    key derived (HKDF-SHA256, info ``b"opencas/v1/tsm-seal"``) from the platform key file
    ``key_file``, which must lie on the VM's encrypted disk.
    """

    def __init__(self, reports: TsmReports, key_file: Path) -> None:
        """Open the platform: make a first report to learn the provider, measurement and mode.

        The key file is loaded (or created) when something is first sealed or unsealed, so a
        workload, which seals nothing, leaves none behind. Raises :class:`PlatformError` naming
        what is wrong when no known provider answers or the report is not of its provider's
        format.
        """
        self._reports = reports
        first = reports.report(bytes(REPORT_DATA_SIZE))
        self._provider = first.provider
        self._kind = PROVIDERS[first.provider]
        own = _own_evidence(self._kind, first.outblob)
        self._measurement = own.measurement
        self._debug = own.debug
        self._key_file = key_file
        self._seal_key: bytes | None = None
        # Reports are independent entries, but two at once would be two quotes in flight for
        # one VM; one at a time keeps the host's quoting service load predictable.
        self._lock = threading.Lock()

    def _key(self) -> bytes:
        with self._lock:
            if self._seal_key is None:
                key = load_or_create_key_file(self._key_file)
                self._seal_key = derive_key(key.private_bytes_raw(), _SEAL_PURPOSE)
            return self._seal_key

    @property
    def kind(self) -> str:
        """``"tdx"`` or ``"snp"``, after the provider."""
        return self._kind

    @property
    def debug(self) -> bool:
        """True when the VM runs with debugging allowed (its memory can be read by the host)."""
        return self._debug

    @property
    def measurement(self) -> str:
        """MRTD (TDX) or MEASUREMENT (SNP), lowercase hex."""
        return self._measurement

    @property
    def key_protection(self) -> str:
        """The VM's encrypted disk and memory protect the key file that seals."""
        return KEY_PROTECTION

    @property
    def key_file(self) -> Path:
        """The platform key file the database key is sealed under."""
        return self._key_file

    def evidence(self, report_data: bytes) -> Evidence:
        """A TDX quote or SNP report from configfs-tsm that binds the 64-byte ``report_data``.

        The SNP report travels alone: its VCEK comes to the verifier from its collateral source,
        not from the host's ``auxblob``. Raises ``ValueError`` for report data of another size
        and :class:`PlatformError` when no report can be had, the provider changed, or the report
        is not of its provider's format.
        """
        if len(report_data) != REPORT_DATA_SIZE:
            raise ValueError(f"report data must be {REPORT_DATA_SIZE} bytes")
        with self._lock:
            report = self._reports.report(report_data)
        if report.provider != self._provider:
            raise PlatformError(
                f"the configfs-tsm provider changed from {self._provider} to {report.provider}"
            )
        _own_evidence(self._kind, report.outblob)
        return Evidence(type=self._kind, data=report.outblob)

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext`` under the key derived from the platform key file.

        Raises :class:`PlatformError` when the key file is unusable (accessible by others,
        corrupt, or cannot be created).
        """
        return seal(self._key(), plaintext, _SEAL_AAD)

    def unseal(self, sealed: bytes) -> bytes:
        """Return what :meth:`seal` sealed under this platform key file.

        Raises :class:`PlatformError` when ``sealed`` was sealed under another key file or changed.
        """
        try:
            return open_envelope(self._key(), sealed, _SEAL_AAD)
        except EnvelopeError as exc:
            raise PlatformError(
                "cannot unseal: sealed under another platform key file or damaged"
            ) from exc
