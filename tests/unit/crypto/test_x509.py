"""X.509: the one certificate builder, the CAS CA, TLS and identity certificates, SAN names."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import re
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from opencas.crypto.keys import generate_private_key, key_hash
from opencas.crypto.pem import (
    certificate_pem,
    load_certificate_pem,
    private_key_pem,
)
from opencas.crypto.x509 import (
    CLOCK_SKEW,
    CertificateUse,
    Issuer,
    build_certificate,
    canonical_san_entry,
    certificate_key_hash,
    common_name_subject,
    create_ca_certificate,
    create_identity_certificate,
    general_name,
    issue_tls_certificate,
    key_usage,
    parse_san_entry,
    verify_issued_by,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
_T = TypeVar("_T", bound=x509.ExtensionType)


@pytest.fixture(scope="module")
def ca_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def ca_certificate(ca_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return create_ca_certificate(ca_key, "OpenCAS test CA", now=NOW)


def _extension(cert: x509.Certificate, kind: type[_T]) -> x509.Extension[_T]:
    return cert.extensions.get_extension_for_class(kind)


# --- CA -------------------------------------------------------------------------------------------


def test_ca_certificate_is_a_self_signed_p384_ca(
    ca_key: ec.EllipticCurvePrivateKey, ca_certificate: x509.Certificate
) -> None:
    cert = ca_certificate
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "OpenCAS test CA"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)
    constraints = _extension(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = _extension(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = _extension(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    assert 0 < cert.serial_number < 2**159
    assert cert.serial_number.bit_length() == 159
    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW
    assert cert.not_valid_after_utc == NOW + timedelta(days=20 * 365)
    verify_issued_by(cert, cert)
    assert certificate_key_hash(cert) == key_hash(ca_key)


def test_ca_certificate_for_p256_signs_with_sha256() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = create_ca_certificate(key, "p256 CA", timedelta(days=10), NOW)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.not_valid_after_utc == NOW + timedelta(days=10)


def test_serial_numbers_are_random() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    serials = {create_ca_certificate(key, "CA", now=NOW).serial_number for _ in range(5)}
    assert len(serials) == 5


def test_ca_certificate_defaults_to_the_current_time() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    before = datetime.now(UTC).replace(microsecond=0) - CLOCK_SKEW
    cert = create_ca_certificate(key, "CA")
    assert before <= cert.not_valid_before_utc <= datetime.now(UTC) - CLOCK_SKEW


@pytest.mark.parametrize(
    "key",
    [ec.generate_private_key(ec.SECP521R1()), ed25519.Ed25519PrivateKey.generate()],
    ids=["P-521", "Ed25519"],
)
def test_ca_certificate_refuses_other_keys(key: object) -> None:
    with pytest.raises(ValueError, match=r"P-256|P-384"):
        create_ca_certificate(key, "CA", now=NOW)  # type: ignore[arg-type]


def test_naive_time_and_bad_arguments_are_refused(ca_key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        create_ca_certificate(ca_key, "CA", now=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="positive"):
        create_ca_certificate(ca_key, "CA", timedelta(0), NOW)
    with pytest.raises(ValueError, match="common name"):
        create_ca_certificate(ca_key, "", now=NOW)
    with pytest.raises(ValueError, match="common name"):
        create_ca_certificate(ca_key, "x" * 65, now=NOW)


# --- TLS server certificates ----------------------------------------------------------------------


def test_tls_certificate_names_extensions_and_issuer(
    ca_key: ec.EllipticCurvePrivateKey, ca_certificate: x509.Certificate
) -> None:
    tls_key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_tls_certificate(
        ca_key,
        ca_certificate,
        tls_key.public_key(),
        ["CAS.Example", "127.0.0.1", "[::1]", "cas.example", "*.cas.example"],
        now=NOW,
    )
    assert cert.issuer == ca_certificate.subject
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "CAS.Example"
    san = _extension(cert, x509.SubjectAlternativeName)
    assert not san.critical
    assert san.value.get_values_for_type(x509.DNSName) == ["cas.example", "*.cas.example"]
    assert san.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert _extension(cert, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    usage = _extension(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert not _extension(cert, x509.BasicConstraints).value.ca
    aki = _extension(cert, x509.AuthorityKeyIdentifier).value
    ca_ski = _extension(ca_certificate, x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)
    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW
    assert cert.not_valid_after_utc == NOW + timedelta(days=365)
    assert certificate_key_hash(cert) == key_hash(tls_key)
    verify_issued_by(cert, ca_certificate)


def test_tls_certificate_is_cut_to_the_ca_validity(ca_key: ec.EllipticCurvePrivateKey) -> None:
    short_ca = create_ca_certificate(ca_key, "short CA", timedelta(days=30), NOW)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_tls_certificate(ca_key, short_ca, tls_key.public_key(), ["cas"], now=NOW)
    assert cert.not_valid_after_utc == short_ca.not_valid_after_utc
    with pytest.raises(ValueError, match="renew the CA"):
        issue_tls_certificate(
            ca_key, short_ca, tls_key.public_key(), ["cas"], now=NOW + timedelta(days=31)
        )


def test_tls_certificate_with_a_long_hostname_has_an_empty_subject_and_critical_san(
    ca_key: ec.EllipticCurvePrivateKey, ca_certificate: x509.Certificate
) -> None:
    hostname = ".".join(["a" * 60, "b" * 60, "example"])
    tls_key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_tls_certificate(ca_key, ca_certificate, tls_key.public_key(), [hostname], now=NOW)
    assert cert.subject == x509.Name([])
    san = _extension(cert, x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.DNSName) == [hostname]


@pytest.mark.parametrize(
    "hostnames",
    [[], "cas.example", [""], ["bad host"], ["bücher.example"], ["a..b"], ["-a.example"], [7]],
    ids=["empty", "string", "blank", "space", "unicode", "empty-label", "hyphen", "not-a-string"],
)
def test_tls_certificate_refuses_bad_hostnames(
    ca_key: ec.EllipticCurvePrivateKey, ca_certificate: x509.Certificate, hostnames: object
) -> None:
    tls_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValueError, match=r"hostname|DNS name"):
        issue_tls_certificate(
            ca_key,
            ca_certificate,
            tls_key.public_key(),
            hostnames,  # type: ignore[arg-type]
            now=NOW,
        )


def test_tls_certificate_refuses_a_ca_key_of_another_certificate(
    ca_certificate: x509.Certificate,
) -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    tls_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValueError, match="does not belong"):
        issue_tls_certificate(other, ca_certificate, tls_key.public_key(), ["cas"], now=NOW)


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str) -> None:
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(client_in, client_out, server_hostname=server_hostname)
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side, outgoing, peer_incoming in (
            ("client", client_side, client_out, server_in),
            ("server", server_side, server_out, client_in),
        ):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            if data := outgoing.read():
                peer_incoming.write(data)
        if all(done.values()):
            return
    raise AssertionError("TLS handshake did not finish")


@pytest.mark.parametrize("server_hostname", ["cas.example", "127.0.0.1"])
def test_openssl_accepts_the_tls_certificate(
    tmp_path: Path,
    ca_key: ec.EllipticCurvePrivateKey,
    server_hostname: str,
) -> None:
    # The TLS library, not only our own checks, must accept the chain for DNS names and IPs.
    now = datetime.now(UTC)
    ca_certificate = create_ca_certificate(ca_key, "OpenCAS handshake CA", now=now)
    tls_key = ec.generate_private_key(ec.SECP384R1())
    cert = issue_tls_certificate(
        ca_key, ca_certificate, tls_key.public_key(), ["cas.example", "127.0.0.1"], now=now
    )
    (tmp_path / "cert.pem").write_bytes(certificate_pem(cert))
    (tmp_path / "key.pem").write_bytes(private_key_pem(tls_key))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cadata=certificate_pem(ca_certificate).decode("ascii"))
    _handshake(server, client, server_hostname)

    client_for_other_name = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_for_other_name.load_verify_locations(
        cadata=certificate_pem(ca_certificate).decode("ascii")
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, client_for_other_name, "other.example")


# --- identity certificates ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_type", "hash_type"),
    [("P-256", hashes.SHA256), ("P-384", hashes.SHA384), ("Ed25519", type(None))],
)
def test_identity_certificate_is_self_signed(key_type: str, hash_type: type) -> None:
    key = generate_private_key(key_type)  # type: ignore[arg-type]
    cert = create_identity_certificate(key, "alice", now=NOW)
    assert isinstance(cert.signature_hash_algorithm, hash_type)
    assert cert.subject == cert.issuer
    assert cert.not_valid_after_utc == NOW + timedelta(days=3650)
    assert not _extension(cert, x509.BasicConstraints).value.ca
    assert _extension(cert, x509.KeyUsage).value.digital_signature
    assert _extension(cert, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    assert certificate_key_hash(cert) == key_hash(key)
    verify_issued_by(cert, cert)


def test_identity_certificate_refuses_rsa() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ValueError, match="P-256, P-384 or Ed25519"):
        create_identity_certificate(key, "rsa", now=NOW)


# --- issuer checks --------------------------------------------------------------------------------


def test_verify_issued_by_refuses_wrong_issuers(
    ca_key: ec.EllipticCurvePrivateKey, ca_certificate: x509.Certificate
) -> None:
    tls_key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_tls_certificate(ca_key, ca_certificate, tls_key.public_key(), ["cas"], now=NOW)
    stranger = create_ca_certificate(ec.generate_private_key(ec.SECP384R1()), "other", now=NOW)
    with pytest.raises(ValueError, match="not issued by this issuer"):
        verify_issued_by(cert, stranger)
    impostor = create_ca_certificate(
        ec.generate_private_key(ec.SECP384R1()), "OpenCAS test CA", now=NOW
    )
    with pytest.raises(ValueError, match="signature does not verify"):
        verify_issued_by(cert, impostor)


_IDENTITY_DER = create_identity_certificate(generate_private_key(), "fuzz", now=NOW).public_bytes(
    serialization.Encoding.DER
)


# Damage can make the serial number negative, which cryptography still loads with a warning.
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(_IDENTITY_DER) - 1), st.integers(1, 255))
def test_damaged_certificates_raise_only_value_errors(position: int, mask: int) -> None:
    damaged = bytearray(_IDENTITY_DER)
    damaged[position] ^= mask
    body = base64.encodebytes(bytes(damaged))
    pem = b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n"
    with contextlib.suppress(ValueError):
        cert = load_certificate_pem(pem)
        certificate_key_hash(cert)
        verify_issued_by(cert, cert)


# --- the one builder ------------------------------------------------------------------------------


def _use(*names: x509.DNSName | x509.IPAddress, ca: bool = False) -> CertificateUse:
    return CertificateUse(
        ca=ca,
        path_length=0 if ca else None,
        key_usage=key_usage(digital_signature=True),
        names=names,
    )


def test_built_certificates_carry_key_identifiers_and_unique_names(
    ca_key: ec.EllipticCurvePrivateKey, ca_certificate: x509.Certificate
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.DNSName("a.example")
    cert = build_certificate(
        key.public_key(),
        common_name_subject("leaf"),
        _use(name, x509.IPAddress(ipaddress.ip_address("10.0.0.1")), name),
        signer=Issuer(ca_key, ca_certificate),
        valid_for=timedelta(days=1),
        now=NOW,
    )
    san = _extension(cert, x509.SubjectAlternativeName)
    assert not san.critical
    assert list(san.value) == [name, x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]
    ski = _extension(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    ca_ski = _extension(ca_certificate, x509.SubjectKeyIdentifier).value
    assert _extension(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski.digest
    assert cert.serial_number.bit_length() == 159
    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW
    verify_issued_by(cert, ca_certificate)


def test_a_self_signed_certificate_names_itself_as_authority() -> None:
    key = generate_private_key("Ed25519")
    cert = build_certificate(
        key.public_key(), common_name_subject("self"), _use(), signer=key, valid_for=timedelta(1)
    )
    assert cert.issuer == cert.subject
    assert cert.signature_hash_algorithm is None
    aki = _extension(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _extension(cert, x509.SubjectKeyIdentifier).value.digest
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    verify_issued_by(cert, cert)


def test_the_builder_refuses_a_signer_that_cannot_sign_this_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca_certificate: x509.Certificate
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = common_name_subject("x")
    with pytest.raises(ValueError, match="signed by its own key"):
        build_certificate(key.public_key(), subject, _use(), signer=ca_key, valid_for=timedelta(1))
    leaf = issue_tls_certificate(ca_key, ca_certificate, key.public_key(), ["cas"], now=NOW)
    with pytest.raises(ValueError, match="not a CA certificate"):
        build_certificate(
            key.public_key(), subject, _use(), signer=Issuer(key, leaf), valid_for=timedelta(1)
        )
    with pytest.raises(ValueError, match="does not belong"):
        build_certificate(
            key.public_key(),
            subject,
            _use(),
            signer=Issuer(key, ca_certificate),
            valid_for=timedelta(1),
        )


def test_an_issuer_that_fails_its_checks_is_refused_at_every_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca_certificate: x509.Certificate
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    wrong = Issuer(key, ca_certificate)
    for _ in range(2):  # a failed check is not remembered as passed
        with pytest.raises(ValueError, match="does not belong"):
            build_certificate(
                key.public_key(),
                common_name_subject("x"),
                _use(),
                signer=wrong,
                valid_for=timedelta(1),
            )
    issuer = Issuer(ca_key, ca_certificate)
    first, second = (
        build_certificate(
            key.public_key(),
            common_name_subject(name),
            _use(),
            signer=issuer,
            valid_for=timedelta(1),
        )
        for name in ("a", "b")
    )
    for cert in (first, second):
        verify_issued_by(cert, ca_certificate)
        assert _extension(cert, x509.AuthorityKeyIdentifier).value == issuer.authority_key_id


# --- subject alternative names --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("CAS.Example", x509.DNSName("cas.example")),
        (" *.cas.example ", x509.DNSName("*.cas.example")),
        ("_svc.cas.example", x509.DNSName("_svc.cas.example")),
        ("[::1]", x509.IPAddress(ipaddress.ip_address("::1"))),
        ("0:0::1", x509.IPAddress(ipaddress.ip_address("::1"))),
        ("10.0.0.1", x509.IPAddress(ipaddress.ip_address("10.0.0.1"))),
    ],
)
def test_general_name_reads_ip_literals_and_san_dns_names(
    hostname: str, expected: x509.GeneralName
) -> None:
    assert general_name(hostname) == expected


@pytest.mark.parametrize("hostname", ["cas.example.", "a.*.example", "bad host", ""])
def test_general_name_refuses_what_is_no_san_dns_name(hostname: str) -> None:
    with pytest.raises(ValueError, match="neither an IP address nor a valid DNS name"):
        general_name(hostname)


@pytest.mark.parametrize(
    ("entry", "canonical"),
    [
        ("dns:web.example", "dns:web.example"),
        ("DNS:Web.Example", "dns:web.example"),
        ("dns:*.web.example", "dns:*.web.example"),
        ("ip:10.0.0.1", "ip:10.0.0.1"),
        ("IP:0:0:0:0:0:0:0:1", "ip:::1"),
    ],
)
def test_san_entries_are_parsed_and_spelled_canonically(entry: str, canonical: str) -> None:
    assert canonical_san_entry(entry) == canonical
    assert canonical_san_entry(canonical) == canonical


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("web.example", "expected 'dns:NAME' or 'ip:ADDRESS', got 'web.example'"),
        ("uri:https://example", "expected 'dns:NAME' or 'ip:ADDRESS'"),
        ("dns:", "'' is not a valid DNS name: empty label"),
        ("dns:a.*.example", "is not a valid DNS name: a wildcard"),
        ("ip:[::1]", "'[::1]' is not a valid IP address"),
        ("ip:10.0.0.300", "is not a valid IP address"),
    ],
)
def test_san_entries_that_do_not_parse(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_san_entry(entry)
