"""AMD's SEV-SNP certificates (ARK, ASK, ASVK, VCEK, VLEK), read without ``cryptography``'s parser.

Every AMD VCEK and VLEK has serial number 0, which RFC 5280 forbids and which ``cryptography``
warns about (and will refuse) when it loads the certificate. Rather than depend on that
deprecated path, the certificate is taken apart here with the strict DER reader
(:mod:`opencas.crypto.der`) and its signature verified over the ``tbsCertificate`` bytes with
``cryptography``'s primitives, which never see the certificate as a whole.

Only what verification needs is kept: the signed bytes, the signature and its RSA-PSS
parameters, issuer and subject (their DER, to chain them by equality, and their common name),
the validity window, the public key and the extensions. Every failure raises
:class:`EvidenceError` with ``check="chain"`` naming the certificate and the offset.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from opencas.crypto import der
from opencas.crypto.encoding import b64_decode
from opencas.errors import EvidenceError

#: The largest certificate accepted (DER). AMD's are 1.3 KiB (VCEK) to 1.7 KiB (ARK).
MAX_CERTIFICATE_BYTES = 8 * 1024
#: The largest certificate chain accepted (PEM): AMD's ASK or ASVK with the ARK is 4.6 KiB.
MAX_CHAIN_BYTES = 32 * 1024

_RSASSA_PSS = "1.2.840.113549.1.1.10"
_MGF1 = "1.2.840.113549.1.1.8"
_SHA384 = "2.16.840.1.101.3.4.2.2"
_COMMON_NAME = "2.5.4.3"
_BASIC_CONSTRAINTS = "2.5.29.19"
_KEY_USAGE = "2.5.29.15"
#: The critical extensions this code understands; a certificate with another one is refused,
#: as RFC 5280 requires of a verifier that does not know it.
_KNOWN_CRITICAL = frozenset({_BASIC_CONSTRAINTS, _KEY_USAGE})
#: keyCertSign is bit 5 of KeyUsage, counted from the most significant bit of the first byte.
_KEY_CERT_SIGN = 0x80 >> 5
#: The PSS salt AMD signs with: the length of a SHA-384 digest.
PSS_SALT_LENGTH = 48
_PEM_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n([A-Za-z0-9+/=\r\n]+?)-----END CERTIFICATE-----"
)


@dataclass(frozen=True)
class AmdCertificate:
    """One AMD certificate, as far as SEV-SNP verification reads it.

    ``extensions`` maps each extension's dotted OID to its ``extnValue`` bytes (the content of
    the OCTET STRING). ``issuer`` and ``subject`` are the DER of the names.
    """

    what: str
    der: bytes
    tbs: bytes
    signature: bytes
    issuer: bytes
    subject: bytes
    common_name: str
    not_before: datetime
    not_after: datetime
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    extensions: Mapping[str, bytes]

    def refuse(self, message: str) -> EvidenceError:
        """The chain error ``message`` about this certificate."""
        return EvidenceError(f"the {self.what} certificate {message}", check="chain")

    def check_valid_at(self, at: datetime) -> None:
        """Return if ``at`` is inside the validity window; else a chain error."""
        if not self.not_before <= at <= self.not_after:
            raise self.refuse(
                f"'{self.common_name}' is valid from {self.not_before.isoformat()} to "
                f"{self.not_after.isoformat()}, not at {at.isoformat()}"
            )

    def check_is_authority(self) -> None:
        """Return if this is a CA certificate allowed to sign certificates; else a chain error.

        Basic constraints must say ``cA`` and key usage, when present, must allow keyCertSign.
        """
        try:
            constraints = self.extensions.get(_BASIC_CONSTRAINTS)
            fields = [] if constraints is None else der.children(der.read_single(constraints))
            is_ca = bool(fields) and fields[0].tag == der.BOOLEAN and fields[0].content == b"\xff"
            usage = self.extensions.get(_KEY_USAGE)
            bits = (
                b"\x00\xff" if usage is None else der.read_single(usage, tag=der.BIT_STRING).content
            )
            may_sign = len(bits) > 1 and bool(bits[1] & _KEY_CERT_SIGN)
        except ValueError as exc:
            raise self.refuse(f"'{self.common_name}' has malformed CA extensions ({exc})") from exc
        if not (is_ca and may_sign):
            raise self.refuse(
                f"'{self.common_name}' is not a certificate authority (basic constraints cA and "
                "key usage keyCertSign), so it cannot vouch for another certificate"
            )

    def check_signed_by(self, issuer: AmdCertificate) -> None:
        """Return if ``issuer`` issued this certificate: names chain and the RSA-PSS signature
        (SHA-384, MGF1-SHA-384, salt 48) by ``issuer``'s key verifies over the TBS bytes."""
        if self.issuer != issuer.subject:
            raise self.refuse(
                f"'{self.common_name}' is not issued by '{issuer.common_name}' (the issuer name "
                "differs from its subject name)"
            )
        key = issuer.public_key
        if not isinstance(key, rsa.RSAPublicKey):
            raise self.refuse(f"'{self.common_name}' names an issuer whose key is not RSA")
        try:
            key.verify(
                self.signature,
                self.tbs,
                padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=PSS_SALT_LENGTH),
                hashes.SHA384(),
            )
        except InvalidSignature as exc:
            raise self.refuse(
                f"'{self.common_name}' has a signature that does not verify with the key of "
                f"'{issuer.common_name}'"
            ) from exc


