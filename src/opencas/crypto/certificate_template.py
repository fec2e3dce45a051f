"""Certificates made again for another key: a certificate the builder made, with its key, serial
number and validity replaced in its DER, and signed anew.

An attestation issues a session's certificates again for every workload key: the same issuer,
subject, extensions and signature algorithm, only the subject's key (and so its key
identifier), the serial number and the validity change. ``cryptography``'s builder assembles
Python objects for all of it each time, which costs about as much as the signature; a
:class:`CertificateTemplate` keeps the DER of one certificate the builder made (the prototype)
and where those fields lie in it, and writes only the fields that change.

What :meth:`CertificateTemplate.fill` gives is, byte for byte, the TBSCertificate the builder
makes for the same key, serial number and validity: every field it writes has the same length
as the prototype's, so no enclosing length changes. When a new value would not (a key of
another size, a time that needs GeneralizedTime where the prototype has UTCTime), it gives
``None`` and the caller uses the builder. Everything here is pure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from opencas.crypto import der
from opencas.crypto.keys import PublicKey

_SUBJECT_KEY_IDENTIFIER = "2.5.29.14"
_SERIAL_SIZE = 20
# RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
_LAST_UTC_TIME_YEAR = 2049


@dataclass(frozen=True)
class _Span:
    """Where a field's content lies in the TBSCertificate: ``tbs[start:start + size]``."""

    start: int
    size: int


@dataclass(frozen=True)
class CertificateTemplate:
    """The prototype's TBSCertificate, its signature algorithm and where the changing fields are."""

    tbs: bytes
    signature_algorithm: bytes
    serial: _Span
    not_before: _Span
    not_after: _Span
    public_key: _Span
    key_identifier: _Span
    #: The prototype's SubjectPublicKeyInfo up to its key bits: the algorithm and the BIT
    #: STRING's header, which a key of the same shape shares.
    key_prefix: bytes

    @classmethod
    def of(cls, prototype: x509.Certificate) -> CertificateTemplate | None:
        """The template of ``prototype``; ``None`` when it is not shaped as the builder makes
        certificates (v3, a 20-byte serial number, a SubjectKeyIdentifier of 20 bytes)."""
        try:
            return cls._of(prototype)
        except ValueError:
            return None

    @classmethod
    def _of(cls, prototype: x509.Certificate) -> CertificateTemplate | None:
        whole = der.read_single(
            prototype.public_bytes(serialization.Encoding.DER), tag=der.SEQUENCE
        )
        parts = der.children(whole)
        if len(parts) != 3:
            return None
        tbs_element, algorithm, _signature = parts
        tbs = tbs_element.raw
        fields = der.children(der.read_single(tbs, tag=der.SEQUENCE))
        if len(fields) != 8 or not fields[0].context(0) or not fields[7].context(3):
            return None
        serial, validity, spki = fields[1], fields[4], fields[6]
        if serial.tag != der.INTEGER or len(serial.content) != _SERIAL_SIZE:
            return None
        not_before, not_after = der.children(validity, tag=der.SEQUENCE)
        key_identifier = _key_identifier_span(fields[7])
        if key_identifier is None:
            return None
        key_bits = der.children(spki, tag=der.SEQUENCE)[-1]
        key_prefix = len(spki.raw) - len(der.bit_string_bytes(key_bits))
        return cls(
            tbs=tbs,
            signature_algorithm=algorithm.raw,
            serial=_content_span(serial),
            not_before=_content_span(not_before),
            not_after=_content_span(not_after),
            public_key=_Span(spki.offset, len(spki.raw)),
            key_identifier=key_identifier,
            key_prefix=spki.raw[:key_prefix],
        )

    def fill(
        self,
        public_key: PublicKey,
        serial_number: int,
        not_before: datetime,
        not_after: datetime,
        sign: Callable[[bytes], bytes],
    ) -> x509.Certificate | None:
        """The certificate of ``public_key`` with ``serial_number`` and the validity given,
        signed by ``sign`` (the signature over the TBSCertificate, in the prototype's
        algorithm); ``None`` when one of the new fields would not keep its length."""
        spki = public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if not spki.startswith(self.key_prefix):
            return None
        # RFC 5280 4.2.1.2, method 1, as the builder's SubjectKeyIdentifier.from_public_key:
        # SHA-1 over the subjectPublicKey bits.
        key_identifier = hashlib.sha1(spki[len(self.key_prefix) :], usedforsecurity=False)
        values = (
            (self.serial, _integer_content(serial_number)),
            (self.not_before, _time_text(not_before)),
            (self.not_after, _time_text(not_after)),
            (self.public_key, spki),
            (self.key_identifier, key_identifier.digest()),
        )
        tbs = self.tbs
        pieces: list[bytes] = []
        position = 0
        for span, value in sorted(values, key=lambda item: item[0].start):
            if len(value) != span.size:
                return None
            pieces.append(tbs[position : span.start])
            pieces.append(value)
            position = span.start + span.size
        pieces.append(tbs[position:])
        new_tbs = b"".join(pieces)
        signature = b"\x00" + sign(new_tbs)
        body = new_tbs + self.signature_algorithm + _tlv(der.BIT_STRING, signature)
        return x509.load_der_x509_certificate(_tlv(der.SEQUENCE, body))


def _content_span(element: der.Element) -> _Span:
    header = len(element.raw) - len(element.content)
    return _Span(element.offset + header, len(element.content))


def _key_identifier_span(extensions: der.Element) -> _Span | None:
    for extension in der.children(der.only(extensions), tag=der.SEQUENCE):
        items = der.children(extension)
        if der.object_identifier(items[0]) != _SUBJECT_KEY_IDENTIFIER:
            continue
        wrapped = der.expect(items[-1], der.OCTET_STRING, "extension value")
        base = wrapped.offset + len(wrapped.raw) - len(wrapped.content)
        inner = der.read_single(wrapped.content, base=base, tag=der.OCTET_STRING)
        span = _content_span(inner)
        return span if span.size == len(hashlib.sha1(usedforsecurity=False).digest()) else None
    return None


def _integer_content(value: int) -> bytes:
    # DER's minimal two's complement of a positive INTEGER: a leading zero when the top bit is set.
    return value.to_bytes(value.bit_length() // 8 + 1, "big")


def _time_text(moment: datetime) -> bytes:
    # As the builder writes a validity time: UTC, whole seconds, two-digit years through 2049.
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y%m%d%H%M%S") + "Z"
    return (text[2:] if utc.year <= _LAST_UTC_TIME_YEAR else text).encode("ascii")


def _tlv(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content
