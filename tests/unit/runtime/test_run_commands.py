"""``casctl measure`` and ``casctl run`` up to the network: options, targets, exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec

from opencas.cli.casctl import cli
from opencas.client.pinning import enclave_target
from opencas.client.state import CasctlState, PinnedCas, load_state, save_state
from opencas.crypto.pem import certificate_pem
from opencas.crypto.x509 import create_ca_certificate
from opencas.errors import ClientError
from opencas.runtime.measure import measure_program, resolve_program


def pinned(url: str, ca: str, enclave_port: int | None = 18765) -> PinnedCas:
    return PinnedCas(
        url=url,
        cas_key_hash="00" * 32,
        ca_certificate_pem=ca,
        instance_id="i",
        audit_seq=0,
        software_measurement="11" * 32,
        platform="simulated",
        mode="debug",
        attested_at="2026-01-01T00:00:00Z",
        enclave_port=enclave_port,
    )


@pytest.fixture
def state() -> CasctlState:
    return CasctlState(
        default="main",
        cas={
            "main": pinned("https://cas.example:8443", "CA-MAIN"),
            "other": pinned("https://other.example:8443", "CA-OTHER", enclave_port=None),
            "v6": pinned("https://[::1]:8443", "CA-V6", enclave_port=9000),
        },
    )


def test_target_by_name(state: CasctlState) -> None:
    assert enclave_target("main", state) == ("https://cas.example:18765", b"CA-MAIN")
    assert enclave_target(None, state) == ("https://cas.example:18765", b"CA-MAIN")
    assert enclave_target("v6", state) == ("https://[::1]:9000", b"CA-V6")


def test_target_without_enclave_port(state: CasctlState) -> None:
    with pytest.raises(ClientError, match="attest it again"):
        enclave_target("other", state)


def test_target_url_trusts_the_pinned_cas_with_that_host(state: CasctlState) -> None:
    assert enclave_target("https://other.example:9999", state) == (
        "https://other.example:9999",
        b"CA-OTHER",
    )
    # A host casctl never attested: only the default CAS's CA is trusted.
    assert enclave_target("https://unknown.example:1", state) == (
        "https://unknown.example:1",
        b"CA-MAIN",
    )


def test_target_url_must_be_https(state: CasctlState) -> None:
    with pytest.raises(ClientError, match="must be https"):
        enclave_target("http://cas.example:18765", state)
    with pytest.raises(ClientError, match="must be https"):
        enclave_target("https://cas.example:18765/v1", state)


def test_nothing_pinned() -> None:
    with pytest.raises(ClientError, match="no CAS attested"):
        enclave_target("https://cas.example:18765", CasctlState())


def test_state_without_enclave_port_still_loads(tmp_path: Path) -> None:
    save_state(tmp_path, CasctlState(default="main", cas={"main": pinned("https://a:1", "CA")}))
    data = json.loads((tmp_path / "state.json").read_text())
    del data["cas"]["main"]["enclave_port"]
    (tmp_path / "state.json").write_text(json.dumps(data))
    assert load_state(tmp_path).cas["main"].enclave_port is None


def test_measure_command(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text("print(1)\n")
    extra = tmp_path / "extra"
    extra.write_text("x")
    expected = measure_program(resolve_program([sys.executable, str(script)]), [extra])

    runner = CliRunner()
    plain = runner.invoke(cli, ["measure", "--measure", str(extra), sys.executable, str(script)])
    assert plain.exit_code == 0, plain.output
    assert plain.output == f"{expected.value}\n"

    as_json = runner.invoke(
        cli, ["measure", "--json", "--measure", str(extra), "--", sys.executable, str(script)]
    )
    document = json.loads(as_json.output)
    assert document["measurement"] == expected.value
    assert [item["role"] for item in document["items"]] == ["executable", "script", "measure"]
    assert document["items"][1]["path"] == str(script)


def test_measure_unknown_program() -> None:
    result = CliRunner().invoke(cli, ["measure", "--", "no-such-program-anywhere"])
    assert result.exit_code == 1
    assert "no such program" in result.output


def test_run_needs_a_config_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAS_CONFIG_ID", raising=False)
    result = CliRunner().invoke(cli, ["run", "--", "true"])
    assert result.exit_code == 2
    assert "--config-id" in result.output


@pytest.mark.parametrize("config_id", ["nosplit", "/svc", "session/", "a/../b/svc"])
def test_run_checks_the_config_id(config_id: str) -> None:
    result = CliRunner().invoke(cli, ["run", "--config-id", config_id, "--", "true"])
    assert result.exit_code == 2


def test_run_refuses_other_platforms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASCTL_HOME", str(tmp_path))
    result = CliRunner().invoke(
        cli, ["run", "--config-id", "s/svc", "--platform", "sgx", "--", "true"]
    )
    assert result.exit_code == 1
    assert "platform 'sgx' is not available in this build" in result.output


def test_run_uses_the_environment_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASCTL_HOME", str(tmp_path))
    monkeypatch.setenv("CAS_CONFIG_ID", "s/svc")
    monkeypatch.setenv("CAS_ADDR", "https://127.0.0.1:1")
    result = CliRunner().invoke(cli, ["run", "--", "true"])
    assert result.exit_code == 1
    assert "no CAS attested yet" in result.output


def test_run_unreachable_cas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = certificate_pem(create_ca_certificate(ec.generate_private_key(ec.SECP256R1()), "t"))
    save_state(
        tmp_path,
        CasctlState(default="main", cas={"main": pinned("https://127.0.0.1:1", ca.decode(), 1)}),
    )
    monkeypatch.setenv("CASCTL_HOME", str(tmp_path))
    result = CliRunner().invoke(cli, ["run", "--config-id", "s/svc", "--", "true"])
    assert result.exit_code == 3, result.output
    assert (tmp_path / "simulated-platform.key").exists()