def parse_amd_certificate(data: bytes, what: str) -> AmdCertificate:
    """Parse the DER certificate ``data``; ``what`` names it in errors (``VCEK``, ``ARK``...).

    Strict: X.509 v3, signed with RSASSA-PSS over SHA-384 (MGF1 SHA-384, salt 48) and the same
    algorithm inside and outside the TBS, a public key ``cryptography`` loads, at most
    :data:`MAX_CERTIFICATE_BYTES` bytes. Raises :class:`EvidenceError` (``check="chain"``).
    """
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise EvidenceError(
            f"the {what} certificate is {len(data)} bytes, more than the limit of "
            f"{MAX_CERTIFICATE_BYTES}",
            check="chain",
        )
    try:
        return _parse(data, what)
    except ValueError as exc:
        raise EvidenceError(
            f"the {what} certificate is not a valid DER certificate: {exc}", check="chain"
        ) from exc


def parse_amd_chain(data: bytes, what: tuple[str, ...]) -> tuple[AmdCertificate, ...]:
    """Parse the PEM chain ``data``: exactly ``len(what)`` certificates, named ``what`` in order.

    At most :data:`MAX_CHAIN_BYTES` bytes; raises :class:`EvidenceError` (``check="chain"``).
    """
    if len(data) > MAX_CHAIN_BYTES:
        raise EvidenceError(
            f"the AMD certificate chain is {len(data)} bytes, more than the limit of "
            f"{MAX_CHAIN_BYTES}",
            check="chain",
        )
    blocks = _PEM_BLOCK.findall(data)
    if len(blocks) != len(what):
        raise EvidenceError(
            f"the AMD certificate chain must hold {len(what)} PEM certificates "
            f"({', then '.join(what)}), not {len(blocks)}",
            check="chain",
        )
    certificates = []
    for block, name in zip(blocks, what, strict=True):
        try:
            raw = b64_decode(b"".join(block.split()).decode("ascii"))
        except ValueError as exc:
            raise EvidenceError(
                f"the {name} certificate of the AMD chain is not valid base64", check="chain"
            ) from exc
        certificates.append(parse_amd_certificate(raw, name))
    return tuple(certificates)


def _parse(data: bytes, what: str) -> AmdCertificate:
    top = der.children(der.read_single(data, tag=der.SEQUENCE))
    if len(top) != 3:
        raise ValueError("a certificate has three parts (TBS, algorithm, signature)")
    tbs_element, algorithm, signature = top
    fields = der.children(tbs_element, tag=der.SEQUENCE)
    if len(fields) < 7 or not fields[0].context(0):
        raise ValueError(f"the TBS at offset {tbs_element.offset} is not an X.509 v3 TBS")
    version = der.children(fields[0])
    if len(version) != 1 or der.integer(version[0]) != 2:
        raise ValueError(f"the version at offset {fields[0].offset} is not v3")
    # fields[1] is the serial number: 0 on AMD's VCEKs and VLEKs, and not used.
    der.integer(fields[1])
    if fields[2].raw != algorithm.raw:
        raise ValueError("the signature algorithm inside the TBS differs from the one outside")
    _check_pss(algorithm)
    issuer, validity, subject, spki = fields[3], fields[4], fields[5], fields[6]
    der.children(issuer, tag=der.SEQUENCE)
    times = der.children(validity, tag=der.SEQUENCE)
    if len(times) != 2:
        raise ValueError(f"the validity at offset {validity.offset} is not two times")
    extensions: dict[str, bytes] = {}
    for optional in fields[7:]:
        if optional.context(3):
            extensions = _extensions(optional, what)
        elif optional.tag not in (0x81, 0x82):
            raise ValueError(f"the TBS field at offset {optional.offset} is unexpected")
    return AmdCertificate(
        what=what,
        der=data,
        tbs=tbs_element.raw,
        signature=der.bit_string_bytes(signature),
        issuer=issuer.raw,
        subject=subject.raw,
        common_name=_common_name(subject),
        not_before=der.time(times[0]),
        not_after=der.time(times[1]),
        public_key=_public_key(der.expect(spki, der.SEQUENCE, "subject public key info"), what),
        extensions=MappingProxyType(extensions),
    )


