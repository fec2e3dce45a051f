"""The SEV-SNP verifier against real AMD reports and certificates (tests/data/trustee/snp)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opencas.attestation import snp as snp_module
from opencas.attestation.amd_certificate import parse_amd_certificate
from opencas.attestation.evidence import Evidence, VerifiedEvidence
from opencas.attestation.snp import (
    PINNED_ARK_KEY_HASHES,
    ChainCache,
    SnpVerifier,
    tcb_status,
    verify_chain,
)
from opencas.attestation.snp_report import decode_tcb, parse_snp_report
from opencas.attestation.verifier import CollateralKey
from opencas.attestation.verify import VERIFIERS, verify_evidence
from opencas.attestation.workload_policy import WorkloadRefused, check_workload
from opencas.crypto.keys import key_hash
from opencas.errors import EvidenceError
from opencas.policy.parse import parse_session

# AMD's VCEKs have serial number 0; loading them must not go through cryptography's deprecated
# path, so any warning at all fails these tests.
pytestmark = pytest.mark.filterwarnings("error")

DATA = Path(__file__).parents[2] / "data" / "trustee" / "snp"
AT = datetime(2025, 6, 1, tzinfo=UTC)
VLEK_NOT_BEFORE = datetime(2024, 12, 10, 22, 14, 21, tzinfo=UTC)
VLEK_NOT_AFTER = datetime(2025, 12, 10, 22, 14, 21, tzinfo=UTC)

REPORT = (DATA / "test-report.bin").read_bytes()
VCEK = (DATA / "test-vcek.der").read_bytes()
VLEK_REPORT = (DATA / "test-vlek-report.bin").read_bytes()
VLEK = (DATA / "test-vlek.der").read_bytes()
MEASUREMENT = (
    "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c"
    "23500644e0e692e6be917f9050d3d38c"
)
# The DER prefix of a P-384 SubjectPublicKeyInfo: the key is found in the certificate by it, so
# the expected key hash does not depend on the code under test.
_P384_SPKI_PREFIX = bytes.fromhex("3076301006072a8648ce3d020106052b81040022036200")


def _pem_blocks(name: str) -> list[bytes]:
    text = (DATA / name).read_bytes()
    return re.findall(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n", text, re.S)


ASK, ARK, ASVK = {}, {}, {}
for _product in ("milan", "genoa", "turin"):
    ASK[_product], ARK[_product], ASVK[_product] = _pem_blocks(f"{_product}_ask_ark_asvk.pem")


def spki_hash(certificate: bytes) -> str:
    start = certificate.index(_P384_SPKI_PREFIX)
    return hashlib.sha256(certificate[start : start + 120]).hexdigest()


def vcek_key(report: bytes, product: str = "milan") -> CollateralKey:
    return CollateralKey.of(
        "amd-vcek",
        product=product,
        chip_id=report[0x1A0:0x1E0].hex(),
        tcb=report[0x180:0x188].hex(),
    )


def chain_key(signer: str, product: str = "milan") -> CollateralKey:
    return CollateralKey.of("amd-chain", product=product, signer=signer)


class Collateral:
    """The collateral source of these tests: a mapping from key to document, and what was asked."""

    def __init__(self, documents: dict[CollateralKey, bytes]) -> None:
        self.documents = documents
        self.asked: list[CollateralKey] = []

    def collateral(self, key: CollateralKey, at: datetime) -> bytes:
        self.asked.append(key)
        if key not in self.documents:
            raise EvidenceError(f"test source has no {key}", check="collateral")
        return self.documents[key]


def vcek_source(
    report: bytes = REPORT, vcek: bytes = VCEK, chain: bytes | None = None
) -> Collateral:
    chain = ASK["milan"] + ARK["milan"] if chain is None else chain
    return Collateral({vcek_key(report): vcek, chain_key("vcek"): chain})


def vlek_source() -> Collateral:
    return Collateral(
        {
            CollateralKey.of("amd-vlek", product="milan", tcb=VLEK_REPORT[0x180:0x188].hex()): VLEK,
            chain_key("vlek"): ASVK["milan"] + ARK["milan"],
        }
    )


def verify(
    report: bytes = REPORT, source: Collateral | None = None, at: datetime = AT
) -> VerifiedEvidence:
    return SnpVerifier().verify(
        Evidence("snp", report), at=at, collateral=vcek_source(report) if source is None else source
    )


def refused(
    report: bytes = REPORT, source: Collateral | None = None, at: datetime = AT
) -> EvidenceError:
    with pytest.raises(EvidenceError) as caught:
        verify(report, source, at)
    return caught.value


def tampered(data: bytes, offset: int, delta: int = 1) -> bytes:
    changed = bytearray(data)
    changed[offset] = (changed[offset] + delta) % 256
    return bytes(changed)


# --- the valid reports ----------------------------------------------------------------------------


def test_milan_vcek_report_verifies() -> None:
    verified = verify()
    assert verified.platform == "snp"
    assert verified.measurement == MEASUREMENT
    assert verified.report_data == REPORT[0x50:0x90]
    assert verified.debug is False
    assert verified.tcb_status == "UpToDate"
    assert verified.advisories == ()
    assert verified.host_data == "00" * 32
    assert verified.platform_key_hash == spki_hash(VCEK)
    assert verified.verifier == "opencas-snp 1"
    assert verified.collateral_not_before == datetime(2023, 1, 24, 17, 58, 26, tzinfo=UTC)
    assert verified.collateral_not_after == datetime(2030, 1, 24, 17, 58, 26, tzinfo=UTC)
    assert dict(verified.measurements) == {
        "measurement": MEASUREMENT,
        "host_data": "00" * 32,
        "id_key_digest": REPORT[0xE0:0x110].hex(),
        "author_key_digest": "00" * 48,
        "family_id": "01" + "00" * 15,
        "image_id": "02" + "00" * 15,
        "policy": str(0x3001F),
        "vmpl": "0",
        "guest_svn": "4",
    }
    platform = dict(verified.platform_id)
    assert platform["product"] == "milan"
    assert platform["signing_key"] == "vcek"
    assert platform["chip_id"] == REPORT[0x1A0:0x1E0].hex()
    # bl3/tee0/snp8/ucode115, as the report stores it.
    assert platform["reported_tcb"] == "0300000000000873"
    assert platform["current_tcb"] == "03000000000008ce"
    assert platform["current_firmware"] == "1.52.4"


def test_the_registry_verifies_snp() -> None:
    verified = verify_evidence(Evidence("snp", REPORT), at=AT, collateral=vcek_source())
    assert verified.measurement == MEASUREMENT
    assert isinstance(VERIFIERS["snp"], SnpVerifier)


def test_version_2_report_asks_for_milan_then_genoa() -> None:
    source = Collateral({chain_key("vcek"): ASK["milan"] + ARK["milan"]})
    error = refused(source=source)
    assert error.check == "collateral"
    assert "Milan, Genoa" in error.message
    assert [key.param("product") for key in source.asked] == ["milan", "genoa"]


def test_vlek_report_verifies_inside_the_vlek_window() -> None:
    for at in (VLEK_NOT_BEFORE, AT, VLEK_NOT_AFTER):
        verified = verify(VLEK_REPORT, vlek_source(), at)
        assert verified.platform_key_hash == spki_hash(VLEK)
    assert verified.measurements["vmpl"] == "1"
    assert verified.platform_id["signing_key"] == "vlek"
    assert verified.platform_id["product"] == "milan"  # from the version 3 CPUID fields
    assert verified.platform_id["csp_id"] == "CN=cc-us-east-2.amazonaws.com"
    assert "chip_id" not in verified.platform_id  # a VLEK report masks it
    assert (verified.collateral_not_before, verified.collateral_not_after) == (
        VLEK_NOT_BEFORE,
        VLEK_NOT_AFTER,
    )
    # The host reports ucode 0xd9 while it committed to 0xdb: an older TCB than it runs.
    assert verified.tcb_status == "OutOfDate"


@pytest.mark.parametrize(
    "at", [VLEK_NOT_AFTER + timedelta(seconds=1), VLEK_NOT_BEFORE - timedelta(seconds=1)]
)
def test_vlek_report_is_refused_outside_the_vlek_window(at: datetime) -> None:
    error = refused(VLEK_REPORT, vlek_source(), at)
    assert error.check == "chain"
    assert "VLEK certificate 'SEV-VLEK' is valid from 2024-12-10T22:14:21+00:00" in error.message


# --- tampering ------------------------------------------------------------------------------------


def test_changed_report_byte_breaks_the_signature() -> None:
    error = refused(tampered(REPORT, 42))
    assert error.check == "signature"
    assert "signature does not verify" in error.message


def test_changed_reported_tcb_does_not_match_the_vcek() -> None:
    report = tampered(REPORT, 384)
    # A source that answers with this chip's VCEK whatever TCB it is asked for.
    error = refused(report, vcek_source(report))
    assert error.check == "tcb"
    assert "does not match the report's reported TCB (bl4/tee0/snp8/ucode115)" in error.message


def test_changed_vcek_breaks_the_chain() -> None:
    error = refused(source=vcek_source(vcek=tampered(VCEK, 42)))
    assert error.check == "chain"
    assert "VCEK certificate" in error.message


def test_changed_chip_id_is_another_chip() -> None:
    report = tampered(REPORT, 0x1A0)
    error = refused(report, vcek_source(report))
    assert (error.check, "another chip" in error.message) == ("tcb", True)


def test_masked_chip_id_cannot_be_vouched_for_by_a_vcek() -> None:
    report = REPORT[:0x1A0] + bytes(64) + REPORT[0x1E0:]
    error = refused(report, vcek_source(report))
    assert (error.check, "masked" in error.message) == ("tcb", True)


@pytest.mark.parametrize("name", ["test-vcek-invalid-legacy.der", "test-vcek-invalid-new.der"])
def test_invalid_vceks_parse_but_their_chain_signature_fails(name: str) -> None:
    vcek = (DATA / name).read_bytes()
    certificate = parse_amd_certificate(vcek, "VCEK")
    assert certificate.common_name == "SEV-VCEK"
    assert "1.3.6.1.4.1.3704.1.4" in certificate.extensions
    error = refused(source=vcek_source(vcek=vcek))
    assert error.check == "chain"
    assert "signature that does not verify with the key of 'SEV-Milan'" in error.message


def test_another_products_chain_fails() -> None:
    genoa = ASK["genoa"] + ARK["genoa"]
    error = refused(source=vcek_source(chain=genoa))
    assert error.check == "chain"
    assert "not AMD's pinned Milan root" in error.message
    with pytest.raises(EvidenceError, match="'SEV-VCEK' is not issued by 'SEV-Genoa'"):
        verify_chain(VCEK, genoa, "genoa", "vcek")


def test_the_vlek_chain_does_not_vouch_for_a_vcek() -> None:
    error = refused(source=vcek_source(chain=ASVK["milan"] + ARK["milan"]))
    assert error.check == "chain"
    assert "is 'SEV-VLEK-Milan', not 'SEV-Milan'" in error.message


@pytest.mark.parametrize(
    ("chain", "reason"),
    [
        (ARK["milan"], "must hold 2 PEM certificates (ASK, then ARK), not 1"),
        (ARK["milan"] + ASK["milan"], "'SEV-Milan' is not AMD's pinned Milan root"),
        (b"x" * 40000, "more than the limit of 32768"),
    ],
)
def test_malformed_chains_are_refused(chain: bytes, reason: str) -> None:
    error = refused(source=vcek_source(chain=chain))
    assert error.check == "chain"
    assert reason in error.message


def test_pinned_arks_are_the_shipped_ones() -> None:
    for product, pinned in PINNED_ARK_KEY_HASHES.items():
        chain = verify_chain(VCEK, ASK["milan"] + ARK["milan"], "milan", "vcek")
        assert key_hash(chain.certificates[2].public_key) == PINNED_ARK_KEY_HASHES["milan"]
        ark = parse_amd_certificate(_der(ARK[product]), "ARK")
        assert ark.common_name == f"ARK-{product.capitalize()}"
        assert key_hash(ark.public_key) == pinned
        ark.check_signed_by(ark)


def _der(pem: bytes) -> bytes:
    body = pem.split(b"-----")[2]
    return base64.b64decode(b"".join(body.split()))


# --- the report's shape ---------------------------------------------------------------------------


def _with(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


@pytest.mark.parametrize(
    ("report", "reason"),
    [
        (b"", "must be exactly 1184 bytes, not 0"),
        (REPORT[:1000], "must be exactly 1184 bytes, not 1000"),
        (REPORT + b"\x00", "must be exactly 1184 bytes, not 1185"),
        (_with(REPORT, 0, b"\x05"), "field 'version' (offset 0x000) is 5"),
        (_with(REPORT, 0x34, b"\x02"), "field 'signature_algo' (offset 0x034) is 2"),
        (_with(REPORT, 0x08, b"\x1f\x00\x01"), "reserved bit 17 clear"),
        (_with(REPORT, 0x0C, b"\x00\x00\x00\x04"), "bits 26 to 63 are reserved"),
        (_with(REPORT, 0x30, b"\x04"), "field 'vmpl' (offset 0x030) is 4"),
        (_with(REPORT, 0x48, b"\x1c"), "signing key none"),
        (_with(REPORT, 0x48, b"\x08"), "reserved signing key 2"),
        (_with(REPORT, 0x48, b"\x02"), "MASK_CHIP_KEY"),
        (_with(REPORT, 0x49, b"\x01"), "bits 5 to 31 are reserved"),
        (_with(REPORT, 0x4C, b"\x01"), "reserved bytes 0x04c-0x04f must be zero"),
        (_with(REPORT, 0x188, b"\x19"), "reserved bytes 0x188-0x18a must be zero"),
        (_with(REPORT, 0x200, b"\x01"), "reserved bytes 0x1f8-0x29f must be zero"),
        (_with(REPORT, 0x400, b"\x01"), "reserved bytes 0x330-0x49f must be zero"),
        (_with(VLEK_REPORT, 0x188, b"\x19\x21"), "family 0x19, model 0x21"),
    ],
)
def test_malformed_reports_name_the_field(report: bytes, reason: str) -> None:
    error = refused(report)
    assert error.check == "format"
    assert reason in error.message


def test_other_evidence_types_are_refused() -> None:
    with pytest.raises(EvidenceError, match="not an SEV-SNP report") as caught:
        SnpVerifier().verify(Evidence("tdx", REPORT), at=AT, collateral=vcek_source())
    assert caught.value.check == "type"


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=1300))
def test_parser_only_raises_evidence_errors(data: bytes) -> None:
    with contextlib.suppress(EvidenceError):
        parse_snp_report(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(REPORT) - 1), st.integers(1, 255))
def test_any_changed_report_byte_is_refused(offset: int, delta: int) -> None:
    report = tampered(REPORT, offset, delta)
    with pytest.raises(EvidenceError):
        verify(report, vcek_source(report))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(VCEK) - 1), st.integers(1, 255))
def test_any_changed_vcek_byte_is_refused_with_evidence_error(offset: int, delta: int) -> None:
    # Every byte of AMD's certificate is signed or must equal a signed one (the outer copy of
    # the signature algorithm), so no change can be accepted.
    with pytest.raises(EvidenceError) as caught:
        verify(source=vcek_source(vcek=tampered(VCEK, offset, delta)))
    assert caught.value.check in {"chain", "tcb"}


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_certificate_parser_only_raises_evidence_errors(data: bytes) -> None:
    for candidate in (data, VCEK[: len(data)], data + VCEK[len(data) :]):
        try:
            parse_amd_certificate(candidate, "VCEK")
        except EvidenceError as exc:
            checks = {exc.check}
        else:
            checks = {"chain"}
        assert checks == {"chain"}


# --- TCB ------------------------------------------------------------------------------------------


def test_tcb_layouts() -> None:
    milan = decode_tcb(bytes.fromhex("0300000000000873"), "milan")
    assert (milan.boot_loader, milan.tee, milan.snp, milan.microcode, milan.fmc) == (
        3,
        0,
        8,
        115,
        None,
    )
    turin = decode_tcb(bytes.fromhex("0309020b00000048"), "turin")
    assert (turin.fmc, turin.boot_loader, turin.tee, turin.snp, turin.microcode) == (
        3,
        9,
        2,
        11,
        72,
    )
    assert turin.describe() == "fmc3/bl9/tee2/snp11/ucode72"


def test_tcb_status_compares_reported_with_committed_and_current() -> None:
    report = parse_snp_report(REPORT)
    assert tcb_status(report, "milan") == "UpToDate"
    newer = bytes.fromhex("0300000000000874")
    assert tcb_status(replace(report, committed_tcb=newer), "milan") == "OutOfDate"
    older = bytes.fromhex("0200000000000873")
    assert tcb_status(replace(report, committed_tcb=older), "milan") == "UpToDate"
    with pytest.raises(EvidenceError, match="above the platform's current TCB") as caught:
        tcb_status(replace(report, current_tcb=older), "milan")
    assert caught.value.check == "tcb"


# --- chain memo ----------------------------------------------------------------------------------


def test_a_second_report_reuses_the_verified_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = snp_module.verify_chain

    def counting(*args: object, **kwargs: object) -> object:
        calls.append("chain")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(snp_module, "verify_chain", counting)
    verifier = SnpVerifier()
    for _ in range(3):
        verifier.verify(Evidence("snp", REPORT), at=AT, collateral=vcek_source())
    assert calls == ["chain"]
    # The remembered chain is still checked against the time of each report.
    with pytest.raises(EvidenceError, match="valid from") as caught:
        verifier.verify(
            Evidence("snp", REPORT), at=datetime(2031, 1, 1, tzinfo=UTC), collateral=vcek_source()
        )
    assert caught.value.check == "chain"
    # A chain that did not verify is not remembered: it fails every time.
    for _ in range(2):
        with pytest.raises(EvidenceError):
            verifier.verify(
                Evidence("snp", REPORT), at=AT, collateral=vcek_source(vcek=tampered(VCEK, 42))
            )
    assert calls == ["chain"] * 3


def test_the_chain_memo_is_bounded() -> None:
    cache = ChainCache(size=1)
    cache.verified(VCEK, ASK["milan"] + ARK["milan"], "milan", "vcek")
    cache.verified(VLEK, ASVK["milan"] + ARK["milan"], "milan", "vlek")
    assert len(cache) == 1


# --- what the workload policy makes of it --------------------------------------------------------


def _policy(measurement: str, tolerate: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    text = (
        "name: s\nversion: '0.3'\nservices:\n  - name: api\n"
        f"    attestation: [{{measurement: '{measurement}'}}]\n"
        f"security:\n  attestation:\n    mode: hardware\n    tolerate: {list(tolerate)}\n"
    )
    session = parse_session(text, "t.yaml")
    service = session.service("api")
    assert service is not None
    return service, session.security.attestation


def test_workload_policy_accepts_and_refuses_the_snp_report() -> None:
    verified = verify()
    service, security = _policy(MEASUREMENT)
    check_workload(verified, service, security, cas_debug=False)
    other, other_security = _policy("ab" * 48)
    with pytest.raises(WorkloadRefused) as caught:
        check_workload(verified, other, other_security, cas_debug=False)
    assert caught.value.check == "measurement"
    debug = replace(verified, debug=True)
    with pytest.raises(WorkloadRefused) as caught:
        check_workload(debug, service, security, cas_debug=False)
    assert caught.value.check == "debug-mode"
    tolerant_service, tolerant = _policy(MEASUREMENT, ("debug-mode",))
    check_workload(debug, tolerant_service, tolerant, cas_debug=False)


def test_workload_policy_needs_outdated_tcb_tolerated_for_the_vlek_report() -> None:
    verified = verify(VLEK_REPORT, vlek_source())
    service, security = _policy(verified.measurement)
    with pytest.raises(WorkloadRefused) as caught:
        check_workload(verified, service, security, cas_debug=False)
    assert caught.value.check == "tcb"
    service, security = _policy(verified.measurement, ("outdated-tcb",))
    check_workload(verified, service, security, cas_debug=False)
