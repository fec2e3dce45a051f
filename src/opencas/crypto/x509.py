"""X.509 certificates: the one certificate builder and the certificates OpenCAS makes with it.

:func:`build_certificate` is the only place that assembles a certificate: serial number,
validity (with :data:`CLOCK_SKEW`), signature hash, key identifiers and the subject alternative
names. The CAS's CA and TLS server certificates, client identity certificates and the
certificates of session secrets (:mod:`opencas.policy.certificates`) are made with it.

Everything here is pure: keys and times come from the caller, certificates go back as
``cryptography`` objects (:mod:`opencas.crypto.pem` encodes them). Names are descriptive only —
OpenCAS matches a certificate by its key (the key hash, DESIGN.md §3), never by its subject.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property, lru_cache
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from opencas.crypto.certificate_template import CertificateTemplate
from opencas.crypto.keys import (
    SIGNING_KEY_TYPES,
    PrivateKey,
    PublicKey,
    describe_key,
    ecdsa_hash,
    key_hash,
    key_type_of,
    signature_hash,
)
from opencas.dns_names import san_dns_name_problem

CA_VALIDITY: Final = timedelta(days=20 * 365)
TLS_VALIDITY: Final = timedelta(days=365)
IDENTITY_VALIDITY: Final = timedelta(days=3650)
# Certificates start a little in the past so that a peer whose clock lags ours still accepts them.
CLOCK_SKEW: Final = timedelta(minutes=5)
#: The certificate templates one issuer keeps: one per subject, use and key shape it issued for.
TEMPLATES_PER_ISSUER: Final = 64
# RFC 5280's upper bound for a common name; longer host names go only into the SAN.
MAX_COMMON_NAME: Final = 64

_KEY_USAGE_BITS: Final = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)

SanName = x509.DNSName | x509.IPAddress
"""A subject alternative name OpenCAS writes: a DNS name or an IP address."""


@dataclass(frozen=True)
class Issuer:
    """A CA that signs certificates: its private key and its certificate.

    Both are immutable, so an issuer is checked (its key is its certificate's, its certificate a
    CA's) when it first signs, and only then: one kept for many certificates checks once.
    """

    key: PrivateKey
    certificate: x509.Certificate

    @cached_property
    def templates(self) -> dict[tuple[object, ...], CertificateTemplate]:
        """The templates of certificates this issuer made, by subject, use and key shape
        (:func:`build_certificate` keeps at most :data:`TEMPLATES_PER_ISSUER`)."""
        return {}

    @cached_property
    def authority_key_id(self) -> x509.AuthorityKeyIdentifier:
        """The AuthorityKeyIdentifier of what this issuer signs; ``ValueError`` (not cached)
        when the issuer does not pass its checks."""
        _check_issuer(self)
        return _authority_key_id(self)


@dataclass(frozen=True)
class CertificateUse:
    """What a certificate is for, as its extensions say.

    ``ca`` and ``path_length`` go into BasicConstraints, ``key_usage`` into KeyUsage (both
    critical), ``extended_key_usage`` (when not empty) into ExtendedKeyUsage and ``names`` (when
    not empty) into the SubjectAlternativeName.
    """

    ca: bool
    key_usage: x509.KeyUsage
    path_length: int | None = None
    extended_key_usage: tuple[x509.ObjectIdentifier, ...] = ()
    names: tuple[SanName, ...] = ()


def build_certificate(
    public_key: PublicKey,
    subject: x509.Name,
    use: CertificateUse,
    *,
    signer: Issuer | PrivateKey,
    valid_for: timedelta,
    now: datetime | None = None,
) -> x509.Certificate:
    """The certificate of ``public_key`` for ``subject`` and ``use``, signed by ``signer``.

    ``signer`` is an :class:`Issuer` (a CA whose key belongs to its CA certificate), or the
    private key of ``public_key`` itself for a self-signed certificate. The serial number is a
    random positive 159-bit number; the certificate is valid from :data:`CLOCK_SKEW` before
    ``now`` (default: the current time) for ``valid_for``, cut to the issuer's own validity. It
    carries Subject- and AuthorityKeyIdentifiers; the SubjectAlternativeName holds ``use.names``
    without duplicates and is critical when the subject is empty (RFC 5280). The signature hash
    is :func:`~opencas.crypto.keys.signature_hash` of the signing key.

    Raises ``ValueError`` when ``now`` is naive, ``valid_for`` is not positive, the signing key
    is not the issuer's or (self-signed) not the subject's, the issuer is not a CA or is not
    valid now, or the signing key is of a type that cannot sign.
    """
    not_before, not_after = _validity(now, valid_for)
    serial = _serial_number()
    if not isinstance(signer, Issuer):
        if key_hash(signer) != key_hash(public_key):
            raise ValueError("a self-signed certificate must be signed by its own key")
        authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
        validity = (not_before, not_after)
        return _build(public_key, subject, use, signer, subject, authority_key_id, serial, validity)
    authority_key_id = signer.authority_key_id
    validity = _within_issuer_validity(signer.certificate, not_before, not_after)
    # A CA issues the same certificate again and again for other keys (a session's, at every
    # attestation): after the first, only the fields that change are written.
    sign = _signer_of(signer.key)
    shape = (subject, use, _key_shape(public_key))
    template = signer.templates.get(shape) if sign is not None else None
    if template is not None and sign is not None:
        made = template.fill(public_key, serial, *validity, sign)
        if made is not None:
            return made
    certificate = _build(
        public_key,
        subject,
        use,
        signer.key,
        signer.certificate.subject,
        authority_key_id,
        serial,
        validity,
    )
    if sign is not None and template is None and len(signer.templates) < TEMPLATES_PER_ISSUER:
        made_template = CertificateTemplate.of(certificate)
        if made_template is not None:
            signer.templates[shape] = made_template
    return certificate


def _build(
    public_key: PublicKey,
    subject: x509.Name,
    use: CertificateUse,
    signing_key: PrivateKey,
    issuer_name: x509.Name,
    authority_key_id: x509.AuthorityKeyIdentifier,
    serial: int,
    validity: tuple[datetime, datetime],
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
    )
    for extension, critical in _extensions(use, subject, public_key, authority_key_id):
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, signature_hash(signing_key))


def create_ca_certificate(
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    valid_for: timedelta = CA_VALIDITY,
    now: datetime | None = None,
) -> x509.Certificate:
    """Create the self-signed CA certificate of ``key`` (the CAS key).

    The certificate may only issue end-entity certificates (BasicConstraints ``ca=True,
    pathlen=0``; KeyUsage ``keyCertSign`` and ``cRLSign``) and is signed with SHA-384 for a
    P-384 key or SHA-256 for a P-256 key; see :func:`build_certificate` for the rest. Raises
    ``ValueError`` for other keys, a naive ``now`` or an unusable name.
    """
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an ECDSA P-256 or P-384 key")
    use = CertificateUse(
        ca=True, path_length=0, key_usage=key_usage(key_cert_sign=True, crl_sign=True)
    )
    return _self_signed(key, common_name, use, valid_for, now)


def issue_tls_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_certificate: x509.Certificate,
    public_key: PublicKey,
    hostnames: Sequence[str],
    *,
    subject: x509.Name | None = None,
    valid_for: timedelta = TLS_VALIDITY,
    now: datetime | None = None,
) -> x509.Certificate:
    """Issue a TLS server certificate for ``public_key``, signed by the CA ``ca_key``.

    ``subject``, when given, is the certificate's subject (the owner's ``[api_identity]``);
    otherwise it is ``CN=`` the first hostname when that fits in 64 characters, and empty (the
    SAN critical) when it does not. ``hostnames`` go into the SubjectAlternativeName as
    :func:`general_name` reads them, duplicates dropped. The certificate is an end entity for
    ``serverAuth`` with KeyUsage ``digitalSignature``; see :func:`build_certificate` for the
    rest. Raises ``ValueError`` when there is no hostname, a hostname is invalid, ``ca_key`` does
    not belong to ``ca_certificate`` or the CA has expired.
    """
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an ECDSA P-256 or P-384 key")
    if isinstance(hostnames, str) or not hostnames:
        raise ValueError("a TLS certificate needs at least one hostname (a sequence of strings)")
    names = tuple(general_name(hostname) for hostname in hostnames)
    if subject is None:
        first = hostnames[0].strip().strip("[]")
        subject = common_name_subject(first) if len(first) <= MAX_COMMON_NAME else x509.Name([])
    use = CertificateUse(
        ca=False,
        key_usage=key_usage(digital_signature=True),
        extended_key_usage=(ExtendedKeyUsageOID.SERVER_AUTH,),
        names=names,
    )
    return build_certificate(
        public_key,
        subject,
        use,
        signer=Issuer(ca_key, ca_certificate),
        valid_for=valid_for,
        now=now,
    )


def create_identity_certificate(
    key: PrivateKey,
    common_name: str,
    valid_for: timedelta = IDENTITY_VALIDITY,
    now: datetime | None = None,
) -> x509.Certificate:
    """Create the self-signed client identity certificate that carries ``key`` (DESIGN.md §3).

    ``key`` is ECDSA P-256 (signed with SHA-256), P-384 (SHA-384) or Ed25519. The certificate is an
    end entity for ``clientAuth`` with KeyUsage ``digitalSignature``; see
    :func:`build_certificate` for the rest. Raises ``ValueError`` for other key types (RSA
    included), a naive ``now`` or an unusable name.
    """
    if key_type_of(key) not in SIGNING_KEY_TYPES:
        raise ValueError(f"identity keys must be P-256, P-384 or Ed25519, not {describe_key(key)}")
    use = CertificateUse(
        ca=False,
        key_usage=key_usage(digital_signature=True),
        extended_key_usage=(ExtendedKeyUsageOID.CLIENT_AUTH,),
    )
    return _self_signed(key, common_name, use, valid_for, now)


def _self_signed(
    key: PrivateKey,
    common_name: str,
    use: CertificateUse,
    valid_for: timedelta,
    now: datetime | None,
) -> x509.Certificate:
    subject = common_name_subject(common_name)
    return build_certificate(
        key.public_key(), subject, use, signer=key, valid_for=valid_for, now=now
    )


# The name builders below are pure and their results immutable, and a session's certificates
# are issued again at every attestation from the same few names: each is built once.
_NAMES_KEPT: Final = 1024


@lru_cache(maxsize=_NAMES_KEPT)
def common_name_subject(common_name: str) -> x509.Name:
    """The subject ``CN=common_name``; raises ``ValueError`` unless it has 1 to 64 characters."""
    if not common_name or len(common_name) > MAX_COMMON_NAME:
        raise ValueError(f"a common name must have 1 to {MAX_COMMON_NAME} characters")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@lru_cache(maxsize=_NAMES_KEPT)
def key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    """A KeyUsage extension with exactly the named bits set; every other bit is clear."""
    chosen = {
        "digital_signature": digital_signature,
        "key_encipherment": key_encipherment,
        "key_cert_sign": key_cert_sign,
        "crl_sign": crl_sign,
    }
    return x509.KeyUsage(**{bit: chosen.get(bit, False) for bit in _KEY_USAGE_BITS})


# --- subject alternative names --------------------------------------------------------------------


def general_name(hostname: str) -> SanName:
    """``hostname`` as a subject alternative name.

    An IP literal (surrounding whitespace ignored; ``[::1]`` accepted) becomes an IPAddress;
    anything else must be a SAN DNS name (:mod:`opencas.dns_names`: a leading ``*`` label and
    underscores allowed) and becomes a lower-cased DNSName. Raises ``ValueError`` otherwise.
    """
    text = hostname.strip() if isinstance(hostname, str) else ""
    try:
        return x509.IPAddress(ipaddress.ip_address(text.removeprefix("[").removesuffix("]")))
    except ValueError:
        pass
    problem = san_dns_name_problem(text)
    if problem is not None:
        raise ValueError(f"{hostname!r} is neither an IP address nor a valid DNS name: {problem}")
    return x509.DNSName(text.lower())


@lru_cache(maxsize=_NAMES_KEPT)
def parse_san_entry(entry: str) -> SanName:
    """The subject alternative name a session writes as ``dns:NAME`` or ``ip:ADDRESS``.

    The prefix and the DNS name may be in any case, the address in any spelling Python's
    ``ipaddress`` reads. Raises ``ValueError`` for another prefix, a NAME that is not a SAN DNS
    name or an ADDRESS that is not an IPv4 or IPv6 literal.
    """
    kind, colon, rest = entry.partition(":")
    if colon and kind.lower() == "dns":
        problem = san_dns_name_problem(rest)
        if problem is not None:
            raise ValueError(f"{_quote(rest)} is not a valid DNS name: {problem}")
        return x509.DNSName(rest.lower())
    if colon and kind.lower() == "ip":
        try:
            return x509.IPAddress(ipaddress.ip_address(rest))
        except ValueError:
            raise ValueError(f"{_quote(rest)} is not a valid IP address") from None
    raise ValueError(f"expected 'dns:NAME' or 'ip:ADDRESS', got {_quote(entry)}")


def canonical_san_entry(entry: str) -> str:
    """``entry`` (see :func:`parse_san_entry`) in canonical spelling: ``dns:`` and the name in
    lowercase, or ``ip:`` and the address in its compressed form. Raises ``ValueError`` as
    :func:`parse_san_entry` does."""
    name = parse_san_entry(entry)
    if isinstance(name, x509.DNSName):
        return f"dns:{name.value}"
    return f"ip:{name.value}"


# --- reading certificates -------------------------------------------------------------------------


def certificate_key_hash(cert: x509.Certificate) -> str:
    """The key hash (DESIGN.md §3) of the public key ``cert`` carries.

    Raises ``ValueError`` when the key is of a type OpenCAS does not handle (DSA, X25519, ...).
    """
    try:
        public = cert.public_key()
    except UnsupportedAlgorithm as exc:
        raise ValueError(f"the certificate's public key is of an unsupported type: {exc}") from exc
    if not isinstance(
        public, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
    ):
        raise ValueError(f"unsupported certificate key type {type(public).__name__}")
    return key_hash(public)


def is_ca_certificate(cert: x509.Certificate) -> bool:
    """True when ``cert`` carries BasicConstraints ``ca=True``."""
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def verify_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """Check that ``issuer`` signed ``cert`` and is named as its issuer.

    Validity periods and extensions are not checked. Raises ``ValueError`` when the issuer name
    differs, the signature does not verify, or its algorithm is not supported.
    """
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature as exc:
        raise ValueError(
            "the certificate's signature does not verify with the issuer's key"
        ) from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"the certificate was not issued by this issuer: {exc}") from exc


# --- the builder's rules --------------------------------------------------------------------------


def _extensions(
    use: CertificateUse,
    subject: x509.Name,
    public_key: PublicKey,
    authority_key_id: x509.AuthorityKeyIdentifier,
) -> list[tuple[x509.ExtensionType, bool]]:
    """The extensions of a certificate for ``use``, each with whether it is critical."""
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=use.ca, path_length=use.path_length), True),
        (use.key_usage, True),
    ]
    if use.extended_key_usage:
        extensions.append((x509.ExtendedKeyUsage(list(use.extended_key_usage)), False))
    if use.names:
        # RFC 5280: with an empty subject the names are the only identity, so they are critical.
        names = x509.SubjectAlternativeName(list(dict.fromkeys(use.names)))
        extensions.append((names, not subject))
    extensions.append((x509.SubjectKeyIdentifier.from_public_key(public_key), False))
    extensions.append((authority_key_id, False))
    return extensions


def _key_shape(public_key: PublicKey) -> tuple[object, ...]:
    # Keys of one shape have SubjectPublicKeyInfos of one length (an RSA key's may still differ
    # by its exponent: the template then refuses it and the builder makes the certificate).
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return ("ec", public_key.curve.name)
    if isinstance(public_key, rsa.RSAPublicKey):
        return ("rsa", public_key.key_size)
    return (type(public_key).__name__,)


def _signer_of(key: PrivateKey) -> Callable[[bytes], bytes] | None:
    """The signature over a TBSCertificate the builder makes with ``key``, for ECDSA and
    Ed25519 keys; ``None`` for others (they always go through the builder)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = ec.ECDSA(ecdsa_hash(key))
        return lambda data: key.sign(data, algorithm)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign
    return None


