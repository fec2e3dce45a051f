"""What a platform reads back from the evidence its own TEE made: measurement, debug, report data.

A platform learns its software measurement and whether it runs in debug mode from its first
quote or report. The evidence is read with the verifiers' own strict parsers
(:mod:`opencas.attestation.dcap_quote`, :mod:`opencas.attestation.snp_report`), so a platform
produces only evidence its verifier can read; nothing here checks a signature, which is the
verifiers' job on the other side.

- SGX DCAP quote: MRENCLAVE, and ATTRIBUTES.FLAGS bit 1 (DEBUG).
- TDX quote (v4, v5): MRTD, and TD_ATTRIBUTES bit 0 (DEBUG).
- SEV-SNP attestation report: MEASUREMENT, and POLICY bit 19 (DEBUG).
"""

from __future__ import annotations

from dataclasses import dataclass

from opencas.attestation.dcap_quote import SgxReport, TdReport, parse_quote
from opencas.attestation.snp_report import parse_snp_report
from opencas.errors import EvidenceError, PlatformError

REPORT_DATA_SIZE = 64


@dataclass(frozen=True)
class OwnEvidence:
    """What a platform needs of its own evidence: lowercase hex measurement, debug, report data."""

    measurement: str
    debug: bool
    report_data: bytes


def _quote_report(quote: bytes, tee: str) -> SgxReport | TdReport:
    try:
        parsed = parse_quote(quote)
    except EvidenceError as exc:
        raise PlatformError(exc.message) from exc
    if parsed.tee != tee:
        raise PlatformError(f"the quote is for {parsed.tee.upper()}, not for {tee.upper()}")
    return parsed.report


def read_sgx_quote(quote: bytes) -> OwnEvidence:
    """MRENCLAVE, the DEBUG attribute and the report data of an SGX DCAP quote.

    Raises :class:`PlatformError` with the parser's reason when ``quote`` is not one.
    """
    report = _quote_report(quote, "sgx")
    assert isinstance(report, SgxReport)  # an SGX quote's body is an enclave report
    return OwnEvidence(report.mrenclave.hex(), report.debug, report.report_data)


def read_tdx_quote(quote: bytes) -> OwnEvidence:
    """MRTD, the DEBUG TD attribute and the report data of a TDX quote (v4 or v5).

    Raises :class:`PlatformError` with the parser's reason when ``quote`` is not one.
    """
    report = _quote_report(quote, "tdx")
    assert isinstance(report, TdReport)  # a TDX quote's body is a TD report
    return OwnEvidence(report.mrtd.hex(), report.debug, report.report_data)


def read_snp_report(report: bytes) -> OwnEvidence:
    """MEASUREMENT, the DEBUG policy bit and the report data of a SEV-SNP attestation report.

    Raises :class:`PlatformError` with the parser's reason when ``report`` is not one.
    """
    try:
        parsed = parse_snp_report(report)
    except EvidenceError as exc:
        raise PlatformError(exc.message) from exc
    return OwnEvidence(parsed.measurement.hex(), parsed.debug, parsed.report_data)
