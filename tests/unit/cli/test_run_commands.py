"""``casctl measure`` and ``casctl run`` up to the network: options, environment, exit codes."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec

from opencas.cli.casctl import cli
from opencas.client.state import CasctlState, PinnedCas, save_state
from opencas.crypto.pem import certificate_pem
from opencas.crypto.x509 import create_ca_certificate
from opencas.runtime.measure import measure_program, resolve_program


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


def test_run_refuses_unknown_platforms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASCTL_HOME", str(tmp_path))
    result = CliRunner().invoke(
        cli, ["run", "--config-id", "s/svc", "--platform", "sgx", "--", "true"]
    )
    assert result.exit_code == 2
    assert "'sgx' is not one of 'auto', 'gramine-sgx', 'simulated', 'tsm'" in result.output


def test_run_uses_the_environment_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASCTL_HOME", str(tmp_path))
    monkeypatch.setenv("CAS_CONFIG_ID", "s/svc")
    monkeypatch.setenv("CAS_ADDR", "https://127.0.0.1:1")
    result = CliRunner().invoke(cli, ["run", "--", "true"])
    assert result.exit_code == 1
    assert "no CAS attested yet" in result.output


def _pin_a_cas_nobody_serves(
    home: Path, monkeypatch: pytest.MonkeyPatch, pinned_cas: Callable[..., PinnedCas]
) -> None:
    ca = certificate_pem(create_ca_certificate(ec.generate_private_key(ec.SECP256R1()), "t"))
    save_state(
        home,
        CasctlState(
            default="main",
            cas={
                "main": pinned_cas(
                    url="https://127.0.0.1:1", ca_certificate_pem=ca.decode(), enclave_port=1
                )
            },
        ),
    )
    monkeypatch.setenv("CASCTL_HOME", str(home))


def test_run_unreachable_cas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pinned_cas: Callable[..., PinnedCas]
) -> None:
    _pin_a_cas_nobody_serves(tmp_path, monkeypatch, pinned_cas)
    result = CliRunner().invoke(
        cli, ["run", "--config-id", "s/svc", "--connect-retry", "0", "--", "true"]
    )
    assert result.exit_code == 3, result.output
    assert "tries" not in result.output
    assert (tmp_path / "simulated-platform.key").exists()


def test_run_keeps_trying_an_unreachable_cas_as_long_as_it_is_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pinned_cas: Callable[..., PinnedCas]
) -> None:
    _pin_a_cas_nobody_serves(tmp_path, monkeypatch, pinned_cas)
    result = CliRunner().invoke(
        cli, ["run", "--config-id", "s/svc", "--connect-retry", "0.3", "--", "true"]
    )
    assert result.exit_code == 3, result.output
    # 0.1 s doubling, each drawn between half and all of it: on a machine that does not stall,
    # two waits fit in 0.3 s, so there are three tries or more.
    assert re.search(r"after ([2-9]|\d\d) tries in \d+\.\d s", result.output), result.output
    # Said once, before the first wait, so that a waiting casctl is not taken for a hung one.
    assert result.output.count("cannot be reached yet; trying again for up to 0.3 s") == 1


def test_the_connect_retry_may_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pinned_cas: Callable[..., PinnedCas]
) -> None:
    _pin_a_cas_nobody_serves(tmp_path, monkeypatch, pinned_cas)
    monkeypatch.setenv("CAS_CONNECT_RETRY", "0")
    result = CliRunner().invoke(cli, ["run", "--config-id", "s/svc", "--", "true"])
    assert result.exit_code == 3, result.output
    assert "trying again" not in result.output


@pytest.mark.parametrize(
    ("variable", "value"), [("CAS_CONNECT_RETRY", "9999"), ("CAS_CONFIG_ID", "no-slash")]
)
def test_a_bad_value_from_the_environment_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv("CAS_CONFIG_ID", "s/svc")
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(cli, ["run", "--", "true"])
    assert result.exit_code == 2
    assert f"(env var: '{variable}')" in result.output


@pytest.mark.parametrize("value", ["-1", "3601", "soon"])
def test_run_checks_the_connect_retry(value: str) -> None:
    result = CliRunner().invoke(
        cli, ["run", "--config-id", "s/svc", "--connect-retry", value, "--", "true"]
    )
    assert result.exit_code == 2
    assert "--connect-retry" in result.output


@pytest.mark.parametrize(
    "name",
    ["LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "NODE_OPTIONS", "PERL5OPT", "RUBYOPT",
     "BASH_ENV", "ENV", "GCONV_PATH", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "GLIBC_TUNABLES",
     "MALLOC_CHECK_", "IFS", "PS4", "SHELLOPTS", "BASH_FUNC_ls"],
)  # fmt: skip
def test_run_refuses_code_changing_pass_env(name: str) -> None:
    result = CliRunner().invoke(
        cli, ["run", "--config-id", "s/svc", "--pass-env", name, "--", "true"]
    )
    assert result.exit_code == 2
    assert f"{name} is not passed to an attested program" in result.output
    assert "not measured" in result.output


def test_run_accepts_ordinary_pass_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASCTL_HOME", str(tmp_path))
    result = CliRunner().invoke(
        cli, ["run", "--config-id", "s/svc", "--pass-env", "APP_MODE", "--", "true"]
    )
    # Past the option checks: it fails later, for want of an attested CAS.
    assert result.exit_code != 2, result.output