def _validity(now: datetime | None, valid_for: timedelta) -> tuple[datetime, datetime]:
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    if valid_for <= timedelta(0):
        raise ValueError("valid_for must be positive")
    return now - CLOCK_SKEW, now + valid_for


def _within_issuer_validity(
    issuer: x509.Certificate, not_before: datetime, not_after: datetime
) -> tuple[datetime, datetime]:
    not_before = max(not_before, issuer.not_valid_before_utc)
    not_after = min(not_after, issuer.not_valid_after_utc)
    if not_after <= not_before:
        raise ValueError(
            f"the issuer's certificate is not valid now ({not_before.isoformat()}; it is valid "
            f"until {issuer.not_valid_after_utc.isoformat()}): renew the CA first"
        )
    return not_before, not_after


def _check_issuer(issuer: Issuer) -> None:
    try:
        certified = certificate_key_hash(issuer.certificate)
    except ValueError as exc:
        raise ValueError("the issuer certificate's key is of an unsupported type") from exc
    if certified != key_hash(issuer.key):
        raise ValueError("the issuer's private key does not belong to the issuer's certificate")
    if not is_ca_certificate(issuer.certificate):
        raise ValueError("the issuer's certificate is not a CA certificate (BasicConstraints)")


def _authority_key_id(issuer: Issuer) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def _serial_number() -> int:
    # 159 bits with the top bit set: always positive, always 20 DER bytes, 158 random bits.
    return secrets.randbits(158) | (1 << 158)


def _quote(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")
