"""The AMD SEV-SNP attestation report (versions 2 and 3): its layout and a strict parser.

The layout is the ``ATTESTATION_REPORT`` structure of AMD's SEV-SNP firmware ABI specification
(publication 56860): 1184 bytes, little-endian, the signature at 0x2A0 over bytes 0x000-0x29F.
Version 3 adds the CPUID family, model and stepping at 0x188-0x18A, which name the product.
Reserved ranges must be zero and the reserved policy bit 17 must be one, as the specification
requires; anything else is refused, so that a field this parser does not know cannot carry a
meaning the verifier ignores.

A TCB version is eight bytes whose layout depends on the product: Milan and Genoa put the boot
loader, TEE, SNP firmware and microcode security patch levels (SPLs) at bytes 0, 1, 6 and 7;
Turin puts the FMC, boot loader, TEE and SNP SPLs at bytes 0 to 3 and microcode at byte 7.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from opencas.errors import EvidenceError

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SIGNATURE_OFFSET = 0x2A0
#: r and s, 72 bytes each (little-endian, of which P-384 uses 48).
SIGNATURE_COMPONENT_SIZE = 72
SUPPORTED_VERSIONS = (2, 3)
#: SIGNATURE_ALGO 1: ECDSA P-384 with SHA-384.
ECDSA_P384_SHA384 = 1
POLICY_DEBUG_BIT = 19
_POLICY_RESERVED_ONE_BIT = 17
#: Policy bits above 25 are reserved (must be zero) up to ABI 1.58.
_POLICY_HIGHEST_BIT = 25

Product: TypeAlias = Literal["milan", "genoa", "turin"]
SigningKey: TypeAlias = Literal["vcek", "vlek"]
PRODUCTS: tuple[Product, ...] = ("milan", "genoa", "turin")
#: The products a version 2 report (which has no CPUID fields) can come from: Turin's firmware
#: writes version 3 or later.
VERSION_2_PRODUCTS: tuple[Product, ...] = ("milan", "genoa")

#: CPUID family and model (as report v3 stores them) of each product.
_CPUID_PRODUCTS: dict[tuple[int, int], Product] = {
    (0x19, 0x01): "milan",
    (0x19, 0x11): "genoa",
    (0x1A, 0x02): "turin",
}

# Reserved ranges (start, end) that must be zero, for both versions; v2 also reserves 0x188-0x18A.
_RESERVED = ((0x04C, 0x050), (0x18B, 0x1A0), (0x1EB, 0x1EC), (0x1EF, 0x1F0), (0x1F8, 0x2A0))
_SIGNATURE_RESERVED = (SIGNATURE_OFFSET + 2 * SIGNATURE_COMPONENT_SIZE, REPORT_SIZE)


@dataclass(frozen=True)
class Tcb:
    """A TCB version decoded for its product: the security patch level of each component.

    ``fmc`` is Turin's (``None`` on Milan and Genoa). ``raw`` is the eight bytes as stored.
    """

    raw: bytes
    boot_loader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    def levels(self) -> tuple[int, ...]:
        """Every component's level, in a fixed order (FMC last when present)."""
        base = (self.boot_loader, self.tee, self.snp, self.microcode)
        return base if self.fmc is None else (*base, self.fmc)

    def below(self, other: Tcb) -> bool:
        """True when some component of this TCB is lower than the same one of ``other``."""
        return any(
            mine < theirs for mine, theirs in zip(self.levels(), other.levels(), strict=True)
        )

    def describe(self) -> str:
        """``bl3/tee0/snp8/ucode115`` (with ``fmcN/`` first on Turin)."""
        fmc = "" if self.fmc is None else f"fmc{self.fmc}/"
        return f"{fmc}bl{self.boot_loader}/tee{self.tee}/snp{self.snp}/ucode{self.microcode}"


def decode_tcb(raw: bytes, product: Product) -> Tcb:
    """The TCB version ``raw`` (eight bytes) in ``product``'s layout."""
    if product == "turin":
        return Tcb(
            raw=raw, fmc=raw[0], boot_loader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7]
        )
    return Tcb(raw=raw, boot_loader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])


@dataclass(frozen=True)
class SnpReport:
    """A parsed SEV-SNP attestation report. Byte strings are as stored; TCBs are raw 8 bytes.

    ``product`` is known from a version 3 report's CPUID fields and ``None`` for version 2.
    """

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    current_tcb: bytes
    platform_info: int
    author_key_en: bool
    mask_chip_key: bool
    signing_key: SigningKey
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: bytes
    product: Product | None
    chip_id: bytes
    committed_tcb: bytes
    current_version: tuple[int, int, int]
    committed_version: tuple[int, int, int]
    launch_tcb: bytes
    signature_r: int
    signature_s: int

    @property
    def debug(self) -> bool:
        """The guest policy allows debugging: the host can read and change guest memory."""
        return bool(self.policy >> POLICY_DEBUG_BIT & 1)

    @property
    def signed_bytes(self) -> bytes:
        """The bytes the signature covers (0x000-0x29F)."""
        return self.raw[:SIGNED_SIZE]


def _refuse(message: str) -> EvidenceError:
    return EvidenceError(f"SEV-SNP report {message}", check="format")


def _u32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "little")


