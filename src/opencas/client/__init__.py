"""The OpenCAS Python SDK.

Attest a CAS with :meth:`CasClient.attest`, then talk to it through a :class:`CasClient` pinned
to the CA certificate it attested: each client-API operation is one typed method. Errors are
:class:`~opencas.errors.CasError` subclasses: :class:`ApiError` when the CAS answered an error,
:class:`CasUnreachable` when it did not answer, :class:`~opencas.errors.AttestationRefused` and
:class:`~opencas.errors.EvidenceError` when it is not the CAS the expectations describe. docs/api.md
("Python SDK") has a worked example.
"""

from opencas.attestation.report import CasExpectations, CasReport, VerifiedCas
from opencas.client.answers import (
    OwnerConfigView,
    Provisioned,
    SessionValues,
    SessionWritten,
    StoredSession,
    VersionInfo,
)
from opencas.client.cas_client import CasClient, Signature, new_nonce
from opencas.client.channel import ApiError, CasUnreachable, MalformedAnswer
from opencas.client.identity import ClientIdentity
from opencas.errors import AttestationRefused, ClientError, EvidenceError

__all__ = [
    "ApiError",
    "AttestationRefused",
    "CasClient",
    "CasExpectations",
    "CasReport",
    "CasUnreachable",
    "ClientError",
    "ClientIdentity",
    "EvidenceError",
    "MalformedAnswer",
    "OwnerConfigView",
    "Provisioned",
    "SessionValues",
    "SessionWritten",
    "Signature",
    "StoredSession",
    "VerifiedCas",
    "VersionInfo",
    "new_nonce",
]
