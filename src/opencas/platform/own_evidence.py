"""What a platform reads back from the evidence its own TEE made: measurement, debug, report data.

A platform learns its software measurement and whether it runs in debug mode from its first
quote or report, and checks every later one binds the report data it asked for (a concurrent
writer, or the wrong device, would give someone else's). These are the few fixed offsets of the
formats, read here in one place; nothing here verifies a signature, which is the verifiers' job
(:mod:`opencas.attestation`) on the other side.

- SGX DCAP quote (versions 3 and 4, TEE type 0): a 48-byte header, then the 384-byte ISV report
  body: ATTRIBUTES.FLAGS at 96 (8 bytes, little-endian; bit 1 is DEBUG), MRENCLAVE at 112 (32
  bytes), REPORTDATA at 368 (64 bytes).
- TDX quote (version 4, or version 5 with a TD report body of type 2 or 3; TEE type 0x81): the TD
  report body starts at 48 (v4) or 54 (v5: a 2-byte type and 4-byte size come first); in it
  TD_ATTRIBUTES at 120 (bit 0 of the first byte is DEBUG), MRTD at 136 (48 bytes), REPORTDATA at
  520 (64 bytes).
- SEV-SNP attestation report: read with the SNP verifier's parser
  (:mod:`opencas.attestation.snp_report`): POLICY bit 19 is DEBUG, MEASUREMENT at 0x90.
"""

from __future__ import annotations

from dataclasses import dataclass

from opencas.attestation.snp_report import parse_snp_report
from opencas.errors import EvidenceError, PlatformError

REPORT_DATA_SIZE = 64

_QUOTE_HEADER = 48
_SGX_BODY = 384
_SGX_TEE_TYPE = 0x00000000
_TDX_TEE_TYPE = 0x00000081
_TD_REPORT_BODY = 584


@dataclass(frozen=True)
class OwnEvidence:
    """What a platform needs of its own evidence: lowercase hex measurement, debug, report data."""

    measurement: str
    debug: bool
    report_data: bytes


def _need(data: bytes, size: int, what: str) -> None:
    if len(data) < size:
        raise PlatformError(f"the {what} is {len(data)} bytes, shorter than the {size} it must be")


def _u16(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 2], "little")


def _u32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "little")


def read_sgx_quote(quote: bytes) -> OwnEvidence:
    """MRENCLAVE, the DEBUG attribute and the report data of an SGX DCAP quote (v3 or v4).

    Raises :class:`PlatformError` naming what is wrong when ``quote`` is too short, of another
    version or for another TEE.
    """
    _need(quote, _QUOTE_HEADER + _SGX_BODY, "SGX quote")
    version, tee_type = _u16(quote, 0), _u32(quote, 4)
    if version not in (3, 4) or tee_type != _SGX_TEE_TYPE:
        raise PlatformError(
            f"the SGX quote has version {version} and TEE type {tee_type:#x}; expected an SGX "
            "DCAP quote (version 3 or 4, TEE type 0)"
        )
    flags = int.from_bytes(quote[96:104], "little")
    return OwnEvidence(
        measurement=quote[112:144].hex(), debug=bool(flags & 0x2), report_data=quote[368:432]
    )


def read_tdx_quote(quote: bytes) -> OwnEvidence:
    """MRTD, the DEBUG TD attribute and the report data of a TDX quote (v4 or v5).

    Raises :class:`PlatformError` naming what is wrong when ``quote`` is too short, of another
    version or body type, or for another TEE.
    """
    _need(quote, _QUOTE_HEADER, "TDX quote")
    version, tee_type = _u16(quote, 0), _u32(quote, 4)
    if tee_type != _TDX_TEE_TYPE or version not in (4, 5):
        raise PlatformError(
            f"the TDX quote has version {version} and TEE type {tee_type:#x}; expected a TDX "
            "quote (version 4 or 5, TEE type 0x81)"
        )
    body = _QUOTE_HEADER
    if version == 5:
        _need(quote, _QUOTE_HEADER + 6, "TDX quote")
        body_type = _u16(quote, _QUOTE_HEADER)
        if body_type not in (2, 3):
            raise PlatformError(
                f"the TDX quote's body has type {body_type}; expected a TD report (2 or 3)"
            )
        body += 6
    _need(quote, body + _TD_REPORT_BODY, "TDX quote")
    return OwnEvidence(
        measurement=quote[body + 136 : body + 184].hex(),
        debug=bool(quote[body + 120] & 0x1),
        report_data=quote[body + 520 : body + 584],
    )


def read_snp_report(report: bytes) -> OwnEvidence:
    """MEASUREMENT, the DEBUG policy bit and the report data of a SEV-SNP attestation report.

    The report is parsed by the verifier's own strict parser
    (:func:`~opencas.attestation.snp_report.parse_snp_report`), so the platform produces only
    reports its verifier can read. Raises :class:`PlatformError` with the parser's reason.
    """
    try:
        parsed = parse_snp_report(report)
    except EvidenceError as exc:
        raise PlatformError(exc.message) from exc
    return OwnEvidence(
        measurement=parsed.measurement.hex(), debug=parsed.debug, report_data=parsed.report_data
    )
