"""The verifier of AMD SEV-SNP attestation reports (evidence type ``snp``, versions 2 and 3).

The evidence data is the raw 1184-byte report. It verifies when, as of the verification time:

1. the report parses strictly (:mod:`opencas.attestation.snp_report`);
2. the key that signed it, the VCEK of the chip at the reported TCB or the VLEK the cloud
   provider loaded (``signer_info``), and the chain of its product — VCEK -> ASK -> ARK or
   VLEK -> ASVK -> ARK, from the collateral source — are all valid at that time, each signed
   by the next with RSA-PSS (SHA-384, salt 48), and the ARK is self-signed and one of the
   roots pinned here by key hash (:data:`PINNED_ARK_KEY_HASHES`);
3. the signing certificate's TCB extensions equal the reported TCB, and a VCEK's hardware id
   equals the report's chip id (all 64 bytes on Milan and Genoa, the first 8 on Turin);
4. the ECDSA P-384 signature (r and s little-endian at 0x2A0) verifies over bytes 0x000-0x29F.

The product comes from a version 3 report's CPUID fields; a version 2 report does not name it,
so the verifier asks the collateral source for the Milan VCEK, then the Genoa one. The TCB
status compares the reported TCB with the TCB the platform committed to (see
:func:`tcb_status`); AMD publishes no advisories in a form a verifier can apply, so
``advisories`` is always empty. Verified chains are memoized by the digest of their bytes
(:class:`ChainCache`), so a second report from the same chip costs one ECDSA verification.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from opencas.attestation.amd_certificate import (
    AmdCertificate,
    parse_amd_certificate,
    parse_amd_chain,
)
from opencas.attestation.evidence import Evidence, VerifiedEvidence
from opencas.attestation.snp_report import (
    VERSION_2_PRODUCTS,
    Product,
    SigningKey,
    SnpReport,
    decode_tcb,
    parse_snp_report,
)
from opencas.attestation.verifier import CollateralKey, CollateralSource
from opencas.crypto import der
from opencas.crypto.keys import key_hash
from opencas.errors import EvidenceError

EVIDENCE_TYPE = "snp"
VERIFIER_NAME = "opencas-snp 1"
TCB_UP_TO_DATE = "UpToDate"
TCB_OUT_OF_DATE = "OutOfDate"

#: The key hash (SHA-256 of the DER SubjectPublicKeyInfo) of AMD's root key, the ARK, of each
#: product. The ARKs are self-signed; these pins are what makes a chain AMD's. They were taken
#: from AMD's certificate chains as published by its key distribution service and checked
#: against the copies google/go-sev-guest ships.
PINNED_ARK_KEY_HASHES: Mapping[Product, str] = MappingProxyType(
    {
        "milan": "9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9",
        "genoa": "429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831",
        "turin": "4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08",
    }
)

#: How many verified chains a verifier remembers (least recently used go first). One chain is
#: a chip at one TCB (VCEK) or one provider's key (VLEK), so this covers a large fleet.
CHAIN_CACHE_SIZE = 256

_PRODUCT_NAMES: Mapping[Product, str] = MappingProxyType(
    {"milan": "Milan", "genoa": "Genoa", "turin": "Turin"}
)
#: The hardware id in a VCEK: the whole 64-byte chip id, or its first 8 bytes on Turin.
_HWID_SIZES: Mapping[Product, int] = MappingProxyType({"milan": 64, "genoa": 64, "turin": 8})

_OID_STRUCT_VERSION = "1.3.6.1.4.1.3704.1.1"
_OID_PRODUCT_NAME = "1.3.6.1.4.1.3704.1.2"
_OID_TCB = "1.3.6.1.4.1.3704.1.3."
_OID_HWID = "1.3.6.1.4.1.3704.1.4"
_OID_CSP_ID = "1.3.6.1.4.1.3704.1.5"
# The TCB extension (1.3.6.1.4.1.3704.1.3.N) that holds each byte of the TCB version.
_LEGACY_TCB_ARCS = (1, 2, 4, 5, 6, 7, 3, 8)  # bl, tee, spl4..spl7 (reserved), snp, ucode
_TURIN_TCB_ARCS = (9, 1, 2, 3, None, None, None, 8)  # fmc, bl, tee, snp, reserved, ucode
_REQUIRED_TCB_ARCS = frozenset({1, 2, 3, 8})


def _vcek_key(report: SnpReport, product: Product) -> CollateralKey:
    chip_id = report.chip_id[: _HWID_SIZES[product]]
    return CollateralKey.of(
        "amd-vcek", product=product, chip_id=chip_id.hex(), tcb=report.reported_tcb.hex()
    )


def _leaf_key(report: SnpReport, product: Product) -> CollateralKey:
    if report.signing_key == "vcek":
        return _vcek_key(report, product)
    return CollateralKey.of("amd-vlek", product=product, tcb=report.reported_tcb.hex())


def _chain_key(product: Product, signing_key: SigningKey) -> CollateralKey:
    return CollateralKey.of("amd-chain", product=product, signer=signing_key)


@dataclass(frozen=True)
class VerifiedChain:
    """A signing certificate whose chain to a pinned ARK verified: leaf, intermediate, ARK."""

    product: Product
    signing_key: SigningKey
    certificates: tuple[AmdCertificate, AmdCertificate, AmdCertificate]
    key: ec.EllipticCurvePublicKey
    key_hash: str
    certified_tcb: bytes
    """The TCB version the leaf's extensions state, as the report stores one (8 bytes)."""
    hwid: bytes | None
    """A VCEK's hardware id (64 bytes, or 8 on Turin); ``None`` for a VLEK."""
    csp_id: str | None
    """A VLEK's cloud provider id, when it names one."""

    @property
    def leaf(self) -> AmdCertificate:
        """The VCEK or VLEK."""
        return self.certificates[0]

    @property
    def not_before(self) -> datetime:
        """When the last of the three certificates became valid."""
        return max(item.not_before for item in self.certificates)

    @property
    def not_after(self) -> datetime:
        """When the first of the three certificates stops being valid."""
        return min(item.not_after for item in self.certificates)

    def check_valid_at(self, at: datetime) -> None:
        """Return if every certificate is valid at ``at``; else a chain error naming one."""
        for certificate in self.certificates:
            certificate.check_valid_at(at)


