"""The verifier of Intel DCAP evidence: SGX quotes v3 (``sgx-dcap``) and TDX quotes v4/v5 (``tdx``).

The signature work is dcap-qvl's (Phala-Network/dcap-qvl, Rust): the PCK chain up to the
Intel SGX Root CA this module pins, the CRLs, the TCB info and QE identity signatures, the QE
report and its binding of the attestation key, the quote signature, and Intel's TCB matching.
This module does what must be decided before and around it:

1. bound and parse the quote (:mod:`opencas.attestation.dcap_quote`), so that every measurement
   is read here, and errors name a field and an offset;
2. refuse a debug enclave or TD: dcap-qvl 0.7 refuses them whatever its policy, so no session
   can accept one through this verifier, not even one that tolerates ``debug-mode``;
3. read the PCK leaf of the quote for the platform it names (FMSPC, PCK CA, PPID, PCE id,
   CPUSVN) and refuse an embedded root that is not the pinned one;
4. ask the collateral source for ``dcap(tee, fmspc, ca)``, verify the bundle
   (:mod:`opencas.attestation.dcap_collateral`) and check it is for this platform and valid at
   the verification time;
5. run dcap-qvl with the pinned root and return the claims. Whether they are acceptable (TCB
   status, advisories, measurements) is :mod:`opencas.attestation.workload_policy`'s decision.

What depends only on content is memoized by its digest in bounded caches: the parsed PCK chain
(a second quote from the same platform does not parse its certificates again) and the verified
collateral bundle with its validity window. Nothing is cached by time, so a cached entry is
never stale; dcap-qvl still checks every signature of every quote.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Final

import dcap_qvl
from cryptography import x509
from cryptography.x509.oid import NameOID

from opencas.attestation.dcap_collateral import PCK_CA_BY_NAME, DcapCollateral, parse_collateral
from opencas.attestation.dcap_quote import DcapQuote, SgxReport, TdReport, Tee, parse_quote
from opencas.attestation.evidence import MAX_EVIDENCE_BYTES, Evidence, VerifiedEvidence
from opencas.attestation.verifier import CollateralKey, CollateralSource
from opencas.content_cache import ContentCache
from opencas.crypto.encoding import b64_decode
from opencas.crypto.pem import CERTIFICATE_ERRORS
from opencas.crypto.x509 import certificate_key_hash
from opencas.errors import EvidenceError

SGX_EVIDENCE_TYPE = "sgx-dcap"
TDX_EVIDENCE_TYPE = "tdx"
EVIDENCE_TYPES: Final[dict[str, Tee]] = {SGX_EVIDENCE_TYPE: "sgx", TDX_EVIDENCE_TYPE: "tdx"}

#: How DCAP claims name their verifier: this module's version and dcap-qvl's.
VERIFIER_NAME = f"opencas-dcap 1 (dcap-qvl {dcap_qvl.__version__})"

#: The Intel SGX Root CA (2018-05-21 to 2049-12-31), the only trust anchor of DCAP evidence.
INTEL_SGX_ROOT_CA_DER: Final = b64_decode(
    "MIICjzCCAjSgAwIBAgIUImUM1lqdNInzg7SVUr9QGzknBqwwCgYIKoZIzj0EAwIwaDEaMBgGA1UEAwwRSW50ZWwg"
    "U0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENvcnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkG"
    "A1UECAwCQ0ExCzAJBgNVBAYTAlVTMB4XDTE4MDUyMTEwNDUxMFoXDTQ5MTIzMTIzNTk1OVowaDEaMBgGA1UEAwwR"
    "SW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENvcnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFy"
    "YTELMAkGA1UECAwCQ0ExCzAJBgNVBAYTAlVTMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEC6nEwMDIYZOj/iPW"
    "sCzaEKi71OiOSLRFhWGjbnBVJfVnkY4u3IjkDYYL0MxO4mqsyYjlBalTVYxFP2sJBK5zlKOBuzCBuDAfBgNVHSME"
    "GDAWgBQiZQzWWp00ifODtJVSv1AbOScGrDBSBgNVHR8ESzBJMEegRaBDhkFodHRwczovL2NlcnRpZmljYXRlcy50"
    "cnVzdGVkc2VydmljZXMuaW50ZWwuY29tL0ludGVsU0dYUm9vdENBLmRlcjAdBgNVHQ4EFgQUImUM1lqdNInzg7SV"
    "Ur9QGzknBqwwDgYDVR0PAQH/BAQDAgEGMBIGA1UdEwEB/wQIMAYBAf8CAQEwCgYIKoZIzj0EAwIDSQAwRgIhAOW/"
    "5QkR+S9CiSDcNoowLuPRLsWGf/Yi7GSX94BgwTwgAiEA4J0lrHoMs+Xo5o/sX6O9QWxHRAvZUGOdRQ7cvqRXaqI="
)
INTEL_SGX_ROOT_CA_SHA256: Final = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"

#: How many platforms (PCK chains) and collateral bundles the verifier remembers.
PLATFORM_CACHE_SIZE = 256
COLLATERAL_CACHE_SIZE = 64

_TEE_NAME = {"sgx": "SGX", "tdx": "TDX"}
_ARTICLE_TEE = {"sgx": "an SGX", "tdx": "a TDX"}
# Where the debug flag lives, for the refusal message: ATTRIBUTES after the 48-byte header at
# offset 48 of the SGX report; TDATTRIBUTES at offset 120 of the TD report (v5 adds 6 bytes).
_DEBUG_OFFSET = {3: 48 + 48, 4: 48 + 120, 5: 54 + 120}


@dataclass(frozen=True)
class DcapPlatform:
    """What the PCK leaf certificate of a quote says about the platform."""

    ca: str
    fmspc: str
    ppid: str
    pce_id: str
    cpusvn: str
    pce_svn: int
    key_hash: str


class DcapVerifier:
    """The :class:`~opencas.attestation.verifier.Verifier` of ``sgx-dcap`` and ``tdx`` evidence.

    One instance serves both types and holds the caches; it is safe to share between threads.
    """

    def __init__(
        self,
        *,
        platform_cache_size: int = PLATFORM_CACHE_SIZE,
        collateral_cache_size: int = COLLATERAL_CACHE_SIZE,
    ) -> None:
        self.platforms: ContentCache[bytes, DcapPlatform] = ContentCache(platform_cache_size)
        self.collaterals: ContentCache[bytes, DcapCollateral] = ContentCache(collateral_cache_size)

    def verify(
        self, evidence: Evidence, *, at: datetime, collateral: CollateralSource
    ) -> VerifiedEvidence:
        """What the DCAP quote in ``evidence`` proves, verified as of ``at``.

        ``at`` must be timezone-aware. Raises :class:`EvidenceError` whose ``check`` is
        ``type``, ``format`` (the quote is malformed: the message names field and offset),
        ``debug`` (a debug enclave or TD, which dcap-qvl refuses), ``collateral`` (missing, for
        another platform, malformed, or not valid at ``at``), ``chain`` (the PCK chain does not
        lead to the pinned root, or is not valid at ``at``), ``signature`` (the QE report or the
        quote signature does not verify) or ``tcb`` (no TCB level of Intel's matches, or revoked).
        """
        if at.tzinfo is None:
            raise ValueError("the verification time must be timezone-aware")
        tee = _tee_of(evidence)
        quote = parse_quote(evidence.data)
        if quote.tee != tee:
            raise EvidenceError(
                f"evidence of type '{evidence.type}' holds {_ARTICLE_TEE[quote.tee]} quote",
                check="format",
            )
        _refuse_debug(quote)
        platform = self.platforms.get_or_make(
            hashlib.sha256(quote.pck_chain_pem).digest(), lambda: _read_platform(quote)
        )
        key = CollateralKey.of("dcap", tee=tee, fmspc=platform.fmspc, ca=platform.ca)
        document = collateral.collateral(key, at)
        bundle = self.collaterals.get_or_make(
            hashlib.sha256(document).digest(),
            lambda: parse_collateral(document, str(key), INTEL_SGX_ROOT_CA_DER),
        )
        if (bundle.tee, bundle.fmspc, bundle.pck_ca) != (tee, platform.fmspc, platform.ca):
            raise EvidenceError(
                f"the DCAP collateral bundle given for {key} is for {bundle.tee} fmspc "
                f"{bundle.fmspc} with the {bundle.pck_ca} CA's CRL: the collateral source "
                "returned another platform's collateral",
                check="collateral",
            )
        bundle.check_valid_at(at, str(key))
        try:
            report = dcap_qvl.verify_with_root_ca(
                evidence.data, bundle.collateral, INTEL_SGX_ROOT_CA_DER, int(at.timestamp())
            )
        except ValueError as exc:
            raise _refusal(tee, str(exc)) from exc
        return _claims(evidence.type, quote, platform, bundle, report)


def _tee_of(evidence: Evidence) -> Tee:
    tee = EVIDENCE_TYPES.get(evidence.type)
    if tee is None:
        raise EvidenceError(
            f"evidence of type '{evidence.type[:40]}' is not Intel DCAP evidence", check="type"
        )
    if len(evidence.data) > MAX_EVIDENCE_BYTES:
        raise EvidenceError(
            f"the {_TEE_NAME[tee]} quote is larger than the limit of {MAX_EVIDENCE_BYTES} bytes"
        )
    return tee


def _refuse_debug(quote: DcapQuote) -> None:
    """Refuse a debug TEE early, with the reason and what to do instead."""
    if not quote.report.debug:
        return
    where = _DEBUG_OFFSET[quote.header.version]
    what, flag = (
        ("an SGX enclave", "ATTRIBUTES.DEBUG")
        if quote.tee == "sgx"
        else ("a TD", "TDATTRIBUTES.DEBUG")
    )
    raise EvidenceError(
        f"the quote comes from {what} in debug mode ({flag} is set at offset {where:#x}), "
        f"whose memory the host can read; dcap-qvl {dcap_qvl.__version__} refuses debug TEEs "
        "whatever the policy, so this CAS cannot verify it even for a session that tolerates "
        "'debug-mode'. Run the workload in a production (non-debug) TEE, or use simulated "
        "evidence on a CAS in debug mode for development",
        check="debug",
    )


def _read_platform(quote: DcapQuote) -> DcapPlatform:
    """The platform the quote's PCK leaf names; refuses an embedded root that is not pinned."""
    chain = quote.pck_chain
    certificates = []
    for index, der in enumerate(chain, start=1):
        try:
            certificates.append(x509.load_der_x509_certificate(der))
        except CERTIFICATE_ERRORS as exc:
            raise EvidenceError(
                f"PCK certificate {index} of the quote is not a valid X.509 certificate: {exc}",
                check="chain",
            ) from exc
    try:
        # cryptography decodes names lazily: a malformed one raises ValueError only here.
        self_signed_root = certificates[-1].subject == certificates[-1].issuer
        issuer = _common_name(certificates[0].issuer)
    except ValueError as exc:
        raise EvidenceError(
            f"a PCK certificate of the quote has a malformed name: {exc}", check="chain"
        ) from exc
    if len(chain) > 1 and self_signed_root and chain[-1] != INTEL_SGX_ROOT_CA_DER:
        raise EvidenceError(
            "the quote's PCK chain ends in a root certificate that is not the Intel SGX Root "
            f"CA this verifier pins (DER SHA-256 {hashlib.sha256(chain[-1]).hexdigest()[:16]}…, "
            f"expected {INTEL_SGX_ROOT_CA_SHA256[:16]}…): the quote was altered or comes from a "
            "test PKI",
            check="chain",
        )
    leaf = certificates[0]
    ca = PCK_CA_BY_NAME.get(issuer)
    if ca is None:
        raise EvidenceError(
            f"the quote's PCK certificate is issued by {issuer[:60]!r}, not by an Intel SGX PCK "
            "Processor or Platform CA",
            check="chain",
        )
    try:
        extension = dcap_qvl.parse_pck_extension_from_pem(quote.pck_chain_pem)
        key_hash = certificate_key_hash(leaf)
    except ValueError as exc:
        raise EvidenceError(
            f"the quote's PCK certificate has no readable Intel SGX extension: {exc}",
            check="chain",
        ) from exc
    return DcapPlatform(
        ca=ca,
        fmspc=extension.fmspc.hex(),
        ppid=extension.ppid.hex(),
        pce_id=extension.pce_id.hex(),
        cpusvn=extension.cpu_svn.hex(),
        pce_svn=extension.pce_svn,
        key_hash=key_hash,
    )


def _common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


# dcap-qvl reports every failure as a ValueError whose text names the step; each known text maps
# to the check that failed and what it means. The first match wins.
_REFUSALS: tuple[tuple[str, str, str], ...] = (
    (
        "No matching TCB level",
        "tcb",
        "the platform's TCB (CPUSVN and PCESVN, or the TDX module) is below every TCB level "
        "of Intel's TCB info: Intel does not support it (TCB_NOT_SUPPORTED); update the "
        "platform's microcode, BIOS or TDX module",
    ),
    (
        "TCB status is invalid",
        "tcb",
        "Intel's TCB info marks the platform's TCB as revoked",
    ),
    ("Debug mode is enabled", "debug", "the TEE runs in debug mode"),
    (
        "tcb_info",
        "collateral",
        "the TCB info of the collateral does not verify against the Intel SGX Root CA",
    ),
    (
        "TCB Info",
        "collateral",
        "the TCB info of the collateral does not verify against the Intel SGX Root CA",
    ),
    (
        "TCBInfo",
        "collateral",
        "the TCB info of the collateral is not valid at the verification time",
    ),
    (
        "QE Identity",
        "collateral",
        "the QE identity of the collateral does not verify or does not fit the quote",
    ),
    (
        "qe_identity",
        "collateral",
        "the QE identity of the collateral does not verify against the Intel SGX Root CA",
    ),
    ("Fmspc mismatch", "collateral", "the collateral is for another platform"),
    ("TCB info in the collateral", "collateral", "the collateral is for another TEE"),
    ("Crl", "collateral", "a CRL of the collateral is not valid at the verification time"),
    (
        "UnknownRevocationStatus",
        "collateral",
        "the collateral's CRLs do not cover the quote's PCK chain: they come from another CA",
    ),
    (
        "certificate chain",
        "chain",
        "the quote's PCK certificate chain does not verify up to the Intel SGX Root CA",
    ),
    ("QE report", "signature", "the QE report does not match the quote's attestation key"),
    ("qe_report", "signature", "the QE report's signature by the PCK key does not verify"),
    ("ISV enclave report signature", "signature", "the quote's signature does not verify"),
    ("decode quote", "format", "dcap-qvl cannot read the quote"),
)
_MAX_DETAIL = 240


def _refusal(tee: Tee, message: str) -> EvidenceError:
    """The :class:`EvidenceError` for dcap-qvl's failure ``message``."""
    detail = " / ".join(
        line.strip() for line in message.splitlines() if line.strip() and line.strip() != "|"
    ).removeprefix("Verification failed: ")
    if len(detail) > _MAX_DETAIL:
        detail = detail[: _MAX_DETAIL - 1] + "…"
    for needle, check, meaning in _REFUSALS:
        if needle in message:
            return EvidenceError(
                f"the {_TEE_NAME[tee]} quote does not verify: {meaning} (dcap-qvl: {detail})",
                check=check,
            )
    return EvidenceError(
        f"the {_TEE_NAME[tee]} quote does not verify (dcap-qvl: {detail})", check="signature"
    )


def _claims(
    evidence_type: str,
    quote: DcapQuote,
    platform: DcapPlatform,
    bundle: DcapCollateral,
    report: dcap_qvl.VerifiedReport,
) -> VerifiedEvidence:
    body = quote.report
    sgx: SgxReport | None = None
    td: TdReport | None = None
    if isinstance(body, SgxReport):
        sgx, measurements = body, sgx_measurements(body)
    else:
        td, measurements = body, tdx_measurements(body)
    return VerifiedEvidence(
        platform=evidence_type,
        measurement=sgx.mrenclave.hex() if sgx is not None else measurements["mrtd"],
        report_data=body.report_data,
        debug=body.debug,
        platform_key_hash=platform.key_hash,
        tcb_status=report.status,
        advisories=tuple(report.advisory_ids),
        mrsigner=sgx.mrsigner.hex() if sgx is not None else None,
        isv_prod_id=sgx.isv_prod_id if sgx is not None else None,
        isv_svn=sgx.isv_svn if sgx is not None else None,
        rtmrs=tuple(rtmr.hex() for rtmr in td.rtmrs) if td is not None else (),
        measurements=MappingProxyType(measurements),
        platform_id=MappingProxyType(
            {
                "fmspc": platform.fmspc,
                "ppid": platform.ppid,
                "pce_id": platform.pce_id,
                "cpusvn": platform.cpusvn,
            }
        ),
        collateral_not_before=bundle.not_before.astimezone(UTC),
        collateral_not_after=bundle.not_after.astimezone(UTC),
        tcb_evaluation_number=bundle.tcb_evaluation_number,
        verifier=VERIFIER_NAME,
    )


def sgx_measurements(report: SgxReport) -> dict[str, str]:
    """The named measurements of an SGX enclave report (``docs/attestation.md``)."""
    return {
        "mrenclave": report.mrenclave.hex(),
        "mrsigner": report.mrsigner.hex(),
        "isvprodid": str(report.isv_prod_id),
        "isvsvn": str(report.isv_svn),
        "attributes": report.attributes.hex(),
        "miscselect": f"{report.miscselect:08x}",
    }


def tdx_measurements(report: TdReport) -> dict[str, str]:
    """The named measurements of a TD report 1.0 or 1.5 (``docs/attestation.md``)."""
    named = {
        "mrtd": report.mrtd.hex(),
        **{f"rtmr{index}": rtmr.hex() for index, rtmr in enumerate(report.rtmrs)},
        "mrseam": report.mrseam.hex(),
        "mrsignerseam": report.mrsignerseam.hex(),
        "mrconfigid": report.mrconfigid.hex(),
        "mrowner": report.mrowner.hex(),
        "mrownerconfig": report.mrownerconfig.hex(),
        "td_attributes": report.td_attributes.hex(),
        "xfam": report.xfam.hex(),
        "tee_tcb_svn": report.tee_tcb_svn.hex(),
    }
    if report.mrservicetd is not None and report.tee_tcb_svn2 is not None:
        named["mrservicetd"] = report.mrservicetd.hex()
        named["tee_tcb_svn2"] = report.tee_tcb_svn2.hex()
    return named
