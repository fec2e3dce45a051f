"""TOML text to plain data, where its keys are written, and how TOML names keys in messages.

- :func:`load_toml` reads and parses a file, :func:`parse_toml` a text; a TOML syntax error
  becomes a :class:`~opencas.errors.ConfigError` whose problem names the text, the line and the
  column.
- :func:`find_key_line` / :func:`key_line_index` find where a key path is written in the text;
  ``tomllib`` keeps no positions, so a small scanner over the (already valid) text recovers them.
- :func:`model_problems` turns a pydantic ``ValidationError`` of a configuration model into
  problems in TOML's words: ``[section] key: what is wrong``, naming the keys allowed where an
  unknown one is written and the type expected where a value has the wrong one. The owner config
  speaks these words in every format it is written in.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime
import re
import tomllib
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from opencas.errors import ConfigError
from opencas.sources.files import read_text
from opencas.sources.problems import (
    EXPECTED_TYPES,
    KeyPath,
    Problem,
    nearest_line,
    unconvertible,
    unreadable,
    validation_problems,
)


@dataclass(frozen=True, slots=True)
class TomlDocument:
    """A parsed TOML text: its name for messages, its text (for line look-ups), its data."""

    source: str
    text: str
    data: dict[str, Any]

    def lines(self) -> dict[KeyPath, int]:
        """The line of every key path written in the text (see :func:`key_line_index`)."""
        return key_line_index(self.text)


def load_toml(path: Path) -> TomlDocument:
    """Read and parse the TOML file at ``path``, as :func:`parse_toml` does with its text.

    Raises :class:`ConfigError` if the file is missing, unreadable, not UTF-8 or not valid TOML;
    the problem names the file, and for a syntax error the line and column.
    """
    return parse_toml(read_text(path), str(path))


def parse_toml(text: str, source: str) -> TomlDocument:
    """Parse the TOML ``text``, which ``source`` names in problems.

    Raises :class:`ConfigError` if it is not valid TOML (naming the line and column where
    ``tomllib`` says), is nested too deeply, or holds a value Python cannot convert (the problem
    does not quote it).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(_syntax_problem(source, text, str(error))) from None
    except RecursionError:
        raise ConfigError(unreadable(source, "TOML", "values are nested too deeply")) from None
    except ValueError:
        raise ConfigError(unconvertible(source, "TOML")) from None
    return TomlDocument(source=source, text=text, data=data)


_AT_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_AT_END = re.compile(r"\s*\(at end of document\)$")


def _syntax_problem(source: str, text: str, detail: str) -> Problem:
    position = _AT_POSITION.search(detail)
    if position is not None:
        reason = detail[: position.start()]
        return Problem(source, int(position[1]), int(position[2]), f"invalid TOML: {reason}")
    end = _AT_END.search(detail)
    if end is not None:
        last_line = max(1, len(text.splitlines()))
        reason = detail[: end.start()]
        return Problem(source, last_line, None, f"invalid TOML at end of file: {reason}")
    return unreadable(source, "TOML", detail)


# --- where keys are written ---------------------------------------------------------------------


def find_key_line(text: str, key_path: Sequence[str | int]) -> int | None:
    """The 1-based line on which ``key_path`` is defined in the TOML ``text``, or None.

    Understands section headers (``[a]``, ``[a.b]``, ``[[a]]`` with indexes counted from 0),
    dotted keys, quoted keys, inline tables and array elements (``("a", "list", 2)`` is the line
    of the third element). A table defined only implicitly (``[a.b]`` defines ``a``) is found on
    the line that first mentions it. Best effort: None when the path is not written in the text
    or the text is not TOML the scanner understands.
    """
    return key_line_index(text).get(tuple(key_path))


def key_line_index(text: str) -> dict[KeyPath, int]:
    """Every key path defined in the TOML ``text``, mapped to its 1-based line.

    Same rules as :func:`find_key_line`; for repeated look-ups in one text, build this once.
    On text the scanner does not understand, returns what it found before that point.
    """
    indexer = _KeyLineIndexer(text)
    with contextlib.suppress(_Unparsable, RecursionError):
        indexer.run()
    return indexer.lines


class _Unparsable(Exception):
    """The scanner met text it does not understand; it stops and keeps what it found."""


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR = re.compile(r"[^,\]}\r\n#]+")


