"""Template variables in session files: ``${NAME}`` is filled in before a session is uploaded.

This is the client's job, so that the CAS only ever sees (and hashes) the final policy. Every
variable must be set; a missing one is an error naming it and its line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from opencas.errors import ClientError

VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def fill_template(text: str, variables: Mapping[str, str], source: str) -> str:
    """``text`` with every ``${NAME}`` replaced by ``variables[NAME]``.

    Raises :class:`ClientError` listing each unset variable with the line it is used on.
    """
    missing: list[str] = []
    for match in VARIABLE.finditer(text):
        if match.group(1) not in variables:
            line = text.count("\n", 0, match.start()) + 1
            missing.append(f"{source}:{line}: ${{{match.group(1)}}} is not set")
    if missing:
        raise ClientError(
            "template variables are not set (pass -e NAME=VALUE, or --use-env):\n"
            + "\n".join(missing)
        )
    return VARIABLE.sub(lambda match: variables[match.group(1)], text)


def parse_assignments(assignments: tuple[str, ...]) -> dict[str, str]:
    """``NAME=VALUE`` options as a dict; :class:`ClientError` for a malformed one."""
    variables: dict[str, str] = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ClientError(f"-e {assignment!r}: expected NAME=VALUE")
        variables[name] = value
    return variables
