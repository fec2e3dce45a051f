"""The DNS-name grammar: host names, SAN DNS names, and hostnames as config files write them."""

from __future__ import annotations

import re

import pytest

from opencas.dns_names import (
    canonical_hostname,
    host_name_problem,
    san_dns_name_problem,
)

# Names both variants accept.
COMMON_NAMES = [
    "localhost",
    "cas.example.com",
    "CAS.Example.COM",
    "a-b.c-d.example",
    "xn--bcher-kva.example",
    "1.example",
    "a" * 63 + ".example",
    ".".join(["a" * 63] * 3 + ["b" * 61]),
]

# (name, what the problem says) that neither variant accepts.
BAD_NAMES = [
    ("", "empty label"),
    ("a..b", "empty label"),
    (".example", "empty label"),
    ("example.", "empty label"),
    ("-a.example", "may not start or end with a hyphen"),
    ("a-.example", "may not start or end with a hyphen"),
    ("bad host", "may hold only"),
    ("bücher.example", "punycode"),
    ("a" * 64 + ".example", "longer than 63 characters"),
    (".".join(["a" * 63] * 4), "longer than 253 characters"),
]


@pytest.mark.parametrize("name", COMMON_NAMES)
def test_both_variants_accept_plain_names(name: str) -> None:
    assert host_name_problem(name) is None
    assert san_dns_name_problem(name) is None


@pytest.mark.parametrize(("name", "problem"), BAD_NAMES)
def test_both_variants_refuse_bad_names_and_say_why(name: str, problem: str) -> None:
    assert problem in (host_name_problem(name) or "")
    assert problem in (san_dns_name_problem(name) or "")
    assert san_dns_name_problem(name) is not None


@pytest.mark.parametrize(
    ("name", "host_problem"),
    [
        ("_acme.example", "letters, digits and hyphens"),
        ("cas_1.local", "letters, digits and hyphens"),
        ("*.example.com", "letters, digits and hyphens"),
    ],
)
def test_only_san_names_carry_underscores_and_a_wildcard(name: str, host_problem: str) -> None:
    assert host_problem in (host_name_problem(name) or "")
    assert san_dns_name_problem(name) is None


@pytest.mark.parametrize("name", ["*", "a.*.example", "*.*.example", "x*.example", "*."])
def test_a_wildcard_is_only_the_whole_first_label(name: str) -> None:
    assert san_dns_name_problem(name) is not None


def test_an_all_numeric_last_label_is_not_a_host_name() -> None:
    assert "looks like an IPv4 address" in (host_name_problem("300.1.1.1") or "")
    assert "looks like an IPv4 address" in (host_name_problem("example.123") or "")
    # A certificate's DNS name has no such rule: resolvers never read it.
    assert san_dns_name_problem("300.1.1.1") is None


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("CAS.Example.com", "cas.example.com"),
        ("10.0.0.1", "10.0.0.1"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("2001:DB8::1", "2001:db8::1"),
    ],
)
def test_canonical_hostname(written: str, canonical: str) -> None:
    assert canonical_hostname(written) == canonical


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("[::1]", "write IPv6 addresses without brackets, as in '::1'"),
        ("fe80::1%eth0", "cannot carry a zone"),
        ("cas_1.local", "'cas_1.local' is neither an IP address nor a valid DNS name: label"),
        ("*.example.com", "is neither an IP address nor a valid DNS name"),
        ("300.1.1.1", "looks like an IPv4 address"),
    ],
)
def test_canonical_hostname_refuses(written: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        canonical_hostname(written)
