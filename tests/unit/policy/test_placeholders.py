"""Placeholders: finding, validating against a session's secrets, rendering."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opencas.policy import placeholders
from opencas.policy.model import SECRET_KINDS, SecretKind
from opencas.policy.placeholders import (
    FORMATS,
    SELECTORS,
    Placeholder,
    PlaceholderSyntaxError,
    canonical,
    contains_placeholder,
    find_placeholders,
    format_problem,
    render,
    spelling,
    validate,
)


def test_find_every_spelling() -> None:
    text = "a $$CAS::one$$ b $$SCONE::two:hex$$ c $$CAS::cert.chain$$ d $$CAS::cert.key:pem$$"

    found = find_placeholders(text)

    assert [(p.secret, p.selector, p.format) for p in found] == [
        ("one", None, None),
        ("two", None, "hex"),
        ("cert", "chain", None),
        ("cert", "key", "pem"),
    ]
    assert text[found[1].start : found[1].end] == "$$SCONE::two:hex$$"


def test_adjacent_placeholders() -> None:
    found = find_placeholders("$$CAS::a$$$$CAS::b$$")

    assert [(p.secret, p.start, p.end) for p in found] == [("a", 0, 10), ("b", 10, 20)]


@pytest.mark.parametrize(
    "text",
    ["price: $$5", "$$", "$$$", "$$cas::lower$$", "$$VAULT::x$$", "$$CAS:single$$", "a$$b$$c"],
)
def test_other_dollars_are_plain_text(text: str) -> None:
    assert find_placeholders(text) == []
    assert not contains_placeholder(text)
    assert render(text, lambda _: "X") == text


@pytest.mark.parametrize(
    ("text", "start", "message"),
    [
        ("$$CAS::name", 0, "has no closing '$$'"),
        ("x $$SCONE::name:hex", 2, "has no closing '$$'"),
        ("$$CAS::$$", 0, "is not a valid placeholder"),
        ("$$CAS::a b$$", 0, "is not a valid placeholder"),
        ("$$CAS::name.der$$", 0, "unknown selector '.der'"),
        ("$$CAS::name:HEX$$", 0, "unknown format 'HEX'"),
        ("$$CAS::name:$$", 0, "unknown format ''"),
        ("ok $$CAS::a$$ then $$CAS::b:nope$$", 19, "unknown format 'nope'"),
    ],
)
def test_malformed_placeholders_are_errors(text: str, start: int, message: str) -> None:
    with pytest.raises(PlaceholderSyntaxError) as caught:
        find_placeholders(text)

    assert caught.value.start == start
    assert message in caught.value.message
    assert contains_placeholder(text)


FITS: list[tuple[SecretKind, str | None, str | None]] = [
    ("ascii", None, None),
    ("ascii", None, "hex"),
    ("ascii", None, "base64"),
    ("binary", None, "base64url"),
    ("private-key", None, None),
    ("private-key", None, "pem"),
    ("private-key", None, "privatekey"),
    ("x509", None, None),
    ("x509", None, "crt"),
    ("x509", None, "chain"),
    ("x509", None, "der"),
    ("x509", None, "privatekey"),
    ("x509", None, "pem"),
    ("x509", "crt", None),
    ("x509", "crt", "der"),
    ("x509", "key", None),
    ("x509", "key", "pem"),
    ("x509-ca", "chain", "pem"),
]
MISFITS: list[tuple[SecretKind, str | None, str | None]] = [
    ("ascii", None, "pem"),
    ("ascii", None, "crt"),
    ("binary", None, "der"),
    ("ascii", "crt", None),
    ("private-key", "key", None),
    ("private-key", None, "hex"),
    ("private-key", None, "crt"),
    ("x509", None, "hex"),
    ("x509", None, "base64"),
    ("x509", "key", "crt"),
    ("x509", "crt", "privatekey"),
    ("x509", "chain", "der"),
]


@pytest.mark.parametrize(("kind", "selector", "fmt"), FITS)
def test_formats_that_fit(kind: SecretKind, selector: str | None, fmt: str | None) -> None:
    assert format_problem(kind, selector, fmt) is None


@pytest.mark.parametrize(("kind", "selector", "fmt"), MISFITS)
def test_formats_that_do_not_fit(kind: SecretKind, selector: str | None, fmt: str | None) -> None:
    problem = format_problem(kind, selector, fmt)

    assert problem is not None
    assert kind in problem


def test_unknown_kind_accepts_what_fits_any_kind() -> None:
    assert format_problem(None, None, "hex") is None
    assert format_problem(None, "crt", "der") is None
    assert format_problem(None, "key", "crt") is not None


def test_selector_and_format_combinations_agree_with_some_kind_or_none() -> None:
    for selector in (None, *SELECTORS):
        for fmt in (None, *FORMATS):
            fits_some = any(format_problem(kind, selector, fmt) is None for kind in SECRET_KINDS)
            assert (format_problem(None, selector, fmt) is None) == fits_some


def test_validate_reports_unknown_secrets_and_misfits_with_offsets() -> None:
    text = "x=$$CAS::missing$$ y=$$CAS::cert:hex$$ z=$$SCONE::token:base64$$"

    found = validate(text, {"cert": "x509", "token": "binary"})

    assert [(item.start, item.end) for item in found] == [(2, 18), (21, 38)]
    assert "names no secret of this session (secrets: cert, token)" in found[0].message
    assert "the format 'hex' does not fit an x509 secret" in found[1].message


def test_validate_reports_a_malformed_placeholder_and_never_raises() -> None:
    (problem,) = validate("ok $$CAS::a$$ bad $$CAS::b", {"a": "ascii", "b": "ascii"})

    assert problem.start == 18
    assert "no closing" in problem.message


def test_validate_accepts_imported_secrets_of_unknown_kind() -> None:
    assert validate("$$CAS::imported:base64$$ $$CAS::imported.chain$$", {"imported": None}) == []


def test_render_replaces_each_placeholder_and_keeps_the_rest() -> None:
    seen: list[Placeholder] = []

    def resolve(placeholder: Placeholder) -> str:
        seen.append(placeholder)
        return f"<{placeholder.secret}|{placeholder.selector}|{placeholder.format}>"

    rendered = render("a=$$CAS::x$$, b=$$SCONE::y.crt$$; $$5", resolve)

    assert rendered == "a=<x|None|None>, b=<y|crt|None>; $$5"
    assert [p.secret for p in seen] == ["x", "y"]


def test_render_does_not_rescan_replacements() -> None:
    assert render("$$CAS::a$$", lambda _: "$$CAS::b$$") == "$$CAS::b$$"


def test_render_refuses_malformed_text() -> None:
    with pytest.raises(PlaceholderSyntaxError):
        render("$$CAS::a", lambda _: "")


def test_canonical_spelling() -> None:
    assert canonical("$$SCONE::a.key$$ and $$CAS::b:hex$$") == "$$CAS::a.key$$ and $$CAS::b:hex$$"
    assert spelling(Placeholder("c", "chain", "pem", 0, 0)) == "$$CAS::c.chain:pem$$"


NAMES = st.text(alphabet="abcXYZ019_-", min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(
        st.tuples(
            st.text(alphabet="ab $:.\n", max_size=6),
            NAMES,
            st.sampled_from([None, *SELECTORS]),
            st.sampled_from([None, *FORMATS]),
            st.sampled_from(["$$CAS::", "$$SCONE::"]),
        ),
        max_size=5,
    ),
    tail=st.text(alphabet="ab $:.\n", max_size=6),
)
def test_find_and_render_round_trip(
    parts: list[tuple[str, str, str | None, str | None, str]], tail: str
) -> None:
    text = ""
    expected = []
    for before, name, selector, fmt, prefix in parts:
        text += before
        text += f"{prefix}{name}{'.' + selector if selector else ''}"
        text += f"{':' + fmt if fmt else ''}$$"
        expected.append((name, selector, fmt))
    text += tail

    found = find_placeholders(text)

    assert [(p.secret, p.selector, p.format) for p in found] == expected
    assert render(text, lambda p: text[p.start : p.end]) == text
    again = find_placeholders(canonical(text))
    assert [(p.secret, p.selector, p.format) for p in again] == expected
    assert "$$SCONE::" not in "".join(canonical(text)[p.start : p.end] for p in again)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="$CASONE:.ab-_\n", max_size=40))
def test_arbitrary_text_finds_or_raises_placeholder_syntax_error(text: str) -> None:
    try:
        found = find_placeholders(text)
    except PlaceholderSyntaxError:
        assert contains_placeholder(text)
        return
    for item in found:
        assert text[item.start : item.end].endswith("$$")


class _CountingPattern:
    """A prefix pattern that counts the characters each search has to look at."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.scanned = 0

    def search(self, text: str, position: int) -> re.Match[str] | None:
        match = self.pattern.search(text, position)
        self.scanned += (len(text) if match is None else match.end()) - position
        return match


@pytest.mark.parametrize("prefix", ["$$CAS::", "$$SCONE::"])
def test_the_scan_looks_at_each_character_once(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 40,000 placeholders of one spelling: a scan that searches for the other prefix after each
    # one reads the rest of the text 40,000 times (about 8e9 characters, many seconds).
    text = f"{prefix}s$$ " * 40_000
    counting = _CountingPattern(placeholders.PREFIX_PATTERN)
    monkeypatch.setattr(placeholders, "PREFIX_PATTERN", counting)

    found = find_placeholders(text)

    assert len(found) == 40_000
    assert counting.scanned <= len(text)
