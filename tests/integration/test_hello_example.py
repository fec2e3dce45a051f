"""The README's workload steps, as a user runs them: the right program gets its secrets, a
changed copy is refused and does not start."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from opencas.testing import SelfProvisionedCas, run_casctl

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "hello"


def test_hello_example(opencas_cas: SelfProvisionedCas, tmp_path: Path) -> None:
    home = opencas_cas.owner_directory  # the README uses the development owner's identity

    def casctl(*args: str) -> tuple[int, str, str]:
        result = run_casctl(home, args)
        return result.returncode, result.stdout, result.stderr

    code, _, err = casctl(
        "attest",
        opencas_cas.url,
        "--only-for-testing-debug",
        "--expect-owner-identity",
        str(opencas_cas.owner_certificate_path),
        "--expect-owner-config",
        str(opencas_cas.owner_config_path),
    )
    assert code == 0, err
    program = [sys.executable, str(EXAMPLE / "hello.py")]
    code, measurement, err = casctl("measure", "--", *program)
    assert code == 0, err
    measurement = measurement.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", measurement)
    code, out, err = casctl(
        "session", "create", str(EXAMPLE / "session.yaml"), "-e", f"MEASUREMENT={measurement}"
    )
    assert code == 0, err

    code, out, err = casctl("run", "--config-id", "hello/hello", "--", *program)
    assert code == 0, err
    printed = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert printed["certificate subject"] == "CN=hello.example"
    assert printed["greeting"] == "hello from the CAS"
    assert len(printed["secret sha256"]) == 64

    changed = tmp_path / "hello.py"
    shutil.copy(EXAMPLE / "hello.py", changed)
    changed.write_text(changed.read_text() + 'print("changed")\n')
    code, out, err = casctl("run", "--config-id", "hello/hello", "--", sys.executable, str(changed))
    assert code == 4
    assert "is not allowed for service `hello`" in err
    assert out == ""  # the program did not start
