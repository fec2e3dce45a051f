"""SCONE-written sessions (tests/data/sessions/scone/) against a real CAS: each is checked,
created and read back unchanged; a one-time-password service runs only with a fresh code."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from opencas.crypto.otp import OTP_STEP, otp_code, otp_step
from opencas.policy.model import canonical_otp_secret
from opencas.policy.parse import parse_session
from opencas.testing import run_casctl

CORPUS = Path(__file__).parent.parent / "data" / "sessions" / "scone"
VARIABLES = {
    "SESSION_NAME": "templated",
    "SERVICE_NAME": "db-client",
    "DATABASE": "orders",
    "MEASUREMENT": "cd" * 32,
}

Casctl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def casctl(attested_casctl: Callable[[Path], Casctl], tmp_path: Path) -> Casctl:
    return attested_casctl(tmp_path / "home")


def created_hash(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    match = re.search(r"hash ([0-9a-f]{64})", result.stdout)
    assert match, result.stdout
    return match.group(1)


def test_each_corpus_session_checks_creates_and_reads_back(casctl: Casctl, tmp_path: Path) -> None:
    variables = [f"-e{name}={value}" for name, value in VARIABLES.items()]
    files = sorted(CORPUS.glob("*.yaml"))
    assert len(files) >= 7
    for path in files:
        used = [item for item in variables if item.split("=")[0][2:] in path.read_text()]
        checked = casctl("session", "check", str(path), *used)
        assert checked.returncode == 0, (path.name, checked.stderr)
        assert "warning" not in checked.stderr, checked.stderr
        offline = casctl("session", "hash", str(path), *used).stdout.strip()
        server_hash = created_hash(casctl("session", "create", str(path), *used))
        assert server_hash == offline, path.name
        name = re.search(r"session (\S+) is valid", checked.stdout)
        assert name, checked.stdout
        read_back = tmp_path / f"read-{path.name}"
        read = casctl("session", "read", name.group(1), "-o", str(read_back))
        assert read.returncode == 0, read.stderr
        hash_line, _, text = read_back.read_text().partition("\n")
        assert hash_line == f"# hash: {server_hash}"
        assert parse_session(text) == parse_session(
            path.read_text()
            .replace("$SESSION_NAME", VARIABLES["SESSION_NAME"])
            .replace("${SERVICE_NAME}", VARIABLES["SERVICE_NAME"])
            .replace("$DATABASE", VARIABLES["DATABASE"])
            .replace("$MEASUREMENT", VARIABLES["MEASUREMENT"])
        )
        verified = casctl("session", "verify", str(read_back))
        assert verified.returncode == 0, (path.name, verified.stderr)


def test_an_unused_template_variable_is_a_warning(casctl: Casctl) -> None:
    checked = casctl("session", "check", str(CORPUS / "otp-session.yaml"), "-e", "UNUSED=1")

    assert checked.returncode == 0, checked.stderr
    assert "warning: -e UNUSED" in checked.stderr


def test_read_back_fields_are_noted(casctl: Casctl) -> None:
    checked = casctl("session", "check", str(CORPUS / "read-back.yaml"))

    assert checked.returncode == 0, checked.stderr
    notes = [line for line in checked.stderr.splitlines() if line.startswith("casctl: note: ")]
    assert [note.split(": ")[3] for note in notes] == [
        "creator",
        "persistency",
        "security.attestation.trusted_scone_qe_pubkeys",
    ]


PROGRAM = """\
import hashlib, os
print("token-sha256", hashlib.sha256(os.environ["CONSOLE_TOKEN"].encode()).hexdigest())
"""


def code_at_step(secret: str, step: int) -> str:
    """The code of the time step ``step``. The CAS accepts the codes of one step before and one
    after its own, so a code of the current step stays good for at least 30 more seconds and a
    code of the next step is good already: nothing waits for a step boundary."""
    return otp_code(secret, step * OTP_STEP)


def test_a_one_time_password_service_runs_once_per_code(casctl: Casctl, tmp_path: Path) -> None:
    path = CORPUS / "otp-session.yaml"
    assert casctl("session", "create", str(path)).returncode == 0
    secret = canonical_otp_secret(
        re.search(r"one_time_password_shared_secret: (.*)", path.read_text()).group(1)  # type: ignore[union-attr]
    )
    program = tmp_path / "console.py"
    program.write_text(PROGRAM)
    run = ("run", "--config-id", "otp-console/console", "--otp")

    step = otp_step(time.time())
    code = code_at_step(secret, step)
    ran = casctl(*run, code, "--", sys.executable, str(program))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("token-sha256 ")

    reused = casctl(*run, code, "--", sys.executable, str(program))
    assert reused.returncode == 4
    assert reused.stderr.startswith("casctl: error: attestation refused (otp): ")
    assert "used already" in reused.stderr
    assert reused.stdout == ""

    missing = casctl(
        "run", "--config-id", "otp-console/console", "--", sys.executable, str(program)
    )
    assert missing.returncode == 4
    assert "requires a one-time password" in missing.stderr

    wrong = f"{(int(code) + 500_000) % 1_000_000:06d}"
    refusals = 1  # the reused code
    while refusals < 5:
        refused = casctl(*run, wrong, "--", sys.executable, str(program))
        assert refused.returncode == 4
        assert "(otp)" in refused.stderr
        assert "wrong or expired" in refused.stderr
        assert secret not in refused.stderr
        refusals += 1
    # The code of the next step has not been used, and the window accepts it: refused anyway.
    limited = casctl(*run, code_at_step(secret, step + 1), "--", sys.executable, str(program))
    assert limited.returncode != 0
    assert "too many wrong one-time passwords" in limited.stderr
    assert limited.stdout == ""

    # The limit is per service: another session's service still runs with its own code.
    per_service = CORPUS / "otp-service.yaml"
    assert casctl("session", "create", str(per_service)).returncode == 0
    operator_secret = "MGNVWS2SFOKEWZBASXYQNMBWOWDQTQR3"
    program.write_text(PROGRAM.replace("CONSOLE_TOKEN", "OPERATOR_KEY"))
    operator = casctl(
        "run",
        "--config-id",
        "otp-operator/operator-tool",
        "--otp",
        code_at_step(operator_secret, otp_step(time.time())),
        "--",
        sys.executable,
        str(program),
    )
    assert operator.returncode == 0, operator.stderr
    key_hex = operator.stdout.split()[1]
    assert len(key_hex) == 64
    assert key_hex != hashlib.sha256(b"").hexdigest()


IDENTITY_PROGRAM = """\
import os, sys
with open(sys.argv[1], "w") as out:
    out.write(os.environ["CONSOLE_KEY"] + os.environ["CONSOLE_CERT"])
