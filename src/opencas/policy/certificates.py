"""X.509 certificates for session secrets (kinds ``x509`` and ``x509-ca``), and their keys.

This is separate from :mod:`opencas.crypto.x509`, which issues the CAS's own certificates: a
session may ask for any key type it declares (P-256, P-384, Ed25519, RSA-2048, RSA-3072), for
self-signed end entities, for server or client extended key usage and for DNS / IP subject
alternative names. Everything here is pure except key generation and serial numbers, which use the
operating system's CSPRNG; times come from the caller. Failures are ``ValueError`` with a message
that the caller can attach to the secret it was building.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from opencas.crypto.keys import PrivateKey, key_hash
from opencas.crypto.x509 import key_usage
from opencas.policy.model import KEY_TYPES, Endpoint, KeyType, check_valid_for

# Certificates start a little in the past so that a peer whose clock lags ours still accepts them.
CLOCK_SKEW: Final = timedelta(minutes=5)
# RFC 5280's upper bound for a common name.
MAX_COMMON_NAME: Final = 64
_RSA_SIZES: Final[dict[str, int]] = {"RSA-2048": 2048, "RSA-3072": 3072}
_RSA_TYPES: Final[dict[int, KeyType]] = {2048: "RSA-2048", 3072: "RSA-3072"}
_CURVE_TYPES: Final[dict[str, KeyType]] = {"secp256r1": "P-256", "secp384r1": "P-384"}


def generate_key(key_type: KeyType) -> PrivateKey:
    """Create a new private key of ``key_type``; raises ``ValueError`` for an unknown type."""
    if key_type == "P-256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "P-384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type in _RSA_SIZES:
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_SIZES[key_type])
    raise ValueError(f"unknown key type {key_type!r}; expected one of {', '.join(KEY_TYPES)}")


def key_type_of(key: PrivateKey) -> KeyType | None:
    """The session key type of ``key``, or ``None`` when sessions do not support it."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "Ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return _CURVE_TYPES.get(key.curve.name)
    return _RSA_TYPES.get(key.key_size)


def load_private_key(pem: str) -> PrivateKey:
    """Load an unencrypted PEM private key of a session key type.

    Raises ``ValueError`` when ``pem`` is not one PEM private key, is encrypted, or holds a key of
    a type sessions do not support (which it names).
    """
    try:
        key = serialization.load_pem_private_key(pem.encode("utf-8"), password=None)
    except TypeError as exc:
        raise ValueError("the private key is encrypted; give it without a password") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError("not a PEM private key that can be read") from exc
    if (
        not isinstance(
            key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
        )
        or key_type_of(key) is None
    ):
        raise ValueError(
            f"unsupported private key ({_describe(key)}); expected one of {', '.join(KEY_TYPES)}"
        )
    return key


def private_key_to_pem(key: PrivateKey) -> str:
    """Unencrypted PKCS#8 PEM of ``key``: the one form in which session private keys are kept."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def public_key_to_pem(key: PrivateKey) -> str:
    """PEM SubjectPublicKeyInfo of the public half of ``key``."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def certificate_to_pem(cert: x509.Certificate) -> str:
    """The PEM encoding of ``cert``."""
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def parse_valid_for(text: str) -> timedelta:
    """The period ``"<N>d"`` or ``"<N>h"`` as a ``timedelta``; raises ``ValueError`` otherwise.

    Accepts exactly what the session model accepts (at most 100 years).
    """
    check_valid_for(text)
    count = int(text[:-1])
    return timedelta(days=count) if text.endswith("d") else timedelta(hours=count)


def subject_alternative_names(entries: Sequence[str]) -> list[x509.GeneralName]:
    """The SAN entries for ``dns:NAME`` and ``ip:ADDR`` strings, duplicates dropped.

    Raises ``ValueError`` naming the entry for any other prefix, an empty DNS name or an address
    that is not an IPv4 or IPv6 literal.
    """
    names: list[x509.GeneralName] = []
    for entry in entries:
        prefix, _, rest = entry.partition(":")
        name: x509.GeneralName
        if prefix == "dns" and rest and rest.isascii():
            name = x509.DNSName(rest.lower())
        elif prefix == "ip":
            try:
                name = x509.IPAddress(ipaddress.ip_address(rest))
            except ValueError as exc:
                raise ValueError(f"san entry {entry!r} is not an IP address") from exc
        else:
            raise ValueError(
                f"san entry {entry!r} must be 'dns:NAME' (ASCII, 'xn--' form) or 'ip:ADDRESS'"
            )
        if name not in names:
            names.append(name)
    return names


