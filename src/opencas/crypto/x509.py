"""X.509 certificates: the CAS's CA, its TLS server certificates and client identity certificates.

Everything here is pure: keys and times come from the caller, certificates go back as
``cryptography`` objects or PEM bytes. Names are descriptive only — OpenCAS matches a certificate by
its key (the key hash, DESIGN.md §3), never by its subject.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from opencas.crypto.keys import PrivateKey, PublicKey, key_hash
from opencas.dns_names import san_dns_name_problem

CA_VALIDITY = timedelta(days=20 * 365)
TLS_VALIDITY = timedelta(days=365)
IDENTITY_VALIDITY = timedelta(days=3650)
# Certificates start a little in the past so that a peer whose clock lags ours still accepts them.
CLOCK_SKEW = timedelta(minutes=5)

# RFC 5280's upper bound for a common name; longer host names go only into the SAN.
_MAX_COMMON_NAME = 64
_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----(?:\r?\n)?", re.DOTALL
)
_PEM_BEGIN = re.compile(rb"-----BEGIN ")


def create_ca_certificate(
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    valid_for: timedelta = CA_VALIDITY,
    now: datetime | None = None,
) -> x509.Certificate:
    """Create the self-signed CA certificate of ``key`` (the CAS key).

    The certificate may only issue end-entity certificates (BasicConstraints ``ca=True,
    pathlen=0``, critical; KeyUsage ``keyCertSign`` and ``cRLSign``, critical), carries a
    SubjectKeyIdentifier and a random positive 159-bit serial number, and is signed with SHA-384
    for a P-384 key or SHA-256 for a P-256 key. It is valid from ``CLOCK_SKEW`` before ``now``
    (default: the current time) for ``valid_for``. Raises ``ValueError`` for other curves, a naive
    ``now`` or an unusable name.
    """
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an ECDSA P-256 or P-384 key")
    not_before, not_after = _validity(now, valid_for)
    name = _name(common_name)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            key_usage(key_cert_sign=True, crl_sign=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
    )
    return builder.sign(key, _hash_for(key))


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
    otherwise it is derived from the first hostname as below.

    ``hostnames`` go into the SubjectAlternativeName, each as an IPAddress when it is an IP literal
    (``[::1]`` accepted) and as a lower-cased DNSName otherwise; duplicates are dropped and the
    first one is the subject's common name (when it fits in 64 characters; otherwise the subject
    is empty and the SAN critical, as RFC 5280 requires). The certificate is an end entity
    (BasicConstraints ``ca=False``) for ``serverAuth`` with KeyUsage ``digitalSignature`` and
    carries Subject- and AuthorityKeyIdentifiers. It is valid from ``CLOCK_SKEW`` before ``now``
    for ``valid_for``, cut to the CA's own validity. Raises ``ValueError`` when there is no
    hostname, a hostname is invalid, ``ca_key`` does not belong to ``ca_certificate`` or the CA
    has expired.
    """
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an ECDSA P-256 or P-384 key")
    if key_hash(ca_key) != certificate_key_hash(ca_certificate):
        raise ValueError("the CA key does not belong to the CA certificate")
    names = _general_names(hostnames)
    not_before, not_after = _validity(now, valid_for)
    not_before = max(not_before, ca_certificate.not_valid_before_utc)
    not_after = min(not_after, ca_certificate.not_valid_after_utc)
    if not_after <= not_before:
        raise ValueError(
            f"the CA certificate is not valid at {not_before.isoformat()} "
            f"(valid until {ca_certificate.not_valid_after_utc.isoformat()}); renew the CA first"
        )
    if subject is None:
        first = hostnames[0].strip().strip("[]")
        subject = _name(first) if len(first) <= _MAX_COMMON_NAME else x509.Name([])
    try:
        ca_ski = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ca_ski.value
        )
    except x509.ExtensionNotFound:
        authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_certificate.subject)
        .public_key(public_key)
        .serial_number(_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=not subject)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(authority_key_id, critical=False)
    )
    return builder.sign(ca_key, _hash_for(ca_key))


def create_identity_certificate(
    key: PrivateKey,
    common_name: str,
    valid_for: timedelta = IDENTITY_VALIDITY,
    now: datetime | None = None,
) -> x509.Certificate:
    """Create the self-signed client identity certificate that carries ``key`` (DESIGN.md §3).

    ``key`` is ECDSA P-256 (signed with SHA-256), P-384 (SHA-384) or Ed25519. The certificate is an
    end entity (BasicConstraints ``ca=False``) for ``clientAuth`` with KeyUsage
    ``digitalSignature``, valid from ``CLOCK_SKEW`` before ``now`` for ``valid_for``. Raises
    ``ValueError`` for other key types (RSA included), a naive ``now`` or an unusable name.
    """
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError(f"identity keys must be P-256, P-384 or Ed25519, not {type(key).__name__}")
    not_before, not_after = _validity(now, valid_for)
    name = _name(common_name)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return builder.sign(key, None)
    return builder.sign(key, _hash_for(key))


