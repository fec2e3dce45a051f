"""Template variables in session files: ``${NAME}`` and ``$NAME`` are filled in before upload.

This is the client's job, so that the CAS only ever sees (and hashes) the final policy. A
``${NAME}`` must be set; a missing one is an error naming it and its line. A bare ``$NAME`` is
filled in when it is set and otherwise left as written, so that shell text in a command
(``sh -c 'echo $HOME'``) survives. ``$$`` never starts a variable: it starts a placeholder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from opencas.errors import ClientError

# ``$$`` (a placeholder's start or end) is skipped whole, so neither of its ``$`` starts a name.
VARIABLE = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def fill_template(text: str, variables: Mapping[str, str], source: str) -> str:
    """``text`` with every ``${NAME}`` replaced by ``variables[NAME]``, and every ``$NAME``
    whose NAME is set.

    Raises :class:`ClientError` listing each unset ``${NAME}`` with the line it is used on.
    """
    missing: list[str] = []
    for match in VARIABLE.finditer(text):
        name = match.group("braced")
        if name is not None and name not in variables:
            line = text.count("\n", 0, match.start()) + 1
            missing.append(f"{source}:{line}: ${{{name}}} is not set")
    if missing:
        raise ClientError(
            "template variables are not set (pass -e NAME=VALUE, or --use-env):\n"
            + "\n".join(missing)
        )

    def value(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        return variables.get(name, match.group(0)) if name is not None else match.group(0)

    return VARIABLE.sub(value, text)


def used_variables(text: str) -> set[str]:
    """The names ``text`` uses as template variables (``${NAME}`` or ``$NAME``)."""
    return {
        match.group("braced") or match.group("bare")
        for match in VARIABLE.finditer(text)
        if match.group(0) != "$$"
    }


def parse_assignments(assignments: tuple[str, ...]) -> dict[str, str]:
    """``NAME=VALUE`` options as a dict; :class:`ClientError` for a malformed one."""
    variables: dict[str, str] = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ClientError(f"-e {assignment!r}: expected NAME=VALUE")
        variables[name] = value
    return variables
