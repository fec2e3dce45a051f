"""opencas.sources.problems: one problem type, one way to read it, pydantic's errors as problems."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from opencas.errors import ConfigError, InvalidRequest
from opencas.policy.errors import SessionError
from opencas.sources.problems import (
    Problem,
    describe,
    format_path,
    in_text,
    in_text_order,
    render,
    render_all,
    validation_problems,
)


def test_render_leaves_out_what_is_not_known() -> None:
    assert render(Problem("f.yaml", 3, 7, "wrong", "a.b")) == "f.yaml:3:7: a.b: wrong"
    assert render(Problem("f.toml", 3, None, "wrong", "[a] b")) == "f.toml:3: [a] b: wrong"
    assert render(Problem("f.toml", None, 4, "wrong")) == "f.toml: wrong"
    assert render(Problem("", 2, 1, "wrong", "a")) == "2:1: a: wrong"
    assert render(Problem.about("a", "wrong")) == "a: wrong"
    assert render_all([Problem("f", 1, None, "x"), Problem("f", 2, None, "y")]) == "f:1: x\nf:2: y"


def test_problems_take_the_name_of_their_text_unless_they_have_one() -> None:
    named = Problem("other", 1, 1, "x")

    assert in_text([Problem.about("k", "y"), named], "s") == (
        Problem("s", None, None, "y", "k"),
        named,
    )


def test_text_order_is_by_line_then_column_without_repeats() -> None:
    a, b, c = Problem("f", 2, 1, "a"), Problem("f", 1, 5, "b"), Problem("f", None, None, "c")

    assert in_text_order([a, b, a, c]) == [c, b, a]


def test_json_form() -> None:
    assert Problem("f.yaml", 3, None, "wrong", "a").to_json() == {
        "path": "f.yaml",
        "key": "a",
        "line": 3,
        "column": None,
        "message": "wrong",
    }


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


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(max_length=3)
    secret: str = Field(default="", max_length=3)


def _errors(data: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        _Item.model_validate(data)
    return caught.value


def test_validation_problems_default_to_pydantic_words_without_a_place() -> None:
    (problem,) = validation_problems(_errors({"name": 5}).errors(), source="s")

    assert problem == Problem("s", None, None, "Input should be a valid string", "name")


def test_validation_problems_hooks() -> None:
    error = _errors({"name": "long name", "secret": "hunter2", "other": "hunter2"})

    found = validation_problems(
        error.errors(),
        source="s",
        text_path=lambda path: ("items", 0, *path),
        key=lambda path, _item: "/".join(map(str, path)),
        explain=lambda item, _path: item["type"],
        locate=lambda path: (len(path), None),
        is_secret=lambda path: path[-1] in ("secret", "other"),
    )

    assert found == [
        Problem("s", 3, None, "string_too_long", "items/0/name"),
        Problem("s", 3, None, "invalid value (not shown: a secret)", "items/0/secret"),
        # An unknown key is explained as usual: its words say nothing of the value.
        Problem("s", 3, None, "extra_forbidden", "items/0/other"),
    ]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError(Problem("owner.toml", 2, None, "bad", "[dcap] pccs_url")), "invalid-config"),
        (SessionError([Problem.about("name", "bad")]), "invalid-session"),
        (InvalidRequest(Problem.about("body.token", "bad")), "invalid-request"),
    ],
)
def test_errors_with_problems_show_them_in_their_json(error: ConfigError, code: str) -> None:
    body = error.to_json()

    assert body["error"] == code
    assert body["message"] == render_all(error.problems)
    assert body["problems"] == [problem.to_json() for problem in error.problems]


def test_a_plain_message_is_one_problem_and_no_problems_is_one_too() -> None:
    assert ConfigError("f: bad").problems == (Problem("", None, None, "f: bad"),)
    assert str(ConfigError("bad", source="f")) == "f: bad"
    assert str(SessionError([])) == "session: the session is invalid"
