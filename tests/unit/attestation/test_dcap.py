"""Intel DCAP evidence: real SGX and TDX quotes verified against real collateral at pinned times."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from opencas.attestation.dcap import (
    INTEL_SGX_ROOT_CA_DER,
    INTEL_SGX_ROOT_CA_SHA256,
    VERIFIER_NAME,
    DcapVerifier,
)
from opencas.attestation.dcap_quote import parse_quote
from opencas.attestation.evidence import MAX_EVIDENCE_BYTES, Evidence, VerifiedEvidence
from opencas.attestation.verifier import CollateralKey
from opencas.attestation.verify import VERIFIERS, verify_evidence
from opencas.attestation.workload_policy import WorkloadRefused, check_workload
from opencas.errors import EvidenceError
from opencas.policy.model import AttestationSecurity, Service
from opencas.policy.parse import parse_session

DATA = Path(__file__).resolve().parents[2] / "data"
PHALA = DATA / "phala-dcap-qvl"
GO_TDX = DATA / "google-go-tdx-guest"
TRUSTEE = DATA / "trustee" / "dcap"
INTEL_SAMPLES = DATA / "intel-qvl-sampledata"

SGX_QUOTE = PHALA / "sgx_quote"
SGX_COLLATERAL = PHALA / "sgx_quote_collateral.json"
SGX_AT = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)
TDX_QUOTE = PHALA / "tdx_quote"
TDX_COLLATERAL = PHALA / "tdx_quote_collateral.json"
TDX_AT = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)
TDX_OUTDATED_QUOTE = PHALA / "tdx_quote_outdated"
TDX_OUTDATED_COLLATERAL = PHALA / "tdx_quote_outdated_collateral.json"
TDX_OUTDATED_AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SPR_QUOTE = GO_TDX / "tdx_prod_quote_SPR_E4.dat"
SPR_COLLATERAL = GO_TDX / "go-tdx-guest_v4_SPR_E4.collateral.dcapqvl.json"
SPR_AT = datetime(2023, 7, 1, 1, 0, tzinfo=UTC)

SGX_MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
SGX_MRSIGNER = "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
TDX_MRTD = (
    "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407"
    "de03ae6dc5f87f27428b2538873118b7"
)
TDX_RTMR0 = (
    "44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c"
    "48aca29b220b80b6a540cf994b9bc9c0"
)


class Bundles:
    """A collateral source that serves one bundle file and records every key it was asked for."""

    def __init__(self, path: Path) -> None:
        self.data = path.read_bytes()
        self.asked: list[CollateralKey] = []

    def collateral(self, key: CollateralKey, at: datetime) -> bytes:
        self.asked.append(key)
        return self.data


def evidence(evidence_type: str, path: Path) -> Evidence:
    return Evidence(evidence_type, path.read_bytes())


def verify(
    evidence_type: str,
    quote: Path,
    bundle: Path,
    at: datetime,
    verifier: DcapVerifier | None = None,
) -> VerifiedEvidence:
    return (verifier or DcapVerifier()).verify(
        evidence(evidence_type, quote), at=at, collateral=Bundles(bundle)
    )


def refusal(
    evidence_type: str, data: bytes, bundle: Path = SPR_COLLATERAL, at: datetime = SPR_AT
) -> EvidenceError:
    with pytest.raises(EvidenceError) as failed:
        DcapVerifier().verify(Evidence(evidence_type, data), at=at, collateral=Bundles(bundle))
    return failed.value


# --- the expected status of every real case -------------------------------------------------------


def test_the_sgx_quote_needs_configuration_and_software_hardening() -> None:
    source = Bundles(SGX_COLLATERAL)
    verified = VERIFIERS["sgx-dcap"].verify(
        evidence("sgx-dcap", SGX_QUOTE), at=SGX_AT, collateral=source
    )
    assert source.asked == [
        CollateralKey.of("dcap", tee="sgx", fmspc="00a067110000", ca="processor")
    ]
    assert verified.platform == "sgx-dcap"
    assert verified.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert verified.advisories == ("INTEL-SA-00289", "INTEL-SA-00615")
    assert verified.measurement == SGX_MRENCLAVE
    assert verified.mrsigner == SGX_MRSIGNER
    assert (verified.isv_prod_id, verified.isv_svn) == (0, 0)
    assert verified.report_data == b"Hello, world!".ljust(64, b"\x00")
    assert verified.debug is False
    assert dict(verified.measurements) == {
        "mrenclave": SGX_MRENCLAVE,
        "mrsigner": SGX_MRSIGNER,
        "isvprodid": "0",
        "isvsvn": "0",
        "attributes": "0500000000000000e700000000000000",
        "miscselect": "00000000",
    }
    assert dict(verified.platform_id) == {
        "fmspc": "00a067110000",
        "ppid": "d04ec06d4e6d92dc90d0ad3cf5ee2ddf",
        "pce_id": "0000",
        "cpusvn": "0b0b0202ff0100000000000000000000",
    }
    assert verified.collateral_not_before == datetime(2025, 6, 19, 10, 56, 11, tzinfo=UTC)
    assert verified.collateral_not_after == datetime(2025, 7, 19, 10, 1, 18, tzinfo=UTC)
    assert verified.tcb_evaluation_number == 17
    assert verified.verifier == VERIFIER_NAME
    assert verified.verifier.startswith("opencas-dcap 1 (dcap-qvl 0.7.")
    assert len(verified.platform_key_hash) == 64
    assert verified.rtmrs == ()


def test_the_tdx_v4_quote_is_up_to_date() -> None:
    verified = verify_evidence(
        evidence("tdx", TDX_QUOTE), at=TDX_AT, collateral=Bundles(TDX_COLLATERAL)
    )
    line = "dcap(ca=platform, fmspc=b0c06f000000, tee=tdx) "
    line += hashlib.sha256(TDX_COLLATERAL.read_bytes()).hexdigest() + "\n"
    assert verified.collateral_digest == hashlib.sha256(line.encode()).hexdigest()
    assert verified.platform == "tdx"
    assert verified.tcb_status == "UpToDate"
    assert verified.advisories == ()
    assert verified.measurement == TDX_MRTD
    assert verified.rtmrs[0] == TDX_RTMR0
    assert len(verified.rtmrs) == 4
    assert verified.rtmrs[3] == "00" * 48
    assert verified.mrsigner is None
    assert verified.isv_svn is None
    names = {
        "mrtd",
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
        "mrseam",
        "mrsignerseam",
        "mrconfigid",
        "mrowner",
        "mrownerconfig",
        "td_attributes",
        "xfam",
        "tee_tcb_svn",
    }
    assert set(verified.measurements) == names
    assert verified.measurements["mrtd"] == TDX_MRTD
    assert verified.measurements["rtmr0"] == TDX_RTMR0
    assert verified.measurements["mrseam"].startswith("5b38e33a6487958b")
    assert verified.measurements["td_attributes"] == "0000001000000000"
    assert verified.measurements["xfam"] == "e702060000000000"
    assert verified.platform_id["fmspc"] == "b0c06f000000"
    assert verified.platform_id["ppid"] == "811dca2a26b952e85bb6448b097ba4fd"
    assert verified.collateral_not_before == datetime(2025, 6, 19, 10, 32, 27, tzinfo=UTC)
    assert verified.collateral_not_after == datetime(2025, 7, 19, 10, 0, 35, tzinfo=UTC)
    assert verified.report_data.hex().startswith("9a9d48e7f6799642")


@pytest.mark.parametrize(
    ("quote", "bundle", "at", "key"),
    [
        pytest.param(
            TDX_OUTDATED_QUOTE, TDX_OUTDATED_COLLATERAL, TDX_OUTDATED_AT, "90c06f000000", id="v5"
        ),
        pytest.param(SPR_QUOTE, SPR_COLLATERAL, SPR_AT, "50806f000000", id="go-tdx-guest-SPR"),
        pytest.param(
            TRUSTEE / "tdx_quote_5.dat",
            TDX_OUTDATED_COLLATERAL,
            TDX_OUTDATED_AT,
            "90c06f000000",
            id="trustee-v5",
        ),
    ],
)
def test_tdx_quotes_below_every_tcb_level_are_rejected(
    quote: Path, bundle: Path, at: datetime, key: str
) -> None:
    source = Bundles(bundle)
    with pytest.raises(EvidenceError, match="below every TCB level") as failed:
        DcapVerifier().verify(evidence("tdx", quote), at=at, collateral=source)
    assert failed.value.check == "tcb"
    assert "No matching TCB level found" in failed.value.message
    assert source.asked == [CollateralKey.of("dcap", tee="tdx", fmspc=key, ca="platform")]


def test_the_v5_quote_carries_a_td_report_1_5() -> None:
    quote = parse_quote(TDX_OUTDATED_QUOTE.read_bytes())
    assert quote.header.version == 5
    assert quote.body == "td-report-1.5"
    assert quote.report.debug is False
    assert len(quote.pck_chain) == 3


def _p256_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)


def _verify_raw_signature(key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> None:
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))


def test_the_spr_quote_signature_and_pck_chain_are_valid_on_their_own() -> None:
    """Its rejection is about Intel's TCB levels only: every signature in the quote verifies.

    Checked here independently of dcap-qvl, with ``cryptography``: the PCK chain up to the
    pinned root, the QE report signed by the PCK key, and the quote signed by the attestation
    key the QE report binds.
    """
    raw = SPR_QUOTE.read_bytes()
    quote = parse_quote(raw)
    leaf, intermediate, root = (x509.load_der_x509_certificate(der) for der in quote.pck_chain)
    assert quote.pck_chain[2] == INTEL_SGX_ROOT_CA_DER
    assert root.subject == root.issuer
    pinned = x509.load_der_x509_certificate(INTEL_SGX_ROOT_CA_DER)
    for cert, issuer in ((leaf, intermediate), (intermediate, pinned)):
        cert.verify_directly_issued_by(issuer)
        assert cert.not_valid_before_utc <= SPR_AT <= cert.not_valid_after_utc
    signed_size = 48 + 584
    signature_data = raw[signed_size + 4 :]
    quote_signature, attestation_key = signature_data[:64], signature_data[64:128]
    _verify_raw_signature(_p256_key(attestation_key), quote_signature, raw[:signed_size])
    qe_report = signature_data[128 + 6 : 128 + 6 + 384]
    qe_signature = signature_data[128 + 6 + 384 : 128 + 6 + 448]
    pck_key = leaf.public_key()
    assert isinstance(pck_key, ec.EllipticCurvePublicKey)
    _verify_raw_signature(pck_key, qe_signature, qe_report)
    # The QE report binds the attestation key: REPORTDATA starts with SHA-256(key || auth data).
    (auth_size,) = struct.unpack_from("<H", signature_data, 128 + 6 + 448)
    auth_data = signature_data[128 + 6 + 450 : 128 + 6 + 450 + auth_size]
    assert qe_report[320:352] == hashlib.sha256(attestation_key + auth_data).digest()


# --- the collateral window ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("evidence_type", "quote", "bundle", "not_before", "not_after"),
    [
        (
            "sgx-dcap",
            SGX_QUOTE,
            SGX_COLLATERAL,
            datetime(2025, 6, 19, 10, 56, 11, tzinfo=UTC),
            datetime(2025, 7, 19, 10, 1, 18, tzinfo=UTC),
        ),
        (
            "tdx",
            TDX_QUOTE,
            TDX_COLLATERAL,
            datetime(2025, 6, 19, 10, 32, 27, tzinfo=UTC),
            datetime(2025, 7, 19, 10, 0, 35, tzinfo=UTC),
        ),
        (
            "tdx",
            TDX_OUTDATED_QUOTE,
            TDX_OUTDATED_COLLATERAL,
            datetime(2026, 2, 18, 10, 58, 51, tzinfo=UTC),
            datetime(2026, 3, 20, 10, 41, 15, tzinfo=UTC),
        ),
        (
            "tdx",
            SPR_QUOTE,
            SPR_COLLATERAL,
            datetime(2023, 6, 18, 8, 42, 58, tzinfo=UTC),
            datetime(2023, 7, 8, 7, 24, 59, tzinfo=UTC),
        ),
    ],
)
def test_outside_its_window_the_collateral_is_expired_or_not_yet_valid(
    evidence_type: str, quote: Path, bundle: Path, not_before: datetime, not_after: datetime
) -> None:
    second = timedelta(seconds=1)
    with pytest.raises(EvidenceError, match="is not yet valid at") as early:
        verify(evidence_type, quote, bundle, not_before - second)
    assert early.value.check == "collateral"
    assert not_before.strftime("%Y-%m-%dT%H:%M:%SZ") in early.value.message
    with pytest.raises(EvidenceError, match="expired at") as late:
        verify(evidence_type, quote, bundle, not_after + second)
    assert late.value.check == "collateral"
    assert not_after.strftime("%Y-%m-%dT%H:%M:%SZ") in late.value.message


def test_the_window_is_inclusive_at_both_ends() -> None:
    start = datetime(2025, 6, 19, 10, 56, 11, tzinfo=UTC)
    end = datetime(2025, 7, 19, 10, 1, 18, tzinfo=UTC)
    assert verify("sgx-dcap", SGX_QUOTE, SGX_COLLATERAL, start).tcb_status.startswith("Config")
    assert verify("sgx-dcap", SGX_QUOTE, SGX_COLLATERAL, end).tcb_status.startswith("Config")


def test_the_verification_time_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify("sgx-dcap", SGX_QUOTE, SGX_COLLATERAL, datetime(2025, 7, 1))


# --- tampering ------------------------------------------------------------------------------------


def _tampered(offset: int, value: int) -> bytes:
    data = bytearray(SPR_QUOTE.read_bytes())
    assert data[offset] != value
    data[offset] = value
    return bytes(data)


@pytest.mark.parametrize(
    ("offset", "value", "check", "says"),
    [
        pytest.param(0x00, 3, "format", "'version' at offset 0x0 is 3", id="unsupported-format"),
        pytest.param(
            0x278, 0x10, "format", "needs .* bytes, but only .* remain", id="cert-data-size"
        ),
        pytest.param(0xB77, 0x32, "chain", "PCK certificate chain", id="pck-leaf-signature"),
        pytest.param(0xF5F, 0x32, "chain", "PCK certificate chain", id="intermediate-signature"),
        pytest.param(0x1329, 0x32, "chain", "not the Intel SGX Root CA", id="embedded-root"),
        pytest.param(
            0x1343, 0x32, "format", "chain at offset 0x4ea is not a sequence of PEM", id="chain-pem"
        ),
        pytest.param(0x1E, 0x32, "signature", "quote's signature", id="header-signature"),
        pytest.param(0x3C, 0x32, "signature", "quote's signature", id="body-signature"),
    ],
)
def test_every_tampered_quote_is_refused(offset: int, value: int, check: str, says: str) -> None:
    """The go-tdx-guest negative cases, each refused by the check it breaks.

    The two cases in the root certificate embedded in the quote: 0x1329 alters the root's
    body, and is refused because the verifier requires an embedded root to be byte for byte the
    Intel SGX Root CA it pins (dcap-qvl alone ignores the embedded root and goes on to TCB
    matching); 0x1343 breaks the root's PEM END line, so the chain does not parse.
    """
    failed = refusal("tdx", _tampered(offset, value))
    assert failed.check == check
    assert re.search(says, failed.message), failed.message


def test_collateral_for_another_platform_is_refused() -> None:
    failed = refusal("tdx", SPR_QUOTE.read_bytes(), bundle=TDX_COLLATERAL, at=TDX_AT)
    assert failed.check == "collateral"
    assert "is for tdx fmspc b0c06f000000" in failed.message
    sgx = refusal("tdx", SPR_QUOTE.read_bytes(), bundle=SGX_COLLATERAL, at=SGX_AT)
    assert sgx.check == "collateral"
    assert "is for sgx fmspc 00a067110000" in sgx.message


# --- debug TEEs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("evidence_type", "quote", "flag"),
    [
        ("sgx-dcap", TRUSTEE / "occlum_quote.dat", "ATTRIBUTES.DEBUG is set at offset 0x60"),
        ("tdx", TRUSTEE / "tdx_quote_4.dat", "TDATTRIBUTES.DEBUG is set at offset 0xa8"),
    ],
)
def test_debug_tees_are_refused_with_what_to_do(evidence_type: str, quote: Path, flag: str) -> None:
    """dcap-qvl 0.7 refuses debug TEEs whatever its policy, so no session can accept one.

    The refusal comes before any collateral is fetched, says why, and says that tolerating
    ``debug-mode`` does not help; the workload policy never sees such evidence.
    """
    source = Bundles(SPR_COLLATERAL)
    with pytest.raises(EvidenceError) as failed:
        DcapVerifier().verify(evidence(evidence_type, quote), at=SPR_AT, collateral=source)
    assert failed.value.check == "debug"
    assert flag in failed.value.message
    assert "tolerates 'debug-mode'" in failed.value.message
    assert "dcap-qvl" in failed.value.message
    assert source.asked == []


# --- malformed input ------------------------------------------------------------------------------


def test_the_intel_test_pki_samples_are_refused_clearly() -> None:
    sgx = refusal("sgx-dcap", (INTEL_SAMPLES / "quote.dat").read_bytes())
    assert sgx.check == "format"
    assert "certification data at offset 0x3f6 has type 1" in sgx.message
    tdx = refusal("tdx", (INTEL_SAMPLES / "tdx" / "quote.dat").read_bytes())
    assert tdx.check == "format"
    assert "PCK certificate chain at offset 0x4ca is not a sequence of PEM" in tdx.message


def test_every_truncation_of_a_quote_is_refused_with_its_offset() -> None:
    raw = TDX_OUTDATED_QUOTE.read_bytes()
    verifier = DcapVerifier()
    source = Bundles(TDX_OUTDATED_COLLATERAL)
    for size in range(0, len(raw), 7):
        with pytest.raises(EvidenceError) as failed:
            verifier.verify(Evidence("tdx", raw[:size]), at=TDX_OUTDATED_AT, collateral=source)
        assert failed.value.check in {"format", "chain", "signature"}, size
        if failed.value.check == "format":
            assert "offset 0x" in failed.value.message, size


def test_random_corruption_never_crashes() -> None:
    raw = SGX_QUOTE.read_bytes()
    verifier = DcapVerifier()
    source = Bundles(SGX_COLLATERAL)
    for offset in range(0, len(raw), 53):
        data = bytearray(raw)
        data[offset] ^= 0xFF
        try:
            verified = verifier.verify(
                Evidence("sgx-dcap", bytes(data)), at=SGX_AT, collateral=source
            )
        except EvidenceError:
            continue
        # Only bytes no signature covers and no claim comes from may change without refusal.
        assert verified.measurement == SGX_MRENCLAVE, offset


def test_the_evidence_type_must_match_the_quote() -> None:
    failed = refusal("tdx", SGX_QUOTE.read_bytes())
    assert failed.check == "format"
    assert "holds an SGX quote" in failed.message
    other = refusal("sgx-dcap", TDX_QUOTE.read_bytes())
    assert other.check == "format"


def test_oversized_evidence_is_refused() -> None:
    failed = refusal("sgx-dcap", SGX_QUOTE.read_bytes() + bytes(MAX_EVIDENCE_BYTES))
    assert "larger than the limit" in failed.message


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda bundle: {**bundle, "pck_certificate_chain": "x"}, "unexpected pck_certificate"),
        (lambda bundle: {k: v for k, v in bundle.items() if k != "pck_crl"}, "missing pck_crl"),
        (lambda bundle: {**bundle, "pck_crl": "zz"}, "'pck_crl' is not hex"),
        (lambda bundle: {**bundle, "pck_crl": "00"}, "not a DER certificate revocation list"),
        (lambda bundle: {**bundle, "tcb_info": "[]"}, "must be a JSON object"),
        (lambda bundle: {**bundle, "tcb_info_issuer_chain": "nope"}, "no PEM certificate"),
    ],
)
def test_malformed_collateral_is_refused_naming_the_member(change: object, says: str) -> None:
    bundle = json.loads(SGX_COLLATERAL.read_text())
    data = json.dumps(change(bundle)).encode()  # type: ignore[operator]

    class Fixed:
        def collateral(self, key: CollateralKey, at: datetime) -> bytes:
            return data

    with pytest.raises(EvidenceError, match=says) as failed:
        DcapVerifier().verify(evidence("sgx-dcap", SGX_QUOTE), at=SGX_AT, collateral=Fixed())
    assert failed.value.check == "collateral"


def test_a_collateral_signature_that_does_not_verify_is_refused() -> None:
    bundle = json.loads(SGX_COLLATERAL.read_text())
    signature = bytearray.fromhex(bundle["tcb_info_signature"])
    signature[5] ^= 1
    bundle["tcb_info_signature"] = signature.hex()
    data = json.dumps(bundle).encode()

    class Fixed:
        def collateral(self, key: CollateralKey, at: datetime) -> bytes:
            return data

    with pytest.raises(EvidenceError, match=r"'tcb_info' is not signed by .*TCB Signing") as failed:
        DcapVerifier().verify(evidence("sgx-dcap", SGX_QUOTE), at=SGX_AT, collateral=Fixed())
    assert failed.value.check == "collateral"


def _serve(bundle: dict[str, str]) -> Bundles:
    source = Bundles(SGX_COLLATERAL)
    source.data = json.dumps(bundle).encode()
    return source


def _first_certificate_altered(pem: str) -> str:
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----\n(.*?)-----END CERTIFICATE-----", pem, re.S)
    der = bytearray(base64.b64decode("".join(blocks[0].split())))
    der[-10] ^= 1
    return pem.replace(blocks[0], base64.encodebytes(bytes(der)).decode())


@pytest.mark.parametrize(
    ("member", "says"),
    [
        (
            "tcb_info_issuer_chain",
            r"certificate 1 \(.*TCB Signing\) is not issued by certificate 2",
        ),
        ("qe_identity_issuer_chain", r"certificate 1 \(.*TCB Signing\) is not issued by"),
        # dcap-qvl does not read this chain; OpenCAS refuses a bundle whose parts disagree.
        ("pck_crl_issuer_chain", r"certificate 1 \(.*PCK Processor CA\) is not issued by"),
    ],
)
def test_collateral_issuer_chains_must_verify_up_to_the_pinned_root(member: str, says: str) -> None:
    bundle = json.loads(SGX_COLLATERAL.read_text())
    bundle[member] = _first_certificate_altered(bundle[member])
    with pytest.raises(EvidenceError, match=says) as failed:
        DcapVerifier().verify(evidence("sgx-dcap", SGX_QUOTE), at=SGX_AT, collateral=_serve(bundle))
    assert failed.value.check == "collateral"
    assert f"member '{member}'" in failed.value.message


def test_collateral_chains_must_end_in_the_pinned_root() -> None:
    bundle = json.loads(SGX_COLLATERAL.read_text())
    signing = bundle["tcb_info_issuer_chain"].split("-----END CERTIFICATE-----")[0]
    bundle["tcb_info_issuer_chain"] = signing + "-----END CERTIFICATE-----\n"
    with pytest.raises(EvidenceError, match="ending in the Intel SGX Root CA") as failed:
        DcapVerifier().verify(evidence("sgx-dcap", SGX_QUOTE), at=SGX_AT, collateral=_serve(bundle))
    assert failed.value.check == "collateral"


def test_a_crl_not_signed_by_its_issuer_is_refused() -> None:
    bundle = json.loads(SGX_COLLATERAL.read_text())
    crl = bytearray.fromhex(bundle["root_ca_crl"])
    crl[-5] ^= 1
    bundle["root_ca_crl"] = crl.hex()
    with pytest.raises(EvidenceError, match="'root_ca_crl' is not signed by its issuer"):
        DcapVerifier().verify(evidence("sgx-dcap", SGX_QUOTE), at=SGX_AT, collateral=_serve(bundle))


def test_collateral_of_the_other_pck_ca_is_refused() -> None:
    bundle = json.loads(SGX_COLLATERAL.read_text())
    platform_ca = json.loads(TDX_COLLATERAL.read_text())
    for member in ("pck_crl_issuer_chain", "pck_crl"):
        bundle[member] = platform_ca[member]
    with pytest.raises(EvidenceError, match="with the platform CA's CRL") as failed:
        DcapVerifier().verify(evidence("sgx-dcap", SGX_QUOTE), at=SGX_AT, collateral=_serve(bundle))
    assert failed.value.check == "collateral"


# --- the pinned root and the caches ---------------------------------------------------------------


def test_the_pinned_root_is_intels() -> None:
    assert hashlib.sha256(INTEL_SGX_ROOT_CA_DER).hexdigest() == INTEL_SGX_ROOT_CA_SHA256
    assert (PHALA / "TrustedRootCA.der").read_bytes() == INTEL_SGX_ROOT_CA_DER


def test_a_second_quote_from_the_same_platform_reuses_the_chain_and_collateral_work() -> None:
    verifier = DcapVerifier()
    source = Bundles(SGX_COLLATERAL)
    first = verifier.verify(evidence("sgx-dcap", SGX_QUOTE), at=SGX_AT, collateral=source)
    assert (verifier.platforms.misses, verifier.collaterals.misses) == (1, 1)
    # Another quote of the same platform: different report data, the same PCK chain.
    raw = bytearray(SGX_QUOTE.read_bytes())
    raw[48 + 320] ^= 1
    with pytest.raises(EvidenceError, match="quote's signature"):
        verifier.verify(Evidence("sgx-dcap", bytes(raw)), at=SGX_AT, collateral=source)
    again = verifier.verify(
        evidence("sgx-dcap", SGX_QUOTE), at=SGX_AT + timedelta(days=1), collateral=source
    )
    assert again.tcb_status == first.tcb_status
    assert again.platform_key_hash == first.platform_key_hash
    assert (verifier.platforms.misses, verifier.collaterals.misses) == (1, 1)
    # The source is still asked every time: freshness is its decision, not the verifier's.
    assert len(source.asked) == 3
    # Other platforms and other collateral are cached beside them.
    verifier.verify(evidence("tdx", TDX_QUOTE), at=TDX_AT, collateral=Bundles(TDX_COLLATERAL))
    assert (verifier.platforms.misses, verifier.collaterals.misses) == (2, 2)


def test_the_caches_are_bounded() -> None:
    verifier = DcapVerifier(platform_cache_size=1, collateral_cache_size=1)
    for _ in range(2):
        verify("sgx-dcap", SGX_QUOTE, SGX_COLLATERAL, SGX_AT, verifier)
        verify("tdx", TDX_QUOTE, TDX_COLLATERAL, TDX_AT, verifier)
    assert (verifier.platforms.misses, verifier.collaterals.misses) == (4, 4)


def test_a_failed_collateral_parse_is_not_cached() -> None:
    verifier = DcapVerifier()

    class Broken:
        def collateral(self, key: CollateralKey, at: datetime) -> bytes:
            return b"{}"

    for _ in range(2):
        with pytest.raises(EvidenceError, match="wrong members"):
            verifier.verify(evidence("sgx-dcap", SGX_QUOTE), at=SGX_AT, collateral=Broken())
    assert verifier.collaterals.misses == 2


# --- what the workload policy makes of the SGX quote -------------------------------------------


def sgx_policy(tolerate: list[str], ignore: list[str]) -> tuple[Service, AttestationSecurity]:
    text = "\n".join(
        [
            "name: s",
            "version: '0.3'",
            "services:",
            "  - name: api",
            f"    attestation: [{{mrenclave: [{SGX_MRENCLAVE}]}}]",
            "security:",
            "  attestation:",
            f"    tolerate: {json.dumps(tolerate)}",
            f"    ignore_advisories: {json.dumps(ignore)}",
        ]
    )
    session = parse_session(text + "\n", "t.yaml")
    service = session.service("api")
    assert service is not None
    return service, session.security.attestation


ADVISORIES = ["INTEL-SA-00289", "INTEL-SA-00615"]
TOLERATIONS = ["insecure-configuration", "software-hardening-needed"]


@pytest.mark.parametrize(
    ("tolerate", "ignore", "check"),
    [
        (TOLERATIONS, ADVISORIES, None),
        (["insecure-configuration"], ADVISORIES, "tcb"),
        (["software-hardening-needed"], ADVISORIES, "tcb"),
        ([], ADVISORIES, "tcb"),
        (TOLERATIONS, ["INTEL-SA-00289"], "advisory"),
        (TOLERATIONS, [], "advisory"),
        (["outdated-tcb", "debug-mode"], ADVISORIES, "tcb"),
    ],
)
def test_the_workload_policy_decides_on_the_sgx_quote_by_its_tolerations(
    tolerate: list[str], ignore: list[str], check: str | None
) -> None:
    verified = verify("sgx-dcap", SGX_QUOTE, SGX_COLLATERAL, SGX_AT)
    service, security = sgx_policy(tolerate, ignore)
    if check is None:
        check_workload(verified, service, security, cas_debug=False)
        return
    with pytest.raises(WorkloadRefused) as refused:
        check_workload(verified, service, security, cas_debug=False)
    assert refused.value.check == check


# --- property tests: a peer's bytes raise only EvidenceError -------------------------------------

FUZZ = settings(max_examples=150, deadline=None, database=None)
QUOTES = {
    "sgx-dcap": (SGX_QUOTE.read_bytes(), SGX_COLLATERAL, SGX_AT),
    "tdx": (TDX_OUTDATED_QUOTE.read_bytes(), TDX_OUTDATED_COLLATERAL, TDX_OUTDATED_AT),
}
SHARED = DcapVerifier()


@FUZZ
@given(
    evidence_type=st.sampled_from(sorted(QUOTES)),
    edits=st.lists(st.tuples(st.integers(0, 5100), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 5100) | st.none(),
)
def test_mutated_quotes_raise_only_evidence_errors(
    evidence_type: str, edits: list[tuple[int, int]], cut: int | None
) -> None:
    raw, bundle, at = QUOTES[evidence_type]
    data = bytearray(raw)
    for offset, value in edits:
        if offset < len(data):
            data[offset] = value
    if cut is not None:
        del data[cut:]
    try:
        SHARED.verify(Evidence(evidence_type, bytes(data)), at=at, collateral=Bundles(bundle))
        outcome = "verified"
    except EvidenceError as exc:
        outcome = exc.check
    assert outcome in {"verified", "format", "debug", "collateral", "chain", "signature", "tcb"}


@FUZZ
@given(
    member=st.sampled_from(sorted(json.loads(SGX_COLLATERAL.read_text()))),
    value=st.text(max_size=80) | st.integers() | st.none() | st.lists(st.integers(), max_size=2),
)
def test_mutated_collateral_raises_only_evidence_errors(member: str, value: object) -> None:
    bundle = json.loads(SGX_COLLATERAL.read_text())
    bundle[member] = value
    with pytest.raises(EvidenceError) as failed:
        DcapVerifier().verify(evidence("sgx-dcap", SGX_QUOTE), at=SGX_AT, collateral=_serve(bundle))
    assert failed.value.check == "collateral"
