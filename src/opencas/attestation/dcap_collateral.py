"""The DCAP collateral bundle: read strictly, with the window in which all of it is valid.

A bundle is one JSON object in dcap-qvl's ``QuoteCollateralV3`` form (``docs/attestation.md``):
``pck_crl_issuer_chain``, ``tcb_info_issuer_chain`` and ``qe_identity_issuer_chain`` (PEM),
``root_ca_crl`` and ``pck_crl`` (hex DER), ``tcb_info`` and ``qe_identity`` (the exact signed
JSON texts: the ``tcbInfo`` and ``enclaveIdentity`` objects of Intel's answers) and
``tcb_info_signature`` / ``qe_identity_signature`` (hex, 64-byte r‖s). Nothing else is
accepted: in particular not dcap-qvl's optional ``pck_certificate_chain``, which would make
dcap-qvl check a PCK chain other than the quote's own.

Reading a bundle checks its shape, which platform it describes, and its signatures: each issuer
chain up to the pinned root (it must end in that very certificate), the two CRLs by their
issuers, and the TCB info and QE identity by their signing certificates. dcap-qvl checks them
again at every verification; checking them here, once per bundle, says precisely which part
of a bad bundle is wrong, and a bundle that verifies is cached by its digest.

The window is the span where every part is valid: from the latest issue date (TCB info, QE
identity, CRL ``thisUpdate``, issuer certificates' ``notBefore``) to the earliest expiry
(``nextUpdate``, ``notAfter``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dcap_qvl
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from opencas.attestation.dcap_quote import Tee
from opencas.crypto.canonical import member_mismatch, strict_json_object
from opencas.crypto.pem import CERTIFICATE_ERRORS, load_certificate_chain_pem
from opencas.errors import EvidenceError

#: The largest collateral bundle accepted. Real ones are 15-20 KiB; a PCK CRL of a busy CA can
#: grow to some hundred KiB.
MAX_COLLATERAL_BYTES = 1024 * 1024

_KEYS = frozenset(
    {
        "pck_crl_issuer_chain",
        "root_ca_crl",
        "pck_crl",
        "tcb_info_issuer_chain",
        "tcb_info",
        "tcb_info_signature",
        "qe_identity_issuer_chain",
        "qe_identity",
        "qe_identity_signature",
    }
)
#: The PCK CAs by their common name, as ``CollateralKey`` param ``ca`` names them.
PCK_CA_BY_NAME = {
    "Intel SGX PCK Processor CA": "processor",
    "Intel SGX PCK Platform CA": "platform",
}
_TCB_INFO_ID = {"sgx": "SGX", "tdx": "TDX"}
# An issuer chain is a signing certificate or CA, maybe an intermediate, and the root.
_MAX_CHAIN = 3
_QE_IDENTITY_ID = {"sgx": "QE", "tdx": "TD_QE"}


@dataclass(frozen=True)
class DcapCollateral:
    """A parsed bundle: dcap-qvl's object, what it is for and when it is valid."""

    collateral: dcap_qvl.QuoteCollateralV3
    tee: Tee
    fmspc: str
    pck_ca: str
    not_before: datetime
    not_after: datetime
    tcb_evaluation_number: int

    def check_valid_at(self, at: datetime, what: str) -> None:
        """Raise :class:`EvidenceError` (``check="collateral"``) unless valid at ``at``."""
        if at < self.not_before:
            raise EvidenceError(
                f"the DCAP collateral for {what} is not yet valid at {_iso(at)}: it is valid "
                f"from {_iso(self.not_before)} to {_iso(self.not_after)}",
                check="collateral",
            )
        if at > self.not_after:
            raise EvidenceError(
                f"the DCAP collateral for {what} expired at {_iso(self.not_after)} (valid from "
                f"{_iso(self.not_before)}); verifying at {_iso(at)} needs fresh collateral",
                check="collateral",
            )


