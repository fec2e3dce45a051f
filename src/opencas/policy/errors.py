"""The error a session is refused with: every problem found, each with its key path and place."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from opencas.errors import CasError


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a session.

    ``path`` names the key in the session's language (``services[0].environment.HOME``; empty
    for the document as a whole), ``line`` and ``column`` (1-based) say where it is written when
    that is known, and ``message`` says what is wrong in words a policy author can act on.
    """

    path: str
    line: int | None
    column: int | None
    message: str

    def render(self, source: str) -> str:
        """``SOURCE:LINE:COL: path: message``, leaving out the parts that are not known."""
        where = source
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SessionError(CasError):
    """A session (its text, its normal form, or a decision about it) is invalid.

    ``problems`` lists everything found, in the order of the text; ``str()`` shows one problem
    per line as ``SOURCE:LINE:COL: path: message``. A plain string becomes a single problem
    without a path or place.
    """

    code = "invalid-session"
    http_status = 400

    def __init__(
        self,
        problems: Problem | str | Iterable[Problem],
        *,
        source: str = "session",
        code: str | None = None,
    ) -> None:
        if isinstance(problems, str):
            items: tuple[Problem, ...] = (Problem("", None, None, problems),)
        elif isinstance(problems, Problem):
            items = (problems,)
        else:
            items = tuple(problems)
        if not items:
            items = (Problem("", None, None, "the session is invalid"),)
        self.problems = items
        self.source = source
        super().__init__("\n".join(item.render(source) for item in items), code=code)

    def problems_json(self) -> list[dict[str, str | int | None]]:
        """The problems as JSON objects ``{path, line, column, message}`` (for API bodies)."""
        return [
            {"path": item.path, "line": item.line, "column": item.column, "message": item.message}
            for item in self.problems
        ]
