"""The certificates of session secrets (kinds ``x509`` and ``x509-ca``): a secret's spec, mapped
onto the X.509 stack in :mod:`opencas.crypto.x509`.

This module only says what the session language means for a certificate — its ``valid_for``
spelling, ``endpoint``, ``san`` entries, and the key usages of a session CA and of an end entity;
:func:`opencas.crypto.x509.build_certificate` makes it. Failures are ``ValueError`` with a
message that the caller can attach to the secret it was building.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from opencas.crypto.keys import PrivateKey, PublicKey
from opencas.crypto.x509 import (
    CertificateUse,
    Issuer,
    build_certificate,
    common_name_subject,
    key_usage,
    parse_san_entry,
)
from opencas.policy.model import Endpoint, check_valid_for

_EXTENDED_KEY_USAGE = {
    "server": ExtendedKeyUsageOID.SERVER_AUTH,
    "client": ExtendedKeyUsageOID.CLIENT_AUTH,
}


def parse_valid_for(text: str) -> timedelta:
    """The period ``"<N>d"`` or ``"<N>h"`` as a ``timedelta``; raises ``ValueError`` otherwise.

    Accepts exactly what the session model accepts (at most 100 years).
    """
    check_valid_for(text)
    count = int(text[:-1])
    return timedelta(days=count) if text.endswith("d") else timedelta(hours=count)


def issue_certificate(
    key: PrivateKey,
    *,
    common_name: str,
    is_ca: bool,
    now: datetime,
    valid_for: timedelta,
    issuer: Issuer | None = None,
    endpoint: Endpoint | None = None,
    san: Sequence[str] = (),
    ca_path_length: int | None = 0,
    subject_public_key: PublicKey | None = None,
) -> x509.Certificate:
    """Issue the certificate of a secret with key ``key``: self-signed, or signed by ``issuer``.

    With ``subject_public_key`` the certificate certifies that key instead of ``key``'s (a
    workload's own key, whose private half the CAS never sees); it must then have an issuer.

    The subject is ``CN=common_name`` (1 to 64 characters). A CA (``is_ca``) gets
    BasicConstraints ``ca=True`` with ``ca_path_length`` and KeyUsage ``keyCertSign, cRLSign,
    digitalSignature``; an end entity gets ``ca=False``, KeyUsage ``digitalSignature`` (plus
    ``keyEncipherment`` for RSA keys), ExtendedKeyUsage ``serverAuth`` or ``clientAuth`` when
    ``endpoint`` is set, and the SAN entries ``san`` (``dns:`` / ``ip:``, see
    :func:`~opencas.crypto.x509.parse_san_entry`). Serial number, validity and signature are
    :func:`~opencas.crypto.x509.build_certificate`'s.

    Raises ``ValueError`` when the issuer's key does not belong to its certificate, the issuer is
    not a CA or is not valid at ``now``, ``now`` is naive, or a name or SAN entry is unusable.
    """
    if subject_public_key is not None and issuer is None:
        raise ValueError("a certificate for another party's key needs an issuer")
    try:
        subject = common_name_subject(common_name)
    except ValueError as exc:
        raise ValueError(f"common_name: {exc}") from None
    public = subject_public_key or key.public_key()
    signer: Issuer | PrivateKey = key if issuer is None else issuer
    names = tuple(parse_san_entry(entry) for entry in san)
    if is_ca:
        usage = key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True)
        use = CertificateUse(ca=True, path_length=ca_path_length, key_usage=usage, names=names)
    else:
        usage = key_usage(
            digital_signature=True, key_encipherment=isinstance(public, rsa.RSAPublicKey)
        )
        extended = (_EXTENDED_KEY_USAGE[endpoint],) if endpoint is not None else ()
        use = CertificateUse(ca=False, key_usage=usage, extended_key_usage=extended, names=names)
    return build_certificate(public, subject, use, signer=signer, valid_for=valid_for, now=now)
