"""The SEV-SNP verifier on reports signed here, with the test's own ARK pinned in place of AMD's.

No real Turin or Genoa report is at hand, so the product-specific paths (Turin's TCB layout with
its FMC level and its 8-byte hardware id, a version 2 report that turns out to be Genoa's) and a
debug guest are checked on reports and certificates built here the way AMD builds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from opencas.attestation.evidence import Evidence, VerifiedEvidence
from opencas.attestation.snp import ChainCache, SnpVerifier
from opencas.attestation.verifier import CollateralKey
from opencas.attestation.workload_policy import WorkloadRefused, check_workload
from opencas.crypto.keys import key_hash
from opencas.errors import EvidenceError
from opencas.policy.parse import parse_session

pytestmark = pytest.mark.filterwarnings("error")

AT = datetime(2026, 1, 1, tzinfo=UTC)
TURIN_CHIP = bytes(range(0xA0, 0xA8))
GENOA_CHIP = bytes(range(64))
# Turin: fmc 1, bl 2, tee 3, snp 4, reserved, ucode 0x48.
TURIN_TCB = bytes([1, 2, 3, 4, 0, 0, 0, 0x48])
# Genoa: bl 7, tee 0, reserved, snp 14, ucode 0x48.
GENOA_TCB = bytes([7, 0, 0, 0, 0, 0, 14, 0x48])
MEASUREMENT = bytes(range(48))
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_AMD = "1.3.6.1.4.1.3704.1."


@dataclass(frozen=True)
class Pki:
    """A test ARK and ASK for one product, and a VCEK key."""

    product: str
    ark_key: rsa.RSAPrivateKey
    ask_key: rsa.RSAPrivateKey
    vcek_key: ec.EllipticCurvePrivateKey
    chain: bytes

    @property
    def roots(self) -> dict[str, str]:
        return {self.product: key_hash(self.ark_key.public_key())}

    def vcek(self, extensions: dict[str, bytes], *, days: int = 365) -> bytes:
        name = self.product.capitalize()
        return _certificate(
            "SEV-VCEK", f"SEV-{name}", self.vcek_key.public_key(), self.ask_key, extensions, days
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    issuer: str,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    signer: rsa.RSAPrivateKey,
    extensions: dict[str, bytes],
    days: int = 3650,
    *,
    authority: bool = False,
) -> bytes:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(1)
        .not_valid_before(AT - timedelta(days=1))
        .not_valid_after(AT + timedelta(days=days))
    )
    if authority:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        usage = dict.fromkeys(
            (
                "digital_signature",
                "content_commitment",
                "key_encipherment",
                "data_encipherment",
                "key_agreement",
                "encipher_only",
                "decipher_only",
            ),
            False,
        )
        builder = builder.add_extension(
            x509.KeyUsage(key_cert_sign=True, crl_sign=True, **usage), critical=True
        )
    for oid, value in extensions.items():
        extension = x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)
        builder = builder.add_extension(extension, critical=False)
    certificate = builder.sign(signer, hashes.SHA384(), rsa_padding=_PSS)
    return certificate.public_bytes(serialization.Encoding.DER)


def _pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def _pki(product: str, *, ask_is_authority: bool = True) -> Pki:
    name = product.capitalize()
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ark = _certificate(
        f"ARK-{name}", f"ARK-{name}", ark_key.public_key(), ark_key, {}, authority=True
    )
    ask = _certificate(
        f"SEV-{name}",
        f"ARK-{name}",
        ask_key.public_key(),
        ark_key,
        {},
        authority=ask_is_authority,
    )
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    return Pki(product, ark_key, ask_key, vcek_key, _pem(ask) + _pem(ark))


@pytest.fixture(scope="module")
def turin() -> Pki:
    return _pki("turin")


@pytest.fixture(scope="module")
def genoa() -> Pki:
    return _pki("genoa")


def _integer(value: int) -> bytes:
    return bytes([0x02, 0x01, value]) if value < 0x80 else bytes([0x02, 0x02, 0x00, value])


def turin_extensions(tcb: bytes = TURIN_TCB, hwid: bytes = TURIN_CHIP) -> dict[str, bytes]:
    return {
        _AMD + "1": _integer(1),
        _AMD + "2": b"\x16\x08Turin-B0",
        _AMD + "3.9": _integer(tcb[0]),
        _AMD + "3.1": _integer(tcb[1]),
        _AMD + "3.2": _integer(tcb[2]),
        _AMD + "3.3": _integer(tcb[3]),
        _AMD + "3.8": _integer(tcb[7]),
        _AMD + "4": b"\x04\x08" + hwid,
    }


def genoa_extensions(tcb: bytes = GENOA_TCB) -> dict[str, bytes]:
    extensions = {
        _AMD + "1": _integer(0),
        _AMD + "2": b"\x16\x08Genoa-B1",
        _AMD + "3.1": _integer(tcb[0]),
        _AMD + "3.2": _integer(tcb[1]),
        _AMD + "3.3": _integer(tcb[6]),
        _AMD + "3.8": _integer(tcb[7]),
        _AMD + "4": GENOA_CHIP,  # bare, as AMD's KDS first wrote it
    }
    extensions.update({_AMD + f"3.{arc}": _integer(0) for arc in (4, 5, 6, 7)})
    return extensions


def report(
    key: ec.EllipticCurvePrivateKey,
    *,
    version: int,
    tcb: bytes,
    chip_id: bytes,
    cpuid: bytes = b"",
    policy: int = 0x30000,
) -> bytes:
    data = bytearray(0x4A0)
    data[0x000:0x004] = version.to_bytes(4, "little")
    data[0x008:0x010] = policy.to_bytes(8, "little")
    data[0x034:0x038] = (1).to_bytes(4, "little")
    data[0x038:0x040] = tcb
    data[0x050:0x090] = b"\x5a" * 64
    data[0x090:0x0C0] = MEASUREMENT
    data[0x180:0x188] = tcb
    data[0x188 : 0x188 + len(cpuid)] = cpuid
    data[0x1A0 : 0x1A0 + len(chip_id)] = chip_id
    data[0x1E0:0x1E8] = tcb
    data[0x1F0:0x1F8] = tcb
    r, s = decode_dss_signature(key.sign(bytes(data[:0x2A0]), ec.ECDSA(hashes.SHA384())))
    data[0x2A0:0x2E8] = r.to_bytes(72, "little")
    data[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(data)


class Collateral:
    def __init__(self, documents: dict[CollateralKey, bytes]) -> None:
        self.documents = documents
        self.asked: list[CollateralKey] = []

    def collateral(self, key: CollateralKey, at: datetime) -> bytes:
        self.asked.append(key)
        if key not in self.documents:
            raise EvidenceError(f"test source has no {key}", check="collateral")
        return self.documents[key]


def turin_case(
    pki: Pki, vcek: bytes, data: bytes, chip: bytes = TURIN_CHIP
) -> tuple[Collateral, bytes]:
    source = Collateral(
        {
            CollateralKey.of(
                "amd-vcek", product="turin", chip_id=chip.hex(), tcb=data[0x180:0x188].hex()
            ): vcek,
            CollateralKey.of("amd-chain", product="turin", signer="vcek"): pki.chain,
        }
    )
    return source, data


def verify(pki: Pki, source: Collateral, data: bytes) -> VerifiedEvidence:
    verifier = SnpVerifier(ChainCache(roots=pki.roots))
    return verifier.verify(Evidence("snp", data), at=AT, collateral=source)


def turin_report(pki: Pki, **changes: object) -> bytes:
    arguments: dict[str, object] = {
        "version": 3,
        "tcb": TURIN_TCB,
        "chip_id": TURIN_CHIP,
        "cpuid": b"\x1a\x02\x00",
    }
    arguments.update(changes)
    return report(pki.vcek_key, **arguments)  # type: ignore[arg-type]


def test_turin_report_verifies_with_the_short_hwid_and_fmc(turin: Pki) -> None:
    source, data = turin_case(turin, turin.vcek(turin_extensions()), turin_report(turin))
    verified = verify(turin, source, data)
    assert verified.platform_id["product"] == "turin"
    assert verified.platform_id["reported_tcb"] == TURIN_TCB.hex()
    assert verified.platform_key_hash == key_hash(turin.vcek_key.public_key())
    assert verified.measurement == MEASUREMENT.hex()
    assert verified.tcb_status == "UpToDate"
    # The VCEK is asked for by the 8-byte hardware id, which is what AMD's KDS names Turin by.
    assert source.asked[0].param("chip_id") == TURIN_CHIP.hex()


def test_turin_fmc_level_must_match(turin: Pki) -> None:
    other_fmc = bytes([2]) + TURIN_TCB[1:]
    source, data = turin_case(
        turin, turin.vcek(turin_extensions(tcb=other_fmc)), turin_report(turin)
    )
    with pytest.raises(
        EvidenceError, match=r"\(fmc2/bl2/tee3/snp4/ucode72\) does not match"
    ) as caught:
        verify(turin, source, data)
    assert caught.value.check == "tcb"


def test_turin_chip_id_beyond_the_hwid_must_be_zero(turin: Pki) -> None:
    chip = TURIN_CHIP + b"\x01"
    source, data = turin_case(
        turin, turin.vcek(turin_extensions()), turin_report(turin, chip_id=chip)
    )
    with pytest.raises(EvidenceError, match="another chip") as caught:
        verify(turin, source, data)
    assert caught.value.check == "tcb"


def test_turin_refuses_a_milan_layout_vcek(turin: Pki) -> None:
    extensions = turin_extensions() | {_AMD + "1": _integer(0)}
    source, data = turin_case(turin, turin.vcek(extensions), turin_report(turin))
    with pytest.raises(EvidenceError, match="TCB structure version") as caught:
        verify(turin, source, data)
    assert caught.value.check == "chain"


def test_turin_needs_its_fmc_extension(turin: Pki) -> None:
    extensions = turin_extensions()
    del extensions[_AMD + "3.9"]
    source, data = turin_case(turin, turin.vcek(extensions), turin_report(turin))
    with pytest.raises(
        EvidenceError, match=r"lacks the TCB extension 1\.3\.6\.1\.4\.1\.3704\.1\.3\.9"
    ):
        verify(turin, source, data)


def test_expired_vcek_is_refused(turin: Pki) -> None:
    source, data = turin_case(turin, turin.vcek(turin_extensions(), days=-1), turin_report(turin))
    with pytest.raises(EvidenceError, match="'SEV-VCEK' is valid from") as caught:
        verify(turin, source, data)
    assert caught.value.check == "chain"


def test_a_root_not_pinned_is_not_trusted(turin: Pki) -> None:
    source, data = turin_case(turin, turin.vcek(turin_extensions()), turin_report(turin))
    with pytest.raises(EvidenceError, match="not AMD's pinned Turin root") as caught:
        SnpVerifier().verify(Evidence("snp", data), at=AT, collateral=source)
    assert caught.value.check == "chain"


def test_version_2_report_from_genoa_is_found_after_milan(genoa: Pki) -> None:
    data = report(genoa.vcek_key, version=2, tcb=GENOA_TCB, chip_id=GENOA_CHIP)
    source = Collateral(
        {
            CollateralKey.of(
                "amd-vcek", product="genoa", chip_id=GENOA_CHIP.hex(), tcb=GENOA_TCB.hex()
            ): genoa.vcek(genoa_extensions()),
            CollateralKey.of("amd-chain", product="genoa", signer="vcek"): genoa.chain,
        }
    )
    verified = verify(genoa, source, data)
    assert verified.platform_id["product"] == "genoa"
    assert [key.param("product") for key in source.asked] == ["milan", "genoa", "genoa"]


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


def test_a_debug_guest_is_refused_unless_tolerated(turin: Pki) -> None:
    debug_policy = 0x30000 | 1 << 19
    data = turin_report(turin, policy=debug_policy)
    source, data = turin_case(turin, turin.vcek(turin_extensions()), data)
    verified = verify(turin, source, data)
    assert verified.debug is True
    assert verified.measurements["policy"] == str(debug_policy)
    service, security = _policy(MEASUREMENT.hex())
    with pytest.raises(WorkloadRefused) as caught:
        check_workload(verified, service, security, cas_debug=False)
    assert caught.value.check == "debug-mode"
    service, security = _policy(MEASUREMENT.hex(), ("debug-mode",))
    check_workload(verified, service, security, cas_debug=False)


def test_an_intermediate_that_is_no_authority_vouches_for_nothing() -> None:
    pki = _pki("turin", ask_is_authority=False)
    source, data = turin_case(pki, pki.vcek(turin_extensions()), turin_report(pki))
    with pytest.raises(EvidenceError, match="'SEV-Turin' is not a certificate authority") as caught:
        verify(pki, source, data)
    assert caught.value.check == "chain"


def test_an_unknown_critical_extension_is_refused(turin: Pki) -> None:
    vcek = turin.vcek(turin_extensions())
    certificate = x509.load_der_x509_certificate(vcek)
    builder = (
        x509.CertificateBuilder()
        .subject_name(certificate.subject)
        .issuer_name(certificate.issuer)
        .public_key(turin.vcek_key.public_key())
        .serial_number(2)
        .not_valid_before(certificate.not_valid_before_utc)
        .not_valid_after(certificate.not_valid_after_utc)
    )
    for extension in certificate.extensions:
        builder = builder.add_extension(extension.value, critical=False)
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00")
    builder = builder.add_extension(unknown, critical=True)
    signed = builder.sign(turin.ask_key, hashes.SHA384(), rsa_padding=_PSS)
    der = signed.public_bytes(serialization.Encoding.DER)
    source, data = turin_case(turin, der, turin_report(turin))
    with pytest.raises(
        EvidenceError, match=r"critical extension 1\.2\.3\.4, unknown here"
    ) as caught:
        verify(turin, source, data)
    assert caught.value.check == "chain"
