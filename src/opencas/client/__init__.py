"""The OpenCAS Python SDK.

Attest a CAS with :meth:`CasClient.attest`, then talk to it through a :class:`CasClient` pinned
to the CA certificate it attested (:meth:`CasClient.pinned_to`): each client-API operation is one
typed method. Programs that keep casctl's state directory attest with :func:`attest_and_pin`
and reach a pinned CAS later with :func:`pinned_client` or :func:`enclave_target`. Errors are
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
from opencas.client.cas_client import AsyncCasClient, CasClient, Signature, new_nonce
from opencas.client.channel import ApiError, CasUnreachable, MalformedAnswer
from opencas.client.freshness import FreshnessError
from opencas.client.identity import ClientIdentity
from opencas.client.pinning import Attested, attest_and_pin, enclave_target, pinned_client
from opencas.errors import AttestationRefused, ClientError, EvidenceError

__all__ = [
    "ApiError",
    "AsyncCasClient",
    "AttestationRefused",
    "Attested",
    "CasClient",
    "CasExpectations",
    "CasReport",
    "CasUnreachable",
    "ClientError",
    "ClientIdentity",
    "EvidenceError",
    "FreshnessError",
    "MalformedAnswer",
    "OwnerConfigView",
    "Provisioned",
    "SessionValues",
    "SessionWritten",
    "Signature",
    "StoredSession",
    "VerifiedCas",
    "VersionInfo",
    "attest_and_pin",
    "enclave_target",
    "new_nonce",
    "pinned_client",
]
