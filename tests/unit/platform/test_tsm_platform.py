"""The configfs-tsm platform against a plain directory that serves real TDX and SNP evidence.

The outblobs are a real TDX quote (tests/data/phala-dcap-qvl/tdx_quote) and a real SEV-SNP
report (tests/data/trustee/snp/test-report.bin); entries are made the way configfs makes them,
by :class:`opencas.testing_tee.FakeConfigfsTsm`.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from opencas.errors import PlatformError
from opencas.platform.base import Platform
from opencas.platform.tsm import TsmPlatform, TsmReports
from opencas.testing_tee import FakeConfigfsTsm

DATA = Path(__file__).resolve().parents[2] / "data"
TDX_QUOTE = (DATA / "phala-dcap-qvl" / "tdx_quote").read_bytes()
SNP_REPORT = (DATA / "trustee" / "snp" / "test-report.bin").read_bytes()


def platform_for(
    tmp_path: Path, fake: FakeConfigfsTsm, privlevel: int | None = None
) -> TsmPlatform:
    report_dir = tmp_path / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    reports = TsmReports(report_dir, privlevel=privlevel, entries=fake)
    return TsmPlatform(reports, tmp_path / "disk" / "tsm-platform.key")


def test_tdx_guest_gives_tdx_evidence(tmp_path: Path) -> None:
    fake = FakeConfigfsTsm("tdx_guest", TDX_QUOTE)
    platform = platform_for(tmp_path, fake)
    report_data = bytes(range(64))

    evidence = platform.evidence(report_data)

    assert isinstance(platform, Platform)
    assert platform.kind == evidence.type == "tdx"
    assert evidence.data == TDX_QUOTE
    # MRTD: bytes 136..184 of the TD report body, which starts at 48.
    assert platform.measurement == TDX_QUOTE[184:232].hex()
    assert platform.debug is False
    assert fake.inblobs == [bytes(64), report_data]
    # Every entry made was removed again.
    assert list((tmp_path / "report").iterdir()) == []


def test_sev_guest_gives_snp_evidence(tmp_path: Path) -> None:
    fake = FakeConfigfsTsm("sev_guest", SNP_REPORT, auxblob=b"certificate table", generation=2)
    platform = platform_for(tmp_path, fake, privlevel=0)

    evidence = platform.evidence(bytes(64))

    assert platform.kind == evidence.type == "snp"
    assert evidence.data == SNP_REPORT
    assert platform.measurement == SNP_REPORT[0x90:0xC0].hex()
    assert platform.debug is False
    assert (fake.entries[-1]).name.startswith("opencas-")


def test_the_auxblob_is_read_for_snp(tmp_path: Path) -> None:
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    fake = FakeConfigfsTsm("sev_guest", SNP_REPORT, auxblob=b"certificate table")
    assert TsmReports(report_dir, entries=fake).report(bytes(64)).auxblob == b"certificate table"
    empty = FakeConfigfsTsm("sev_guest", SNP_REPORT, auxblob=b"")
    assert TsmReports(report_dir, entries=empty).report(bytes(64)).auxblob is None


def test_debug_td_and_debug_snp_policy(tmp_path: Path) -> None:
    quote = bytearray(TDX_QUOTE)
    quote[48 + 120] |= 0x1  # TD_ATTRIBUTES.DEBUG
    assert platform_for(tmp_path / "tdx", FakeConfigfsTsm("tdx_guest", bytes(quote))).debug
    report = bytearray(SNP_REPORT)
    report[0x08 + 2] |= 0x08  # POLICY bit 19: DEBUG
    assert platform_for(tmp_path / "snp", FakeConfigfsTsm("sev_guest", bytes(report))).debug


def test_sealing_is_bound_to_the_key_file(tmp_path: Path) -> None:
    platform = platform_for(tmp_path, FakeConfigfsTsm("tdx_guest", TDX_QUOTE))
    key_file = tmp_path / "disk" / "tsm-platform.key"
    assert not key_file.exists()  # made when first needed, not by opening the platform

    sealed = platform.seal(b"database key")

    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again = TsmPlatform(
        TsmReports(tmp_path / "report", entries=FakeConfigfsTsm("tdx_guest", TDX_QUOTE)), key_file
    )
    assert again.unseal(sealed) == b"database key"
    other = platform_for(tmp_path / "other", FakeConfigfsTsm("tdx_guest", TDX_QUOTE))
    with pytest.raises(PlatformError, match="another platform key file"):
        other.unseal(sealed)


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    platform = platform_for(tmp_path, FakeConfigfsTsm("tdx_guest", TDX_QUOTE))
    platform.seal(b"x")
    key_file = tmp_path / "disk" / "tsm-platform.key"
    key_file.chmod(0o644)
    fresh = TsmPlatform(
        TsmReports(tmp_path / "report", entries=FakeConfigfsTsm("tdx_guest", TDX_QUOTE)), key_file
    )

    with pytest.raises(PlatformError, match="accessible by other users"):
        fresh.seal(b"x")


def test_no_report_directory(tmp_path: Path) -> None:
    reports = TsmReports(tmp_path / "absent", entries=FakeConfigfsTsm("tdx_guest", TDX_QUOTE))

    with pytest.raises(PlatformError, match="not a confidential VM with configfs-tsm"):
        TsmPlatform(reports, tmp_path / "key")


def test_an_unknown_provider_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PlatformError, match=r"provider .* is 'arm_cca_guest'; OpenCAS knows"):
        platform_for(tmp_path, FakeConfigfsTsm("arm_cca_guest", TDX_QUOTE))


def test_an_outblob_of_the_other_provider_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PlatformError, match="SEV-SNP report must be exactly 1184 bytes, not 5006"):
        platform_for(tmp_path, FakeConfigfsTsm("sev_guest", TDX_QUOTE))
    with pytest.raises(PlatformError, match="'TEE type' at offset 0x4 is 0x4"):
        platform_for(tmp_path, FakeConfigfsTsm("tdx_guest", SNP_REPORT + bytes(4000)))


@pytest.mark.parametrize(
    ("outblob", "reason"),
    [
        (b"", "outblob .* is empty"),
        (TDX_QUOTE[:600], "TD report 1.0' at offset 0x30 needs 584 bytes"),
    ],
)
def test_a_short_outblob_is_refused(tmp_path: Path, outblob: bytes, reason: str) -> None:
    with pytest.raises(PlatformError, match=reason):
        platform_for(tmp_path, FakeConfigfsTsm("tdx_guest", outblob))


def test_another_writer_before_the_read_is_detected(tmp_path: Path) -> None:
    # The kernel counts every write: 3 means someone wrote twice more than this platform did.
    with pytest.raises(PlatformError, match=r"written by someone else.*generation 3 then 3"):
        platform_for(tmp_path, FakeConfigfsTsm("tdx_guest", TDX_QUOTE, generation=3))


def test_another_writer_while_the_outblob_is_read_is_detected(tmp_path: Path) -> None:
    fake = FakeConfigfsTsm("tdx_guest", TDX_QUOTE, concurrent_writer=True)

    with pytest.raises(PlatformError, match=r"written by someone else.*generation 1 then 2"):
        platform_for(tmp_path, fake)


def test_privlevel_is_written_for_snp_only(tmp_path: Path) -> None:
    with pytest.raises(PlatformError, match="tdx_guest has no privilege levels"):
        platform_for(tmp_path, FakeConfigfsTsm("tdx_guest", TDX_QUOTE, generation=2), 1)
    with pytest.raises(ValueError, match="privlevel must be 0 to 3"):
        TsmReports(tmp_path, privlevel=4)


def test_a_provider_that_changes_is_refused(tmp_path: Path) -> None:
    fake = FakeConfigfsTsm("tdx_guest", TDX_QUOTE)
    platform = platform_for(tmp_path, fake)
    fake.provider, fake.outblob = "sev_guest", SNP_REPORT

    with pytest.raises(PlatformError, match="provider changed from tdx_guest to sev_guest"):
        platform.evidence(bytes(64))
