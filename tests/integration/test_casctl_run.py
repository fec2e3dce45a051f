"""``casctl run`` end to end: a real CAS, a session, and a program that gets its configuration."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from opencas.testing import SelfProvisionedCas

PROGRAM = """\
import hashlib, os, sys
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives import serialization

token = os.environ["APP_TOKEN"]
conf = Path(os.environ["APP_CONF"])
root = os.environ["CAS_INJECTION_DIR"]
certs = Path(os.environ["CAS_CERTS_DIR"])
certificate = x509.load_pem_x509_certificate((certs / "server.crt").read_bytes())
key = serialization.load_pem_private_key((certs / "workload-key.pem").read_bytes(), None)
der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
print("token-sha256", hashlib.sha256(token.encode()).hexdigest())
print("conf-ok", conf.read_text() == f"token is {token}", str(conf).startswith(root + "/"))
print("conf-mode", oct(conf.stat().st_mode & 0o777))
mine = certificate.public_key().public_bytes(*der) == key.public_key().public_bytes(*der)
print("cert-for-my-key", mine)
print("cert-subject", certificate.subject.rfc4514_string())
print("user-secret", os.environ.get("USER_SECRET", "absent"))
print("args", sys.argv[1:])
print("root", root)
sys.exit(3)
"""

SESSION = """\
name: runtest
version: "0.3"
services:
  - name: app
    environment:
      APP_TOKEN: "$$CAS::token$$"
      APP_CONF: /etc/app/conf.txt
      APP_CERT: "$$CAS::server.crt$$"
    image_name: img
    attestation:
      simulated_measurement: "{measurement}"
  - name: other
    attestation:
      simulated_measurement: "{other}"
images:
  - name: img
    injection_files:
      - path: /etc/app/conf.txt
        content: "token is $$CAS::token$$"
        permission: "0400"
secrets:
  - name: token
    kind: ascii
  - name: ca
    kind: x509-ca
    common_name: Run Test CA
  - name: server
    kind: x509
    issuer: ca
    common_name: app.example
    san: ["dns:app.example"]
security:
  attestation:
    tolerate: [simulated]
"""

Casctl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def casctl(attested_casctl: Callable[[Path], Casctl], tmp_path: Path) -> Casctl:
    """casctl with its own home, having attested the CAS."""
    return attested_casctl(tmp_path / "home")


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(PROGRAM)
    return path


def test_run_end_to_end(
    opencas_cas: SelfProvisionedCas,
    casctl: Casctl,
    program: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shown = json.loads(casctl("cas", "show", "--json").stdout)
    assert shown["enclave_port"] == opencas_cas.process.enclave_port

    measured = casctl("measure", "--", sys.executable, str(program))
    assert measured.returncode == 0, measured.stderr
    measurement = measured.stdout.strip()
    session_file = tmp_path / "session.yaml"
    session_file.write_text(SESSION.format(measurement=measurement, other="00" * 32))
    created = casctl("session", "create", str(session_file))
    assert created.returncode == 0, created.stderr

    monkeypatch.setenv("USER_SECRET", "not for the workload")
    ran = casctl("run", "--config-id", "runtest/app", "--", sys.executable, str(program), "--flag")

    assert ran.returncode == 3, ran.stderr
    lines = dict(line.split(" ", 1) for line in ran.stdout.splitlines())
    assert lines["conf-ok"] == "True True"
    assert lines["conf-mode"] == "0o400"
    assert lines["cert-for-my-key"] == "True"
    assert "CN=app.example" in lines["cert-subject"]
    assert lines["user-secret"] == "absent"
    assert lines["args"] == "['--flag']"
    assert not Path(lines["root"]).exists()

    # The same token for the next run: it is the session's secret.
    again = casctl("run", "--config-id", "runtest/app", "--", sys.executable, str(program))
    assert again.returncode == 3, again.stderr
    assert again.stdout.splitlines()[0] == f"token-sha256 {lines['token-sha256']}"

    refused = casctl("run", "--config-id", "runtest/other", "--", sys.executable, str(program))
    assert refused.returncode == 4
    assert refused.stderr.startswith("casctl: error: attestation refused (measurement): ")
    assert refused.stdout == ""

    unknown = casctl("run", "--config-id", "runtest/nothing", "--", sys.executable, str(program))
    assert unknown.returncode == 1
    assert "there is no service runtest/nothing" in unknown.stderr

    program.write_text(PROGRAM.replace("sys.exit(3)", "sys.exit(0)"))
    changed = casctl("run", "--config-id", "runtest/app", "--", sys.executable, str(program))
    assert changed.returncode == 4
    assert "(measurement)" in changed.stderr
    assert changed.stdout == ""


def test_pass_env_refuses_code_changing_variables(
    casctl: Casctl, program: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PYTHONPATH with a sitecustomize.py would run unmeasured code holding the secrets."""
    measurement = casctl("measure", "--", sys.executable, str(program)).stdout.strip()
    session_file = tmp_path / "session.yaml"
    session_file.write_text(SESSION.format(measurement=measurement, other="00" * 32))
    assert casctl("session", "create", str(session_file)).returncode == 0
    injected = tmp_path / "injected"
    injected.mkdir()
    (injected / "sitecustomize.py").write_text(
        # casctl itself starts with this PYTHONPATH too: only the workload has APP_TOKEN.
        "import os\nif 'APP_TOKEN' in os.environ:\n    print('stolen', os.environ['APP_TOKEN'])\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(injected))
    monkeypatch.setenv("LD_PRELOAD", str(injected / "nothing.so"))

    for name in ("PYTHONPATH", "LD_PRELOAD"):
        ran = casctl(
            "run", "--config-id", "runtest/app", "--pass-env", name, "--",
            sys.executable, str(program),
        )  # fmt: skip
        assert ran.returncode == 2, ran.stderr
        assert f"{name} is not passed to an attested program" in ran.stderr
        assert "not measured" in ran.stderr
        assert "stolen" not in ran.stdout
        assert ran.stdout == ""

    # Without --pass-env, casctl's own PYTHONPATH does not reach the program either.
    ran = casctl("run", "--config-id", "runtest/app", "--", sys.executable, str(program))
    assert ran.returncode == 3, ran.stderr
    assert "stolen" not in ran.stdout
