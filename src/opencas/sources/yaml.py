"""YAML text to plain data, with the line and column of every key, and nothing surprising.

:func:`parse_yaml` reads one YAML document (YAML 1.2, safe: no object construction) and returns
plain JSON-compatible data — ``dict`` with ``str`` keys, ``list``, ``str``, ``int``, ``float``,
``bool`` and ``None`` — together with where each key path is written. It refuses, with the line
and column of the offending text:

- documents larger than :data:`MAX_YAML_BYTES` (checked before parsing);
- nesting deeper than :data:`MAX_YAML_DEPTH` (checked while parsing, so deep text cannot
  exhaust the stack);
- anchors and aliases, because expanding shared nodes again and again is how a small text
  becomes a huge value ("billion laughs"), and merge keys (``<<``), which need them;
- duplicate keys, because YAML libraries resolve them differently and two readers of one
  signed text must not disagree about what it says;
- keys that are not strings, tags other than the plain core types, more than one document,
  and numbers JSON cannot hold (NaN, infinities, integers beyond Python's conversion limit).

Refusals are :class:`~opencas.sources.problems.Problem` values naming the text as the caller
does (``source``) and the key as the caller writes keys (``label``). The module is pure: it takes
text and returns values; it neither reads files nor logs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
)
from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.reader import ReaderError

from opencas.sources.problems import (
    KeyPath,
    Position,
    Problem,
    describe,
    format_path,
    in_text_order,
    render_all,
)

MAX_YAML_BYTES: Final = 1 << 20
"""The largest YAML text accepted, in bytes of its UTF-8 encoding (1 MiB)."""
MAX_YAML_DEPTH: Final = 64
"""The deepest nesting of mappings and sequences accepted."""

_CORE = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (
    f"{_CORE}{name}" for name in ("str", "int", "float", "bool", "null")
)
_MAP, _SEQ, _MERGE, _TIMESTAMP = (f"{_CORE}{name}" for name in ("map", "seq", "merge", "timestamp"))
_SCALAR_TAGS = frozenset({_STR, _INT, _FLOAT, _BOOL, _NULL})
# "\ud800" escapes decode to lone surrogates: not characters, and not encodable as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")

KeyLabel = Callable[[KeyPath, bool], str]
"""How a key path reads in a problem; the flag says the path names the mapping holding the key
that is wrong (a key that is not a string), not a key itself."""


def dotted_label(path: KeyPath, _mapping: bool) -> str:
    """The key path written as the session language writes it: ``services[0].name``."""
    return format_path(path)


class YamlSourceError(ValueError):
    """The text is not acceptable YAML; ``problems`` lists why, in the order of the text.

    ``unreadable`` is the problem after which the text could not be read on (a syntax error, too
    large, too deep, a second document, an unsupported tag, a number JSON cannot hold), if there
    is one: the text is not acceptable YAML at all. The others are about keys of a text that was
    read to its end (duplicate keys, keys that are not strings, anchors, aliases, merge keys).
    """

    def __init__(self, problems: list[Problem], unreadable: Problem | None = None) -> None:
        self.problems = tuple(in_text_order(problems))
        self.unreadable = unreadable
        super().__init__(render_all(self.problems))


def line_problems(error: YamlSourceError, fmt: str) -> list[Problem]:
    """``error``'s problems as configuration files word them, for a text in ``fmt``.

    The problem that stopped the reading reads ``invalid YAML: …`` (``fmt`` names the format)
    at its line and column; the others name their key and line only, as TOML's problems do.
    """
    problems: list[Problem] = []
    for problem in error.problems:
        if problem == error.unreadable:
            what = f"invalid {fmt}: {problem.message}"
            problems.append(Problem(problem.path, problem.line, problem.column, what))
        else:
            problems.append(Problem(problem.path, problem.line, None, problem.message, problem.key))
    return problems


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """A parsed document: its plain data and where its parts are written.

    ``positions`` maps each mapping entry's key path to where its key is written, each sequence
    item's path to where the item starts, and ``()`` to where the root value starts (if any).
    ``value_positions`` maps each mapping entry's key path to where its value starts.
    ``scalar_texts`` maps the path of each unquoted scalar that became a number, a boolean or
    null to its text as written (``1.50``, ``True``), for readers that take it as text.
    """

    data: object
    positions: Mapping[KeyPath, Position] = field(default_factory=dict)
    value_positions: Mapping[KeyPath, Position] = field(default_factory=dict)
    scalar_texts: Mapping[KeyPath, str] = field(default_factory=dict)

    def position(self, path: KeyPath) -> Position | None:
        """Where ``path`` is written, or else its nearest written ancestor; ``None`` if neither.

        A missing key has no position of its own; the mapping that should hold it is the best
        hint for the reader.
        """
        for length in range(len(path), -1, -1):
            found = self.positions.get(path[:length])
            if found is not None:
                return found
        return None

    def lines(self) -> dict[KeyPath, int]:
        """The line of every key path in :attr:`positions`."""
        return {path: where.line for path, where in self.positions.items()}


def parse_yaml(
    text: str,
    *,
    source: str = "",
    label: KeyLabel = dotted_label,
    max_bytes: int = MAX_YAML_BYTES,
    max_depth: int = MAX_YAML_DEPTH,
) -> YamlDocument:
    """Parse ``text`` as one YAML document into plain data and positions.

    Returns ``YamlDocument(data=None)`` for a text without content. Raises
    :class:`YamlSourceError` — and nothing else — listing every structural problem found
    (duplicate keys, keys that are not strings, anchors, aliases, merge keys), or the first
    problem that stops parsing (a syntax error, too large, too deep, a second document, an
    unsupported tag, a number JSON cannot hold). Its problems name ``source`` as their text and
    their keys as ``label`` writes them.
    """
    report = _Report(source, label)
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        too_large = report((), None, None, f"the text is larger than {max_bytes} bytes")
        raise YamlSourceError([too_large], too_large)
    builder = _Builder(max_depth, report)
    yaml = YAML(typ="safe", pure=True)
    try:
        for event in yaml.parse(text):
            builder.feed(event, yaml)
    except _Stop as stop:
        raise YamlSourceError([*builder.problems, stop.problem], stop.problem) from None
    except YAMLError as error:
        syntax = _syntax_problem(text, error, report)
        raise YamlSourceError([syntax], syntax) from None
    except RecursionError:
        # The parser itself is not recursive; this is a safety net, not an expected path.
        too_deep = report((), None, None, "values are nested too deeply")
        raise YamlSourceError([too_deep], too_deep) from None
    if builder.problems:
        raise YamlSourceError(builder.problems)
    return YamlDocument(
        builder.root, builder.positions, builder.value_positions, builder.scalar_texts
    )


@dataclass(frozen=True, slots=True)
class _Report:
    """Makes the problems of one text: naming the text, and its keys as the caller writes them."""

    source: str
    label: KeyLabel

    def __call__(
        self,
        path: KeyPath,
        line: int | None,
        column: int | None,
        what: str,
        *,
        mapping: bool = False,
    ) -> Problem:
        return Problem(self.source, line, column, what, self.label(path, mapping))

    def at(self, path: KeyPath, start: Position, what: str, *, mapping: bool = False) -> Problem:
        return self(path, start.line, start.column, what, mapping=mapping)


def _syntax_problem(text: str, error: YAMLError, report: _Report) -> Problem:
    if isinstance(error, ReaderError) and isinstance(error.position, int):
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        code = f" (#x{error.character:04x})" if isinstance(error.character, int) else ""
        return report((), line, column, f"{error.reason}{code}")
    if isinstance(error, MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        what = error.problem or error.context or "not valid YAML"
        if mark is None:
            return report((), None, None, str(what))
        return report((), mark.line + 1, mark.column + 1, str(what))
    return report((), None, None, "not valid YAML")


class _Stop(Exception):
    """Raised inside the builder for a problem after which parsing cannot sensibly go on."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