def _check_pss(algorithm: der.Element) -> None:
    """The algorithm is RSASSA-PSS with SHA-384, MGF1 over SHA-384, salt 48, trailer 1."""
    parts = der.children(algorithm, tag=der.SEQUENCE)
    if len(parts) != 2 or der.object_identifier(parts[0]) != _RSASSA_PSS:
        raise ValueError(f"the signature algorithm at offset {algorithm.offset} is not RSA-PSS")
    found: dict[int, der.Element] = {}
    for item in der.children(parts[1], tag=der.SEQUENCE):
        number = item.tag ^ 0xA0
        if number not in range(4) or number in found:
            raise ValueError(f"the RSA-PSS parameter at offset {item.offset} is unexpected")
        found[number] = der.only(item)
    hash_ok = 0 in found and _hash_is_sha384(found[0])
    mgf_ok = 1 in found and _mgf_is_sha384(found[1])
    salt_ok = 2 in found and der.integer(found[2]) == PSS_SALT_LENGTH
    trailer_ok = 3 not in found or der.integer(found[3]) == 1
    if not (hash_ok and mgf_ok and salt_ok and trailer_ok):
        raise ValueError(
            f"the RSA-PSS parameters at offset {parts[1].offset} are not SHA-384, MGF1 with "
            f"SHA-384 and salt {PSS_SALT_LENGTH}"
        )


def _hash_is_sha384(identifier: der.Element) -> bool:
    parts = der.children(identifier, tag=der.SEQUENCE)
    absent_or_null = len(parts) == 1 or (len(parts) == 2 and parts[1].raw == b"\x05\x00")
    return absent_or_null and der.object_identifier(parts[0]) == _SHA384


def _mgf_is_sha384(identifier: der.Element) -> bool:
    parts = der.children(identifier, tag=der.SEQUENCE)
    return (
        len(parts) == 2 and der.object_identifier(parts[0]) == _MGF1 and _hash_is_sha384(parts[1])
    )


def _common_name(name: der.Element) -> str:
    for relative in der.children(name, tag=der.SEQUENCE):
        for attribute in der.children(relative, tag=der.SET):
            parts = der.children(attribute, tag=der.SEQUENCE)
            if len(parts) == 2 and der.object_identifier(parts[0]) == _COMMON_NAME:
                if parts[1].tag not in der.STRING_TAGS:
                    raise ValueError(f"the common name at offset {parts[1].offset} is no string")
                return parts[1].content.decode("utf-8", errors="replace")[:64]
    raise ValueError(f"the name at offset {name.offset} has no common name")


def _public_key(spki: der.Element, what: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    try:
        key = load_der_public_key(spki.raw)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"the public key at offset {spki.offset} does not load") from exc
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ValueError(f"the public key at offset {spki.offset} is neither RSA nor EC")
    return key


def _extensions(wrapper: der.Element, what: str) -> dict[str, bytes]:
    extensions: dict[str, bytes] = {}
    for extension in der.children(der.only(wrapper), tag=der.SEQUENCE):
        parts = der.children(extension, tag=der.SEQUENCE)
        critical = False
        if len(parts) == 3 and parts[1].tag == der.BOOLEAN:
            critical = parts[1].content != b"\x00"
            parts = [parts[0], parts[2]]
        if len(parts) != 2:
            raise ValueError(f"the extension at offset {extension.offset} is malformed")
        oid = der.object_identifier(parts[0])
        if oid in extensions:
            raise ValueError(f"the extension {oid} appears twice")
        if critical and oid not in _KNOWN_CRITICAL:
            raise ValueError(f"the {what} has the critical extension {oid}, unknown here")
        extensions[oid] = der.expect(parts[1], der.OCTET_STRING, f"extension {oid}").content
    return extensions