def certificate_pem(cert: x509.Certificate) -> bytes:
    """The PEM encoding of ``cert``."""
    return cert.public_bytes(serialization.Encoding.PEM)


def load_certificate_pem(data: bytes) -> x509.Certificate:
    """Load exactly one PEM certificate from ``data``.

    Raises ``ValueError`` saying what is wrong when ``data`` holds no PEM block, more than one,
    a block that is not a certificate, or a certificate that does not parse.
    """
    certificates = load_certificate_chain_pem(data)
    if len(certificates) != 1:
        raise ValueError(
            f"expected exactly one PEM certificate, found {len(certificates)} "
            "(use a file that holds only this certificate)"
        )
    return certificates[0]


def load_certificate_chain_pem(data: bytes) -> list[x509.Certificate]:
    """Load one or more PEM certificates from ``data``, in the order they appear.

    Text outside PEM blocks is ignored. Raises ``ValueError`` when there is no PEM block, a block
    is not a ``CERTIFICATE`` (a private key pasted into a certificate file, for instance), or a
    certificate does not parse.
    """
    if not isinstance(data, bytes | bytearray):
        raise ValueError("PEM data must be bytes")
    blocks = list(_PEM_BLOCK.finditer(data))
    if not blocks:
        raise ValueError("no PEM certificate found (expected '-----BEGIN CERTIFICATE-----')")
    if len(_PEM_BEGIN.findall(data)) != len(blocks):
        raise ValueError("the PEM data has a BEGIN line without its matching END line")
    certificates: list[x509.Certificate] = []
    for index, block in enumerate(blocks, start=1):
        label = block.group(1).decode("ascii")
        if label != "CERTIFICATE":
            raise ValueError(f"PEM block {index} is a {label}, not a CERTIFICATE")
        try:
            certificates.append(parse_eagerly(x509.load_pem_x509_certificate(block.group(0))))
        except CERTIFICATE_ERRORS as exc:
            raise ValueError(f"PEM block {index} is not a valid X.509 certificate: {exc}") from exc
    return certificates


# What parsing a hostile certificate can raise: cryptography parses names and extensions lazily,
# and several of its complaints are not ValueErrors.
CERTIFICATE_ERRORS = (
    ValueError,
    TypeError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


def parse_eagerly(certificate: x509.Certificate) -> x509.Certificate:
    """Parse ``certificate``'s names and extensions now, so later readers cannot trip on them.

    Raises one of :data:`CERTIFICATE_ERRORS` for a malformed certificate.
    """
    _ = (certificate.subject, certificate.issuer, certificate.extensions)
    return certificate


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


def _validity(now: datetime | None, valid_for: timedelta) -> tuple[datetime, datetime]:
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    if valid_for <= timedelta(0):
        raise ValueError("valid_for must be positive")
    return now - CLOCK_SKEW, now + valid_for


def _name(common_name: str) -> x509.Name:
    if not common_name or len(common_name) > _MAX_COMMON_NAME:
        raise ValueError(f"a common name must have 1 to {_MAX_COMMON_NAME} characters")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    """A KeyUsage extension with exactly the named bits set."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _serial_number() -> int:
    # 159 bits with the top bit set: always positive, always 20 DER bytes, 158 random bits.
    return secrets.randbits(158) | (1 << 158)


def _hash_for(key: ec.EllipticCurvePrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key.curve, ec.SECP384R1):
        return hashes.SHA384()
    if isinstance(key.curve, ec.SECP256R1):
        return hashes.SHA256()
    raise ValueError(f"unsupported curve {key.curve.name}; use P-256 or P-384")


def _general_names(hostnames: Sequence[str]) -> list[x509.GeneralName]:
    if isinstance(hostnames, str) or not hostnames:
        raise ValueError("a TLS certificate needs at least one hostname (a sequence of strings)")
    names: list[x509.GeneralName] = []
    for hostname in hostnames:
        name = _general_name(hostname)
        if name not in names:
            names.append(name)
    return names


def _general_name(hostname: str) -> x509.GeneralName:
    text = hostname.strip() if isinstance(hostname, str) else ""
    try:
        return x509.IPAddress(ipaddress.ip_address(text.removeprefix("[").removesuffix("]")))
    except ValueError:
        pass
    problem = san_dns_name_problem(text)
    if problem is not None:
        raise ValueError(f"{hostname!r} is neither an IP address nor a valid DNS name: {problem}")
    return x509.DNSName(text.lower())