def issue_certificate(
    key: PrivateKey,
    *,
    common_name: str,
    is_ca: bool,
    now: datetime,
    valid_for: timedelta,
    issuer_key: PrivateKey | None = None,
    issuer_certificate: x509.Certificate | None = None,
    endpoint: Endpoint | None = None,
    san: Sequence[str] = (),
    ca_path_length: int | None = 0,
    subject_public_key: ec.EllipticCurvePublicKey | None = None,
) -> x509.Certificate:
    """Issue the certificate of ``key``: self-signed, or signed by ``issuer_key``.

    With ``subject_public_key`` the certificate certifies that key instead of ``key``'s (a
    workload's own key, whose private half the CAS never sees); it must then have an issuer.

    The subject is ``CN=common_name`` (1 to 64 characters); the serial number is a random positive
    159-bit number; SubjectKeyIdentifier and (for issued certificates) AuthorityKeyIdentifier are
    set. A CA (``is_ca``) gets BasicConstraints ``ca=True`` with ``ca_path_length`` and KeyUsage
    ``keyCertSign, cRLSign, digitalSignature``; an end entity gets ``ca=False``, KeyUsage
    ``digitalSignature`` (plus ``keyEncipherment`` for RSA keys), ExtendedKeyUsage ``serverAuth``
    or ``clientAuth`` when ``endpoint`` is set, and the SAN entries ``san`` (``dns:`` / ``ip:``).
    The certificate is valid from ``CLOCK_SKEW`` before ``now`` for ``valid_for``, cut to the
    issuer's own validity. Signatures use SHA-384 for P-384 issuers, SHA-256 for P-256 and RSA,
    and Ed25519 for Ed25519.

    Raises ``ValueError`` when only one of ``issuer_key`` / ``issuer_certificate`` is given, the
    issuer key does not belong to the issuer certificate, the issuer is not a CA or is not valid
    at ``now``, ``now`` is naive, or a name or SAN entry is unusable.
    """
    if (issuer_key is None) != (issuer_certificate is None):
        raise ValueError("an issuer needs both its key and its certificate")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    if not 0 < len(common_name) <= MAX_COMMON_NAME:
        raise ValueError(f"common_name must have 1 to {MAX_COMMON_NAME} characters")
    if valid_for <= timedelta(0):
        raise ValueError("valid_for must be positive")
    if subject_public_key is not None and issuer_key is None:
        raise ValueError("a certificate for another party's key needs an issuer")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public = subject_public_key or key.public_key()
    not_before, not_after = now - CLOCK_SKEW, now + valid_for
    signer: PrivateKey = key
    issuer_name = subject
    authority_key_id: x509.AuthorityKeyIdentifier | None = None
    if issuer_key is not None and issuer_certificate is not None:
        _check_issuer(issuer_key, issuer_certificate)
        signer = issuer_key
        issuer_name = issuer_certificate.subject
        not_before = max(not_before, issuer_certificate.not_valid_before_utc)
        not_after = min(not_after, issuer_certificate.not_valid_after_utc)
        if not_after <= not_before:
            raise ValueError(
                "the issuer's certificate is not valid now "
                f"(valid until {issuer_certificate.not_valid_after_utc.isoformat()})"
            )
        authority_key_id = _authority_key_id(issuer_key, issuer_certificate)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public)
        .serial_number(secrets.randbits(158) | (1 << 158))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    if authority_key_id is not None:
        builder = builder.add_extension(authority_key_id, critical=False)
    if is_ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=ca_path_length), critical=True
        ).add_extension(
            key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        ).add_extension(
            key_usage(
                digital_signature=True, key_encipherment=isinstance(public, rsa.RSAPublicKey)
            ),
            critical=True,
        )
        if endpoint is not None:
            usage = (
                ExtendedKeyUsageOID.SERVER_AUTH
                if endpoint == "server"
                else ExtendedKeyUsageOID.CLIENT_AUTH
            )
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    names = subject_alternative_names(san)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, _signature_hash(signer))


def is_ca_certificate(cert: x509.Certificate) -> bool:
    """True when ``cert`` carries BasicConstraints ``ca=True``."""
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _check_issuer(issuer_key: PrivateKey, issuer_certificate: x509.Certificate) -> None:
    try:
        certified = issuer_certificate.public_key()
    except UnsupportedAlgorithm as exc:
        raise ValueError("the issuer certificate's key is of an unsupported type") from exc
    if not isinstance(
        certified, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
    ) or key_hash(certified) != key_hash(issuer_key):
        raise ValueError("the issuer's private key does not belong to the issuer's certificate")
    if not is_ca_certificate(issuer_certificate):
        raise ValueError("the issuer's certificate is not a CA certificate (BasicConstraints)")


def _authority_key_id(
    issuer_key: PrivateKey, issuer_certificate: x509.Certificate
) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def _signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return hashes.SHA384()
    return hashes.SHA256()


def _describe(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"ECDSA {key.curve.name}"
    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA-{key.key_size}"
    return type(key).__name__
