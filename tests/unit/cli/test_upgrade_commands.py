"""``casctl register-upgrade`` and ``unregister-upgrade`` check their flags before anything is
sent: a bad value is named by its flag, not by the server's field."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from opencas.cli.casctl import cli

MRENCLAVE = "ab" * 32


@pytest.mark.parametrize("command", ["register-upgrade", "unregister-upgrade"])
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--measurement", "zz"], "--measurement must be lowercase hex of 1 to 64 bytes"),
        (["--measurement", "ABCD"], "--measurement must be lowercase hex"),
        (["--measurement", "abc"], "--measurement must be lowercase hex"),
        (["--measurement", "ab" * 65], "--measurement must be lowercase hex"),
        (
            ["--mrsigner", "ab" * 31, "--isvprodid", "1", "--isvsvn", "2"],
            "--mrsigner must be 64 lowercase hex digits",
        ),
        (
            ["--mrsigner", MRENCLAVE, "--isvprodid", "65536", "--isvsvn", "2"],
            "'--isvprodid': 65536 is not in the range 0<=x<=65535",
        ),
        (
            ["--mrsigner", MRENCLAVE, "--isvprodid", "1", "--isvsvn", "-1"],
            "'--isvsvn': -1 is not in the range 0<=x<=65535",
        ),
    ],
)
def test_a_bad_flag_is_named(
    command: str, flags: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASCTL_HOME", str(tmp_path))
    result = CliRunner().invoke(cli, [command, *flags])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "body." not in result.output


def test_a_measurement_of_any_supported_length_passes_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASCTL_HOME", str(tmp_path))
    for measurement in (MRENCLAVE, "cd" * 48):
        result = CliRunner().invoke(cli, ["register-upgrade", "--measurement", measurement])
        # Past the flags, casctl looks for the CAS to send it to: none is pinned here.
        assert "--measurement" not in result.output
        assert result.exit_code != 2, result.output
