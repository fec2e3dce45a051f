"""``casctl collateral fetch`` against a local PCS and KDS, and the bundle it writes in use."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from opencas.cli.casctl import cli
from opencas.testing_https import FixedAnswersServer

from .conftest import CHIP_ID, GO_TDX, SNP, TCB


def _casctl(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(arg) for arg in args], env=env)
    return result.exit_code, result.stdout, result.stderr


def _ca(server: FixedAnswersServer, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_bytes(server.ca_pem)
    return path


def _fetch(server: FixedAnswersServer, tmp_path: Path, *args: str | Path) -> tuple[int, str, str]:
    ca = _ca(server, tmp_path)
    common = ["--kds-url", server.url, "--pccs", server.url, "--ca-certificates", ca]
    return _casctl("collateral", "fetch", *common, *args)


def test_fetch_writes_a_bundle_that_verifies_evidence_offline(
    server: FixedAnswersServer, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    code, out, err = _fetch(
        server,
        tmp_path,
        *("-o", bundle, "--fmspc", "50806F000000", "--tee", "tdx", "--ca", "platform"),
        *("--amd-kds", "--product", "milan", "--vcek-for", SNP / "test-report.bin"),
    )
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "dcap/tdx/50806f000000-platform.json\tcurrent until 2023-07-08T07:24:59Z",
        "amd/milan/vcek-chain.pem\tcurrent until 2045-10-22T17:23:05Z",
        "amd/milan/vlek-chain.pem\tcurrent until 2045-10-22T17:23:05Z",
        f"amd/milan/vcek/{CHIP_ID}-{TCB}.der\tcurrent until 2030-01-24T17:58:26Z",
    ]
    expected = json.loads((GO_TDX / "go-tdx-guest_v4_SPR_E4.collateral.dcapqvl.json").read_text())
    written = bundle / "dcap" / "tdx" / "50806f000000-platform.json"
    assert json.loads(written.read_text()) == expected
    assert (bundle / "amd/milan/vcek" / f"{CHIP_ID}-{TCB}.der").read_bytes() == (
        SNP / "test-vcek.der"
    ).read_bytes()
    # On the air-gapped side: the bundle alone verifies the report.
    code, out, _ = _casctl(
        *("evidence", "verify", SNP / "test-report.bin", "--type", "snp"),
        *("--collateral", bundle, "--at", "2025-07-01T00:00:00Z", "--json"),
    )
    assert code == 0
    assert json.loads(out)["tcb_status"] == "UpToDate"


def test_what_cannot_be_fetched_is_named_and_the_rest_written(
    server: FixedAnswersServer, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    code, out, err = _casctl(
        *("collateral", "fetch", "-o", bundle, "--pccs", server.url, "--fmspc", "00a067110000"),
        *("--amd-kds", "--product", "genoa", "--kds-url", server.url),
        *("--ca-certificates", _ca(server, tmp_path), "--subscription-key-env", "PCS_KEY"),
        env={"PCS_KEY": "s3cret"},
    )
    assert code == 1
    assert out == ""
    assert f"{server.url}/sgx/certification/v4/pckcrl?ca=processor&encoding=der: the server " in err
    assert f"{server.url}/vcek/v1/Genoa/cert_chain: the server answered 404" in err
    assert "casctl: error: 4 document(s) could not be fetched" in err
    assert "s3cret" not in err
    assert all(
        headers.get("Ocp-Apim-Subscription-Key") == "s3cret"
        for headers in [h for path, h in server.requests if path.startswith("/sgx/")]
    )


def test_fetch_usage_errors(tmp_path: Path) -> None:
    assert _casctl("collateral", "fetch", "-o", tmp_path)[0] == 2
    assert _casctl("collateral", "fetch", "-o", tmp_path, "--fmspc", "00a0")[0] == 2
    code, _, err = _casctl(
        *("collateral", "fetch", "-o", tmp_path, "--fmspc", "00a067110000"),
        *("--subscription-key-env", "OPENCAS_TEST_UNSET_VARIABLE"),
    )
    assert code == 2
    assert "OPENCAS_TEST_UNSET_VARIABLE is not set" in err
    code, _, err = _casctl(
        *("collateral", "fetch", "-o", tmp_path, "--vcek-for", SNP / "test-report.bin"),
        *("--product", "milan", "--product", "genoa"),
    )
    assert code == 1
    assert "does not name its product; say which with exactly one --product" in err
