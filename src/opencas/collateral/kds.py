"""AMD SEV-SNP certificates from AMD's Key Distribution Service (KDS).

- ``amd-vcek``: ``/vcek/v1/{Product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`` (Turin
  adds ``fmcSPL``), DER. ``hwid`` is the chip id in hex: all 64 bytes on Milan and Genoa, the
  first 8 on Turin. The security patch levels come from the key's ``tcb``, the report's 8 TCB
  bytes in the order the report stores them (Milan and Genoa: boot loader, TEE, 4 reserved, SNP,
  microcode; Turin: FMC, boot loader, TEE, SNP, 3 reserved, microcode).
- ``amd-chain``: ``/vcek/v1/{Product}/cert_chain`` (ASK, ARK) or ``/vlek/v1/{Product}/cert_chain``
  (ASVK, ARK), PEM.

VLEKs are not published by the KDS (a cloud provider obtains them for its own hosts), so
``amd-vlek`` keys are refused here; they come from a bundle.
"""

from __future__ import annotations

from datetime import datetime

from opencas.attestation.verifier import CollateralKey
from opencas.collateral.bundle import check_key
from opencas.collateral.http import HttpFetcher
from opencas.collateral.validity import document_window
from opencas.errors import EvidenceError

AMD_KDS_URL = "https://kdsintf.amd.com"
TURIN_HWID_BYTES = 8


def vcek_query(product: str, tcb: str) -> str:
    """The ``blSPL=..`` query of a VCEK request for the reported TCB ``tcb`` (16 hex digits)."""
    levels = bytes.fromhex(tcb)
    if product == "turin":
        named = [("fmcSPL", 0), ("blSPL", 1), ("teeSPL", 2), ("snpSPL", 3), ("ucodeSPL", 7)]
    else:
        named = [("blSPL", 0), ("teeSPL", 1), ("snpSPL", 6), ("ucodeSPL", 7)]
    return "&".join(f"{name}={levels[index]:02d}" for name, index in named)


class KdsSource:
    """A collateral source for ``amd-vcek`` and ``amd-chain`` keys, from the KDS at ``base_url``."""

    def __init__(self, fetcher: HttpFetcher, base_url: str = AMD_KDS_URL) -> None:
        self.base_url = base_url.rstrip("/")
        self._fetcher = fetcher

    def __str__(self) -> str:
        return f"the AMD KDS {self.base_url}"

    def url(self, key: CollateralKey) -> str:
        """The URL of ``key``'s document; :class:`EvidenceError` for a kind the KDS lacks."""
        check_key(key)
        if key.kind not in ("amd-vcek", "amd-chain"):
            raise EvidenceError(
                f"{key}: {self} publishes VCEKs and AMD certificate chains only",
                check="collateral",
            )
        product = key.param("product")
        if key.kind == "amd-chain":
            return f"{self.base_url}/{key.param('signer')}/v1/{product.title()}/cert_chain"
        hwid = key.param("chip_id")
        if product == "turin":
            hwid = hwid[: 2 * TURIN_HWID_BYTES]
        query = vcek_query(product, key.param("tcb"))
        return f"{self.base_url}/vcek/v1/{product.title()}/{hwid}?{query}"

    def collateral(self, key: CollateralKey, at: datetime) -> bytes:
        """The document of ``key`` as the KDS serves it (``at`` is not used).

        Raises :class:`EvidenceError` (``check="collateral"``) naming the URL when the fetch
        fails or the answer is not a certificate (DER for a VCEK, PEM for a chain).
        """
        url = self.url(key)
        body = self._fetcher.get(url).body
        try:
            document_window(key, body)
        except ValueError as exc:
            raise EvidenceError(
                f"{url}: the answer is not what the KDS promises: {exc}", check="collateral"
            ) from exc
        return body
