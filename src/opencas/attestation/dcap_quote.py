"""The Intel DCAP quote format: SGX quotes v3 and TDX quotes v4 and v5, read strictly.

This parser reads what a verifier needs before and after the signature checks: the header, the
report body (SGX enclave report, TD report 1.0 or 1.5) with every measurement, and the PCK
certificate chain of certification data type 5, so that the right collateral can be asked for.
It checks no signature: that is :mod:`opencas.attestation.dcap`'s work (through dcap-qvl). Every
length is checked against what is left, so a malformed quote raises :class:`EvidenceError`
naming the field and its byte offset, never an ``IndexError``.

Layout (all integers little-endian; Intel's "SGX ECDSA Quote Library API" and "TDX DCAP Quoting
Library API")::

    header (48)      version u16 @0, attestation key type u16 @2, TEE type u32 @4,
                     QE SVN u16 @8, PCE SVN u16 @10, QE vendor id (16) @12, user data (20) @28
    body             v3: SGX enclave report (384); v4: TD report 1.0 (584);
                     v5: body type u16, body size u32, then the report (type 2: TD 1.0,
                     type 3: TD 1.5 of 648 bytes; type 1: SGX, refused here)
    signature data   length u32, then: quote signature (64), attestation key (64), and
                     v3: QE report (384), QE report signature (64), QE authentication data
                         (u16 length + data), certification data (type u16, size u32, data)
                     v4/v5: certification data type 6 whose data is the QE report (384), its
                         signature (64), QE authentication data and the inner certification
                         data
    certification data type 5: the PEM chain PCK leaf, PCK CA, root (trailing NULs allowed)

Bytes after the signature data are covered by no signature and carry no claim; they are
ignored (configfs-tsm and some SDKs pad quotes to a buffer size).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, TypeAlias

from opencas.crypto.encoding import b64_decode
from opencas.errors import EvidenceError

Tee: TypeAlias = Literal["sgx", "tdx"]

TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
ATTESTATION_KEY_ECDSA_P256 = 2
HEADER_SIZE = 48
SGX_REPORT_SIZE = 384
TD_REPORT_10_SIZE = 584
TD_REPORT_15_SIZE = 648
ECDSA_SIGNATURE_SIZE = 64
ATTESTATION_KEY_SIZE = 64
CERT_DATA_PCK_CHAIN = 5
CERT_DATA_QE_REPORT = 6

#: The most certificates the PCK chain in a quote may hold (Intel's holds three).
MAX_PCK_CHAIN_CERTIFICATES = 4

_V5_BODY_TD10 = 2
_V5_BODY_TD15 = 3
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END CERTIFICATE-----"
)


@dataclass(frozen=True)
class QuoteHeader:
    """The quote header."""

    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class SgxReport:
    """An SGX enclave report (the body of a v3 quote)."""

    cpusvn: bytes
    miscselect: int
    attributes: bytes
    mrenclave: bytes
    mrsigner: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes

    @property
    def debug(self) -> bool:
        """Whether the enclave runs in debug mode (ATTRIBUTES.DEBUG, bit 1 of the flags)."""
        return bool(self.attributes[0] & 0x02)


@dataclass(frozen=True)
class TdReport:
    """A TD report 1.0, or 1.5 when ``tee_tcb_svn2`` and ``mrservicetd`` are set."""

    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mrservicetd: bytes | None = None

    @property
    def debug(self) -> bool:
        """Whether the TD runs in debug mode (TDATTRIBUTES.TUD.DEBUG, bit 0)."""
        return bool(self.td_attributes[0] & 0x01)


@dataclass(frozen=True)
class DcapQuote:
    """A parsed quote: header, report and the PCK chain as it travels (PEM, leaf first).

    ``pck_chain_offset`` is where the chain starts in the quote, for error messages.
    """

    header: QuoteHeader
    tee: Tee
    body: Literal["sgx-enclave-report", "td-report-1.0", "td-report-1.5"]
    report: SgxReport | TdReport
    pck_chain_pem: bytes
    pck_chain_offset: int

    @cached_property
    def pck_chain(self) -> tuple[bytes, ...]:
        """The PCK chain as DER certificates, leaf first, decoded on first use.

        Decoding is deferred because a verifier that has seen this chain before (the same
        bytes) needs none of it. Raises :class:`EvidenceError` when the chain is not 1 to
        :data:`MAX_PCK_CHAIN_CERTIFICATES` PEM certificates.
        """
        return _decode_pck_chain(self.pck_chain_pem, self.pck_chain_offset)


class _Reader:
    """Reads fields of a byte string in order, each failure naming the field and its offset."""

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self.data = data
        self.offset = start
        self.end = len(data) if end is None else end

    def take(self, size: int, field: str) -> bytes:
        if size > self.end - self.offset:
            raise EvidenceError(
                f"DCAP quote field '{field}' at offset {self.offset:#x} needs {size} bytes, but "
                f"only {max(self.end - self.offset, 0)} remain"
            )
        value = self.data[self.offset : self.offset + size]
        self.offset += size
        return value

    def u16(self, field: str) -> int:
        value: int = struct.unpack("<H", self.take(2, field))[0]
        return value

    def u32(self, field: str) -> int:
        value: int = struct.unpack("<I", self.take(4, field))[0]
        return value

    def sized(self, size: int, field: str) -> _Reader:
        """A reader of the next ``size`` bytes (``field`` declared that size); skips them here."""
        start = self.offset
        self.take(size, field)
        return _Reader(self.data, start, start + size)


def parse_quote(data: bytes) -> DcapQuote:
    """Parse ``data`` as an SGX v3 or TDX v4/v5 ECDSA-P256 quote with a type 5 PCK chain.

    Raises :class:`EvidenceError` (``check="format"``) naming the field and offset of the first
    thing that is not so. The caller bounds ``data``'s size.
    """
    reader = _Reader(data)
    header = _parse_header(reader)
    tee: Tee = "sgx" if header.tee_type == TEE_TYPE_SGX else "tdx"
    body, report = _parse_body(reader, header)
    signature_data = reader.sized(reader.u32("signature data length"), "signature data")
    signature_data.take(ECDSA_SIGNATURE_SIZE, "quote signature")
    signature_data.take(ATTESTATION_KEY_SIZE, "attestation key")
    if header.version == 3:
        certification = _parse_qe_report_and_certification(signature_data)
    else:
        kind = signature_data.u16("certification data type")
        outer = signature_data.sized(signature_data.u32("certification data size"), "QE report")
        if kind != CERT_DATA_QE_REPORT:
            raise EvidenceError(
                f"DCAP quote certification data at offset {outer.offset - 6:#x} has type {kind}; "
                f"a v{header.version} quote carries type {CERT_DATA_QE_REPORT} (QE report)"
            )
        certification = _parse_qe_report_and_certification(outer)
    chain_offset = certification.offset
    chain_pem = certification.take(
        certification.end - certification.offset, "PCK certificate chain"
    ).rstrip(b"\x00")
    return DcapQuote(
        header=header,
        tee=tee,
        body=body,
        report=report,
        pck_chain_pem=chain_pem,
        pck_chain_offset=chain_offset,
    )


def _parse_header(reader: _Reader) -> QuoteHeader:
    version = reader.u16("version")
    key_type = reader.u16("attestation key type")
    tee_type = reader.u32("TEE type")
    header = QuoteHeader(
        version=version,
        attestation_key_type=key_type,
        tee_type=tee_type,
        qe_svn=reader.u16("QE SVN"),
        pce_svn=reader.u16("PCE SVN"),
        qe_vendor_id=reader.take(16, "QE vendor id"),
        user_data=reader.take(20, "user data"),
    )
    if tee_type not in (TEE_TYPE_SGX, TEE_TYPE_TDX):
        raise EvidenceError(
            f"DCAP quote field 'TEE type' at offset 0x4 is {tee_type:#x}; expected 0x0 (SGX) or "
            "0x81 (TDX)"
        )
    expected = (3,) if tee_type == TEE_TYPE_SGX else (4, 5)
    if version not in expected:
        what = "SGX quotes of version 3" if tee_type == TEE_TYPE_SGX else "TDX quotes v4 or v5"
        raise EvidenceError(
            f"DCAP quote field 'version' at offset 0x0 is {version}; this verifier reads {what}"
        )
    if key_type != ATTESTATION_KEY_ECDSA_P256:
        raise EvidenceError(
            f"DCAP quote field 'attestation key type' at offset 0x2 is {key_type}; only "
            f"{ATTESTATION_KEY_ECDSA_P256} (ECDSA P-256) is supported"
        )
    return header


def _parse_body(
    reader: _Reader, header: QuoteHeader
) -> tuple[Literal["sgx-enclave-report", "td-report-1.0", "td-report-1.5"], SgxReport | TdReport]:
    if header.version == 3:
        return "sgx-enclave-report", _parse_sgx_report(reader)
    if header.version == 4:
        return "td-report-1.0", _parse_td_report(reader, td15=False)
    body_type_at = reader.offset
    body_type = reader.u16("body type")
    body_size = reader.u32("body size")
    sizes = {_V5_BODY_TD10: TD_REPORT_10_SIZE, _V5_BODY_TD15: TD_REPORT_15_SIZE}
    if body_type not in sizes:
        raise EvidenceError(
            f"DCAP quote field 'body type' at offset {body_type_at:#x} is {body_type}; a v5 TDX "
            f"quote carries body type {_V5_BODY_TD10} (TD report 1.0) or {_V5_BODY_TD15} (TD "
            "report 1.5)"
        )
    if body_size != sizes[body_type]:
        raise EvidenceError(
            f"DCAP quote field 'body size' at offset {body_type_at + 2:#x} is {body_size}; body "
            f"type {body_type} is {sizes[body_type]} bytes"
        )
    if body_type == _V5_BODY_TD10:
        return "td-report-1.0", _parse_td_report(reader, td15=False)
    return "td-report-1.5", _parse_td_report(reader, td15=True)


def _parse_sgx_report(reader: _Reader) -> SgxReport:
    report = reader.sized(SGX_REPORT_SIZE, "SGX enclave report")
    cpusvn = report.take(16, "CPUSVN")
    miscselect = report.u32("MISCSELECT")
    report.take(28, "reserved")
    attributes = report.take(16, "ATTRIBUTES")
    mrenclave = report.take(32, "MRENCLAVE")
    report.take(32, "reserved")
    mrsigner = report.take(32, "MRSIGNER")
    report.take(96, "reserved")
    isv_prod_id = report.u16("ISVPRODID")
    isv_svn = report.u16("ISVSVN")
    report.take(60, "reserved")
    return SgxReport(
        cpusvn=cpusvn,
        miscselect=miscselect,
        attributes=attributes,
        mrenclave=mrenclave,
        mrsigner=mrsigner,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        report_data=report.take(64, "REPORTDATA"),
    )


def _parse_td_report(reader: _Reader, *, td15: bool) -> TdReport:
    size = TD_REPORT_15_SIZE if td15 else TD_REPORT_10_SIZE
    report = reader.sized(size, "TD report 1.5" if td15 else "TD report 1.0")
    fields = {
        name: report.take(length, name.upper())
        for name, length in (
            ("tee_tcb_svn", 16),
            ("mrseam", 48),
            ("mrsignerseam", 48),
            ("seam_attributes", 8),
            ("td_attributes", 8),
            ("xfam", 8),
            ("mrtd", 48),
            ("mrconfigid", 48),
            ("mrowner", 48),
            ("mrownerconfig", 48),
        )
    }
    rtmrs = (
        report.take(48, "RTMR0"),
        report.take(48, "RTMR1"),
        report.take(48, "RTMR2"),
        report.take(48, "RTMR3"),
    )
    report_data = report.take(64, "REPORTDATA")
    extra: dict[str, bytes] = {}
    if td15:
        extra = {"tee_tcb_svn2": report.take(16, "TEE_TCB_SVN2")}
        extra["mrservicetd"] = report.take(48, "MRSERVICETD")
    return TdReport(**fields, rtmrs=rtmrs, report_data=report_data, **extra)


def _parse_qe_report_and_certification(reader: _Reader) -> _Reader:
    """Skip the QE report, its signature and authentication data; the certification data."""
    reader.take(SGX_REPORT_SIZE, "QE report")
    reader.take(ECDSA_SIGNATURE_SIZE, "QE report signature")
    reader.take(reader.u16("QE authentication data length"), "QE authentication data")
    kind_at = reader.offset
    kind = reader.u16("certification data type")
    data = reader.sized(reader.u32("certification data size"), "certification data")
    if kind != CERT_DATA_PCK_CHAIN:
        raise EvidenceError(
            f"DCAP quote certification data at offset {kind_at:#x} has type {kind}; only type "
            f"{CERT_DATA_PCK_CHAIN} (the PCK certificate chain in the quote) is supported, since "
            "the PCK certificate decides which collateral applies"
        )
    return data


def _decode_pck_chain(text: bytes, start: int) -> tuple[bytes, ...]:
    blocks = list(_PEM_CERTIFICATE.finditer(text))
    if not blocks or text.count(b"-----BEGIN") != len(blocks):
        raise EvidenceError(
            f"DCAP quote PCK certificate chain at offset {start:#x} is not a sequence of PEM "
            "certificates"
        )
    if len(blocks) > MAX_PCK_CHAIN_CERTIFICATES:
        raise EvidenceError(
            f"DCAP quote PCK certificate chain at offset {start:#x} holds {len(blocks)} "
            f"certificates; at most {MAX_PCK_CHAIN_CERTIFICATES} are accepted"
        )
    chain = []
    for index, block in enumerate(blocks, start=1):
        try:
            chain.append(b64_decode(b"".join(block.group(1).split()).decode("ascii")))
        except ValueError as exc:
            raise EvidenceError(
                f"DCAP quote PCK certificate {index} at offset {start + block.start():#x} is not "
                "valid base64"
            ) from exc
    return tuple(chain)