def parse_collateral(data: bytes, what: str, root: bytes) -> DcapCollateral:
    """Parse and verify the bundle ``data`` (the collateral for ``what``, named in errors).

    ``root`` is the DER trust anchor every issuer chain must end in. Raises
    :class:`EvidenceError` with ``check="collateral"`` naming the member that is wrong.
    """
    if len(data) > MAX_COLLATERAL_BYTES:
        raise _error(what, f"is larger than the limit of {MAX_COLLATERAL_BYTES} bytes")
    try:
        bundle = strict_json_object(data, "DCAP collateral bundle")
    except ValueError as exc:
        raise _error(what, f"is not a JSON object: {exc}") from exc
    mismatch = member_mismatch(bundle, _KEYS)
    if mismatch is not None:
        raise _error(what, f"has the wrong members ({mismatch})")
    text = {name: _string(bundle, name, what) for name in sorted(_KEYS)}
    raw = {
        name: _hex(text[name], name, what)
        for name in ("root_ca_crl", "pck_crl", "tcb_info_signature", "qe_identity_signature")
    }
    tcb_info = _signed_body(text["tcb_info"], "tcb_info", what)
    qe_identity = _signed_body(text["qe_identity"], "qe_identity", what)
    tee = _tee_of(tcb_info, qe_identity, what)
    starts: list[datetime] = []
    ends: list[datetime] = []
    for name, body in (("tcb_info", tcb_info), ("qe_identity", qe_identity)):
        starts.append(_date(body, "issueDate", name, what))
        ends.append(_date(body, "nextUpdate", name, what))
    signers: dict[str, x509.Certificate] = {}
    for name in ("pck_crl_issuer_chain", "tcb_info_issuer_chain", "qe_identity_issuer_chain"):
        chain = _verified_chain(text[name], name, what, root)
        signers[name] = chain[0]
        starts += [certificate.not_valid_before_utc for certificate in chain]
        ends += [certificate.not_valid_after_utc for certificate in chain]
    anchor = x509.load_der_x509_certificate(root)
    for name, issuer in (("root_ca_crl", anchor), ("pck_crl", signers["pck_crl_issuer_chain"])):
        this_update, next_update = _crl_window(raw[name], name, what, issuer)
        starts.append(this_update)
        ends.append(next_update)
    for name, signer in (
        ("tcb_info", signers["tcb_info_issuer_chain"]),
        ("qe_identity", signers["qe_identity_issuer_chain"]),
    ):
        _check_signature(signer, raw[f"{name}_signature"], text[name].encode("utf-8"), name, what)
    collateral = dcap_qvl.QuoteCollateralV3(
        pck_crl_issuer_chain=text["pck_crl_issuer_chain"],
        root_ca_crl=raw["root_ca_crl"],
        pck_crl=raw["pck_crl"],
        tcb_info_issuer_chain=text["tcb_info_issuer_chain"],
        tcb_info=text["tcb_info"],
        tcb_info_signature=raw["tcb_info_signature"],
        qe_identity_issuer_chain=text["qe_identity_issuer_chain"],
        qe_identity=text["qe_identity"],
        qe_identity_signature=raw["qe_identity_signature"],
    )
    return DcapCollateral(
        collateral=collateral,
        tee=tee,
        fmspc=_fmspc(tcb_info, what),
        pck_ca=_pck_ca(signers["pck_crl_issuer_chain"], what),
        not_before=max(starts),
        not_after=min(ends),
        tcb_evaluation_number=min(
            _evaluation_number(tcb_info, "tcb_info", what),
            _evaluation_number(qe_identity, "qe_identity", what),
        ),
    )


def _error(what: str, problem: str) -> EvidenceError:
    return EvidenceError(f"the DCAP collateral bundle for {what} {problem}", check="collateral")


def _string(bundle: Mapping[str, Any], name: str, what: str) -> str:
    value = bundle[name]
    if not isinstance(value, str) or not value:
        raise _error(what, f"member '{name}' must be a non-empty string")
    return value


