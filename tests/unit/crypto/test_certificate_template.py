"""Certificates an issuer makes again from a template are, byte for byte, what the builder makes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from opencas.crypto import x509 as x509_module
from opencas.crypto.certificate_template import CertificateTemplate
from opencas.crypto.keys import PrivateKey, PublicKey, generate_private_key
from opencas.crypto.x509 import (
    TEMPLATES_PER_ISSUER,
    CertificateUse,
    Issuer,
    build_certificate,
    common_name_subject,
    create_ca_certificate,
    key_usage,
    parse_san_entry,
    verify_issued_by,
)

NOW = datetime(2026, 12, 2, 6, 0, 0, tzinfo=UTC)
SERVER = CertificateUse(
    ca=False,
    key_usage=key_usage(digital_signature=True),
    extended_key_usage=(ExtendedKeyUsageOID.SERVER_AUTH,),
    names=(parse_san_entry("dns:app.example"), parse_san_entry("ip:10.0.0.7")),
)


def _issuer(key: PrivateKey) -> Issuer:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return Issuer(key, create_ca_certificate(key, "session CA", now=NOW))
    # A CA with another kind of key, self-signed by the builder.
    use = CertificateUse(ca=True, path_length=0, key_usage=key_usage(key_cert_sign=True))
    ca = build_certificate(
        key.public_key(),
        common_name_subject("other CA"),
        use,
        signer=key,
        valid_for=timedelta(days=3650),
        now=NOW,
    )
    return Issuer(key, ca)


def _as_the_builder_makes_it(
    issuer: Issuer, made: x509.Certificate, public_key: PublicKey, use: CertificateUse
) -> x509.Certificate:
    """The builder's certificate with the serial number and validity ``made`` has."""
    return x509_module._build(
        public_key,
        made.subject,
        use,
        issuer.key,
        issuer.certificate.subject,
        issuer.authority_key_id,
        made.serial_number,
        (made.not_valid_before_utc, made.not_valid_after_utc),
    )


@pytest.mark.parametrize("issuer_key_type", ["P-256", "P-384", "Ed25519"])
@pytest.mark.parametrize("subject_key_type", ["P-256", "P-384", "Ed25519"])
def test_certificates_after_the_first_are_the_builders_byte_for_byte(
    issuer_key_type: str, subject_key_type: str
) -> None:
    issuer = _issuer(generate_private_key(issuer_key_type))
    subject = common_name_subject("app")
    made = []
    for index in range(6):
        public_key = generate_private_key(subject_key_type).public_key()
        now = NOW + timedelta(seconds=997 * index)
        certificate = build_certificate(
            public_key, subject, SERVER, signer=issuer, valid_for=timedelta(days=30), now=now
        )
        expected = _as_the_builder_makes_it(issuer, certificate, public_key, SERVER)
        assert certificate.tbs_certificate_bytes == expected.tbs_certificate_bytes
        assert certificate.signature_algorithm_oid == expected.signature_algorithm_oid
        verify_issued_by(certificate, issuer.certificate)
        assert certificate.public_key() == public_key
        assert certificate.not_valid_before_utc == now - x509_module.CLOCK_SKEW
        made.append(certificate)
    assert len(issuer.templates) == 1
    assert len({certificate.serial_number for certificate in made}) == len(made)


def test_each_subject_use_and_key_shape_has_its_own_template() -> None:
    issuer = _issuer(generate_private_key("P-256"))
    client = CertificateUse(ca=False, key_usage=key_usage(digital_signature=True))
    for name, use, key_type in (
        ("a", SERVER, "P-256"),
        ("b", SERVER, "P-256"),
        ("a", client, "P-256"),
        ("a", SERVER, "P-384"),
        ("a", SERVER, "P-256"),
    ):
        public_key = generate_private_key(key_type).public_key()
        subject = common_name_subject(name)
        certificate = build_certificate(
            public_key, subject, use, signer=issuer, valid_for=timedelta(days=1), now=NOW
        )
        expected = _as_the_builder_makes_it(issuer, certificate, public_key, use)
        assert certificate.tbs_certificate_bytes == expected.tbs_certificate_bytes
        assert certificate.subject == subject
    assert len(issuer.templates) == 4


def test_a_validity_that_changes_its_encoding_is_made_by_the_builder() -> None:
    # The first certificate ends in 2026 (UTCTime), the second in 2050 (GeneralizedTime): the
    # template cannot keep the field's length, so the builder makes it, correctly encoded.
    key = generate_private_key("P-256")
    issuer = Issuer(
        key, create_ca_certificate(key, "CA", valid_for=timedelta(days=40 * 365), now=NOW)
    )
    subject = common_name_subject("app")
    first = generate_private_key("P-256").public_key()
    build_certificate(first, subject, SERVER, signer=issuer, valid_for=timedelta(days=3), now=NOW)
    assert len(issuer.templates) == 1
    public_key = generate_private_key("P-256").public_key()
    late = datetime(2049, 12, 31, 23, 0, 0, tzinfo=UTC)
    certificate = build_certificate(
        public_key, subject, SERVER, signer=issuer, valid_for=timedelta(days=2), now=late
    )
    assert certificate.not_valid_after_utc.year == 2050
    expected = _as_the_builder_makes_it(issuer, certificate, public_key, SERVER)
    assert certificate.tbs_certificate_bytes == expected.tbs_certificate_bytes


def test_a_subject_key_of_another_length_is_made_by_the_builder() -> None:
    issuer = _issuer(generate_private_key("P-256"))
    subject = common_name_subject("app")
    small = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    odd = rsa.generate_private_key(public_exponent=3, key_size=2048).public_key()
    for key in (small, odd):
        certificate = build_certificate(
            key, subject, SERVER, signer=issuer, valid_for=timedelta(days=1), now=NOW
        )
        expected = _as_the_builder_makes_it(issuer, certificate, key, SERVER)
        assert certificate.tbs_certificate_bytes == expected.tbs_certificate_bytes
        assert certificate.public_key() == key


def test_an_rsa_issuer_keeps_no_templates() -> None:
    issuer = _issuer(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    for _ in range(2):
        key = generate_private_key("P-256").public_key()
        certificate = build_certificate(
            key, common_name_subject("app"), SERVER, signer=issuer, valid_for=timedelta(days=1)
        )
        verify_issued_by(certificate, issuer.certificate)
    assert issuer.templates == {}


def test_an_issuer_keeps_a_bounded_number_of_templates() -> None:
    issuer = _issuer(ed25519.Ed25519PrivateKey.generate())
    key = generate_private_key("P-256").public_key()
    for index in range(TEMPLATES_PER_ISSUER + 5):
        build_certificate(
            key,
            common_name_subject(f"app-{index}"),
            SERVER,
            signer=issuer,
            valid_for=timedelta(days=1),
            now=NOW,
        )
    assert len(issuer.templates) == TEMPLATES_PER_ISSUER


def test_certificates_not_shaped_as_the_builders_make_no_template() -> None:
    key = generate_private_key("P-256")
    subject = common_name_subject("x")
    # A serial number of another length and no SubjectKeyIdentifier.
    plain = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, x509_module.ecdsa_hash(key))
    )
    assert CertificateTemplate.of(plain) is None