"""


def test_a_service_reads_and_updates_its_session_with_the_certificate_it_was_given(
    casctl: Casctl, tmp_path: Path
) -> None:
    # The corpus test creates the file's own name on the same CAS; this one takes another.
    text = (CORPUS / "access-identities.yaml").read_text()
    text = text.replace("name: access-identities", "name: access-identities-run")
    policy = tmp_path / "access.yaml"
    policy.write_text(text)
    first = created_hash(casctl("session", "create", str(policy)))
    program = tmp_path / "identity.py"
    program.write_text(IDENTITY_PROGRAM)
    identity = tmp_path / "console-identity.pem"
    config_id = "access-identities-run/console"
    ran = casctl("run", "--config-id", config_id, "--", sys.executable, str(program), str(identity))
    assert ran.returncode == 0, ran.stderr

    # A stranger (an identity of its own, made by another casctl home) may not read it.
    stranger_home = tmp_path / "stranger"
    assert run_casctl(stranger_home, ["self", "show-identity"]).returncode == 0
    stranger = casctl("session", "read", "access-identities-run", "--identity", str(stranger_home))
    assert stranger.returncode != 0
    assert "that you may read" in stranger.stderr
    read = casctl("session", "read", "access-identities-run", "--identity", str(identity))
    assert read.returncode == 0, read.stderr
    assert first in read.stdout

    # The console updates it with the same key; the key migrates, so it may read it still.
    policy.write_text(text + "# updated by the console\n")
    updated = casctl("session", "update", str(policy), "--identity", str(identity))
    assert updated.returncode == 0, updated.stderr
    again = casctl("session", "read", "access-identities-run", "--identity", str(identity))
    assert again.returncode == 0, again.stderr


HOST_VALUES_PROGRAM = """\
import os
print("first", os.environ["FIRST_ARGUMENT"])
print("second", os.environ["SECOND_ARGUMENT"])
print("greeting", os.environ["GREETING"])
print("token-length", len(os.environ["TOKEN"]))
"""


def test_host_values_come_from_the_command_line_and_environment_that_start_the_program(
    casctl: Casctl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = tmp_path / "echo.py"
    program.write_text(HOST_VALUES_PROGRAM)
    run = ("run", "--config-id", "host-values-run/echo", "--", sys.executable, str(program))
    text = (CORPUS / "host-values.yaml").read_text()
    policy = tmp_path / "host-values.yaml"
    policy.write_text(text.replace("name: host-values", "name: host-values-run"))
    created_hash(casctl("session", "create", str(policy)))

    monkeypatch.setenv("GREETING", "hello")
    ran = casctl(*run, "from-the-command-line")
    assert ran.returncode == 0, ran.stderr
    # @@1 is the first argument after the program's name: here the interpreter's script.
    assert ran.stdout.splitlines() == [
        f"first {program}",
        "second from-the-command-line",
        "greeting prefix-hello",
        "token-length 12",
    ]

    # A host value that is not given refuses the start, naming it.
    monkeypatch.delenv("GREETING")
    missing = casctl(*run, "x")
    assert missing.returncode == 1
    assert "GREETING" in missing.stderr
    assert missing.stdout == ""


def test_use_env_fills_both_spellings_from_the_environment(
    casctl: Casctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = CORPUS / "templates.yaml"
    for name, value in VARIABLES.items():
        monkeypatch.setenv(name, value)
    from_env = casctl("session", "hash", str(path), "--use-env")
    # --use-env fills every variable the environment has, $HOME of the shell command too.
    given = casctl(
        "session",
        "hash",
        str(path),
        *(f"-e{k}={v}" for k, v in VARIABLES.items()),
        f"-eHOME={os.environ['HOME']}",
    )

    assert from_env.returncode == 0, from_env.stderr
    assert from_env.stdout == given.stdout
    # -e wins over the environment.
    overridden = casctl("session", "check", str(path), "--use-env", "-eSESSION_NAME=other")
    assert "session other is valid" in overridden.stdout
