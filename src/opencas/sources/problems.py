"""One problem found in a text source, how it reads, and pydantic's errors turned into problems.

A :class:`Problem` names the text it is in (``path``: a file name, ``session``, ``request
body``), where in the text (``line`` and ``column``, 1-based, when known), the key it concerns
(``key``, written as the text's language writes keys) and what is wrong. Every reader, config,
session and API error carries its problems in this one form; :func:`render` is the one way they
read as text and :meth:`Problem.to_json` the one way they read in an API body.

:func:`validation_problems` turns pydantic's validation errors into problems, with hooks for how
a model's location reads as a key of the text, where it is written, what the error means in the
text's terms, and which locations hold secret values (whose problems never show the value).

The module is pure: it neither reads files nor logs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic_core import ErrorDetails

KeyPath = tuple[str | int, ...]
"""A location in a document: mapping keys and sequence indexes from the root; ``()`` is the root."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where something is written: 1-based line and column."""

    line: int
    column: int


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a text.

    ``path`` names the text (empty while the error that will carry the problem has not named it
    yet); ``line`` and ``column`` are 1-based, ``None`` when unknown; ``key`` is the key the
    problem concerns as the text's language writes it (``services[0].environment.HOME``,
    ``[dcap] pccs_url``), empty for the text as a whole. Messages never quote secret values.
    """

    path: str
    line: int | None
    column: int | None
    message: str
    key: str = ""

    @classmethod
    def about(cls, key: str, message: str) -> Problem:
        """A problem with ``key`` whose place in the text is not known.

        The error that carries it names the text (see :func:`in_text`).
        """
        return cls("", None, None, message, key)

    def to_json(self) -> dict[str, str | int | None]:
        """The problem as an API body shows it: ``{path, key, line, column, message}``."""
        return {
            "path": self.path,
            "key": self.key,
            "line": self.line,
            "column": self.column,
            "message": self.message,
        }


def render(problem: Problem) -> str:
    """``PATH:LINE:COLUMN: KEY: MESSAGE``, leaving out the parts that are not known."""
    place = [problem.path] if problem.path else []
    if problem.line is not None:
        place.append(str(problem.line))
        if problem.column is not None:
            place.append(str(problem.column))
    parts = [part for part in (":".join(place), problem.key) if part]
    return ": ".join([*parts, problem.message])


def render_all(problems: Iterable[Problem]) -> str:
    """Every problem rendered, one a line."""
    return "\n".join(render(problem) for problem in problems)


def in_text(problems: Iterable[Problem], path: str) -> tuple[Problem, ...]:
    """``problems``, each naming ``path`` as its text unless it names one already."""
    return tuple(problem if problem.path else _replace_path(problem, path) for problem in problems)


def _replace_path(problem: Problem, path: str) -> Problem:
    return Problem(path, problem.line, problem.column, problem.message, problem.key)


def unreadable(source: str, fmt: str, why: str) -> Problem:
    """The problem of a text in ``fmt`` (``TOML``, ``JSON``) that cannot be read, and ``why``."""
    return Problem(source, None, None, f"invalid {fmt}: {why}")


def unconvertible(source: str, fmt: str) -> Problem:
    """The problem of a text that parses but holds a value Python cannot turn into a value.

    Python's own conversions fail like this (an integer of more than 4300 digits, say); their
    text may quote the value, so it is not passed on.
    """
    return unreadable(source, fmt, "a value cannot be converted")


def in_text_order(problems: Iterable[Problem]) -> list[Problem]:
    """``problems`` without repeats, ordered by line and column (those without a place first)."""
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda item: (item.line or 0, item.column or 0))


def format_path(path: KeyPath) -> str:
    """``path`` as it reads in messages: ``services[0].environment.HOME``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def describe(value: object) -> str:
    """A short description of a plain value's type, showing scalars that are not strings.

    Strings are never shown (they may be secrets): ``a string``; others read ``integer 3``,
    ``boolean true``, ``null``, ``a mapping``, ``a sequence``.
    """
    if value is None or isinstance(value, str | dict | list):
        return _DESCRIPTIONS[type(value)]
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value if abs(value) < 10**30 else '(a very large number)'}"
    if isinstance(value, float):
        return f"float {value!r}"
    return type(value).__name__