def verify_chain(
    leaf_der: bytes,
    chain_pem: bytes,
    product: Product,
    signing_key: SigningKey,
    roots: Mapping[Product, str] = PINNED_ARK_KEY_HASHES,
) -> VerifiedChain:
    """Verify the VCEK or VLEK ``leaf_der`` and ``chain_pem`` (ASK or ASVK, then ARK).

    Checks every signature (RSA-PSS SHA-384, salt 48), that names chain, that the ARK is
    self-signed with the key ``roots`` pins for ``product``, that the intermediate is the one
    AMD names for ``product`` and ``signing_key``, that the leaf holds a P-384 key and that its
    AMD extensions (product name, TCB, hardware id or provider id) are well formed and of this
    product. Validity in time is not checked (it depends on the time; see
    :meth:`VerifiedChain.check_valid_at`). Raises :class:`EvidenceError` with
    ``check="chain"``.
    """
    name = _PRODUCT_NAMES[product]
    leaf_what = signing_key.upper()
    intermediate_what = "ASK" if signing_key == "vcek" else "ASVK"
    leaf = parse_amd_certificate(leaf_der, leaf_what)
    intermediate, ark = parse_amd_chain(chain_pem, (intermediate_what, "ARK"))
    pinned = roots.get(product)
    if pinned is None:
        raise ark.refuse(f"'{ark.common_name}' cannot be trusted: no {name} root is pinned")
    if key_hash(ark.public_key) != pinned:
        raise ark.refuse(
            f"'{ark.common_name}' is not AMD's pinned {name} root (its key hash is "
            f"{key_hash(ark.public_key)})"
        )
    expected_intermediate = f"SEV-{name}" if signing_key == "vcek" else f"SEV-VLEK-{name}"
    if intermediate.common_name != expected_intermediate:
        raise intermediate.refuse(
            f"is '{intermediate.common_name}', not '{expected_intermediate}' (the {name} "
            f"{intermediate_what})"
        )
    ark.check_is_authority()
    intermediate.check_is_authority()
    ark.check_signed_by(ark)
    intermediate.check_signed_by(ark)
    leaf.check_signed_by(intermediate)
    key = leaf.public_key
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise leaf.refuse(f"'{leaf.common_name}' does not hold an ECDSA P-384 key")
    _check_product_name(leaf, product)
    hwid = leaf.extensions.get(_OID_HWID)
    csp_id = leaf.extensions.get(_OID_CSP_ID)
    if signing_key == "vlek" and hwid is not None:
        raise leaf.refuse("carries a hardware id, which a VLEK never does")
    return VerifiedChain(
        product=product,
        signing_key=signing_key,
        certificates=(leaf, intermediate, ark),
        key=key,
        key_hash=key_hash(key),
        certified_tcb=_certified_tcb(leaf, product),
        hwid=None if signing_key == "vlek" else _hwid(leaf, hwid, _HWID_SIZES[product]),
        csp_id=(
            _ia5(leaf, _OID_CSP_ID, csp_id)
            if signing_key == "vlek" and csp_id is not None
            else None
        ),
    )


