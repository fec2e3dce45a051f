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

The module is pure: it takes text and returns values; it neither reads files nor logs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
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

MAX_YAML_BYTES: Final = 1 << 20
"""The largest YAML text accepted, in bytes of its UTF-8 encoding (1 MiB)."""
MAX_YAML_DEPTH: Final = 64
"""The deepest nesting of mappings and sequences accepted."""

KeyPath = tuple[str | int, ...]
"""A location in a document: mapping keys and sequence indexes from the root; ``()`` is the root."""

_CORE = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (
    f"{_CORE}{name}" for name in ("str", "int", "float", "bool", "null")
)
_MAP, _SEQ, _MERGE, _TIMESTAMP = (f"{_CORE}{name}" for name in ("map", "seq", "merge", "timestamp"))
_SCALAR_TAGS = frozenset({_STR, _INT, _FLOAT, _BOOL, _NULL})
# "\ud800" escapes decode to lone surrogates: not characters, and not encodable as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")
# Kinds of problem that are about the text itself rather than a key of the document.
SYNTAX_KINDS: Final = frozenset(
    {"syntax", "too-large", "too-deep", "multiple-documents", "tag", "value"}
)
"""The :attr:`YamlProblem.kind` values that say the text is not acceptable YAML at all."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where something is written: 1-based line and column."""

    line: int
    column: int


@dataclass(frozen=True, slots=True)
class YamlProblem:
    """One reason the text was refused.

    ``path`` is the key path the problem concerns (as far as parsing got; ``()`` for the whole
    text); ``line`` and ``column`` are 1-based, ``None`` when unknown. ``kind`` is one of
    ``syntax``, ``too-large``, ``too-deep``, ``multiple-documents``, ``tag``, ``value``,
    ``anchor``, ``alias``, ``merge-key``, ``key-type`` and ``duplicate-key``. Messages never
    quote values (they may be secrets); they may quote keys.
    """

    path: KeyPath
    line: int | None
    column: int | None
    message: str
    kind: str


class YamlSourceError(ValueError):
    """The text is not acceptable YAML; ``problems`` lists why, in the order of the text."""

    def __init__(self, problems: list[YamlProblem]) -> None:
        self.problems = tuple(sorted(problems, key=lambda item: (item.line or 0, item.column or 0)))
        super().__init__("; ".join(_render(item) for item in self.problems))


def _render(problem: YamlProblem) -> str:
    where = "" if problem.line is None else f"{problem.line}:{problem.column or 0}: "
    path = f"{format_path(problem.path)}: " if problem.path else ""
    return f"{where}{path}{problem.message}"


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """A parsed document: its plain data and where its parts are written.

    ``positions`` maps each mapping entry's key path to where its key is written, each sequence
    item's path to where the item starts, and ``()`` to where the root value starts (if any).
    ``value_positions`` maps each mapping entry's key path to where its value starts.
    """

    data: object
    positions: Mapping[KeyPath, Position] = field(default_factory=dict)
    value_positions: Mapping[KeyPath, Position] = field(default_factory=dict)

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


def parse_yaml(
    text: str, *, max_bytes: int = MAX_YAML_BYTES, max_depth: int = MAX_YAML_DEPTH
) -> YamlDocument:
    """Parse ``text`` as one YAML document into plain data and positions.

    Returns ``YamlDocument(data=None)`` for a text without content. Raises
    :class:`YamlSourceError` — and nothing else — listing every structural problem found
    (duplicate keys, keys that are not strings, anchors, aliases, merge keys), or the first
    problem that stops parsing (a syntax error, too large, too deep, a second document, an
    unsupported tag, a number JSON cannot hold).
    """
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise YamlSourceError(
            [YamlProblem((), None, None, f"the text is larger than {max_bytes} bytes", "too-large")]
        )
    builder = _Builder(max_depth)
    yaml = YAML(typ="safe", pure=True)
    try:
        for event in yaml.parse(text):
            builder.feed(event, yaml)
    except _Stop as stop:
        raise YamlSourceError([*builder.problems, stop.problem]) from None
    except YAMLError as error:
        raise YamlSourceError([_syntax_problem(text, error)]) from None
    except RecursionError:
        # The parser itself is not recursive; this is a safety net, not an expected path.
        raise YamlSourceError(
            [YamlProblem((), None, None, "values are nested too deeply", "too-deep")]
        ) from None
    if builder.problems:
        raise YamlSourceError(builder.problems)
    return YamlDocument(builder.root, builder.positions, builder.value_positions)


