"""Which platform a program runs on: the platform kinds, finding the TEE (``auto``), opening one.

The CAS (``[platform] kind`` in the availability config) and ``casctl run --platform`` choose
the same way:

- ``gramine-sgx``: an SGX enclave under Gramine (:mod:`opencas.platform.gramine`);
- ``tsm``: a TDX or SEV-SNP confidential VM through configfs-tsm (:mod:`opencas.platform.tsm`);
- ``simulated``: no TEE, for development and tests (:mod:`opencas.platform.simulated`);
- ``auto``: Gramine's quote file if it exists, else configfs-tsm if a provider OpenCAS knows
  answers there, else simulated, with a warning that clients will see ``mode: debug``.

A TEE that ``auto`` finds but cannot use is an error, never a quiet fall back to simulated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from opencas.errors import PlatformError
from opencas.platform.base import Platform
from opencas.platform.gramine import DEFAULT_ATTESTATION_DIR, GramineSgxPlatform
from opencas.platform.simulated import SimulatedPlatform, SimulatedSealing
from opencas.platform.tsm import (
    CONFIGFS,
    DEFAULT_REPORT_DIR,
    PROVIDERS,
    ReportEntries,
    TsmPlatform,
    TsmReports,
)

#: Every platform kind, as the availability config and ``casctl run --platform`` write it.
PLATFORM_KINDS = ("auto", "gramine-sgx", "simulated", "tsm")
#: What ``auto`` chooses when no [platform] kind is given.
DEFAULT_PLATFORM_KIND = "auto"

SIMULATED_FALLBACK_WARNING = (
    "no TEE found (neither {gramine} nor a configfs-tsm provider in {tsm}): running on the "
    "simulated platform, so clients will see mode: debug and refuse it unless told "
    "--only-for-testing-debug"
)


@dataclass(frozen=True)
class PlatformSettings:
    """Where each platform's files are, and which platform to open.

    ``simulated_key_file`` is the simulated platform's key file,
    ``simulated_security_version`` the security version its evidence states and
    ``simulated_sealing`` what its sealing binds (the machine, or also the measurement);
    ``tsm_key_file`` the key file the ``tsm`` platform seals under (on the VM's encrypted disk).
    ``tsm_entries`` is how configfs report entries are made (tests serve them from a plain
    directory).
    """

    kind: str
    simulated_key_file: Path
    tsm_key_file: Path
    gramine_attestation_dir: Path = DEFAULT_ATTESTATION_DIR
    tsm_report_dir: Path = DEFAULT_REPORT_DIR
    tsm_privlevel: int | None = None
    tsm_entries: ReportEntries = CONFIGFS
    simulated_security_version: int = 0
    simulated_sealing: SimulatedSealing = "machine"

    def tsm_reports(self) -> TsmReports:
        """The configfs-tsm reports these settings name."""
        return TsmReports(
            self.tsm_report_dir, privlevel=self.tsm_privlevel, entries=self.tsm_entries
        )


def detect_platform_kind(settings: PlatformSettings) -> str:
    """The kind ``auto`` means here: ``gramine-sgx``, ``tsm`` or, finding neither, ``simulated``.

    Gramine is recognised by its quote file, configfs-tsm by a provider OpenCAS knows answering
    in a new report entry. Nothing is written except that entry, which is removed again.
    """
    if (settings.gramine_attestation_dir / "quote").exists():
        return "gramine-sgx"
    if not settings.tsm_report_dir.is_dir():
        return "simulated"
    try:
        provider = settings.tsm_reports().provider()
    except PlatformError:
        # The directory exists on any kernel with configfs-tsm, TEE or not; without a provider
        # there is no TEE behind it.
        return "simulated"
    if provider not in PROVIDERS:
        raise PlatformError(
            f"configfs-tsm in {settings.tsm_report_dir} has the provider {provider[:40]!r}, "
            f"which OpenCAS does not know (known: {', '.join(sorted(PROVIDERS))}); set the "
            "platform kind to simulated to run without it"
        )
    return "tsm"


def open_platform(
    settings: PlatformSettings,
    simulated_measurement: Callable[[], str],
    warn: Callable[[str], None],
) -> Platform:
    """Open the platform ``settings`` choose (finding it first for ``auto``).

    ``simulated_measurement`` gives the measurement the simulated platform reports (only called
    if it is the one opened); ``warn`` is told when ``auto`` found no TEE. Raises
    :class:`PlatformError` when the chosen platform cannot be opened, and ``ValueError`` for an
    unknown kind.
    """
    kind = settings.kind
    if kind == "auto":
        kind = detect_platform_kind(settings)
        if kind == "simulated":
            warn(
                SIMULATED_FALLBACK_WARNING.format(
                    gramine=settings.gramine_attestation_dir / "quote", tsm=settings.tsm_report_dir
                )
            )
    if kind == "gramine-sgx":
        return GramineSgxPlatform(settings.gramine_attestation_dir)
    if kind == "tsm":
        return TsmPlatform(settings.tsm_reports(), settings.tsm_key_file)
    if kind == "simulated":
        measurement = simulated_measurement()
        return SimulatedPlatform.load_or_create(
            settings.simulated_key_file,
            measurement,
            security_version=settings.simulated_security_version,
            sealing=settings.simulated_sealing,
        )
    raise ValueError(f"unknown platform kind {kind!r}; known kinds: {', '.join(PLATFORM_KINDS)}")
