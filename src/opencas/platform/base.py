"""The interface every platform (simulated, gramine-sgx, configfs-tsm) offers to the CAS."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from opencas.attestation.evidence import Evidence


class EvidenceProvider(Protocol):
    """What produces evidence: a platform, as a workload attesting to a CAS needs it."""

    def evidence(self, report_data: bytes) -> Evidence:
        """Evidence that binds the 64-byte ``report_data`` to this platform and measurement.

        Raises ``ValueError`` when ``report_data`` is not 64 bytes and
        :class:`opencas.errors.PlatformError` when the platform cannot produce evidence.
        """
        ...


@runtime_checkable
class Platform(EvidenceProvider, Protocol):
    """The trusted execution environment this program runs in.

    It says what it is (``kind``, ``debug``), what code runs (``measurement``), produces
    evidence that binds caller-chosen report data, and seals data so that only the same platform
    identity can unseal it.
    """

    @property
    def kind(self) -> str:
        """The evidence type it produces: ``"simulated"``, ``"sgx-dcap"``, ``"tdx"`` or ``"snp"``.

        The CAS report's ``platform`` says this, and a verifier names its claims' platform so.
        """
        ...

    @property
    def debug(self) -> bool:
        """True when the TEE runs in debug mode, so its memory can be read from outside."""
        ...

    @property
    def measurement(self) -> str:
        """The software measurement of this program, lowercase hex."""
        ...

    @property
    def key_protection(self) -> str:
        """What keeps sealed data (the database key) from anyone outside, in a few words.

        ``cas show-identification`` and the start-up log show it; docs/deployment.md says the
        same per platform.
        """
        ...

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext`` so that only this platform identity can :meth:`unseal` it.

        Raises :class:`opencas.errors.PlatformError` when the platform cannot seal.
        """
        ...

    def unseal(self, sealed: bytes) -> bytes:
        """Return the plaintext that :meth:`seal` sealed on this platform identity.

        Raises :class:`opencas.errors.PlatformError` when ``sealed`` was sealed elsewhere, is
        damaged, or the platform cannot unseal.
        """
        ...
