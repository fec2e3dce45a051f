"""A CAS opened on Gramine-SGX and on a confidential VM: its report and its sealed key store.

The platforms run against plain directories that serve real evidence (tests/data/), so the
report carries the hardware's measurement and mode, and the key store is sealed by the platform
the config chose.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from opencas.config.availability import AvailabilityConfig, load_availability_config
from opencas.crypto.keys import key_hash
from opencas.errors import KeyStoreError
from opencas.platform.key_file import read_key_file
from opencas.service.cas import open_cas
from opencas.testing_tee import FakeConfigfsTsm, fake_gramine

DATA = Path(__file__).resolve().parents[2] / "data"
SGX_QUOTE = (DATA / "phala-dcap-qvl" / "sgx_quote").read_bytes()
SNP_REPORT = (DATA / "trustee" / "snp" / "test-report.bin").read_bytes()


def config_for(tmp_path: Path, platform_lines: str) -> AvailabilityConfig:
    path = tmp_path / "cas.toml"
    path.write_text(f'[database]\npath = "state/cas.db"\n\n[platform]\n{platform_lines}\n')
    return load_availability_config(path)


def test_a_cas_in_gramine_reports_the_enclave_and_seals_with_its_key(tmp_path: Path) -> None:
    fake_gramine(tmp_path / "attestation", SGX_QUOTE)
    config = config_for(tmp_path, 'kind = "gramine-sgx"\ngramine_attestation_dir = "attestation"')

    cas = open_cas(config)
    try:
        report = cas.report("00" * 16)
        answer = cas.attest("00" * 16)
        facts = cas.identification()
    finally:
        cas.close()

    assert report.platform == "sgx-dcap"
    assert report.mode == "production"
    assert report.software_measurement == SGX_QUOTE[112:144].hex()
    assert answer["evidence"]["type"] == "sgx-dcap"
    assert "MRENCLAVE" in facts["key_protection"]
    assert not (tmp_path / "state" / "simulated-platform.key").exists()
    # The same enclave opens its database again; another sealing key (another MRENCLAVE or
    # CPU) cannot.
    open_cas(config).close()
    fake_gramine(tmp_path / "attestation", SGX_QUOTE, sealing_key=b"\xff" * 16)
    with pytest.raises(KeyStoreError, match="cannot be unsealed on this platform"):
        open_cas(config)


def test_a_cas_in_a_confidential_vm_seals_with_a_key_file_on_its_disk(tmp_path: Path) -> None:
    (tmp_path / "report").mkdir()
    config = config_for(tmp_path, 'kind = "tsm"\ntsm_report_dir = "report"')
    fake = FakeConfigfsTsm("sev_guest", SNP_REPORT)
    config = replace(config, platform=replace(config.platform, tsm_entries=fake))

    cas = open_cas(config)
    try:
        report = cas.report("00" * 16)
        facts = cas.identification()
    finally:
        cas.close()

    assert report.platform == "snp"
    assert report.mode == "production"
    assert report.software_measurement == SNP_REPORT[0x90:0xC0].hex()
    assert "encrypted disk" in facts["key_protection"]
    assert (tmp_path / "state" / "tsm-platform.key").stat().st_mode & 0o077 == 0
    (tmp_path / "state" / "tsm-platform.key").unlink()
    with pytest.raises(KeyStoreError, match="cannot be unsealed on this platform"):
        open_cas(config)


def test_a_database_key_cannot_be_injected_on_a_tee(tmp_path: Path) -> None:
    fake_gramine(tmp_path / "attestation", SGX_QUOTE)
    config = config_for(tmp_path, 'kind = "gramine-sgx"\ngramine_attestation_dir = "attestation"')

    with pytest.raises(KeyStoreError, match="only be injected on a debug platform, not on sgx"):
        open_cas(config, injected_dmk=bytes(32))


def test_a_database_sealed_on_one_simulated_machine_does_not_open_on_another(
    tmp_path: Path,
) -> None:
    primary = config_for(tmp_path, 'kind = "simulated"\nmachine_dir = "machines/primary"')
    backup = config_for(tmp_path, 'kind = "simulated"\nmachine_dir = "machines/backup"')
    open_cas(primary).close()
    open_cas(primary).close()

    with pytest.raises(KeyStoreError) as caught:
        open_cas(backup)

    message = str(caught.value)
    assert "cannot be unsealed on this platform" in message
    primary_machine = key_hash_of(tmp_path / "machines" / "primary" / "platform.key")
    backup_machine = key_hash_of(tmp_path / "machines" / "backup" / "platform.key")
    assert f"sealed on simulated machine {primary_machine}" in message
    assert f"this is machine {backup_machine}" in message


def key_hash_of(key_file: Path) -> str:
    return key_hash(read_key_file(key_file).public_key())
