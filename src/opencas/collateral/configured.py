"""The collateral source a CAS uses, as its availability config and owner config describe it.

In order: the offline bundle (``[collateral] bundle``), then, unless ``[collateral] fetch`` is
false, the PCCS of the owner config's ``[dcap] pccs_url`` (Intel's PCS when unset) with its
``subscription_key`` for DCAP collateral and AMD's KDS (``[collateral] amd_kds_url``) for VCEKs
and AMD chains; all of it behind a cache in memory and in ``[collateral] cache_directory``.
The owner config is read when a document must be fetched, so an update of ``[dcap]`` applies
to the next fetch.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from datetime import datetime

from opencas.attestation.verifier import CollateralKey, CollateralSource
from opencas.collateral.bundle import BundleSource
from opencas.collateral.cache import CachedSource
from opencas.collateral.chain import SourceChain
from opencas.collateral.http import HttpFetcher
from opencas.collateral.kds import KdsSource
from opencas.collateral.pcs import INTEL_PCS_URL, PcsSource
from opencas.config.availability import CollateralSettings
from opencas.config.owner import DcapConfig
from opencas.errors import ConfigError, EvidenceError


class OwnerPcsSource:
    """DCAP collateral from the PCCS the owner config names now (Intel's PCS when it names none)."""

    def __init__(self, fetcher: HttpFetcher, dcap: Callable[[], DcapConfig | None]) -> None:
        self._fetcher = fetcher
        self._dcap = dcap

    def __str__(self) -> str:
        return "the PCCS of the owner config's [dcap] pccs_url"

    def collateral(self, key: CollateralKey, at: datetime) -> bytes:
        """The DCAP collateral of ``key`` from the configured PCCS (see :class:`PcsSource`)."""
        if key.kind != "dcap":
            raise EvidenceError(f"{key}: a PCCS serves DCAP collateral only", check="collateral")
        config = self._dcap()
        url = config.pccs_url if config and config.pccs_url else INTEL_PCS_URL
        secret = config.subscription_key if config else None
        key_text = secret.get_secret_value() if secret is not None else None
        return PcsSource(url, self._fetcher, subscription_key=key_text).collateral(key, at)


def trust_context(settings: CollateralSettings) -> ssl.SSLContext | bool:
    """How servers are authenticated: ``ca_certificates`` when set, else the system's CAs.

    Raises :class:`ConfigError` naming the file when it cannot be loaded.
    """
    if settings.ca_certificates is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(settings.ca_certificates))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"[collateral] ca_certificates: {settings.ca_certificates}: cannot be loaded as PEM "
            f"CA certificates ({exc})"
        ) from exc


class CasCollateral:
    """The CAS's collateral source and the HTTP client it owns; close it when the CAS stops."""

    def __init__(self, settings: CollateralSettings, dcap: Callable[[], DcapConfig | None]) -> None:
        self.fetcher = HttpFetcher(verify=trust_context(settings), timeout=settings.fetch_timeout)
        sources: list[CollateralSource] = []
        if settings.bundle is not None:
            sources.append(BundleSource(settings.bundle))
        if settings.fetch:
            sources.append(OwnerPcsSource(self.fetcher, dcap))
            sources.append(KdsSource(self.fetcher, settings.amd_kds_url))
        self.source = CachedSource(SourceChain(sources), settings.cache_directory)

    def __str__(self) -> str:
        return str(self.source)

    def collateral(self, key: CollateralKey, at: datetime) -> bytes:
        """The document of ``key``, cached, from the first configured source that has it."""
        return self.source.collateral(key, at)

    def close(self) -> None:
        """Close the HTTP connections."""
        self.fetcher.close()
