"""opencas.config.checks: the value checks both config files share."""

from __future__ import annotations

import pytest

from opencas.config.checks import listed_once


def test_names_listed_once_are_kept_as_given() -> None:
    names = ("b.example", "a.example")

    assert listed_once(names) is names
    assert listed_once([]) == []


def test_the_first_repeat_is_named() -> None:
    with pytest.raises(ValueError, match=r"^'a' is listed twice$"):
        listed_once(["a", "b", "a", "b"])
