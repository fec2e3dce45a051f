"""opencas.sources.yaml: plain data, positions, and everything it refuses (with line and column)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opencas.sources.problems import KeyPath, Position, Problem
from opencas.sources.yaml import (
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    YamlSourceError,
    line_problems,
    parse_yaml,
)

# What each kind of refusal says; the kinds that stop the reading are the error's `unreadable`.
KEY_KINDS = {
    "anchor": "YAML anchors (&name) are not supported",
    "alias": "YAML aliases (*name) are not supported",
    "merge-key": "YAML merge keys (<<) are not supported",
    "key-type": "keys must be strings",
    "duplicate-key": "duplicate key (first written on line",
}
TEXT_KINDS = {
    "too-large": "the text is larger than",
    "too-deep": "nested too deeply",
    "multiple-documents": "only one YAML document is allowed",
    "tag": "could not determine a constructor for the tag",
    "value": ("cannot be converted to a number", "NaN and infinite", "half a UTF-16 pair"),
}


def refusal(text: str, **limits: int) -> YamlSourceError:
    with pytest.raises(YamlSourceError) as caught:
        parse_yaml(text, **limits)
    return caught.value


def problems(text: str, **limits: int) -> list[Problem]:
    return list(refusal(text, **limits).problems)


def kind_of(error: YamlSourceError, problem: Problem) -> str:
    """The kind of ``problem`` by its words; a problem that stops the reading and says none of
    the known words is a syntax error."""
    if problem != error.unreadable:
        return next(name for name, words in KEY_KINDS.items() if words in problem.message)
    for name, words in TEXT_KINDS.items():
        if any(word in problem.message for word in ((words,) if isinstance(words, str) else words)):
            return name
    return "syntax"


def kinds(text: str, **limits: int) -> list[str]:
    error = refusal(text, **limits)
    return [kind_of(error, problem) for problem in error.problems]


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

    assert problem == Problem("", 4, 3, "duplicate key (first written on line 2)", "a.b")
    assert "secret-value" not in problem.message


def test_duplicates_that_differ_only_in_quoting_are_duplicates() -> None:
    assert kinds("a: 1\n'a': 2\n") == ["duplicate-key"]


def test_every_structural_problem_is_reported_in_text_order() -> None:
    error = refusal("b: &x 1\nc: *x\nc: 2\n3: z\n")
    found = error.problems

    assert [(kind_of(error, item), item.line, item.column) for item in found] == [
        ("anchor", 1, 4),
        ("alias", 2, 4),
        ("duplicate-key", 3, 1),
        ("key-type", 4, 1),
    ]
    assert error.unreadable is None
    assert found[1].key == "c"
    assert found[3].message == "keys must be strings, got integer 3"


def test_alias_bomb_is_refused_without_expansion() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]

    assert set(kinds("\n".join(lines))) == {"anchor", "alias"}


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
    error = refusal(text)
    (problem,) = error.problems

    assert (kind_of(error, problem), problem.line, problem.column) == (kind, line, column)


def test_unknown_tag_message_names_the_tag() -> None:
    (problem,) = problems("a: !!python/object:os.system {}\n")

    assert problem.message.startswith(
        "could not determine a constructor for the tag '!!python/object:os.system'"
    )


def test_size_is_checked_before_parsing() -> None:
    error = refusal("a: [" + "x, " * (MAX_YAML_BYTES // 3) + "]")
    (problem,) = error.problems

    assert kind_of(error, problem) == "too-large"
    assert (problem.line, problem.column) == (None, None)


def test_size_counts_utf8_bytes() -> None:
    assert kinds("a: " + "é" * 10, max_bytes=16) == ["too-large"]
    assert parse_yaml("a: " + "é" * 5, max_bytes=16).data == {"a": "é" * 5}


def test_nesting_deeper_than_the_limit_is_refused_where_it_happens() -> None:
    error = refusal("[" * (MAX_YAML_DEPTH + 1) + "]" * (MAX_YAML_DEPTH + 1))
    (problem,) = error.problems

    assert kind_of(error, problem) == "too-deep"
    assert (problem.line, problem.column) == (1, MAX_YAML_DEPTH + 1)
    assert parse_yaml("[" * MAX_YAML_DEPTH + "]" * MAX_YAML_DEPTH).data is not None


def test_very_deep_text_does_not_exhaust_the_stack() -> None:
    assert kinds("[" * 100_000) == ["too-deep"]
    assert problems("a:\n" + "".join(" " * i + "- \n" for i in range(1, 200)))


def test_error_text_lists_problems_with_positions() -> None:
    with pytest.raises(YamlSourceError) as caught:
        parse_yaml("a: 1\na: 2\n")

    assert str(caught.value) == "2:1: a: duplicate key (first written on line 1)"


def test_problems_name_the_source_and_write_keys_as_the_caller_does() -> None:
    def label(path: KeyPath, mapping: bool) -> str:
        return f"{'mapping ' if mapping else ''}{'/'.join(map(str, path))}"

    with pytest.raises(YamlSourceError) as caught:
        parse_yaml("a:\n  b: 1\n  b: 2\n  3: x\n", source="f.yaml", label=label)

    assert [(item.path, item.key) for item in caught.value.problems] == [
        ("f.yaml", "a/b"),
        ("f.yaml", "mapping a"),
    ]
    assert str(caught.value).startswith("f.yaml:3:3: a/b: duplicate key")


def test_line_problems_word_the_problems_as_configuration_files_do() -> None:
    structural = refusal("a: 1\na: 2\n")
    unreadable = refusal("a: b: c\n")

    assert line_problems(structural, "YAML") == [
        Problem("", 2, None, "duplicate key (first written on line 1)", "a")
    ]
    (problem,) = line_problems(unreadable, "JSON")
    assert (problem.line, problem.column, problem.key) == (1, 5, "")
    assert problem.message.startswith("invalid JSON: ")


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text_only_raises_yaml_source_error(text: str) -> None:
    with contextlib.suppress(YamlSourceError):
        parse_yaml(text)
