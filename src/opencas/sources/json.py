"""JSON text to plain data, refusing duplicate keys and non-numbers, with the line of every key.

The standard parser keeps no positions; JSON is YAML too, so the YAML reader's positions give
the lines, best effort.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opencas.errors import ConfigError
from opencas.sources.problems import KeyPath, Problem, unconvertible, unreadable
from opencas.sources.yaml import KeyLabel, YamlSourceError, dotted_label, line_problems, parse_yaml


@dataclass(frozen=True, slots=True)
class JsonDocument:
    """A parsed JSON text: its name for messages, its data, and the line of every key path."""

    source: str
    data: object
    lines: Mapping[KeyPath, int]


def parse_json(text: str, source: str, *, label: KeyLabel = dotted_label) -> JsonDocument:
    """Parse the JSON ``text``, which ``source`` names in problems.

    Raises :class:`ConfigError` for a syntax error (naming the line and column), a duplicate key
    (naming its key as ``label`` writes it, and its line), ``NaN`` or an infinity, nesting too
    deep for Python, or a value Python cannot convert (the problem does not quote it).
    """
    duplicates: list[str] = []

    def object_from_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                duplicates.append(key)
            result[key] = value
        return result

    def refuse_constant(name: str) -> Any:
        raise ConfigError(unreadable(source, "JSON", f"{name} is not a JSON number"))

    try:
        data = json.loads(text, object_pairs_hook=object_from_pairs, parse_constant=refuse_constant)
    except json.JSONDecodeError as error:
        what = f"invalid JSON: {error.msg}"
        raise ConfigError(Problem(source, error.lineno, error.colno, what)) from None
    except RecursionError:
        raise ConfigError(unreadable(source, "JSON", "values are nested too deeply")) from None
    except ValueError:
        raise ConfigError(unconvertible(source, "JSON")) from None
    try:
        lines = parse_yaml(text, source=source, label=label).lines()
        refused: list[Problem] = []
    except YamlSourceError as error:
        # Valid JSON cannot hold anchors, aliases or keys that are not strings: the problems
        # the YAML reader finds with a key are the duplicate keys.
        lines, refused = {}, [problem for problem in line_problems(error, "JSON") if problem.key]
    if duplicates:
        raise ConfigError(refused or unreadable(source, "JSON", f"duplicate key {duplicates[0]!r}"))
    return JsonDocument(source, data, lines)
