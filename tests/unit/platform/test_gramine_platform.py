"""The Gramine-SGX platform against a directory laid out like ``/dev/attestation``.

The quote served is a real SGX DCAP quote (tests/data/phala-dcap-qvl/sgx_quote), so the
measurement and debug mode read from it are Intel's hardware's, not ours.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from opencas.errors import PlatformError
from opencas.platform.base import Platform
from opencas.platform.gramine import GramineSgxPlatform
from opencas.testing_tee import fake_gramine

DATA = Path(__file__).resolve().parents[2] / "data"
SGX_QUOTE = (DATA / "phala-dcap-qvl" / "sgx_quote").read_bytes()
# MRENCLAVE of that quote (bytes 112..144), and its report data (368..432) as the vendor made it.
MRENCLAVE = SGX_QUOTE[112:144].hex()


@pytest.fixture
def attestation_dir(tmp_path: Path) -> Path:
    return fake_gramine(tmp_path / "attestation", SGX_QUOTE)


def test_identity_comes_from_the_quote(attestation_dir: Path) -> None:
    platform = GramineSgxPlatform(attestation_dir)

    assert isinstance(platform, Platform)
    assert platform.kind == "sgx-dcap"
    assert platform.measurement == MRENCLAVE
    assert platform.measurement.startswith("33d8736db756ed49")
    assert platform.debug is False
    assert "MRENCLAVE" in platform.key_protection


def test_evidence_writes_the_report_data_and_serves_the_quote(attestation_dir: Path) -> None:
    platform = GramineSgxPlatform(attestation_dir)
    report_data = bytes(range(64))

    evidence = platform.evidence(report_data)

    assert evidence.type == "sgx-dcap"
    assert evidence.data == SGX_QUOTE
    assert (attestation_dir / "user_report_data").read_bytes() == report_data


def test_report_data_must_be_64_bytes(attestation_dir: Path) -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        GramineSgxPlatform(attestation_dir).evidence(b"short")


def test_debug_enclave_is_debug(tmp_path: Path) -> None:
    quote = bytearray(SGX_QUOTE)
    quote[96] |= 0x2  # ATTRIBUTES.FLAGS.DEBUG
    platform = GramineSgxPlatform(fake_gramine(tmp_path / "a", bytes(quote)))

    assert platform.debug is True


def test_sealing_is_bound_to_the_sealing_key(tmp_path: Path) -> None:
    one = GramineSgxPlatform(fake_gramine(tmp_path / "one", SGX_QUOTE))
    same = GramineSgxPlatform(fake_gramine(tmp_path / "same", SGX_QUOTE))
    other = GramineSgxPlatform(fake_gramine(tmp_path / "other", SGX_QUOTE, sealing_key=b"x" * 16))

    sealed = one.seal(b"database key")

    assert b"database key" not in sealed
    assert same.unseal(sealed) == b"database key"
    with pytest.raises(PlatformError, match="another enclave build"):
        other.unseal(sealed)
    damaged = bytearray(sealed)
    damaged[-1] ^= 1
    with pytest.raises(PlatformError, match="damaged"):
        one.unseal(bytes(damaged))


def test_not_inside_gramine(tmp_path: Path) -> None:
    with pytest.raises(PlatformError, match="does not run inside Gramine-SGX"):
        GramineSgxPlatform(tmp_path / "absent")


def test_attestation_type_must_be_dcap(tmp_path: Path) -> None:
    directory = fake_gramine(tmp_path / "a", SGX_QUOTE, attestation_type="none")

    with pytest.raises(PlatformError, match=r"is 'none', not 'dcap'.*remote_attestation"):
        GramineSgxPlatform(directory)


def test_missing_quote(attestation_dir: Path) -> None:
    (attestation_dir / "quote").unlink()

    with pytest.raises(PlatformError, match=r"Gramine's quote .*/quote does not exist"):
        GramineSgxPlatform(attestation_dir)


@pytest.mark.parametrize(
    ("quote", "reason"),
    [
        (b"", "is empty"),
        (SGX_QUOTE[:300], "SGX enclave report' at offset 0x30 needs 384 bytes"),
        ((DATA / "phala-dcap-qvl" / "tdx_quote").read_bytes(), "the quote is for TDX, not for SGX"),
    ],
)
def test_a_quote_that_is_not_an_sgx_quote(tmp_path: Path, quote: bytes, reason: str) -> None:
    with pytest.raises(PlatformError, match=reason):
        GramineSgxPlatform(fake_gramine(tmp_path / "a", quote))


def test_a_quote_of_another_enclave_later_is_refused(attestation_dir: Path) -> None:
    platform = GramineSgxPlatform(attestation_dir)
    other = bytearray(SGX_QUOTE)
    other[112] ^= 0xFF
    (attestation_dir / "quote").write_bytes(bytes(other))

    with pytest.raises(PlatformError, match="measures another enclave"):
        platform.evidence(bytes(64))


@pytest.mark.parametrize("size", [0, 15, 17])
def test_sealing_key_must_be_16_bytes(tmp_path: Path, size: int) -> None:
    directory = fake_gramine(tmp_path / "a", SGX_QUOTE, sealing_key=b"k" * size)

    with pytest.raises(PlatformError, match="sealing key"):
        GramineSgxPlatform(directory)
