"""SCONE's ``@@N`` and ``@@NAME``: filled in from the command line and the environment."""

from __future__ import annotations

import pytest

from opencas.errors import ClientError
from opencas.runtime.host_values import fill_host_values


def test_arguments_and_variables_are_filled_in() -> None:
    filled = fill_host_values("--in=@@1 --out=@@2 @@MODE@@1", ["a", "b"], {"MODE": "fast"}, "x")

    assert filled == "--in=a --out=b fasta"


def test_host_values_are_not_read_again() -> None:
    assert fill_host_values("@@1", ["@@2"], {}, "x") == "@@2"


def test_text_without_host_values_is_kept() -> None:
    assert fill_host_values("user@example @@ @@0 $$CAS::a$$", [], {}, "x") == (
        "user@example @@ @@0 $$CAS::a$$"
    )


def test_a_missing_argument_or_variable_is_an_error_naming_it() -> None:
    with pytest.raises(ClientError, match=r"command uses @@3, but the command line gives only 1"):
        fill_host_values("@@3", ["a"], {}, "command")
    with pytest.raises(ClientError, match=r"environment X uses @@HOST_ONLY, but the variable"):
        fill_host_values("@@HOST_ONLY", [], {}, "environment X")
