"""opencas.sources.toml: TOML text, where its keys are written, and problems in TOML's words."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from opencas.errors import ConfigError
from opencas.sources.problems import Problem
from opencas.sources.toml import (
    find_key_line,
    load_toml,
    model_problems,
    parse_toml,
    show_value,
    toml_label,
    toml_string,
)

LOOKUP_TEXT = '''\
top = 1
[a]
x = """
[fake]
y = 2
"""
b.c = 'v'   # comment with = sign
"quoted.key" = { inner = 1, deeper = { z = [1, 2] } }
list = [
  "one",
  { name = "two" },
]
[a.sub]
k = true
[[items]]
n = 1
[[items]]
n = 2
[items.detail]
d = 0
'''


@pytest.mark.parametrize(
    ("key_path", "line"),
    [
        (("top",), 1),
        (("a",), 2),
        (("a", "x"), 3),
        (("a", "b"), 7),
        (("a", "b", "c"), 7),
        (("a", "quoted.key", "inner"), 8),
        (("a", "quoted.key", "deeper", "z", 1), 8),
        (("a", "list", 0), 10),
        (("a", "list", 1, "name"), 11),
        (("a", "sub"), 13),
        (("a", "sub", "k"), 14),
        (("items",), 15),
        (("items", 1, "n"), 18),
        (("items", 1, "detail", "d"), 20),
    ],
)
def test_find_key_line(key_path: tuple[str | int, ...], line: int) -> None:
    assert find_key_line(LOOKUP_TEXT, key_path) == line


@pytest.mark.parametrize("key_path", [("fake",), ("a", "y"), ("missing",), ("items", 2)])
def test_find_key_line_returns_none_when_not_written(key_path: tuple[str | int, ...]) -> None:
    assert find_key_line(LOOKUP_TEXT, key_path) is None


def test_syntax_errors_name_the_text_line_and_column() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_toml("a = 1\nb = = 2\n", "f.toml")

    (problem,) = caught.value.problems
    assert (problem.path, problem.line, problem.column, problem.key) == ("f.toml", 2, 5, "")
    assert str(caught.value).startswith("f.toml:2:5: invalid TOML: ")


def test_a_value_python_cannot_convert_is_not_quoted() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_toml("x = " + "9" * 5000 + "\n", "f.toml")

    assert str(caught.value) == "f.toml: invalid TOML: a value cannot be converted"


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_toml(path)

    assert caught.value.problems == (
        Problem(str(path), None, None, "configuration file not found"),
    )


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    port: int
    token: str = ""


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    server: _Section


def _problems(text: str, **options: object) -> list[Problem]:
    document = parse_toml(text, "f.toml")
    with pytest.raises(ValidationError) as caught:
        _File.model_validate(document.data)
    return model_problems(
        caught.value,
        source="f.toml",
        model=_File,
        data=document.data,
        lines=document.lines(),
        **options,  # type: ignore[arg-type]
    )


def test_model_problems_speak_toml() -> None:
    found = _problems('[server]\nport = "80"\ncolour = 1\n')

    assert found == [
        Problem("f.toml", 2, None, 'expected an integer, got string "80"', "[server] port"),
        Problem("f.toml", 3, None, "unknown key; expected one of: port, token", "[server] colour"),
    ]


def test_a_missing_section_has_no_line() -> None:
    assert _problems("") == [
        Problem("f.toml", None, None, "required section is missing", "[server]")
    ]


def test_the_redaction_hook_keeps_secret_values_out() -> None:
    (problem,) = _problems(
        "[server]\nport = 1\ntoken = 12345\n", is_secret=lambda path: "token" in path
    )

    assert problem.message == "expected a string, got an integer (not shown: a secret)"
    assert "12345" not in problem.message


def test_toml_words() -> None:
    assert toml_label(("a", "b", 0, "c"), False) == "[a.b[0]] c"
    assert toml_label(("a", "b"), True) == "[a.b]"
    assert toml_label(("a.b",), False) == '"a.b"'
    assert toml_label((), False) == "(whole file)"
    assert show_value("x") == 'string "x"'
    assert show_value([1]) == "an array"
    assert show_value({}) == "a table"
    assert toml_string('a"\n') == '"a\\"\\u000a"'