def _u64(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 8], "little")


def parse_snp_report(data: bytes) -> SnpReport:
    """Parse ``data`` as a version 2 or 3 SEV-SNP attestation report, strictly.

    It must be exactly 1184 bytes, of a supported version, signed with ECDSA P-384 (signature
    algorithm 1) by a VCEK or VLEK, with a valid guest policy, VMPL 0 to 3, the reserved fields
    zero and (version 3) CPUID fields naming Milan, Genoa or Turin. Raises
    :class:`EvidenceError` (``check="format"``) naming the field and its offset. The signature
    is not checked here.
    """
    if len(data) != REPORT_SIZE:
        raise _refuse(f"must be exactly {REPORT_SIZE} bytes, not {len(data)}")
    version = _u32(data, 0x000)
    if version not in SUPPORTED_VERSIONS:
        raise _refuse(
            f"field 'version' (offset 0x000) is {version}; this verifier reads versions "
            + " and ".join(str(v) for v in SUPPORTED_VERSIONS)
        )
    algorithm = _u32(data, 0x034)
    if algorithm != ECDSA_P384_SHA384:
        raise _refuse(
            f"field 'signature_algo' (offset 0x034) is {algorithm}, not {ECDSA_P384_SHA384} "
            "(ECDSA P-384 with SHA-384)"
        )
    policy = _check_policy(_u64(data, 0x008))
    vmpl = _u32(data, 0x030)
    if vmpl > 3:
        raise _refuse(f"field 'vmpl' (offset 0x030) is {vmpl}, not 0 to 3")
    signer_info = _u32(data, 0x048)
    signing_key = _signing_key(signer_info)
    _check_reserved(data, version)
    return SnpReport(
        raw=bytes(data),
        version=version,
        guest_svn=_u32(data, 0x004),
        policy=policy,
        family_id=data[0x010:0x020],
        image_id=data[0x020:0x030],
        vmpl=vmpl,
        current_tcb=data[0x038:0x040],
        platform_info=_u64(data, 0x040),
        author_key_en=bool(signer_info & 1),
        mask_chip_key=bool(signer_info & 2),
        signing_key=signing_key,
        report_data=data[0x050:0x090],
        measurement=data[0x090:0x0C0],
        host_data=data[0x0C0:0x0E0],
        id_key_digest=data[0x0E0:0x110],
        author_key_digest=data[0x110:0x140],
        report_id=data[0x140:0x160],
        report_id_ma=data[0x160:0x180],
        reported_tcb=data[0x180:0x188],
        product=_product(data) if version >= 3 else None,
        chip_id=data[0x1A0:0x1E0],
        committed_tcb=data[0x1E0:0x1E8],
        current_version=(data[0x1EA], data[0x1E9], data[0x1E8]),
        committed_version=(data[0x1EE], data[0x1ED], data[0x1EC]),
        launch_tcb=data[0x1F0:0x1F8],
        signature_r=int.from_bytes(data[0x2A0:0x2E8], "little"),
        signature_s=int.from_bytes(data[0x2E8:0x330], "little"),
    )


def _check_policy(policy: int) -> int:
    if not policy >> _POLICY_RESERVED_ONE_BIT & 1:
        raise _refuse("field 'policy' (offset 0x008) has reserved bit 17 clear; it must be set")
    if policy >> (_POLICY_HIGHEST_BIT + 1):
        raise _refuse(
            f"field 'policy' (offset 0x008) is 0x{policy:016x}: bits {_POLICY_HIGHEST_BIT + 1} "
            "to 63 are reserved and must be zero"
        )
    return policy


def _signing_key(signer_info: int) -> SigningKey:
    if signer_info >> 5:
        raise _refuse(
            f"field 'signer_info' (offset 0x048) is 0x{signer_info:08x}: bits 5 to 31 are "
            "reserved and must be zero"
        )
    key = signer_info >> 2 & 7
    if key == 0:
        if signer_info & 2:
            raise _refuse(
                "field 'signer_info' (offset 0x048) sets MASK_CHIP_KEY yet names the VCEK as "
                "signer: with the chip key masked the VCEK signs nothing"
            )
        return "vcek"
    if key == 1:
        return "vlek"
    if key == 7:
        raise _refuse("is not signed (field 'signer_info' at offset 0x048 says signing key none)")
    raise _refuse(f"field 'signer_info' (offset 0x048) names reserved signing key {key}")


def _check_reserved(data: bytes, version: int) -> None:
    ranges = ((0x188, 0x18B), *_RESERVED) if version < 3 else _RESERVED
    for start, end in (*ranges, _SIGNATURE_RESERVED):
        if any(data[start:end]):
            raise _refuse(f"reserved bytes 0x{start:03x}-0x{end - 1:03x} must be zero")


def _product(data: bytes) -> Product:
    family, model, stepping = data[0x188], data[0x189], data[0x18A]
    product = _CPUID_PRODUCTS.get((family, model))
    if product is None:
        raise _refuse(
            f"fields 'cpuid_fam_id', 'cpuid_mod_id' (offsets 0x188, 0x189) are family "
            f"0x{family:02x}, model 0x{model:02x} (stepping {stepping}), which is not Milan, "
            "Genoa or Turin"
        )
    return product