def _hex(text: str, name: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise _error(what, f"member '{name}' is not hex") from exc


def _signed_body(text: str, name: str, what: str) -> Mapping[str, Any]:
    try:
        return strict_json_object(text.encode("utf-8"), f"{name} document")
    except ValueError as exc:
        raise _error(what, f"member '{name}': {exc}") from exc


def _tee_of(tcb_info: Mapping[str, Any], qe_identity: Mapping[str, Any], what: str) -> Tee:
    ids = (tcb_info.get("id"), qe_identity.get("id"))
    for tee in ("sgx", "tdx"):
        if ids == (_TCB_INFO_ID[tee], _QE_IDENTITY_ID[tee]):
            return tee
    raise _error(
        what,
        f"describes TCB info id {str(tcb_info.get('id'))[:10]!r} with QE identity id "
        f"{str(qe_identity.get('id'))[:10]!r}; expected SGX with QE, or TDX with TD_QE",
    )


def _fmspc(tcb_info: Mapping[str, Any], what: str) -> str:
    fmspc = tcb_info.get("fmspc")
    if not isinstance(fmspc, str) or len(fmspc) != 12:
        raise _error(what, "member 'tcb_info' has no 12-digit 'fmspc'")
    try:
        bytes.fromhex(fmspc)
    except ValueError as exc:
        raise _error(what, "member 'tcb_info' has an 'fmspc' that is not hex") from exc
    return fmspc.lower()


def _date(body: Mapping[str, Any], field: str, name: str, what: str) -> datetime:
    value = body.get(field)
    if not isinstance(value, str):
        raise _error(what, f"member '{name}' has no '{field}' date")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise _error(what, f"member '{name}' field '{field}' is not an ISO 8601 date") from exc
    if parsed.tzinfo is None:
        raise _error(what, f"member '{name}' field '{field}' has no time zone")
    return parsed.astimezone(UTC)


def _evaluation_number(body: Mapping[str, Any], name: str, what: str) -> int:
    value = body.get("tcbEvaluationDataNumber")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _error(what, f"member '{name}' has no 'tcbEvaluationDataNumber'")
    return value


def _crl_window(
    der: bytes, name: str, what: str, issuer: x509.Certificate
) -> tuple[datetime, datetime]:
    try:
        crl = x509.load_der_x509_crl(der)
    except ValueError as exc:
        raise _error(what, f"member '{name}' is not a DER certificate revocation list") from exc
    public_key = issuer.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(
        public_key
    ):
        raise _error(what, f"member '{name}' is not signed by its issuer, {_subject(issuer)}")
    next_update = crl.next_update_utc
    if next_update is None:
        raise _error(what, f"member '{name}' has no nextUpdate")
    return crl.last_update_utc, next_update


def _verified_chain(text: str, name: str, what: str, root: bytes) -> list[x509.Certificate]:
    """The chain in ``text``, each certificate signed by the next, the last being ``root``."""
    try:
        chain = load_certificate_chain_pem(text.encode("ascii"))
    except (UnicodeEncodeError, *CERTIFICATE_ERRORS) as exc:
        raise _error(what, f"member '{name}': {exc}") from exc
    if len(chain) > _MAX_CHAIN or chain[-1].public_bytes(Encoding.DER) != root:
        raise _error(
            what,
            f"member '{name}' must be at most {_MAX_CHAIN} certificates ending in the Intel SGX "
            "Root CA this verifier pins",
        )
    for index, (certificate, issuer) in enumerate(itertools.pairwise(chain), start=1):
        try:
            certificate.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise _error(
                what,
                f"member '{name}': certificate {index} ({_subject(certificate)}) is not issued "
                f"by certificate {index + 1} ({_subject(issuer)})",
            ) from exc
    return chain


def _check_signature(
    signer: x509.Certificate, signature: bytes, document: bytes, name: str, what: str
) -> None:
    """``signature`` (r‖s) is the signer's ECDSA P-256 SHA-256 signature of ``document``."""
    public_key = signer.public_key()
    if len(signature) != 64 or not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise _error(what, f"member '{name}_signature' must be a 64-byte ECDSA P-256 signature")
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        public_key.verify(der, document, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise _error(
            what, f"member '{name}' is not signed by {_subject(signer)} ('{name}_signature')"
        ) from exc


def _pck_ca(issuer: x509.Certificate, what: str) -> str:
    names = issuer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ca = PCK_CA_BY_NAME.get(str(names[0].value)) if names else None
    if ca is None:
        raise _error(
            what,
            f"member 'pck_crl_issuer_chain' starts with {_subject(issuer)}, not an Intel SGX PCK "
            "Processor or Platform CA",
        )
    return ca


def _subject(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string()[:80]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
