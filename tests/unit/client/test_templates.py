"""Template variables: ``${NAME}`` must be set, ``$NAME`` is filled in when set, ``$$`` is left."""

from __future__ import annotations

import pytest

from opencas.client.templates import fill_template, used_variables
from opencas.errors import ClientError


def test_both_spellings_are_filled_in() -> None:
    text = "name: $NAME\nx: ${NAME}-${OTHER}\n"

    assert fill_template(text, {"NAME": "a", "OTHER": "b"}, "f") == "name: a\nx: a-b\n"


def test_placeholders_are_never_variables() -> None:
    text = "v: $$CAS::secret$$ and $$SCONE::x:hex$$$NAME\n"

    assert fill_template(text, {"CAS": "no", "NAME": "n", "SCONE": "no"}, "f") == (
        "v: $$CAS::secret$$ and $$SCONE::x:hex$$n\n"
    )
    assert used_variables(text) == {"NAME"}


def test_an_unset_bare_variable_is_left_as_written() -> None:
    assert fill_template("sh -c 'echo $HOME'\n", {}, "f") == "sh -c 'echo $HOME'\n"


def test_an_unset_braced_variable_is_an_error_with_its_line() -> None:
    with pytest.raises(ClientError, match=r"f:2: \$\{MISSING\} is not set"):
        fill_template("a: 1\nb: ${MISSING}\n", {}, "f")


def test_used_variables() -> None:
    assert used_variables("$A ${B} $$C $$ ${D") == {"A", "B"}
