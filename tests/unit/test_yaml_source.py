"""opencas.yaml_source: plain data, positions, and everything it refuses (with line and column)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opencas.yaml_source import (
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    Position,
    YamlProblem,
    YamlSourceError,
    describe,
    format_path,
    parse_yaml,
)


def problems(text: str, **limits: int) -> list[YamlProblem]:
    with pytest.raises(YamlSourceError) as caught:
        parse_yaml(text, **limits)
    return list(caught.value.problems)


def test_plain_data_with_json_types() -> None:
    text = "a: 1\nb: [x, 2.5, true, null]\nc: {d: 'e'}\nf: 0x1F\ng: '0600'\n"

    assert parse_yaml(text).data == {
        "a": 1,
        "b": ["x", 2.5, True, None],
        "c": {"d": "e"},
        "f": 31,
        "g": "0600",
    }


def test_yaml_1_2_scalars() -> None:
    data = parse_yaml("a: yes\nb: 0600\nc: 2024-01-01\nd: ~\ne: !!str 5\nf: '<<'\n").data

    # yes is a string in YAML 1.2; 0600 is decimal; dates stay text; !!str forces a string.
    assert data == {"a": "yes", "b": 600, "c": "2024-01-01", "d": None, "e": "5", "f": "<<"}


def test_positions_of_keys_items_and_values() -> None:
    text = "top:\n  - name: x\n    list: [a, b]\n  - y\nother: |\n  text\n"

    document = parse_yaml(text)

    assert document.positions[()] == Position(1, 1)
    assert document.positions[("top",)] == Position(1, 1)
    assert document.positions[("top", 0)] == Position(2, 5)
    assert document.positions[("top", 0, "name")] == Position(2, 5)
    assert document.positions[("top", 0, "list", 1)] == Position(3, 15)
    assert document.positions[("top", 1)] == Position(4, 5)
    assert document.value_positions[("top", 0, "name")] == Position(2, 11)
    assert document.value_positions[("other",)] == Position(5, 8)
    assert document.lines()[("other",)] == 5


def test_position_falls_back_to_the_nearest_ancestor() -> None:
    document = parse_yaml("a:\n  b: 1\n")

    assert document.position(("a", "missing", 3)) == Position(1, 1)
    assert document.position(("a", "b")) == Position(2, 3)
    assert parse_yaml("").position(("x",)) is None


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n...\n"])
def test_empty_documents_are_none(text: str) -> None:
    assert parse_yaml(text).data is None


def test_duplicate_keys_are_refused_at_the_second_one() -> None:
    (problem,) = problems("a:\n  b: 1\n  c: 2\n  b: secret-value\n")

    assert problem == YamlProblem(
        ("a", "b"), 4, 3, "duplicate key (first written on line 2)", "duplicate-key"
    )
    assert "secret-value" not in problem.message


def test_duplicates_that_differ_only_in_quoting_are_duplicates() -> None:
    assert problems("a: 1\n'a': 2\n")[0].kind == "duplicate-key"


def test_every_structural_problem_is_reported_in_text_order() -> None:
    found = problems("b: &x 1\nc: *x\nc: 2\n3: z\n")

    assert [(item.kind, item.line, item.column) for item in found] == [
        ("anchor", 1, 4),
        ("alias", 2, 4),
        ("duplicate-key", 3, 1),
        ("key-type", 4, 1),
    ]
    assert found[1].path == ("c",)
    assert found[3].message == "keys must be strings, got integer 3"


def test_alias_bomb_is_refused_without_expansion() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]

    found = problems("\n".join(lines))

    assert {item.kind for item in found} == {"anchor", "alias"}


@pytest.mark.parametrize(
    ("text", "kind", "line", "column"),
    [
        ("? [k]\n: v\n", "key-type", 1, 3),
        ("~: v\n", "key-type", 1, 1),
        ("<<: {a: 1}\n", "merge-key", 1, 1),
        ("a: !!binary aGk=\n", "tag", 1, 4),
        ("a: !!set {x}\n", "tag", 1, 4),
        ("a: !custom x\n", "tag", 1, 4),
        ("a: !!python/object:os.system {}\n", "tag", 1, 4),
        ("a: .nan\n", "value", 1, 4),
        ("a: -.inf\n", "value", 1, 4),
        ("a: 1e999\n", "value", 1, 4),
        ("a: " + "1" * 5000 + "\n", "value", 1, 4),
        ("a: 1\n---\nb: 2\n", "multiple-documents", 2, 1),
        ('a: "\\ud800\\udc00"\n', "value", 1, 4),
        ('"\\udfff": 1\n', "value", 1, 1),
        ("a: 'open\n", "syntax", 2, 1),
        ("a: b: c\n", "syntax", 1, 5),
        ("a:\n  b: \x01\n", "syntax", 2, 6),
    ],
)
def test_refusals_carry_kind_line_and_column(text: str, kind: str, line: int, column: int) -> None:
    (problem,) = problems(text)

    assert (problem.kind, problem.line, problem.column) == (kind, line, column)


def test_unknown_tag_message_names_the_tag() -> None:
    (problem,) = problems("a: !!python/object:os.system {}\n")

    assert problem.message.startswith(
        "could not determine a constructor for the tag '!!python/object:os.system'"
    )


def test_size_is_checked_before_parsing() -> None:
    (problem,) = problems("a: [" + "x, " * (MAX_YAML_BYTES // 3) + "]")

    assert problem.kind == "too-large"
    assert (problem.line, problem.column) == (None, None)


def test_size_counts_utf8_bytes() -> None:
    assert problems("a: " + "é" * 10, max_bytes=16)[0].kind == "too-large"
    assert parse_yaml("a: " + "é" * 5, max_bytes=16).data == {"a": "é" * 5}


def test_nesting_deeper_than_the_limit_is_refused_where_it_happens() -> None:
    (problem,) = problems("[" * (MAX_YAML_DEPTH + 1) + "]" * (MAX_YAML_DEPTH + 1))

    assert problem.kind == "too-deep"
    assert (problem.line, problem.column) == (1, MAX_YAML_DEPTH + 1)
    assert parse_yaml("[" * MAX_YAML_DEPTH + "]" * MAX_YAML_DEPTH).data is not None


def test_very_deep_text_does_not_exhaust_the_stack() -> None:
    assert problems("[" * 100_000)[0].kind == "too-deep"
    assert problems("a:\n" + "".join(" " * i + "- \n" for i in range(1, 200)))


def test_error_text_lists_problems_with_positions() -> None:
    with pytest.raises(YamlSourceError) as caught:
        parse_yaml("a: 1\na: 2\n")

    assert str(caught.value) == "2:1: a: duplicate key (first written on line 1)"


def test_format_path_and_describe() -> None:
    assert format_path(("services", 0, "environment", "HOME")) == "services[0].environment.HOME"
    assert format_path(()) == ""
    assert describe(None) == "null"
    assert describe(True) == "boolean true"
    assert describe(3) == "integer 3"
    assert describe(2.5) == "float 2.5"
    assert describe("secret") == "a string"
    assert describe({}) == "a mapping"
    assert describe([]) == "a sequence"
    assert "very large" in describe(10**40)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text_only_raises_yaml_source_error(text: str) -> None:
    with contextlib.suppress(YamlSourceError):
        parse_yaml(text)
