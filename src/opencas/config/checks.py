"""Value checks that the availability config and the owner config share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

_Names = TypeVar("_Names", bound=Sequence[str])


def listed_once(names: _Names) -> _Names:
    """``names`` as given if none of them is listed twice; else ``ValueError`` naming the first.

    The names are compared as given, so they should be in canonical form already (a pydantic
    ``AfterValidator`` on the list runs after the names' own checks).
    """
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{name!r} is listed twice")
        seen.add(name)
    return names