class ChainCache:
    """Verified chains by the SHA-256 of their bytes, product and signer; at most ``size``.

    ``roots`` are the ARK key hashes by product the chains must end in (AMD's, unless a test
    brings its own PKI).

    Pure and thread-safe: it remembers only chains that verified, and what it returns is what
    :func:`verify_chain` would return for the same bytes (validity in time is checked anew by
    the caller for every report).
    """

    def __init__(
        self, size: int = CHAIN_CACHE_SIZE, roots: Mapping[Product, str] = PINNED_ARK_KEY_HASHES
    ) -> None:
        self._size = size
        self._roots = roots
        self._chains: OrderedDict[bytes, VerifiedChain] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._chains)

    def verified(
        self, leaf_der: bytes, chain_pem: bytes, product: Product, signing_key: SigningKey
    ) -> VerifiedChain:
        """:func:`verify_chain` of the arguments, from memory when these bytes verified before."""
        digest = hashlib.sha256()
        for part in (product.encode(), signing_key.encode(), leaf_der, chain_pem):
            digest.update(len(part).to_bytes(8, "big") + part)
        key = digest.digest()
        with self._lock:
            chain = self._chains.get(key)
            if chain is not None:
                self._chains.move_to_end(key)
                return chain
        chain = verify_chain(leaf_der, chain_pem, product, signing_key, self._roots)
        with self._lock:
            self._chains[key] = chain
            while len(self._chains) > self._size:
                self._chains.popitem(last=False)
        return chain


def tcb_status(report: SnpReport, product: Product) -> str:
    """The TCB status of a report whose reported TCB its signing certificate vouches for.

    ``UpToDate`` when no component of the reported TCB is below the committed TCB (the lowest
    firmware the platform can go back to); ``OutOfDate`` when one is: the host reports an
    older TCB than it runs, so the report's key is one that older firmware, with the flaws
    fixed since, can derive too. A reported TCB above the current one (which genuine firmware
    never signs) raises :class:`EvidenceError` with ``check="tcb"``.
    """
    reported = decode_tcb(report.reported_tcb, product)
    current = decode_tcb(report.current_tcb, product)
    if current.below(reported):
        raise EvidenceError(
            f"SEV-SNP report claims a reported TCB ({reported.describe()}) above the platform's "
            f"current TCB ({current.describe()}), which genuine firmware never signs",
            check="tcb",
        )
    committed = decode_tcb(report.committed_tcb, product)
    return TCB_OUT_OF_DATE if reported.below(committed) else TCB_UP_TO_DATE


