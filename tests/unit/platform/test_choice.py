"""Choosing the platform: the kinds, what ``auto`` finds, and the warning when it finds nothing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from opencas.errors import PlatformError
from opencas.platform.choice import PlatformSettings, detect_platform_kind, open_platform
from opencas.platform.gramine import GramineSgxPlatform
from opencas.platform.simulated import SimulatedPlatform
from opencas.platform.tsm import TsmPlatform
from opencas.testing_tee import FakeConfigfsTsm, fake_gramine

DATA = Path(__file__).resolve().parents[2] / "data"
SGX_QUOTE = (DATA / "phala-dcap-qvl" / "sgx_quote").read_bytes()
TDX_QUOTE = (DATA / "phala-dcap-qvl" / "tdx_quote").read_bytes()
MEASUREMENT = "ab" * 32


def settings(tmp_path: Path, kind: str = "auto", **changes: object) -> PlatformSettings:
    base = PlatformSettings(
        kind=kind,
        simulated_key_file=tmp_path / "simulated.key",
        tsm_key_file=tmp_path / "tsm.key",
        gramine_attestation_dir=tmp_path / "no-gramine",
        tsm_report_dir=tmp_path / "no-tsm",
    )
    return replace(base, **changes)


def opened(chosen: PlatformSettings) -> tuple[object, list[str]]:
    warnings: list[str] = []
    return open_platform(chosen, lambda: MEASUREMENT, warnings.append), warnings


def test_auto_finds_gramine_first(tmp_path: Path) -> None:
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    chosen = settings(
        tmp_path,
        gramine_attestation_dir=fake_gramine(tmp_path / "attestation", SGX_QUOTE),
        tsm_report_dir=report_dir,
        tsm_entries=FakeConfigfsTsm("tdx_guest", TDX_QUOTE),
    )

    platform, warnings = opened(chosen)

    assert isinstance(platform, GramineSgxPlatform)
    assert warnings == []


def test_auto_finds_configfs_tsm_with_a_provider(tmp_path: Path) -> None:
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    fake = FakeConfigfsTsm("tdx_guest", TDX_QUOTE)
    chosen = settings(tmp_path, tsm_report_dir=report_dir, tsm_entries=fake)

    assert detect_platform_kind(chosen) == "tsm"
    platform, warnings = opened(chosen)

    assert isinstance(platform, TsmPlatform)
    assert platform.kind == "tdx"
    assert warnings == []
    assert list(report_dir.iterdir()) == []


def test_auto_without_a_tee_runs_simulated_and_says_so(tmp_path: Path) -> None:
    platform, warnings = opened(settings(tmp_path))

    assert isinstance(platform, SimulatedPlatform)
    assert platform.measurement == MEASUREMENT
    assert platform.key_file == tmp_path / "simulated.key"
    assert len(warnings) == 1
    assert "no TEE found" in warnings[0]
    assert "clients will see mode: debug" in warnings[0]
    assert str(tmp_path / "no-gramine" / "quote") in warnings[0]


def test_auto_with_configfs_tsm_but_no_provider_runs_simulated(tmp_path: Path) -> None:
    # configfs-tsm exists on any kernel that has it; outside a confidential VM no provider
    # answers, so no entry can be made (or its provider cannot be read).
    class NoProvider:
        def create(self, entry: Path) -> None:
            raise OSError(6, "No such device or address")

        def remove(self, entry: Path) -> None:
            raise AssertionError("nothing was made")

    report_dir = tmp_path / "report"
    report_dir.mkdir()
    chosen = settings(tmp_path, tsm_report_dir=report_dir, tsm_entries=NoProvider())

    platform, warnings = opened(chosen)

    assert isinstance(platform, SimulatedPlatform)
    assert len(warnings) == 1


def test_auto_refuses_a_provider_it_does_not_know(tmp_path: Path) -> None:
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    chosen = settings(
        tmp_path, tsm_report_dir=report_dir, tsm_entries=FakeConfigfsTsm("arm_cca_guest", b"x")
    )

    with pytest.raises(PlatformError, match="'arm_cca_guest', which OpenCAS does not know"):
        opened(chosen)


def test_a_chosen_tee_that_is_missing_is_an_error_not_simulated(tmp_path: Path) -> None:
    with pytest.raises(PlatformError, match="does not run inside Gramine-SGX"):
        opened(settings(tmp_path, "gramine-sgx"))
    with pytest.raises(PlatformError, match="not a confidential VM with configfs-tsm"):
        opened(settings(tmp_path, "tsm"))


def test_simulated_is_opened_without_a_warning(tmp_path: Path) -> None:
    platform, warnings = opened(settings(tmp_path, "simulated"))

    assert isinstance(platform, SimulatedPlatform)
    assert warnings == []


def test_an_unknown_kind_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown platform kind 'sgx'"):
        opened(settings(tmp_path, "sgx"))
