"""How long a collateral document stays usable: the window a cache may reuse it in.

The window is read from the document itself: for DCAP collateral the issue dates and
``nextUpdate`` of its TCB info and QE identity and the update times of its two CRLs; for a
certificate or a chain of them, their validity periods. This is a caching decision only; whether
the document is valid for some evidence stays the verifier's.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from opencas.attestation.verifier import CollateralKey
from opencas.crypto.canonical import strict_json_object
from opencas.crypto.pem import CERTIFICATE_ERRORS, load_certificate_chain_pem

DCAP_MEMBERS = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)
"""The members of a DCAP collateral JSON object (dcap-qvl's ``QuoteCollateralV3``)."""

T = TypeVar("T")


@dataclass(frozen=True)
class Window:
    """When a document is current: from ``not_before`` up to (excluding) ``not_after``."""

    not_before: datetime
    not_after: datetime

    def covers(self, at: datetime) -> bool:
        """Whether ``at`` lies in the window."""
        return self.not_before <= at < self.not_after


def document_window(key: CollateralKey, data: bytes) -> Window:
    """The window in which the document ``data`` of ``key`` is current.

    Raises ``ValueError`` saying what is wrong when ``data`` is not a document of its kind.
    """
    if key.kind == "dcap":
        return _dcap_window(data)
    if key.kind in ("amd-vcek", "amd-vlek"):
        return _certificates_window([_der_certificate(data)])
    if key.kind == "simulated":
        return _simulated_window(data)
    return _certificates_window(_quietly(load_certificate_chain_pem, data))


def _simulated_window(data: bytes) -> Window:
    body = strict_json_object(data, "simulated collateral").get("body")
    if not isinstance(body, dict):
        raise ValueError("the simulated collateral has no body")
    return Window(
        _rfc3339(body.get("issue_date"), "issue_date"),
        _rfc3339(body.get("next_update"), "next_update"),
    )


def _dcap_window(data: bytes) -> Window:
    document = strict_json_object(data, "DCAP collateral")
    missing = [name for name in DCAP_MEMBERS if not isinstance(document.get(name), str)]
    if missing:
        raise ValueError(f"the DCAP collateral has no string member {', '.join(missing)}")
    starts, ends = [], []
    for name in ("tcb_info", "qe_identity"):
        signed = strict_json_object(document[name].encode("utf-8"), name)
        starts.append(_rfc3339(signed.get("issueDate"), f"{name} issueDate"))
        ends.append(_rfc3339(signed.get("nextUpdate"), f"{name} nextUpdate"))
    for name in ("pck_crl", "root_ca_crl"):
        crl = _hex_crl(document[name], name)
        starts.append(crl.last_update_utc)
        if crl.next_update_utc is None:
            raise ValueError(f"the {name} has no nextUpdate")
        ends.append(crl.next_update_utc)
    return Window(max(starts), min(ends))


def _rfc3339(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"the {what} is missing")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"the {what} {value[:40]!r} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise ValueError(f"the {what} {value[:40]!r} has no time zone")
    return parsed.astimezone(UTC)


def _hex_crl(text: str, what: str) -> x509.CertificateRevocationList:
    try:
        return x509.load_der_x509_crl(bytes.fromhex(text))
    except ValueError as exc:
        raise ValueError(f"the {what} is not the hex of a DER CRL: {exc}") from exc


def _der_certificate(data: bytes) -> x509.Certificate:
    try:
        return _quietly(x509.load_der_x509_certificate, data)
    except CERTIFICATE_ERRORS as exc:
        raise ValueError(f"not a DER X.509 certificate: {exc}") from exc


def _certificates_window(certificates: list[x509.Certificate]) -> Window:
    return Window(
        max(c.not_valid_before_utc for c in certificates),
        min(c.not_valid_after_utc for c in certificates),
    )


def _quietly(parse: Callable[[bytes], T], data: bytes) -> T:
    # AMD's certificates all have serial number 0, which cryptography warns about; the warning
    # says nothing the verifier does not check itself.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return parse(data)


def dcap_json(members: dict[str, str]) -> bytes:
    """The DCAP collateral JSON text of ``members`` (every member of :data:`DCAP_MEMBERS`)."""
    return json.dumps({name: members[name] for name in DCAP_MEMBERS}, indent=2).encode() + b"\n"
