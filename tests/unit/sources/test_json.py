"""opencas.sources.json: JSON with the line of every key, refusing duplicates and non-numbers."""

from __future__ import annotations

import pytest

from opencas.errors import ConfigError
from opencas.sources.json import parse_json
from opencas.sources.problems import KeyPath, Problem


def refused(text: str) -> tuple[Problem, ...]:
    with pytest.raises(ConfigError) as caught:
        parse_json(text, "f.json")
    return caught.value.problems


def test_data_and_lines() -> None:
    document = parse_json('{\n "a": {\n  "b": [1, 2]\n }\n}', "f.json")

    assert document.data == {"a": {"b": [1, 2]}}
    assert document.lines[("a", "b")] == 3


def test_duplicate_keys_name_their_key_and_line() -> None:
    def label(path: KeyPath, _mapping: bool) -> str:
        return "/".join(map(str, path))

    with pytest.raises(ConfigError) as caught:
        parse_json('{"a": {\n"b": 1,\n"b": 2}}', "f.json", label=label)

    assert caught.value.problems == (
        Problem("f.json", 3, None, "duplicate key (first written on line 2)", "a/b"),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": NaN}', "invalid JSON: NaN is not a JSON number"),
        ("[" * 100_000, "invalid JSON: values are nested too deeply"),
        ('{"a": ' + "9" * 5000 + "}", "invalid JSON: a value cannot be converted"),
    ],
)
def test_what_cannot_be_a_value(text: str, message: str) -> None:
    assert refused(text) == (Problem("f.json", None, None, message),)


def test_syntax_errors_name_line_and_column() -> None:
    (problem,) = refused('{\n  "a": }')

    assert (problem.line, problem.column) == (2, 8)
    assert problem.message.startswith("invalid JSON: ")
