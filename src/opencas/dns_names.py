"""DNS names: one grammar, in the two variants OpenCAS names hosts with.

Both variants are ASCII (internationalised names are written in their ``xn--`` form), at most
253 characters, dot-separated labels of 1 to 63 characters that do not start or end with a
hyphen, compared without regard to case and kept in lowercase:

- a **host name** (RFC 1123) has labels of letters, digits and hyphens, and its last label is
  not all digits (a resolver reads ``300.1.1.1`` as a bad IPv4 address, never as a name). The
  availability config's listen addresses and TLS host names, and the owner config's alternative
  names, URLs and e-mail domains are host names;
- a **SAN DNS name** is what a certificate's subjectAltName ``dNSName`` may hold: labels may
  also carry underscores (service labels such as ``_acme``), and the first label may be the
  wildcard ``*``. Session secrets (``san: [dns:...]``) and the X.509 code use this variant.

A *hostname* as config files write it is a host name or an IP literal (:func:`canonical_hostname`).

This module sits at the top of the package, beside :mod:`opencas.errors`, because ``config``,
``policy`` and ``crypto`` all name hosts and none of them owns the idea: the pure core
(``crypto``, ``policy``) imports it without depending on ``config``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Final

MAX_NAME_LENGTH: Final = 253
MAX_LABEL_LENGTH: Final = 63
WILDCARD_LABEL: Final = "*"

_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_SAN_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def host_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid host name (RFC 1123), or ``None`` when it is one."""
    problem = _name_problem(name, name.split("."), _host_label_problem)
    if problem is None and name.rsplit(".", maxsplit=1)[-1].isdigit():
        # Resolvers read an all-numeric last label as an IPv4 address, never as a name.
        problem = "looks like an IPv4 address but is not a valid one"
    return problem


def san_dns_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a certificate's DNS name, or ``None`` when it can.

    Accepts every host name, labels with underscores, and a leading wildcard label
    (``*.example.com``); the wildcard is a whole label and only the first one.
    """
    labels = name.split(".")
    if labels[0] == WILDCARD_LABEL and len(labels) > 1:
        labels = labels[1:]
    return _name_problem(name, labels, _san_label_problem)


def canonical_hostname(name: str) -> str:
    """``name`` as the TLS certificate will carry it: an IP literal or a host name.

    Returns an IP address in canonical form (``0:0:0:0:0:0:0:1`` becomes ``::1``) or a host
    name in lowercase. Raises ``ValueError`` saying what is wrong for an IPv6 address in
    brackets, an IPv6 address with a zone (``%eth0``) or a name that is not a host name.
    """
    if name.startswith("[") and name.endswith("]"):
        raise ValueError(f"{name!r}: write IPv6 addresses without brackets, as in {name[1:-1]!r}")
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        problem = host_name_problem(name)
        if problem is not None:
            raise ValueError(
                f"{name!r} is neither an IP address nor a valid DNS name: {problem}"
            ) from None
        return name.lower()
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise ValueError(f"{name!r}: an IP address in a certificate cannot carry a zone ('%')")
    return str(address)


def _name_problem(
    name: str, labels: list[str], label_problem: Callable[[str], str | None]
) -> str | None:
    if not name.isascii():
        return "not ASCII; write internationalized names in their xn-- (punycode) form"
    if len(name) > MAX_NAME_LENGTH:
        return f"longer than {MAX_NAME_LENGTH} characters"
    return next((found for found in map(label_problem, labels) if found is not None), None)


def _host_label_problem(label: str) -> str | None:
    return _label_problem(label, _HOST_LABEL, "letters, digits and hyphens")


def _san_label_problem(label: str) -> str | None:
    if label == WILDCARD_LABEL:
        return "a wildcard '*' may only be the whole first label, as in *.example.com"
    return _label_problem(label, _SAN_LABEL, "letters, digits, hyphens and underscores")


def _label_problem(label: str, grammar: re.Pattern[str], allowed: str) -> str | None:
    if not label:
        return "empty label (a leading, trailing or doubled dot)"
    if len(label) > MAX_LABEL_LENGTH:
        return f"label {label[:20]!r}... is longer than {MAX_LABEL_LENGTH} characters"
    if not grammar.fullmatch(label):
        return f"label {label!r} may hold only {allowed}, and may not start or end with a hyphen"
    return None