class SnpVerifier:
    """The :class:`~opencas.attestation.verifier.Verifier` of SEV-SNP reports (``snp``).

    One instance serves every report; it memoizes verified chains in its :class:`ChainCache`.
    """

    def __init__(self, cache: ChainCache | None = None) -> None:
        """A verifier with its own chain memo, or ``cache`` (whose roots it then trusts)."""
        self._cache = ChainCache() if cache is None else cache

    def verify(
        self, evidence: Evidence, *, at: datetime, collateral: CollateralSource
    ) -> VerifiedEvidence:
        """What the SEV-SNP report ``evidence.data`` proves, verified as of ``at``.

        ``at`` must be timezone-aware. Raises :class:`EvidenceError` whose ``check`` is
        ``type``, ``format`` (the report), ``collateral`` (a certificate cannot be obtained),
        ``chain`` (the certificates do not lead to a pinned ARK, or are not valid at ``at``),
        ``tcb`` (the certificate's TCB or hardware id is not the report's) or ``signature``.
        """
        if at.tzinfo is None:
            raise ValueError("the verification time must be timezone-aware")
        if evidence.type != EVIDENCE_TYPE:
            raise EvidenceError(
                f"evidence of type '{evidence.type}' is not an SEV-SNP report", check="type"
            )
        report = parse_snp_report(evidence.data)
        product, leaf_der = _signing_certificate(report, at, collateral)
        chain_pem = collateral.collateral(_chain_key(product, report.signing_key), at)
        chain = self._cache.verified(leaf_der, chain_pem, product, report.signing_key)
        chain.check_valid_at(at)
        _check_leaf_matches(report, chain)
        _check_signature(report, chain.key)
        return _verified(report, chain)


def _signing_certificate(
    report: SnpReport, at: datetime, collateral: CollateralSource
) -> tuple[Product, bytes]:
    """The product and the DER of the certificate that signed ``report``, from ``collateral``.

    For a version 2 report, each possible product in turn until the source has one.
    """
    if report.product is not None:
        return report.product, collateral.collateral(_leaf_key(report, report.product), at)
    failures = []
    for product in VERSION_2_PRODUCTS:
        try:
            return product, collateral.collateral(_leaf_key(report, product), at)
        except EvidenceError as exc:
            if exc.check != "collateral":
                raise
            failures.append(exc.message)
    raise EvidenceError(
        "no signing certificate for this version 2 SEV-SNP report (which does not name its "
        "product) could be obtained for any of "
        + ", ".join(_PRODUCT_NAMES[product] for product in VERSION_2_PRODUCTS)
        + ": "
        + "; ".join(failures),
        check="collateral",
    )


def _check_leaf_matches(report: SnpReport, chain: VerifiedChain) -> None:
    """The certificate vouches for the reported TCB and (a VCEK) for this chip."""
    product = chain.product
    if chain.certified_tcb != report.reported_tcb:
        raise EvidenceError(
            f"the TCB of the {chain.leaf.what} "
            f"({decode_tcb(chain.certified_tcb, product).describe()}) does not match the "
            f"report's reported TCB ({decode_tcb(report.reported_tcb, product).describe()})",
            check="tcb",
        )
    if chain.hwid is None:
        return
    if not any(report.chip_id):
        raise EvidenceError(
            "the SEV-SNP report's chip id is masked (all zeros), so no VCEK can vouch for it",
            check="tcb",
        )
    size = len(chain.hwid)
    if any(report.chip_id[size:]) or report.chip_id[:size] != chain.hwid:
        raise EvidenceError(
            f"the VCEK is for another chip: its hardware id is not the report's chip id "
            f"{report.chip_id.hex()[:16]}…",
            check="tcb",
        )


def _check_product_name(leaf: AmdCertificate, product: Product) -> None:
    name = leaf.extensions.get(_OID_PRODUCT_NAME)
    if name is not None:
        text = _ia5(leaf, _OID_PRODUCT_NAME, name)
        if text.split("-", 1)[0] != _PRODUCT_NAMES[product]:
            raise leaf.refuse(f"names product '{text}', not {_PRODUCT_NAMES[product]}")