_NO_KEY: Final = object()


@dataclass(slots=True)
class _Frame:
    """A mapping or sequence being built, and what it will become part of when it ends."""

    container: dict[str, object] | list[object]
    path: KeyPath
    record: bool
    role: str
    start: Position
    key: object = _NO_KEY
    key_valid: bool = False
    first: dict[str, Position] = field(default_factory=dict)


class _Builder:
    """Builds plain data from parser events without recursion, recording positions."""

    def __init__(self, max_depth: int, report: _Report) -> None:
        self.max_depth = max_depth
        self.report = report
        self.stack: list[_Frame] = []
        self.root: object = None
        self.documents = 0
        self.positions: dict[KeyPath, Position] = {}
        self.value_positions: dict[KeyPath, Position] = {}
        self.scalar_texts: dict[KeyPath, str] = {}
        self.problems: list[Problem] = []

    def feed(self, event: Event, yaml: YAML) -> None:
        start = _position(event)
        if isinstance(event, DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                what = "only one YAML document is allowed; remove the second one ('---')"
                raise _Stop(self.report.at((), start, what))
            return
        if isinstance(event, MappingEndEvent | SequenceEndEvent):
            frame = self.stack.pop()
            self._complete(frame.container, frame.role, frame.path, frame.record, frame.start)
            return
        if not isinstance(event, ScalarEvent | AliasEvent | CollectionStartEvent):
            return
        role, path, record = self._place()
        if role == "item" and record:
            self.positions[path] = start
        if event.anchor is not None and not isinstance(event, AliasEvent):
            what = "YAML anchors (&name) are not supported here; write the value out"
            self._problem(path, start, what)
        if isinstance(event, AliasEvent):
            what = "YAML aliases (*name) are not supported here; write the value out"
            self._problem(path, start, what)
            self._complete(None, role, path, record, start)
        elif isinstance(event, ScalarEvent):
            value = self._scalar(event, yaml, path, start, is_key=role == "key")
            if role != "key" and not isinstance(value, str):
                self.scalar_texts[path] = str(event.value)
            self._complete(value, role, path, record, start)
        else:
            self._open(event, role, path, record, start)

    def _open(
        self, event: CollectionStartEvent, role: str, path: KeyPath, record: bool, start: Position
    ) -> None:
        if len(self.stack) >= self.max_depth:
            what = f"values are nested too deeply (more than {self.max_depth} levels)"
            raise _Stop(self.report.at(path, start, what))
        expected = _MAP if isinstance(event, MappingStartEvent) else _SEQ
        if event.tag not in (None, "!", expected):
            raise _Stop(self.report.at(path, start, _tag_message(event.tag)))
        container: dict[str, object] | list[object] = (
            {} if isinstance(event, MappingStartEvent) else []
        )
        self.stack.append(_Frame(container, path, record, role, start))

    def _place(self) -> tuple[str, KeyPath, bool]:
        """The role of the next node (root, item, key or value), its path, and whether to record."""
        if not self.stack:
            return "root", (), True
        top = self.stack[-1]
        if isinstance(top.container, list):
            return "item", (*top.path, len(top.container)), top.record
        if top.key is _NO_KEY:
            # A key that is itself a collection records nothing below it: it is refused anyway.
            return "key", top.path, False
        if top.key_valid and isinstance(top.key, str):
            return "value", (*top.path, top.key), top.record
        return "value", top.path, False

    def _complete(
        self, value: object, role: str, path: KeyPath, record: bool, start: Position
    ) -> None:
        if role == "root":
            self.root = value
            self.positions[()] = start
            return
        top = self.stack[-1]
        if isinstance(top.container, list):
            top.container.append(value)
            return
        if role == "key":
            self._key(top, value, start)
            return
        if top.key_valid and isinstance(top.key, str):
            top.container[top.key] = value
            if record:
                self.value_positions[path] = start
        top.key, top.key_valid = _NO_KEY, False

    def _key(self, top: _Frame, key: object, start: Position) -> None:
        top.key, top.key_valid = key, False
        if key is _MERGE_KEY:
            what = "YAML merge keys (<<) are not supported; write the keys out"
            self._problem(top.path, start, what)
        elif not isinstance(key, str):
            what = f"keys must be strings, got {describe(key)}"
            self._problem(top.path, start, what, mapping=True)
        elif key in top.first:
            what = f"duplicate key (first written on line {top.first[key].line})"
            self._problem((*top.path, key), start, what)
        else:
            top.first[key] = start
            top.key_valid = True
            if top.record:
                self.positions[(*top.path, key)] = start

    def _problem(self, path: KeyPath, start: Position, what: str, *, mapping: bool = False) -> None:
        self.problems.append(self.report.at(path, start, what, mapping=mapping))

    def _scalar(
        self, event: ScalarEvent, yaml: YAML, path: KeyPath, start: Position, *, is_key: bool
    ) -> object:
        tag = event.tag
        if tag is None or tag == "!":
            tag = str(yaml.resolver.resolve(ScalarNode, event.value, event.implicit))
            if tag == _TIMESTAMP:
                # YAML 1.2's core schema has no timestamps: an unquoted date is its text.
                return event.value
            if tag == _MERGE:
                return _MERGE_KEY if is_key else event.value
        if tag not in _SCALAR_TAGS:
            raise _Stop(self.report.at(path, start, _tag_message(tag)))
        try:
            value: Any = yaml.constructor.construct_object(
                ScalarNode(tag, event.value, event.start_mark, event.end_mark), deep=False
            )
        except (YAMLError, ValueError, OverflowError):
            what = "this value cannot be converted to a number (is it too long?)"
            raise _Stop(self.report.at(path, start, what)) from None
        finally:
            yaml.constructor.constructed_objects.clear()
        if isinstance(value, str) and _SURROGATE.search(value):
            what = "an escape (\\uD800 to \\uDFFF) stands for half a UTF-16 pair, not a character"
            raise _Stop(self.report.at(path, start, what))
        if isinstance(value, float) and not math.isfinite(value):
            what = "NaN and infinite numbers are not accepted"
            raise _Stop(self.report.at(path, start, what))
        return value


class _MergeKey:
    """The ``<<`` key, kept apart from the string ``"<<"`` so it can be refused."""


_MERGE_KEY: Final = _MergeKey()


def _tag_message(tag: str | None) -> str:
    shown = str(tag).replace(_CORE, "!!")
    return (
        f"could not determine a constructor for the tag {shown!r}: only plain strings, "
        "numbers, booleans, null, sequences and mappings are accepted"
    )


def _position(event: Event) -> Position:
    mark = event.start_mark
    if mark is None:
        return Position(1, 1)
    return Position(int(mark.line) + 1, int(mark.column) + 1)