class _KeyLineIndexer:
    """A scanner that skips TOML values and records the line of every key it meets.

    It trusts that the text already parsed with ``tomllib``, so it checks little: it only has to
    know where strings, arrays and inline tables end, so that their contents are not taken for
    keys.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._line_starts = [0] + [match.end() for match in re.finditer("\n", text)]
        self._explicit: set[KeyPath] = set()
        self._array_tables: dict[KeyPath, int] = {}
        self.lines: dict[KeyPath, int] = {}

    def run(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip_blank_lines()
            if self._pos >= len(self._text):
                return
            if self._text.startswith("[[", self._pos):
                table = self._array_table_header()
            elif self._peek() == "[":
                table = self._table_header()
            else:
                self._key_value(table)

    # headers and keys

    def _table_header(self) -> KeyPath:
        line = self._line()
        self._pos += 1
        path = self._resolve(self._header_keys("]"))
        self._record(path, line)
        return path

    def _array_table_header(self) -> KeyPath:
        line = self._line()
        self._pos += 2
        keys = self._header_keys("]]")
        array = (*self._resolve(keys[:-1]), keys[-1])
        index = self._array_tables.get(array, 0)
        self._array_tables[array] = index + 1
        self._record(array, line)
        self._record((*array, index), line)
        return (*array, index)

    def _header_keys(self, closing: str) -> tuple[str, ...]:
        self._skip_blank()
        keys = self._key()
        self._skip_blank()
        self._expect(closing)
        return keys

    def _resolve(self, keys: Sequence[str]) -> KeyPath:
        # A header below an array of tables (``[a.b]`` after ``[[a]]``) extends its last element.
        path: list[str | int] = []
        for key in keys:
            path.append(key)
            count = self._array_tables.get(tuple(path))
            if count:
                path.append(count - 1)
        return tuple(path)

    def _key_value(self, table: KeyPath) -> None:
        line = self._line()
        path = (*table, *self._key())
        self._record(path, line)
        self._skip_blank()
        self._expect("=")
        self._skip_blank()
        self._value(path)

    def _key(self) -> tuple[str, ...]:
        parts = [self._simple_key()]
        while True:
            self._skip_blank()
            if self._peek() != ".":
                return tuple(parts)
            self._pos += 1
            self._skip_blank()
            parts.append(self._simple_key())

    def _simple_key(self) -> str:
        start = self._pos
        if self._peek() == '"':
            self._skip_basic_string()
            return _decode_basic_string(self._text[start : self._pos])
        if self._peek() == "'":
            self._skip_literal_string()
            return self._text[start + 1 : self._pos - 1]
        match = _BARE_KEY.match(self._text, self._pos)
        if match is None:
            raise _Unparsable
        self._pos = match.end()
        return match.group()

    def _record(self, path: KeyPath, line: int) -> None:
        # The path itself is defined here; its prefixes are only implied, so an explicit
        # definition met later (``[a]`` after ``[a.b]``) takes precedence over them.
        for length in range(1, len(path)):
            self.lines.setdefault(path[:length], line)
        if path not in self._explicit:
            self._explicit.add(path)
            self.lines[path] = line

    # values

    def _value(self, path: KeyPath) -> None:
        if self._text.startswith('"""', self._pos):
            self._skip_multiline_string('"""')
        elif self._text.startswith("'''", self._pos):
            self._skip_multiline_string("'''")
        elif self._peek() == '"':
            self._skip_basic_string()
        elif self._peek() == "'":
            self._skip_literal_string()
        elif self._peek() == "[":
            self._array(path)
        elif self._peek() == "{":
            self._inline_table(path)
        else:
            match = _SCALAR.match(self._text, self._pos)
            if match is None:
                raise _Unparsable
            self._pos = match.end()

    def _array(self, path: KeyPath) -> None:
        self._pos += 1
        index = 0
        while True:
            self._skip_blank_lines()
            if self._peek() == "]":
                self._pos += 1
                return
            element = (*path, index)
            self._record(element, self._line())
            self._value(element)
            self._skip_blank_lines()
            if self._peek() == ",":
                self._pos += 1
                index += 1
            else:
                self._expect("]")
                return

    def _inline_table(self, path: KeyPath) -> None:
        self._pos += 1
        while True:
            self._skip_blank_lines()
            if self._peek() == "}":
                self._pos += 1
                return
            self._key_value(path)
            self._skip_blank_lines()
            if self._peek() == ",":
                self._pos += 1
            else:
                self._expect("}")
                return

    def _skip_basic_string(self) -> None:
        pos = self._pos + 1
        while pos < len(self._text):
            char = self._text[pos]
            if char == "\\":
                pos += 2
            elif char == '"':
                self._pos = pos + 1
                return
            elif char == "\n":
                break
            else:
                pos += 1
        raise _Unparsable

    def _skip_literal_string(self) -> None:
        end = self._text.find("'", self._pos + 1)
        newline = self._text.find("\n", self._pos + 1)
        if end < 0 or 0 <= newline < end:
            raise _Unparsable
        self._pos = end + 1

    def _skip_multiline_string(self, delimiter: str) -> None:
        pos = self._pos + 3
        while True:
            end = self._text.find(delimiter, pos)
            if end < 0:
                raise _Unparsable
            if delimiter == '"""' and _escaped(self._text, end, pos):
                pos = end + 1
                continue
            end += 3
            # Up to two quotes right before the closing delimiter belong to the content.
            for _ in range(2):
                if self._text.startswith(delimiter[0], end):
                    end += 1
            self._pos = end
            return

    # low level

    def _line(self) -> int:
        return bisect.bisect_right(self._line_starts, self._pos)

    def _peek(self) -> str:
        return self._text[self._pos : self._pos + 1]

    def _expect(self, token: str) -> None:
        if not self._text.startswith(token, self._pos):
            raise _Unparsable
        self._pos += len(token)

    def _skip_blank(self) -> None:
        while self._pos < len(self._text) and self._text[self._pos] in " \t":
            self._pos += 1

    def _skip_blank_lines(self) -> None:
        while self._pos < len(self._text):
            char = self._text[self._pos]
            if char in " \t\r\n":
                self._pos += 1
            elif char == "#":
                newline = self._text.find("\n", self._pos)
                self._pos = len(self._text) if newline < 0 else newline
            else:
                return