def _syntax_problem(text: str, error: YAMLError) -> YamlProblem:
    if isinstance(error, ReaderError) and isinstance(error.position, int):
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        code = f" (#x{error.character:04x})" if isinstance(error.character, int) else ""
        return YamlProblem((), line, column, f"{error.reason}{code}", "syntax")
    if isinstance(error, MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        what = error.problem or error.context or "not valid YAML"
        if mark is None:
            return YamlProblem((), None, None, str(what), "syntax")
        return YamlProblem((), mark.line + 1, mark.column + 1, str(what), "syntax")
    return YamlProblem((), None, None, "not valid YAML", "syntax")


class _Stop(Exception):
    """Raised inside the builder for a problem after which parsing cannot sensibly go on."""

    def __init__(self, problem: YamlProblem) -> None:
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

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.stack: list[_Frame] = []
        self.root: object = None
        self.documents = 0
        self.positions: dict[KeyPath, Position] = {}
        self.value_positions: dict[KeyPath, Position] = {}
        self.problems: list[YamlProblem] = []

    def feed(self, event: Event, yaml: YAML) -> None:
        start = _position(event)
        if isinstance(event, DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                what = "only one YAML document is allowed; remove the second one ('---')"
                raise _Stop(YamlProblem((), start.line, start.column, what, "multiple-documents"))
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
            self._problem(path, start, what, "anchor")
        if isinstance(event, AliasEvent):
            what = "YAML aliases (*name) are not supported here; write the value out"
            self._problem(path, start, what, "alias")
            self._complete(None, role, path, record, start)
        elif isinstance(event, ScalarEvent):
            value = self._scalar(event, yaml, path, start, is_key=role == "key")
            self._complete(value, role, path, record, start)
        else:
            self._open(event, role, path, record, start)

    def _open(
        self, event: CollectionStartEvent, role: str, path: KeyPath, record: bool, start: Position
    ) -> None:
        if len(self.stack) >= self.max_depth:
            what = f"values are nested too deeply (more than {self.max_depth} levels)"
            raise _Stop(YamlProblem(path, start.line, start.column, what, "too-deep"))
        expected = _MAP if isinstance(event, MappingStartEvent) else _SEQ
        if event.tag not in (None, "!", expected):
            raise _Stop(_tag_problem(path, start, event.tag))
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
            self._problem(top.path, start, what, "merge-key")
        elif not isinstance(key, str):
            self._problem(top.path, start, f"keys must be strings, got {describe(key)}", "key-type")
        elif key in top.first:
            what = f"duplicate key (first written on line {top.first[key].line})"
            self._problem((*top.path, key), start, what, "duplicate-key")
        else:
            top.first[key] = start
            top.key_valid = True
            if top.record:
                self.positions[(*top.path, key)] = start

    def _problem(self, path: KeyPath, start: Position, what: str, kind: str) -> None:
        self.problems.append(YamlProblem(path, start.line, start.column, what, kind))

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
            raise _Stop(_tag_problem(path, start, tag))
        try:
            value: Any = yaml.constructor.construct_object(
                ScalarNode(tag, event.value, event.start_mark, event.end_mark), deep=False
            )
        except (YAMLError, ValueError, OverflowError):
            what = "this value cannot be converted to a number (is it too long?)"
            raise _Stop(YamlProblem(path, start.line, start.column, what, "value")) from None
        finally:
            yaml.constructor.constructed_objects.clear()
        if isinstance(value, str) and _SURROGATE.search(value):
            what = "an escape (\\uD800 to \\uDFFF) stands for half a UTF-16 pair, not a character"
            raise _Stop(YamlProblem(path, start.line, start.column, what, "value"))
        if isinstance(value, float) and not math.isfinite(value):
            what = "NaN and infinite numbers are not accepted"
            raise _Stop(YamlProblem(path, start.line, start.column, what, "value"))
        return value


class _MergeKey:
    """The ``<<`` key, kept apart from the string ``"<<"`` so it can be refused."""


_MERGE_KEY: Final = _MergeKey()


def _tag_problem(path: KeyPath, start: Position, tag: str | None) -> YamlProblem:
    shown = str(tag).replace(_CORE, "!!")
    what = (
        f"could not determine a constructor for the tag {shown!r}: only plain strings, "
        "numbers, booleans, null, sequences and mappings are accepted"
    )
    return YamlProblem(path, start.line, start.column, what, "tag")


def _position(event: Event) -> Position:
    mark = event.start_mark
    if mark is None:
        return Position(1, 1)
    return Position(int(mark.line) + 1, int(mark.column) + 1)
