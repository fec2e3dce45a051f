"""SCONE's host values: ``@@N`` and ``@@NAME`` in a configuration, filled in where the workload
starts.

A session may leave parts of its command, environment values and ``pwd`` to whoever starts the
program, as SCONE's sessions do: ``@@1``, ``@@2``, … stand for the arguments after the program's
name on the command line that started it, ``@@NAME`` for the variable NAME of the environment it
was started in. These values are the host's, not the CAS's: they are not secret and not attested,
and a session uses them only where it accepts any value. No I/O: the arguments and environment
are parameters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from opencas.errors import ClientError

HOST_VALUE = re.compile(r"@@(?:(?P<argument>[1-9][0-9]{0,3})|(?P<variable>[A-Za-z_][A-Za-z0-9_]*))")


def fill_host_values(
    text: str, arguments: Sequence[str], environment: Mapping[str, str], where: str
) -> str:
    """``text`` with each ``@@N`` replaced by ``arguments[N-1]`` and each ``@@NAME`` by
    ``environment[NAME]``; :class:`ClientError` naming ``where`` for one that is not given."""

    def value(match: re.Match[str]) -> str:
        argument = match.group("argument")
        if argument is not None:
            index = int(argument)
            if index > len(arguments):
                raise ClientError(
                    f"the session's {where} uses @@{index}, but the command line gives only "
                    f"{len(arguments)} argument(s) after the program"
                )
            return arguments[index - 1]
        name = match.group("variable")
        if name not in environment:
            raise ClientError(
                f"the session's {where} uses @@{name}, but the variable {name} is not set"
            )
        return environment[name]

    return HOST_VALUE.sub(value, text)
