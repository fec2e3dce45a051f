"""``casctl register-backup`` checks its flags before it attests the backup."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from opencas.cli.casctl import cli


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["https://127.0.0.1:1", "--name", "-starts-with-dash"], "--name must be 1 to 64 letters"),
        (["https://127.0.0.1:1", "--name", "has space"], "--name must be 1 to 64 letters"),
        (["https://127.0.0.1:1", "--name", "n" * 65], "--name must be 1 to 64 letters"),
        (["http://127.0.0.1:1", "--name", "standby"], "the CAS URL must be https://HOST:PORT"),
        (["https://" + "h" * 520, "--name", "standby"], "at most 512 characters"),
    ],
)
def test_a_bad_flag_is_named_before_the_backup_is_attested(
    arguments: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASCTL_HOME", str(tmp_path))
    result = CliRunner().invoke(cli, ["register-backup", *arguments])
    assert result.exit_code == 2, result.output
    assert message in result.output
    # Nothing was fetched: port 1 would have answered with a connection error.
    assert "connect" not in result.output.lower()