def _escaped(text: str, pos: int, start: int) -> bool:
    """Whether the character at ``pos`` is escaped by an odd run of backslashes after ``start``."""
    backslashes = 0
    while pos - backslashes - 1 >= start and text[pos - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


def _decode_basic_string(literal: str) -> str:
    # tomllib itself decodes the escapes, so quoted keys compare exactly as the parser saw them.
    try:
        value = tomllib.loads(f"k = {literal}")["k"]
    except tomllib.TOMLDecodeError:
        raise _Unparsable from None
    if not isinstance(value, str):
        raise _Unparsable
    return value


# --- validation errors --------------------------------------------------------------------------


def model_problems(
    error: ValidationError,
    *,
    source: str,
    model: type[BaseModel],
    data: Mapping[str, Any],
    lines: Mapping[KeyPath, int],
    is_secret: Callable[[KeyPath], bool] | None = None,
) -> list[Problem]:
    """Every problem in ``error``, in its order, in TOML's words.

    ``model`` is the model ``data`` was validated against; it tells sections from keys and which
    keys are allowed where. Each problem names ``source``, the line from ``lines`` (of the key,
    or else of the nearest section that should hold it) and the key as ``[section] key``.
    Unknown keys list the keys allowed there; wrong types name the expected type and the value
    given, except at the paths ``is_secret`` names, whose values are never shown.
    """

    def is_table(loc: KeyPath, item: ErrorDetails) -> bool:
        # An unknown name inside a section reads best as a key of that section, even if its
        # value is a table; only at the top level is it an unknown section.
        return _is_table(model, loc, data) and not (
            item["type"] == "extra_forbidden" and len(loc) > 1
        )

    return validation_problems(
        error.errors(include_url=False),
        source=source,
        key=lambda loc, item: toml_label(loc, is_table(loc, item)),
        explain=lambda item, loc: _what_is_wrong(item, model, loc, is_table(loc, item)),
        locate=lambda loc: (nearest_line(lines, loc), None),
        is_secret=is_secret or (lambda _loc: False),
    )


def _what_is_wrong(item: ErrorDetails, model: type[BaseModel], loc: KeyPath, is_table: bool) -> str:
    kind, given, ctx = item["type"], item["input"], item.get("ctx") or {}
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        what = f"unknown {'section' if is_table else 'key'}"
        if allowed:
            what += f"; expected one of: {', '.join(allowed)}"
    elif kind == "missing":
        what = "required section is missing" if is_table else "required key is missing"
    elif kind in EXPECTED_TYPES:
        what = f"expected {EXPECTED_TYPES[kind]}, got {show_value(given)}"
    elif kind in {"value_error", "assertion_error"} and "error" in ctx:
        what = str(ctx["error"])
    elif kind in {"too_long", "too_short", "string_too_long", "string_too_short"}:
        unit = "character" if isinstance(given, str) else "entry"
        if "max_length" in ctx:
            what = f"at most {_count(int(ctx['max_length']), unit)} allowed, got {len(given)}"
        else:
            what = f"at least {_count(int(ctx['min_length']), unit)} required, got {len(given)}"
    elif kind == "literal_error":
        what = f"expected {ctx['expected']}, got {show_value(given)}"
    else:
        what = f"{item['msg']}; got {show_value(given)}"
    return what


def _count(number: int, unit: str) -> str:
    if number == 1:
        return f"1 {unit}"
    return f"{number} {unit[:-1]}ies" if unit.endswith("y") else f"{number} {unit}s"


def toml_label(loc: KeyPath, is_table: bool) -> str:
    """``[section] key`` for a key, ``[section]`` for a table, ``key`` for a top-level key."""
    if not loc:
        return "(whole file)"
    if is_table:
        return f"[{_dotted(loc)}]"
    last_name = max((i for i, part in enumerate(loc) if isinstance(part, str)), default=0)
    table, key = loc[:last_name], loc[last_name:]
    if not table:
        return _dotted(key)
    return f"[{_dotted(table)}] {_dotted(key)}"


def _dotted(parts: KeyPath) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if _BARE_KEY.fullmatch(part) else toml_string(part)
            text += f".{name}" if text else name
    return text


def show_value(value: Any) -> str:
    """A short description of a value in TOML's words, naming its TOML type and its value."""
    if isinstance(value, bool):
        shown = f"boolean {'true' if value else 'false'}"
    elif isinstance(value, int | float):
        shown = f"{'integer' if isinstance(value, int) else 'float'} {value}"
    elif isinstance(value, str):
        shown = f"string {toml_string(value if len(value) <= 60 else value[:57] + '...')}"
    elif isinstance(value, list):
        shown = "an array"
    elif isinstance(value, dict):
        shown = "a table"
    elif isinstance(value, datetime.datetime | datetime.date | datetime.time):
        shown = f"date/time {value.isoformat()}"
    else:
        shown = type(value).__name__
    return shown


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string literal (double-quoted, escaped), valid in any TOML."""
    out = ['"']
    for char in value:
        if char in {'"', "\\"}:
            out.append("\\" + char)
        elif char < " " or char == "\x7f":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


# --- what the model expects where ---------------------------------------------------------------


def _is_table(model: type[BaseModel], loc: KeyPath, data: Mapping[str, Any]) -> bool:
    """Whether ``loc`` names a table: per the model, or per the data where the model is silent."""
    expected = _annotation_at(model, loc)
    if expected is not None:
        return _is_model(expected) or get_origin(expected) is dict
    value: Any = data
    for part in loc:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return False
    return isinstance(value, dict)


def _allowed_keys(model: type[BaseModel], loc: KeyPath) -> list[str]:
    expected = model if not loc else _annotation_at(model, loc)
    if expected is None or not _is_model(expected):
        return []
    return sorted(info.alias or name for name, info in expected.model_fields.items())


def _annotation_at(model: type[BaseModel], loc: KeyPath) -> Any:
    """The (unwrapped) type the model expects at ``loc``, or None if it does not say."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, str):
            if not _is_model(current):
                return None
            current = _field_annotation(current, part)
        elif get_origin(current) in {list, tuple} and get_args(current):
            current = get_args(current)[0]
        else:
            return None
        if current is None:
            return None
    return _unwrap(current)


def _field_annotation(model: type[BaseModel], key: str) -> Any:
    for name, info in model.model_fields.items():
        if key in {name, info.alias}:
            return info.annotation
    return None


def _unwrap(annotation: Any) -> Any:
    """``annotation`` without ``Annotated[...]`` metadata and without ``| None``."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in {Union, types.UnionType}:
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
