"""The fast path of canonical JSON agrees with the RFC 8785 reference implementation."""

from __future__ import annotations

from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from opencas.crypto.canonical import _json_dumps_is_canonical, canonical_json, member_mismatch

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


def reference(value: Any) -> bytes | None:
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, TypeError):
        return None


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_agrees_with_the_reference(value: Any) -> None:
    expected = reference(value)
    if expected is None:
        with pytest.raises(ValueError):
            canonical_json(value)
    else:
        assert canonical_json(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        {"\ue000": 1, "\U0001f600": 2},  # UTF-16 order differs from code-point order
        {"a": '\x00\x1f\x7f\u2028"\\/'},
        {"big": 2**53},
        [1.5, -0.0, 1e21],
        "\ud800",
    ],
)
def test_edge_cases(value: Any) -> None:
    expected = reference(value)
    if expected is None:
        with pytest.raises(ValueError):
            canonical_json(value)
    else:
        assert canonical_json(value) == expected


def test_member_mismatch_names_what_is_missing_and_unexpected() -> None:
    expected = frozenset({"type", "data"})
    assert member_mismatch({"type": 1, "data": 2}, expected) is None
    assert member_mismatch({"type": 1}, expected) == "missing data"
    assert member_mismatch({"type": 1, "data": 2, "b": 3, "a": 4}, expected) == "unexpected a, b"
    assert member_mismatch({"x" * 50: 1}, expected) == f"missing data, type; unexpected {'x' * 40}"
    assert member_mismatch({"secret": 1, "type": 2}, expected, name_unexpected=False) == (
        "missing data; 1 unexpected"
    )


class _Name(str):
    pass


class _Mapping(dict[str, Any]):
    pass


@pytest.mark.parametrize(
    ("value", "fast"),
    [
        ([_Name("a"), "b", 1], True),
        ([_Name("a"), 1.5], False),  # a float after a subclass is still found
        (_Mapping(a=[1, 2], b=_Mapping(c=True)), True),
        (_Mapping(a=2**53), False),
        ({_Name("k"): 1}, True),
        ({"k": [_Mapping(x=None), 0.5]}, False),
        ({1: "not a string key"}, False),
        (b"bytes", False),
    ],
)
def test_the_fast_path_is_taken_only_where_json_dumps_is_canonical(value: Any, fast: bool) -> None:
    assert _json_dumps_is_canonical(value) is fast
    expected = reference(value)
    if expected is not None:
        assert canonical_json(value) == expected
