"""Collateral named on a command line, and the source a CAS builds from its config."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from opencas.attestation.evidence import Evidence
from opencas.attestation.verifier import NO_COLLATERAL, CollateralKey
from opencas.collateral.bundle import BundleSource
from opencas.collateral.configured import CasCollateral
from opencas.collateral.given import command_line_source
from opencas.config.availability import CollateralSettings, load_availability_config
from opencas.config.owner import DcapConfig
from opencas.errors import ConfigError, EvidenceError
from opencas.service import workloads
from opencas.service.cas import open_cas
from opencas.testing import write_config
from opencas.testing_https import FixedAnswersServer

from .conftest import CHIP_ID, PHALA, SNP, TCB, pcs_answers

AT = datetime(2025, 7, 1, tzinfo=UTC)
SGX = CollateralKey.of("dcap", tee="sgx", fmspc="00a067110000", ca="processor")
VCEK = CollateralKey.of("amd-vcek", product="milan", chip_id=CHIP_ID, tcb=TCB)
VLEK = CollateralKey.of("amd-vlek", product="milan", tcb=TCB)


def _subjects(pem: bytes) -> list[str]:
    return [c.subject.rfc4514_string().split(",")[0] for c in x509.load_pem_x509_certificates(pem)]


def test_files_answer_every_key_of_their_kind() -> None:
    source = command_line_source(
        PHALA / "sgx_quote_collateral.json",
        vcek=SNP / "test-vcek.der",
        chain=SNP / "milan_ask_ark_asvk.pem",
    )
    assert source.collateral(SGX, AT) == (PHALA / "sgx_quote_collateral.json").read_bytes()
    assert source.collateral(VCEK, AT) == (SNP / "test-vcek.der").read_bytes()
    assert source.collateral(VLEK, AT) == (SNP / "test-vcek.der").read_bytes()
    # The ASK/ARK/ASVK file gives each signer its own intermediate, then the ARK.
    vcek_chain = CollateralKey.of("amd-chain", product="milan", signer="vcek")
    vlek_chain = CollateralKey.of("amd-chain", product="milan", signer="vlek")
    assert _subjects(source.collateral(vcek_chain, AT)) == ["CN=SEV-Milan", "CN=ARK-Milan"]
    assert _subjects(source.collateral(vlek_chain, AT)) == ["CN=SEV-VLEK-Milan", "CN=ARK-Milan"]


def test_a_directory_is_a_bundle_and_missing_kinds_name_their_option(tmp_path: Path) -> None:
    BundleSource(tmp_path).write(SGX, (PHALA / "sgx_quote_collateral.json").read_bytes())
    source = command_line_source(tmp_path)
    assert source.collateral(SGX, AT) == (PHALA / "sgx_quote_collateral.json").read_bytes()
    with pytest.raises(EvidenceError, match="does not exist"):
        source.collateral(VCEK, AT)
    with pytest.raises(EvidenceError, match="no --vcek file was given"):
        command_line_source(chain=SNP / "milan_ask_ark_asvk.pem").collateral(VCEK, AT)
    assert command_line_source() is NO_COLLATERAL


def test_the_cas_source_asks_the_bundle_then_the_owners_pccs(tmp_path: Path) -> None:
    tdx = CollateralKey.of("dcap", tee="tdx", fmspc="50806f000000", ca="platform")
    at = datetime(2023, 7, 1, tzinfo=UTC)
    sgx = (PHALA / "sgx_quote_collateral.json").read_bytes()
    BundleSource(tmp_path / "bundle").write(SGX, sgx)
    with FixedAnswersServer(pcs_answers()) as server:
        (tmp_path / "ca.pem").write_bytes(server.ca_pem)
        settings = CollateralSettings(
            bundle=tmp_path / "bundle",
            cache_directory=tmp_path / "cache",
            ca_certificates=tmp_path / "ca.pem",
        )
        owner = [DcapConfig.model_validate({"pccs_url": server.url + "/unused"})]
        collateral = CasCollateral(settings, lambda: owner[0])
        try:
            assert collateral.collateral(SGX, AT) == sgx
            assert server.requests == []
            # The owner config is read when a fetch is needed: an update applies at once.
            owner[0] = DcapConfig.model_validate(
                {"pccs_url": server.url + "/sgx/certification/v4", "subscription_key": "k"}
            )
            fetched = collateral.collateral(tdx, at)
            cached = tmp_path / "cache" / "dcap" / "tdx" / "50806f000000-platform.json"
            assert fetched == cached.read_bytes()
            assert server.paths()[0] == "/sgx/certification/v4/pckcrl?ca=platform&encoding=der"
            assert server.requests[0][1]["Ocp-Apim-Subscription-Key"] == "k"
        finally:
            collateral.close()


def test_an_unloadable_ca_file_stops_the_cas_start(tmp_path: Path) -> None:
    path = write_config(tmp_path, 18082, 18767)
    with path.open("a") as file:
        file.write('\n[collateral]\nca_certificates = "missing.pem"\n')
    with pytest.raises(ConfigError, match=r"\[collateral\] ca_certificates: .*missing\.pem"):
        open_cas(load_availability_config(path))


def test_workload_attestation_verifies_with_the_cas_collateral(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path, 18083, 18768)
    with path.open("a") as file:
        file.write('\n[collateral]\nbundle = "bundle"\nfetch = false\n')
    cas = open_cas(load_availability_config(path))
    seen = []

    def verify(evidence: Evidence, *, at: datetime, collateral: object, **_: object) -> object:
        seen.append(collateral)
        raise EvidenceError("stop here", check="signature")

    monkeypatch.setattr(workloads, "verify_evidence", verify)
    nonces = workloads.NonceStore()
    try:
        request = workloads.WorkloadRequest(
            workloads.ConfigId.parse("s/svc"),
            nonces.issue(),
            "MCowBQYDK2VuAyEA" + "A" * 43 + "=",
            Evidence("sgx-dcap", b"quote").to_json(),
        )
        with pytest.raises(EvidenceError, match="stop here"):
            workloads.attest_workload(cas, nonces, request)
        assert [source.upstream for source in seen] == [cas.collateral]  # recorded, passed on
        assert "the collateral bundle " + str(tmp_path / "bundle") in str(cas.collateral)
    finally:
        cas.close()
