"""DCAP collateral from Intel's Provisioning Certification Service (PCS) or a caching PCCS.

For one platform (TEE, FMSPC, PCK CA) it makes four or five GETs of the v4 API under the base
URL (``[dcap] pccs_url``) and assembles the DCAP collateral JSON that a bundle holds
(``docs/formats.md``):

- ``/sgx/certification/v4/pckcrl?ca={ca}&encoding=der``: the PCK CRL, with its issuer chain in
  the header ``SGX-PCK-CRL-Issuer-Chain``;
- ``/{tee}/certification/v4/tcb?fmspc={FMSPC}``: the TCB info, chain in ``TCB-Info-Issuer-Chain``
  (``SGX-TCB-Info-Issuer-Chain`` from older servers);
- ``/{tee}/certification/v4/qe/identity``: the QE identity, chain in
  ``SGX-Enclave-Identity-Issuer-Chain``;
- the root CA CRL: from a PCCS at ``/sgx/certification/v4/rootcacrl`` (it answers hex); from
  Intel's PCS, which has no such path, or a PCCS that does not answer it, from the CRL
  distribution point of the root certificate that ends the PCK CRL issuer chain.

The signed TCB info and QE identity are kept as the exact text the server signed. Issuer chains
arrive URL-encoded. With a subscription key (``[dcap] subscription_key``), every request carries
it in ``Ocp-Apim-Subscription-Key``.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from opencas.attestation.verifier import CollateralKey
from opencas.collateral.bundle import check_key
from opencas.collateral.http import Fetched, HttpFetcher
from opencas.collateral.validity import dcap_json
from opencas.crypto.canonical import strict_json_object
from opencas.crypto.pem import load_certificate_chain_pem
from opencas.errors import EvidenceError

INTEL_PCS_URL = "https://api.trustedservices.intel.com"
SUBSCRIPTION_KEY_HEADER = "Ocp-Apim-Subscription-Key"
PCK_CRL_CHAIN_HEADER = "SGX-PCK-CRL-Issuer-Chain"
TCB_INFO_CHAIN_HEADERS = ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain")
QE_IDENTITY_CHAIN_HEADER = "SGX-Enclave-Identity-Issuer-Chain"

_API_SUFFIX = re.compile(r"/(?:sgx|tdx)/certification/v4$")
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{128}")


def pcs_base_url(url: str) -> str:
    """The server part of a PCS/PCCS URL: without a trailing ``/`` or ``/{tee}/certification/v4``.

    Both ``https://pccs.example:8081`` and ``https://pccs.example:8081/sgx/certification/v4/``
    name the same server.
    """
    return _API_SUFFIX.sub("", url.rstrip("/"))


class PcsSource:
    """A collateral source for ``dcap`` keys, fetched from a PCS or PCCS at ``base_url``."""

    def __init__(
        self, base_url: str, fetcher: HttpFetcher, *, subscription_key: str | None = None
    ) -> None:
        self.base_url = pcs_base_url(base_url)
        self._fetcher = fetcher
        self._headers = {SUBSCRIPTION_KEY_HEADER: subscription_key} if subscription_key else {}

    def __str__(self) -> str:
        return f"the PCCS {self.base_url}"

    def collateral(self, key: CollateralKey, at: datetime) -> bytes:
        """The DCAP collateral JSON of ``key`` as the server has it now (``at`` is not used).

        Raises :class:`EvidenceError` (``check="collateral"``) for a key of another kind, and
        naming the URL for an answer that fails or is not what the API promises.
        """
        check_key(key)
        if key.kind != "dcap":
            raise EvidenceError(f"{key}: {self} serves DCAP collateral only", check="collateral")
        tee, fmspc, ca = key.param("tee"), key.param("fmspc"), key.param("ca")
        pck = self._get(self._url("sgx", f"pckcrl?ca={ca}&encoding=der"))
        tcb = self._get(self._url(tee, f"tcb?fmspc={fmspc.upper()}"))
        qe = self._get(self._url(tee, "qe/identity"))
        pck_chain = _issuer_chain(pck, (PCK_CRL_CHAIN_HEADER,))
        tcb_info, tcb_signature = _signed_body(tcb, "tcbInfo")
        qe_identity, qe_signature = _signed_body(qe, "enclaveIdentity")
        _check_fmspc(tcb, tcb_info, fmspc)
        members = {
            "pck_crl_issuer_chain": pck_chain,
            "root_ca_crl": self._root_ca_crl(pck_chain).hex(),
            "pck_crl": _crl_der(pck).hex(),
            "tcb_info_issuer_chain": _issuer_chain(tcb, TCB_INFO_CHAIN_HEADERS),
            "tcb_info": tcb_info,
            "tcb_info_signature": tcb_signature,
            "qe_identity_issuer_chain": _issuer_chain(qe, (QE_IDENTITY_CHAIN_HEADER,)),
            "qe_identity": qe_identity,
            "qe_identity_signature": qe_signature,
        }
        return dcap_json(members)

    def _url(self, tee: str, path: str) -> str:
        return f"{self.base_url}/{tee}/certification/v4/{path}"

    def _get(self, url: str) -> Fetched:
        return self._fetcher.get(url, self._headers)

    def _root_ca_crl(self, pck_chain: str) -> bytes:
        if not self.base_url.startswith(INTEL_PCS_URL):
            try:
                return _crl_der(self._get(self._url("sgx", "rootcacrl")))
            except EvidenceError as pccs_error:
                try:
                    return self._root_ca_crl_of(pck_chain)
                except EvidenceError as exc:
                    raise EvidenceError(
                        f"{pccs_error.message}; and {exc.message}", check="collateral"
                    ) from exc
        return self._root_ca_crl_of(pck_chain)

    def _root_ca_crl_of(self, pck_chain: str) -> bytes:
        root = load_certificate_chain_pem(pck_chain.encode("ascii"))[-1]
        url = _crl_distribution_point(root)
        # Intel's CRL host needs no subscription key; it is not sent where it is not needed.
        return _crl_der(self._fetcher.get(url))


def _issuer_chain(answer: Fetched, names: tuple[str, ...]) -> str:
    for name in names:
        value = answer.headers.get(name)
        if value is not None:
            break
    else:
        raise EvidenceError(
            f"{answer.url}: the answer has no header {' or '.join(names)}", check="collateral"
        )
    chain = urllib.parse.unquote(value)
    try:
        load_certificate_chain_pem(chain.encode("ascii"))
    except (UnicodeEncodeError, ValueError) as exc:
        raise EvidenceError(
            f"{answer.url}: the header {name} is not a URL-encoded PEM certificate chain ({exc})",
            check="collateral",
        ) from exc
    return chain


def _signed_body(answer: Fetched, member: str) -> tuple[str, str]:
    """The exact text of the signed ``member`` of a JSON answer, and its signature's hex."""
    try:
        strict_json_object(answer.body, "answer")
        members = raw_members(answer.body.decode("utf-8"))
    except ValueError as exc:
        raise EvidenceError(f"{answer.url}: {exc}", check="collateral") from exc
    missing = [name for name in (member, "signature") if name not in members]
    if missing:
        raise EvidenceError(
            f"{answer.url}: the answer has no member {' or '.join(repr(m) for m in missing)}",
            check="collateral",
        )
    signed, signature = members[member], json.loads(members["signature"])
    if not isinstance(signature, str) or not _SIGNATURE.fullmatch(signature):
        raise EvidenceError(
            f"{answer.url}: 'signature' is not 128 hex digits (an ECDSA P-256 r||s)",
            check="collateral",
        )
    if not signed.startswith("{"):
        raise EvidenceError(f"{answer.url}: '{member}' is not a JSON object", check="collateral")
    return signed, signature.lower()


