"""Collateral named on a command line: a bundle directory, or single documents in files.

``casctl attest --collateral`` and ``casctl evidence verify --collateral/--vcek/--chain`` take
either a bundle directory (:mod:`opencas.collateral.bundle`) or files that each answer every key
of their kind: a DCAP collateral JSON for ``dcap`` keys, a DER VCEK or VLEK for ``amd-vcek`` and
``amd-vlek`` keys, a PEM AMD chain for ``amd-chain`` keys. A chain file may hold the ASK, the ARK
and the ASVK together (as AMD's ``ask_ark_asvk`` files do); each key then gets the two it names.
"""

from __future__ import annotations

import warnings
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from opencas.attestation.verifier import NO_COLLATERAL, CollateralKey, CollateralSource
from opencas.collateral.bundle import BundleSource, check_key, read_document
from opencas.collateral.chain import SourceChain
from opencas.crypto.pem import certificate_pem
from opencas.errors import EvidenceError

_OPTION_OF_KIND = {
    "dcap": "--collateral",
    "amd-vcek": "--vcek",
    "amd-vlek": "--vcek",
    "amd-chain": "--chain",
    "simulated": "--collateral",
}


class GivenDocuments:
    """A collateral source of one file per kind (any of them may be missing)."""

    def __init__(
        self, *, dcap: Path | None = None, vcek: Path | None = None, chain: Path | None = None
    ) -> None:
        # A collateral file is one JSON document: DCAP collateral, or simulated collateral.
        self._files = {
            "dcap": dcap,
            "simulated": dcap,
            "amd-vcek": vcek,
            "amd-vlek": vcek,
            "amd-chain": chain,
        }

    def __str__(self) -> str:
        given = {str(path) for path in self._files.values() if path is not None}
        return "the files " + ", ".join(sorted(given))

    def collateral(self, key: CollateralKey, at: datetime) -> bytes:
        """The file given for ``key``'s kind (for a chain, the two certificates it names)."""
        check_key(key)
        path = self._files[key.kind]
        if path is None:
            raise EvidenceError(
                f"{key}: no {_OPTION_OF_KIND[key.kind]} file was given", check="collateral"
            )
        data = read_document(path)
        if data is None:
            raise EvidenceError(f"{key}: {path} does not exist", check="collateral")
        if key.kind == "amd-chain":
            return _chain_for(data, key.param("signer"))
        return data


def _chain_for(data: bytes, signer: str) -> bytes:
    """The signer's intermediate and the ARK from an ASK/ARK/ASVK file; else ``data`` as it is."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        return data  # not PEM certificates; the verifier says so
    by_role: dict[str, x509.Certificate] = {}
    for certificate in certificates:
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(names[0].value) if names else ""
        role = (
            "ark"
            if name.startswith("ARK-")
            else "vlek"
            if name.startswith("SEV-VLEK-")
            else "vcek"
            if name.startswith("SEV-")
            else "other"
        )
        by_role.setdefault(role, certificate)
    if len(certificates) <= 2 or signer not in by_role or "ark" not in by_role:
        return data
    return certificate_pem(by_role[signer]) + certificate_pem(by_role["ark"])


def command_line_source(
    collateral: Path | None = None, *, vcek: Path | None = None, chain: Path | None = None
) -> CollateralSource:
    """The source of ``--collateral PATH`` (a bundle directory or a DCAP collateral JSON file),
    ``--vcek FILE`` and ``--chain FILE``, files first; no collateral when none is given."""
    sources: list[CollateralSource] = []
    dcap_file = collateral if collateral is not None and not collateral.is_dir() else None
    if dcap_file or vcek or chain:
        sources.append(GivenDocuments(dcap=dcap_file, vcek=vcek, chain=chain))
    if collateral is not None and collateral.is_dir():
        sources.append(BundleSource(collateral))
    return SourceChain(sources) if sources else NO_COLLATERAL
