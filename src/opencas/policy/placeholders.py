"""Placeholders: ``$$CAS::name[.selector][:format]$$`` in a service's configuration.

A placeholder names a secret of the session (its own or an imported one) and is replaced by that
secret's value when the CAS renders a service's configuration. ``$$SCONE::...$$`` is the same
placeholder under the name SCONE gives it. The optional *selector* picks a part of a
certificate secret (``.crt`` the certificate, ``.key`` its private key, ``.chain`` the
certificate and its issuers); the optional *format* says how the value is written:

=============== ==================================== =========================================
format          applies to                           gives
=============== ==================================== =========================================
(none)          every kind                           ascii: the text; binary: hex; private-key:
                                                     PKCS#8 PEM; x509/x509-ca: certificate PEM
``hex``         ascii, binary                        lowercase hex
``base64``      ascii, binary                        standard base64, padded
``base64url``   ascii, binary                        URL-safe base64, unpadded
``privatekey``  private-key, x509, x509-ca           the private key, PKCS#8 PEM (``.key``)
``pem``         private-key, x509, x509-ca           PEM of what the selector picks
``crt``         x509, x509-ca                        the certificate PEM (``.crt``)
``chain``       x509, x509-ca                        certificate and issuers, PEM (``.chain``)
``der``         x509, x509-ca (certificate part)     the certificate's DER, standard base64
=============== ==================================== =========================================

A format that contradicts the selector (``.key:crt``) does not fit. Text with ``$$`` that does
not begin ``$$CAS::`` or ``$$SCONE::`` is left alone; text that begins so but is not a complete,
well-formed placeholder is an error, so that a typo never reaches a program as literal text.

Everything here is pure and never sees a secret value: :func:`render` asks its caller for each
replacement.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from opencas.policy.model import SECRET_KINDS, SecretKind

PREFIXES: Final = ("$$CAS::", "$$SCONE::")
"""How every placeholder begins."""
SELECTORS: Final = ("crt", "key", "chain")
FORMATS: Final = ("hex", "base64", "base64url", "pem", "der", "crt", "chain", "privatekey")

PREFIX_PATTERN: Final = re.compile(r"\$\$(?:CAS|SCONE)::")
"""Where a placeholder begins: either prefix of :data:`PREFIXES`."""
_PLACEHOLDER = re.compile(
    r"\$\$(?:CAS|SCONE)::(?P<secret>[A-Za-z0-9_-]+)(?:\.(?P<selector>[A-Za-z0-9_-]*))?"
    r"(?::(?P<format>[A-Za-z0-9_-]*))?\$\$"
)
_CERTIFICATE_KINDS: Final = frozenset({"x509", "x509-ca"})
# For certificates: the part each selector (or format, without a selector) picks, and the formats
# each part can be written in.
_PART_OF_FORMAT: Final = {"privatekey": "key", "chain": "chain"}
_PART_FORMATS: Final[Mapping[str, frozenset[str]]] = {
    "key": frozenset({"privatekey", "pem"}),
    "crt": frozenset({"crt", "pem", "der"}),
    "chain": frozenset({"chain", "pem"}),
}
_DATA_FORMATS: Final = frozenset({"hex", "base64", "base64url"})
_KEY_FORMATS: Final = frozenset({"pem", "privatekey"})


@dataclass(frozen=True, slots=True)
class Placeholder:
    """One placeholder found in a text: ``text[start:end]`` is its whole spelling."""

    secret: str
    selector: str | None
    format: str | None
    start: int
    end: int


class PlaceholderSyntaxError(ValueError):
    """Text begins a placeholder (``$$CAS::``/``$$SCONE::``) that is not well-formed.

    ``start`` is the offset in the text where it begins; the message says what is wrong.
    """

    def __init__(self, start: int, message: str) -> None:
        super().__init__(message)
        self.start = start
        self.message = message


@dataclass(frozen=True, slots=True)
class PlaceholderProblem:
    """A placeholder that does not fit the session: ``text[start:end]``, and why."""

    start: int
    end: int
    message: str


def _next_prefix(text: str, position: int) -> int:
    # One search for either prefix: searching for each separately would rescan the rest of the
    # text for the absent one at every placeholder, quadratic in the text.
    match = PREFIX_PATTERN.search(text, position)
    return -1 if match is None else match.start()


def find_placeholders(text: str) -> list[Placeholder]:
    """Every placeholder in ``text``, in order.

    Raises :class:`PlaceholderSyntaxError` at the first ``$$CAS::``/``$$SCONE::`` that does not
    begin a well-formed placeholder (no closing ``$$``, an invalid secret name, an unknown
    selector or format). Other ``$$`` are plain text.
    """
    found: list[Placeholder] = []
    position = _next_prefix(text, 0)
    while position >= 0:
        match = _PLACEHOLDER.match(text, position)
        if match is None:
            raise PlaceholderSyntaxError(position, _malformed(text, position))
        selector, fmt = match.group("selector"), match.group("format")
        if selector is not None and selector not in SELECTORS:
            raise PlaceholderSyntaxError(
                position,
                f"unknown selector {'.' + selector!r} in {match.group(0)!r}; expected one of: "
                + ", ".join(f".{name}" for name in SELECTORS),
            )
        if fmt is not None and fmt not in FORMATS:
            raise PlaceholderSyntaxError(
                position,
                f"unknown format {fmt!r} in {match.group(0)!r}; expected one of: "
                + ", ".join(FORMATS),
            )
        found.append(Placeholder(match.group("secret"), selector, fmt, position, match.end()))
        position = _next_prefix(text, match.end())
    return found


def _malformed(text: str, position: int) -> str:
    shown = text[position : position + 60].split("\n", 1)[0]
    prefix = next(p for p in PREFIXES if text.startswith(p, position))
    if "$$" not in text[position + len(prefix) :]:
        return f"the placeholder {shown!r} has no closing '$$'"
    return (
        f"{shown!r} is not a valid placeholder; write {prefix}NAME$$, {prefix}NAME:FORMAT$$ "
        f"or {prefix}NAME.SELECTOR$$ (NAME: letters, digits, '_' and '-')"
    )


def format_problem(kind: SecretKind | None, selector: str | None, fmt: str | None) -> str | None:
    """Why ``selector`` and ``fmt`` do not fit a secret of ``kind``, or ``None`` when they do.

    ``kind`` ``None`` (an imported secret whose kind is not known yet) accepts what fits any
    kind; the import is checked against the exporter's kind when it is resolved.
    """
    if kind is None:
        if any(format_problem(each, selector, fmt) is None for each in SECRET_KINDS):
            return None
        return _does_not_fit(selector, fmt, "any kind of secret")
    if selector is not None and kind not in _CERTIFICATE_KINDS:
        return f"the selector .{selector} applies only to x509 and x509-ca secrets, not {kind}"
    if fmt is None or _fits(kind, selector, fmt):
        return None
    what = f"{_article(kind)} {kind} secret"
    return _does_not_fit(selector if kind in _CERTIFICATE_KINDS else None, fmt, what)


def _article(kind: str) -> str:
    return "an" if kind[0] in "aex" else "a"


def _fits(kind: SecretKind, selector: str | None, fmt: str) -> bool:
    if kind in ("ascii", "binary"):
        return fmt in _DATA_FORMATS
    if kind == "private-key":
        return fmt in _KEY_FORMATS
    return fmt in _PART_FORMATS[selector or _PART_OF_FORMAT.get(fmt, "crt")]


def _does_not_fit(selector: str | None, fmt: str | None, what: str) -> str:
    if selector is not None and fmt is not None:
        return f"the format {fmt!r} does not fit the .{selector} part of {what}"
    if fmt is not None:
        return f"the format {fmt!r} does not fit {what}"
    return f"the selector .{selector} does not fit {what}"


def validate(text: str, secrets: Mapping[str, SecretKind | None]) -> list[PlaceholderProblem]:
    """Every problem with the placeholders of ``text`` for a session with ``secrets``.

    ``secrets`` maps each secret name of the session to its kind (``None`` for an imported
    secret whose kind is not known yet). Reports a malformed placeholder (and stops there, as
    the rest of the text cannot be read reliably), a placeholder naming no secret of the
    session, and a selector or format that does not fit the secret's kind. Never raises.
    """
    try:
        found = find_placeholders(text)
    except PlaceholderSyntaxError as error:
        return [PlaceholderProblem(error.start, error.start + 2, error.message)]
    problems: list[PlaceholderProblem] = []
    known = ", ".join(sorted(secrets)) or "none"
    for item in found:
        spelled = text[item.start : item.end]
        if item.secret not in secrets:
            what = f"{spelled!r} names no secret of this session (secrets: {known})"
            problems.append(PlaceholderProblem(item.start, item.end, what))
            continue
        problem = format_problem(secrets[item.secret], item.selector, item.format)
        if problem is not None:
            what = f"{spelled!r}: {problem}"
            problems.append(PlaceholderProblem(item.start, item.end, what))
    return problems


def contains_placeholder(text: str) -> bool:
    """True when ``text`` has anything that begins a placeholder (well-formed or not)."""
    return _next_prefix(text, 0) >= 0


def render(text: str, resolve: Callable[[Placeholder], str]) -> str:
    """``text`` with every placeholder replaced by ``resolve(placeholder)``.

    Text outside placeholders is kept as is. Raises :class:`PlaceholderSyntaxError` for a
    malformed placeholder (a validated session has none), and whatever ``resolve`` raises.
    """
    parts: list[str] = []
    position = 0
    for item in find_placeholders(text):
        parts.append(text[position : item.start])
        parts.append(resolve(item))
        position = item.end
    parts.append(text[position:])
    return "".join(parts)


def spelling(placeholder: Placeholder) -> str:
    """The canonical spelling of ``placeholder``: ``$$CAS::name[.selector][:format]$$``."""
    selector = "" if placeholder.selector is None else f".{placeholder.selector}"
    fmt = "" if placeholder.format is None else f":{placeholder.format}"
    return f"$$CAS::{placeholder.secret}{selector}{fmt}$$"


def canonical(text: str) -> str:
    """``text`` with every placeholder in its canonical spelling (``$$SCONE::`` becomes
    ``$$CAS::``); selectors and formats stay as written. Raises
    :class:`PlaceholderSyntaxError` for a malformed placeholder."""
    return render(text, spelling)
