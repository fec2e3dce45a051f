"""``casctl evidence verify`` on real evidence: valid, tampered, without collateral, as JSON."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from opencas.cli.casctl import cli
from opencas.cli.evidence_commands import claims_fields, read_evidence_file
from opencas.errors import ClientError

DATA = Path(__file__).resolve().parents[2] / "data"
SNP = DATA / "trustee" / "snp"
PHALA = DATA / "phala-dcap-qvl"
AT = "2025-07-01T00:00:00Z"


def _verify(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["evidence", "verify", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def _snp(report: Path, *extra: str) -> tuple[int, str, str]:
    vcek, chain = SNP / "test-vcek.der", SNP / "milan_ask_ark_asvk.pem"
    return _verify(report, "--type", "snp", "--vcek", vcek, "--chain", chain, "--at", AT, *extra)


def test_a_real_snp_report_verifies_and_prints_its_claims() -> None:
    code, out, _ = _snp(SNP / "test-report.bin")
    assert code == 0
    assert out.startswith("valid: snp evidence (binary) verified as of 2025-07-01T00:00:00Z\n")
    assert "  TCB status:     UpToDate\n" in out
    assert "  chip_id:        c38427a30d4c7af9" in out
    code, out, _ = _snp(SNP / "test-report.bin", "--json")
    facts = json.loads(out)
    assert code == 0
    assert facts["valid"] is True
    assert (facts["tee"], facts["tcb_status"], facts["advisory_ids"]) == ("snp", "UpToDate", [])
    assert facts["debug"] is False
    assert facts["report_data"] == (SNP / "test-report.bin").read_bytes()[0x50:0x90].hex()
    assert facts["measurements"]["measurement"] == (
        (SNP / "test-report.bin").read_bytes()[0x90:0xC0].hex()
    )
    assert facts["collateral_not_after"] == "2030-01-24T17:58:26Z"
    assert tuple(facts) == claims_fields()


@pytest.mark.parametrize("form", ["hex", "base64", "base64url"])
def test_hex_and_base64_files_read_alike(tmp_path: Path, form: str) -> None:
    raw = (SNP / "test-report.bin").read_bytes()
    text = {
        "hex": raw.hex().upper(),
        "base64": base64.encodebytes(raw).decode(),
        "base64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }[form]
    path = tmp_path / "report.txt"
    path.write_text(text + "\n")
    assert read_evidence_file(path) == (raw, form.removesuffix("url"))
    code, out, _ = _snp(path, "--json")
    assert code == 0
    assert json.loads(out)["tcb_status"] == "UpToDate"


def test_a_tampered_report_exits_4_and_names_the_check(tmp_path: Path) -> None:
    raw = bytearray((SNP / "test-report.bin").read_bytes())
    raw[42] = (raw[42] + 1) % 256
    tampered = tmp_path / "tampered.bin"
    tampered.write_bytes(bytes(raw))
    code, _, err = _snp(tampered)
    assert code == 4
    assert err.startswith("casctl: error: evidence refused (signature): ")
    code, out, _ = _snp(tampered, "--json")
    assert code == 4
    answer = json.loads(out)
    assert answer["valid"] is False
    assert answer["tee"] == "snp"
    assert answer["error"]["code"] == "signature"
    # The same members as a valid answer, so a script reads one shape.
    assert set(answer) == {*claims_fields(), "error"}
    assert (answer["tcb_status"], answer["measurements"], answer["debug"]) == (None, None, None)
    assert answer["error"]["message"]


def test_without_collateral_the_error_says_which_option_is_missing() -> None:
    code, out, _ = _verify(SNP / "test-report.bin", "--type", "snp", "--at", AT, "--json")
    assert code == 4
    error = json.loads(out)["error"]
    assert error["code"] == "collateral"
    assert "no collateral source is configured" in error["message"]
    chain = SNP / "milan_ask_ark_asvk.pem"
    code, out, _ = _verify(SNP / "test-report.bin", "--type", "snp", "--chain", chain, "--json")
    assert json.loads(out)["error"]["code"] == "collateral"
    assert "no --vcek file was given" in json.loads(out)["error"]["message"]


def test_an_expired_vlek_is_refused_after_its_window() -> None:
    vlek, chain = SNP / "test-vlek.der", SNP / "milan_ask_ark_asvk.pem"
    args = [SNP / "test-vlek-report.bin", "--type", "snp", "--vcek", vlek, "--chain", chain]
    assert _verify(*args, "--at", "2025-07-01")[0] == 0
    code, out, _ = _verify(*args, "--at", "2026-01-01T00:00:00+01:00", "--json")
    assert code == 4
    assert json.loads(out)["valid"] is False


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert _verify(SNP / "test-report.bin", "--type", "snp", "--at", "yesterday")[0] == 2
    assert _verify(SNP / "test-report.bin", "--type", "sev")[0] == 2
    assert _verify(SNP / "test-report.bin")[0] == 2
    assert _verify(tmp_path / "missing", "--type", "snp")[0] == 2


def test_an_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"\x00" * (256 * 1024 + 1))
    with pytest.raises(ClientError, match="larger than the limit"):
        read_evidence_file(path)
    code, _, err = _verify(path, "--type", "snp")
    assert code == 1
    assert "larger than the limit of 262144 bytes" in err


def test_a_real_sgx_quote_verifies_with_phalas_collateral() -> None:
    quote, collateral = PHALA / "sgx_quote", PHALA / "sgx_quote_collateral.json"
    code, out, _ = _verify(quote, "--type", "sgx", "--collateral", collateral, "--at", AT, "--json")
    facts = json.loads(out)
    assert code == 0
    assert facts["tcb_status"] == "ConfigurationAndSWHardeningNeeded"
    assert facts["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    assert facts["debug"] is False
    assert facts["platform_id"]["fmspc"] == "00a067110000"
    assert facts["measurements"]["mrenclave"] == facts["measurement"]
    assert len(facts["collateral_digest"]) == 64


def test_a_bundle_directory_serves_the_quote_by_its_fmspc(tmp_path: Path) -> None:
    bundle = tmp_path / "dcap" / "sgx"
    bundle.mkdir(parents=True)
    (bundle / "00a067110000-processor.json").write_bytes(
        (PHALA / "sgx_quote_collateral.json").read_bytes()
    )
    code, out, _ = _verify(PHALA / "sgx_quote", "--type", "sgx", "--collateral", tmp_path)
    assert code == 4  # now is past the collateral's window
    code, out, _ = _verify(
        PHALA / "sgx_quote", "--type", "sgx", "--collateral", tmp_path, "--at", AT, "--json"
    )
    assert code == 0
    assert json.loads(out)["tcb_status"] == "ConfigurationAndSWHardeningNeeded"


def test_without_collateral_a_quote_names_the_document_it_needs() -> None:
    code, _, err = _verify(PHALA / "sgx_quote", "--type", "sgx", "--at", AT)
    assert code == 4
    assert "evidence refused (collateral)" in err
    assert "dcap(ca=processor, fmspc=00a067110000, tee=sgx)" in err


def test_a_tampered_quote_and_an_unsupported_tcb_are_refused(tmp_path: Path) -> None:
    raw = bytearray((PHALA / "sgx_quote").read_bytes())
    raw[0x40] ^= 0x01  # inside the enclave report the QE signed
    tampered = tmp_path / "quote.bin"
    tampered.write_bytes(bytes(raw))
    collateral = PHALA / "sgx_quote_collateral.json"
    code, out, _ = _verify(
        tampered, "--type", "sgx", "--collateral", collateral, "--at", AT, "--json"
    )
    assert code == 4
    assert json.loads(out)["valid"] is False
    go = DATA / "google-go-tdx-guest"
    code, out, _ = _verify(
        go / "tdx_prod_quote_SPR_E4.dat",
        *("--type", "tdx", "--at", "2023-07-01T01:00:00Z", "--json"),
        *("--collateral", go / "go-tdx-guest_v4_SPR_E4.collateral.dcapqvl.json"),
    )
    assert code == 4
    assert json.loads(out)["error"]["code"] == "tcb"