def raw_members(text: str) -> dict[str, str]:
    """The members of the JSON object ``text``, each value as the exact text it is written as.

    Signed Intel documents are verified over their bytes, so a value must not be re-serialised.
    Raises ``ValueError`` when ``text`` is not one JSON object or names a member twice.
    """
    decoder = json.JSONDecoder()
    position = _skip(text, 0)
    if text[position : position + 1] != "{":
        raise ValueError("not a JSON object")
    position = _skip(text, position + 1)
    members: dict[str, str] = {}
    while text[position : position + 1] != "}":
        name, position = decoder.raw_decode(text, position)
        position = _skip(text, position)
        if not isinstance(name, str) or text[position : position + 1] != ":":
            raise ValueError(f"malformed member at offset {position}")
        start = _skip(text, position + 1)
        _, position = decoder.raw_decode(text, start)
        if name in members:
            raise ValueError(f"member {name[:40]!r} appears twice")
        members[name] = text[start:position]
        position = _skip(text, position)
        if text[position : position + 1] == ",":
            position = _skip(text, position + 1)
        elif text[position : position + 1] != "}":
            raise ValueError(f"expected ',' or '}}' at offset {position}")
    if _skip(text, position + 1) != len(text):
        raise ValueError("text after the JSON object")
    return members


def _skip(text: str, position: int) -> int:
    match = _WHITESPACE.match(text, position)
    return match.end() if match else position


def _check_fmspc(answer: Fetched, tcb_info: str, fmspc: str) -> None:
    named = json.loads(tcb_info).get("fmspc")
    if not isinstance(named, str) or named.lower() != fmspc:
        raise EvidenceError(
            f"{answer.url}: the TCB info is for FMSPC {str(named)[:20]!r}, not {fmspc}",
            check="collateral",
        )


def _crl_der(answer: Fetched) -> bytes:
    """The DER of the CRL ``answer`` holds: as DER, as PEM, or as hex text (a PCCS's way)."""
    body = answer.body
    try:
        if body.lstrip().startswith(b"-----BEGIN"):
            der = x509.load_pem_x509_crl(body).public_bytes(serialization.Encoding.DER)
        else:
            der = body if body.startswith(b"\x30") else bytes.fromhex(body.decode("ascii"))
        x509.load_der_x509_crl(der)
    except (UnicodeDecodeError, ValueError) as exc:
        raise EvidenceError(
            f"{answer.url}: the answer is not a CRL (DER, PEM or hex): {exc}", check="collateral"
        ) from exc
    return der


def _crl_distribution_point(certificate: x509.Certificate) -> str:
    try:
        points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    except x509.ExtensionNotFound:
        points = None
    for point in points.value if points else ():
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith(
                "https://"
            ):
                return name.value
    raise EvidenceError(
        f"the root certificate {certificate.subject.rfc4514_string()[:80]} names no https CRL "
        "distribution point, so its CRL cannot be fetched",
        check="collateral",
    )
