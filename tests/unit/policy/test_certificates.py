"""A secret's certificate spec, mapped onto the X.509 stack: key usages, endpoints, SAN entries."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from opencas.crypto.x509 import CLOCK_SKEW, Issuer, verify_issued_by
from opencas.policy.certificates import issue_certificate, parse_valid_for

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def _ext(cert: x509.Certificate, kind: type[Any]) -> Any:
    return cert.extensions.get_extension_for_class(kind).value


def test_a_session_ca_signs_and_may_sign_certificates() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    ca = issue_certificate(
        key, common_name="ca", is_ca=True, now=NOW, valid_for=timedelta(days=2), ca_path_length=None
    )
    constraints = _ext(ca, x509.BasicConstraints)
    assert constraints.ca
    assert constraints.path_length is None
    usage = _ext(ca, x509.KeyUsage)
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert usage.digital_signature
    assert ca.not_valid_before_utc == NOW - CLOCK_SKEW
    verify_issued_by(ca, ca)


@pytest.mark.parametrize(
    ("endpoint", "usage"),
    [("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)],
)
def test_an_end_entity_gets_the_usage_of_its_endpoint(
    endpoint: Any, usage: x509.ObjectIdentifier
) -> None:
    issuer = ec.generate_private_key(ec.SECP256R1())
    ca = issue_certificate(issuer, common_name="ca", is_ca=True, now=NOW, valid_for=timedelta(2))
    leaf = issue_certificate(
        ec.generate_private_key(ec.SECP256R1()),
        common_name="leaf",
        is_ca=False,
        now=NOW,
        valid_for=timedelta(days=1),
        issuer=Issuer(issuer, ca),
        endpoint=endpoint,
        san=["DNS:Web.Example", "ip:10.0.0.1", "dns:web.example", "dns:*.web.example"],
    )
    assert list(_ext(leaf, x509.ExtendedKeyUsage)) == [usage]
    assert not _ext(leaf, x509.BasicConstraints).ca
    assert not _ext(leaf, x509.KeyUsage).key_encipherment
    names = _ext(leaf, x509.SubjectAlternativeName)
    assert names.get_values_for_type(x509.DNSName) == ["web.example", "*.web.example"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.1")]
    verify_issued_by(leaf, ca)


def test_an_rsa_end_entity_may_encipher_keys() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = issue_certificate(key, common_name="rsa", is_ca=False, now=NOW, valid_for=timedelta(1))
    assert _ext(cert, x509.KeyUsage).key_encipherment
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


def test_a_workload_key_is_certified_only_by_an_issuer() -> None:
    issuer = ec.generate_private_key(ec.SECP256R1())
    ca = issue_certificate(issuer, common_name="ca", is_ca=True, now=NOW, valid_for=timedelta(2))
    workload = ec.generate_private_key(ec.SECP256R1()).public_key()
    cert = issue_certificate(
        issuer,
        common_name="w",
        is_ca=False,
        now=NOW,
        valid_for=timedelta(1),
        issuer=Issuer(issuer, ca),
        subject_public_key=workload,
    )
    assert cert.public_key() == workload
    with pytest.raises(ValueError, match="needs an issuer"):
        issue_certificate(
            issuer,
            common_name="w",
            is_ca=False,
            now=NOW,
            valid_for=timedelta(1),
            subject_public_key=workload,
        )


def test_issuer_must_be_a_ca_with_the_matching_key() -> None:
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    leaf = issue_certificate(key, common_name="leaf", is_ca=False, now=NOW, valid_for=timedelta(1))
    ca = issue_certificate(key, common_name="ca", is_ca=True, now=NOW, valid_for=timedelta(1))
    with pytest.raises(ValueError, match="not a CA"):
        issue_certificate(
            other,
            common_name="x",
            is_ca=False,
            now=NOW,
            valid_for=timedelta(1),
            issuer=Issuer(key, leaf),
        )
    with pytest.raises(ValueError, match="does not belong"):
        issue_certificate(
            key,
            common_name="x",
            is_ca=False,
            now=NOW,
            valid_for=timedelta(1),
            issuer=Issuer(other, ca),
        )


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"now": datetime(2025, 1, 1)}, "timezone"),
        ({"common_name": "x" * 65}, "common_name"),
        ({"common_name": ""}, "common_name"),
        ({"valid_for": timedelta(0)}, "positive"),
        ({"san": ["uri:https://example"]}, "dns:NAME"),
        ({"san": ["ip:not-an-address"]}, "IP address"),
    ],
)
def test_issue_certificate_refuses(kwargs: dict[str, Any], words: str) -> None:
    arguments: dict[str, Any] = {
        "common_name": "x",
        "is_ca": False,
        "now": NOW,
        "valid_for": timedelta(days=1),
        **kwargs,
    }
    with pytest.raises(ValueError, match=words):
        issue_certificate(ec.generate_private_key(ec.SECP256R1()), **arguments)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1d", timedelta(days=1)), ("365d", timedelta(days=365)), ("48h", timedelta(hours=48))],
)
def test_parse_valid_for(text: str, expected: timedelta) -> None:
    assert parse_valid_for(text) == expected


@pytest.mark.parametrize("text", ["", "0d", "1w", "-1d", "1.5d", "365", "40000d"])
def test_parse_valid_for_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="period"):
        parse_valid_for(text)