def _certified_tcb(leaf: AmdCertificate, product: Product) -> bytes:
    """The TCB version (8 bytes as the report stores it) the certificate's extensions state."""
    turin = product == "turin"
    arcs = _TURIN_TCB_ARCS if turin else _LEGACY_TCB_ARCS
    required = _REQUIRED_TCB_ARCS | ({9} if turin else set())
    version = leaf.extensions.get(_OID_STRUCT_VERSION)
    if version is not None and _small_integer(leaf, _OID_STRUCT_VERSION, version) != int(turin):
        raise leaf.refuse(f"has a TCB structure version that is not {_PRODUCT_NAMES[product]}'s")
    levels = []
    for arc in arcs:
        value = None if arc is None else leaf.extensions.get(_OID_TCB + str(arc))
        if value is None:
            if arc in required:
                raise leaf.refuse(f"lacks the TCB extension {_OID_TCB}{arc}")
            levels.append(0)
        else:
            levels.append(_small_integer(leaf, f"{_OID_TCB}{arc}", value))
    return bytes(levels)


def _small_integer(leaf: AmdCertificate, oid: str, value: bytes) -> int:
    try:
        number = der.integer(der.read_single(value))
    except ValueError as exc:
        raise leaf.refuse(f"extension {oid} is not a DER integer ({exc})") from exc
    if not 0 <= number <= 255:
        raise leaf.refuse(f"extension {oid} is {number}, not 0 to 255")
    return number


def _ia5(leaf: AmdCertificate, oid: str, value: bytes) -> str:
    try:
        element = der.read_single(value, tag=0x16)
        return element.content.decode("ascii")
    except (ValueError, UnicodeDecodeError) as exc:
        raise leaf.refuse(f"extension {oid} is not an IA5String") from exc


def _hwid(leaf: AmdCertificate, value: bytes | None, size: int) -> bytes:
    """The hardware id: AMD's KDS wrote it bare at first, as an OCTET STRING later."""
    if value is None:
        raise leaf.refuse("lacks the hardware id extension a VCEK carries")
    if len(value) == size:
        return value
    try:
        return der.read_single(value, tag=der.OCTET_STRING).content
    except ValueError as exc:
        raise leaf.refuse(
            f"has a hardware id that is neither {size} bytes nor one OCTET STRING"
        ) from exc


def _check_signature(report: SnpReport, key: ec.EllipticCurvePublicKey) -> None:
    signature = encode_dss_signature(report.signature_r, report.signature_s)
    try:
        key.verify(signature, report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise EvidenceError(
            "SEV-SNP report signature does not verify with the key of its certificate: the "
            "report was changed or not signed by that chip",
            check="signature",
        ) from exc


def _verified(report: SnpReport, chain: VerifiedChain) -> VerifiedEvidence:
    product = chain.product
    measurements = {
        "measurement": report.measurement.hex(),
        "host_data": report.host_data.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "author_key_digest": report.author_key_digest.hex(),
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "policy": str(report.policy),
        "vmpl": str(report.vmpl),
        "guest_svn": str(report.guest_svn),
    }
    platform_id = {
        "product": product,
        "signing_key": chain.signing_key,
        "reported_tcb": report.reported_tcb.hex(),
        "current_tcb": report.current_tcb.hex(),
        "committed_tcb": report.committed_tcb.hex(),
        "launch_tcb": report.launch_tcb.hex(),
        "current_firmware": "{}.{}.{}".format(*report.current_version),
        "committed_firmware": "{}.{}.{}".format(*report.committed_version),
        "platform_info": str(report.platform_info),
    }
    if any(report.chip_id):
        platform_id["chip_id"] = report.chip_id.hex()
    if chain.csp_id is not None:
        platform_id["csp_id"] = chain.csp_id
    return VerifiedEvidence(
        platform=EVIDENCE_TYPE,
        measurement=report.measurement.hex(),
        report_data=report.report_data,
        debug=report.debug,
        platform_key_hash=chain.key_hash,
        tcb_status=tcb_status(report, product),
        advisories=(),
        host_data=report.host_data.hex(),
        measurements=MappingProxyType(measurements),
        platform_id=MappingProxyType(platform_id),
        collateral_not_before=chain.not_before,
        collateral_not_after=chain.not_after,
        verifier=VERIFIER_NAME,
    )
