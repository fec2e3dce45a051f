"""The PEM codec: certificates, certificate chains, private keys and public keys.

Dumping gives bytes (``.decode("ascii")`` makes the text that sessions and records keep);
loading takes bytes and raises ``ValueError`` with a message that says what is wrong with the
data, never quoting it (a private key may be in it).
"""

from __future__ import annotations

import re
from collections.abc import Collection

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from opencas.crypto.keys import KEY_TYPES, KeyType, PrivateKey, PublicKey, describe_key, key_type_of

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----(?:\r?\n)?", re.DOTALL
)
_PEM_BEGIN = re.compile(rb"-----BEGIN ")

# What parsing a hostile certificate can raise: cryptography parses names and extensions lazily,
# and several of its complaints are not ValueErrors.
CERTIFICATE_ERRORS = (
    ValueError,
    TypeError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


def pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    """The PEM blocks in ``data`` as ``(label, block)`` pairs, in the order they appear.

    Text outside the blocks is ignored. Raises ``ValueError`` when ``data`` is not bytes or has a
    BEGIN line without its matching END line.
    """
    if not isinstance(data, bytes | bytearray):
        raise ValueError("PEM data must be bytes")
    blocks = [
        (match.group(1).decode("ascii"), match.group(0)) for match in _PEM_BLOCK.finditer(data)
    ]
    if len(_PEM_BEGIN.findall(data)) != len(blocks):
        raise ValueError("the PEM data has a BEGIN line without its matching END line")
    return blocks


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
    blocks = pem_blocks(data)
    if not blocks:
        raise ValueError("no PEM certificate found (expected '-----BEGIN CERTIFICATE-----')")
    certificates: list[x509.Certificate] = []
    for index, (label, block) in enumerate(blocks, start=1):
        if label != "CERTIFICATE":
            raise ValueError(f"PEM block {index} is a {label}, not a CERTIFICATE")
        try:
            certificates.append(parse_eagerly(x509.load_pem_x509_certificate(block)))
        except CERTIFICATE_ERRORS as exc:
            raise ValueError(f"PEM block {index} is not a valid X.509 certificate: {exc}") from exc
    return certificates


def parse_eagerly(certificate: x509.Certificate) -> x509.Certificate:
    """Parse ``certificate``'s names and extensions now, so later readers cannot trip on them.

    Raises one of :data:`CERTIFICATE_ERRORS` for a malformed certificate.
    """
    _ = (certificate.subject, certificate.issuer, certificate.extensions)
    return certificate


def private_key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM of ``key`` (for files and records that the platform protects)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key_pem(
    data: bytes, accepted: Collection[KeyType] = KEY_TYPES, *, checked: bool = True
) -> PrivateKey:
    """Load an unencrypted PEM private key whose key type is one of ``accepted``.

    ``checked=False`` skips checking that an RSA key's numbers are consistent, which takes about
    80 ms for a 3072-bit key and holds the GIL all along (stalling every other request): only for
    keys this CAS made, or checked, itself and kept where nobody else can change them.
    Raises ``ValueError`` when ``data`` is not a PEM private key, is encrypted, or holds a key of
    another type (which it names).
    """
    if not isinstance(data, bytes | bytearray):
        raise ValueError("PEM data must be bytes")
    try:
        key = serialization.load_pem_private_key(
            data, password=None, unsafe_skip_rsa_key_validation=not checked
        )
    except TypeError as exc:
        raise ValueError("the private key is encrypted; give it without a password") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError("not a PEM private key that can be read") from exc
    if (
        not isinstance(
            key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
        )
        or key_type_of(key) not in accepted
    ):
        raise ValueError(
            f"unsupported private key ({describe_key(key)}); expected one of {', '.join(accepted)}"
        )
    return key


def public_key_pem(key: PublicKey) -> bytes:
    """PEM SubjectPublicKeyInfo of ``key``."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key_pem(data: bytes) -> PublicKey:
    """Load a PEM SubjectPublicKeyInfo holding an ECDSA, Ed25519 or RSA key.

    Raises ``ValueError`` when ``data`` is not a PEM public key or holds another kind of key.
    """
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM public key that can be read ({exc})") from None
    if not isinstance(
        public, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
    ):
        raise ValueError(f"unsupported key type {type(public).__name__}")
    return public