_DESCRIPTIONS: Final[dict[type, str]] = {
    type(None): "null",
    str: "a string",
    dict: "a mapping",
    list: "a sequence",
}


# --- pydantic's errors ----------------------------------------------------------------------------

EXPECTED_TYPES: Final[Mapping[str, str]] = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "an array",
    "tuple_type": "an array",
    "set_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "dataclass_type": "a table",
    "datetime_type": "a date-time",
    "date_type": "a date",
    "time_type": "a time",
}
"""What each of pydantic's type errors expects, in the words of configuration files."""

Explain = Callable[[ErrorDetails, KeyPath], str]
"""What an error (at a location of the text) means, in the text's terms."""


def pydantic_message(item: ErrorDetails, _path: KeyPath) -> str:
    """Pydantic's own message, without its ``Value error, `` prefix; it never quotes the input."""
    return item["msg"].removeprefix("Value error, ")


def secret_message(item: ErrorDetails, _path: KeyPath) -> str:
    """What is wrong with a secret value, in words that never show the value."""
    kind, given, ctx = item["type"], item["input"], item.get("ctx") or {}
    if kind in EXPECTED_TYPES:
        return f"expected {EXPECTED_TYPES[kind]}, got {_kind_of(given)} (not shown: a secret)"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])  # value checks of secrets never quote the value
    return "invalid value (not shown: a secret)"


# Booleans before integers: a boolean is an int to isinstance.
_KINDS: Final = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (dict, "a table"),
)


def _kind_of(value: object) -> str:
    return next((name for kind, name in _KINDS if isinstance(value, kind)), type(value).__name__)


def model_location(loc: Iterable[str | int]) -> KeyPath:
    """A pydantic error location without the parts pydantic adds for its own validators."""
    return tuple(
        part
        for part in loc
        if not (isinstance(part, str) and part.startswith(("function-", "tagged-union")))
    )


def _unplaced(_path: KeyPath) -> tuple[int | None, int | None]:
    return None, None


def _no_secrets(_path: KeyPath) -> bool:
    return False


def _keep(path: KeyPath) -> KeyPath:
    return path


def _dotted(path: KeyPath, _item: ErrorDetails) -> str:
    return format_path(path)


def joined_key(path: KeyPath, _item: ErrorDetails) -> str:
    """A key for :func:`validation_problems` as pydantic writes locations: ``body.0.x``."""
    return ".".join(str(part) for part in path)


def validation_problems(
    errors: Iterable[ErrorDetails],
    *,
    source: str,
    text_path: Callable[[KeyPath], KeyPath] = _keep,
    key: Callable[[KeyPath, ErrorDetails], str] = _dotted,
    explain: Explain = pydantic_message,
    locate: Callable[[KeyPath], tuple[int | None, int | None]] = _unplaced,
    is_secret: Callable[[KeyPath], bool] = _no_secrets,
) -> list[Problem]:
    """One :class:`Problem` in ``source`` for each of pydantic's ``errors``, in their order.

    ``errors`` are ``ValidationError.errors()`` (or FastAPI's, which have the same shape). Each
    location becomes a path of the text by ``text_path`` (field names to the text's keys), reads
    as ``key(path, error)`` (dotted by default), is placed by ``locate`` (line and column; none
    by default) and is explained by ``explain`` (pydantic's message by default). The redaction
    hook ``is_secret`` says which paths hold secret values: their problems are explained by
    :func:`secret_message` instead, which never shows the value. An unknown key is no secret
    value, so it is explained as usual.
    """
    problems: list[Problem] = []
    for item in errors:
        path = text_path(model_location(item["loc"]))
        secret = item["type"] != "extra_forbidden" and is_secret(path)
        message = (secret_message if secret else explain)(item, path)
        line, column = locate(path)
        problems.append(Problem(source, line, column, message, key(path, item)))
    return problems


def nearest_line(lines: Mapping[KeyPath, Any], path: KeyPath) -> int | None:
    """The line of ``path`` in ``lines``, or else of its nearest ancestor there; ``None`` if none.

    A missing key has no line of its own; the section that should hold it is the best hint.
    """
    for length in range(len(path), 0, -1):
        line = lines.get(path[:length])
        if line is not None:
            return int(line)
    return None
