"""The Python SDK: talk to a CAS's client API over a pinned TLS channel with signed requests.

A :class:`CasClient` either is *pinned* (it trusts only the CA certificate of a CAS it attested) or
is used once, unpinned, to attest a CAS: the attestation response is then verified against what the
TLS connection actually presented, so nothing is trusted before it is checked. Each client-API
operation is one method that takes and returns typed values (:mod:`opencas.client.answers`); an
error answer raises :class:`ApiError` with the CAS's code, message and extra members.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from opencas.attestation.report import CasExpectations, VerifiedCas, verify_cas_attestation
from opencas.attestation.verifier import NO_COLLATERAL, CollateralSource
from opencas.client.answers import (
    HEALTH_PATH,
    AuditPageAnswer,
    BackupAnswer,
    BackupsAnswer,
    Health,
    KeyRolloverAnswer,
    OwnerConfigUpdated,
    OwnerConfigView,
    Provisioned,
    RecoverySharesAnswer,
    SessionValues,
    SessionWritten,
    SnapshotAnswer,
    StoredSession,
    UpgradeAnswer,
    UpgradesAnswer,
    VersionInfo,
    Whoami,
)
from opencas.client.channel import (
    DEFAULT_TIMEOUT,
    ApiChannel,
    AsyncListenerClient,
    MalformedAnswer,
)
from opencas.client.identity import ClientIdentity
from opencas.config.owner import OwnerConfig
from opencas.crypto.recovery_documents import ShareDocument
from opencas.errors import ClientError

NONCE_BYTES = 32

Signature = Mapping[str, Any]
"""A detached signature over a session hash, as ``casctl session sign`` writes it."""


def new_nonce() -> str:
    """A fresh attestation nonce (256 bits, hex)."""
    return secrets.token_hex(NONCE_BYTES)


class CasClient:
    """A client for the client API of one CAS at ``url``.

    Pass ``ca_certificate_pem`` (the attested CAS's CA certificate) to pin it; signed requests
    also need ``cas_key_hash`` (the proof's audience) and ``identity`` (who signs). ``transport``
    replaces the network, for tests. Every method raises :class:`CasUnreachable` when the CAS
    cannot be reached, :class:`ApiError` when it answers an error and :class:`MalformedAnswer`
    when the answer does not have its documented shape.
    """

    def __init__(
        self,
        url: str,
        *,
        ca_certificate_pem: bytes | None = None,
        cas_key_hash: str | None = None,
        identity: ClientIdentity | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._channel = ApiChannel(
            url,
            ca_certificate_pem=ca_certificate_pem,
            cas_key_hash=cas_key_hash,
            identity=identity,
            transport=transport,
            timeout=timeout,
        )

    @classmethod
    def pinned_to(
        cls,
        url: str,
        verified: VerifiedCas,
        identity: ClientIdentity | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> CasClient:
        """A client for the CAS at ``url`` that :meth:`attest` verified as ``verified``.

        It trusts only that CAS's CA certificate and signs its requests (as ``identity``, when
        given) for that CAS's key hash.
        """
        return cls(
            url,
            ca_certificate_pem=verified.ca_certificate_pem,
            cas_key_hash=verified.report.cas_key_hash,
            identity=identity,
            transport=transport,
        )

    @property
    def url(self) -> str:
        """The client API's URL (without a trailing ``/``)."""
        return self._channel.url

    @property
    def cas_key_hash(self) -> str | None:
        """The key hash of the pinned CAS: the audience of signed requests."""
        return self._channel.cas_key_hash

    @property
    def identity(self) -> ClientIdentity | None:
        """The identity that signs requests."""
        return self._channel.identity

    def __enter__(self) -> CasClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._channel.close()

    def attest(
        self, expectations: CasExpectations, collateral: CollateralSource = NO_COLLATERAL
    ) -> VerifiedCas:
        """Fetch the report for ``expectations.nonce`` and verify it and the TLS peer.

        ``collateral`` is where the evidence's verifier gets its collateral (for a CAS on real
        hardware; :mod:`opencas.collateral` has the sources). Raises
        :class:`AttestationRefused` / :class:`EvidenceError` when the CAS is not what the
        expectations accept.
        """
        response = self._channel.send("GET", ATTEST_PATH, params={"nonce": expectations.nonce})
        return verify_cas_attestation(
            _attestation_of(response),
            expectations,
            _peer_certificate(response),
            at=expectations.verification_time or datetime.now(UTC),
            collateral=collateral,
        )

    def health(self) -> str:
        """The status the CAS reports for itself: ``ok`` while it serves requests."""
        return self._channel.call(Health, "GET", HEALTH_PATH).status

    def version(self) -> VersionInfo:
        """The CAS's software and API version, and the port of its enclave API."""
        return self._channel.call(VersionInfo, "GET", "/v1/version")

    def whoami(self, signed: bool = True) -> str:
        """The caller identity the CAS sees: a key hash, or ``anonymous``."""
        return self._channel.call(Whoami, "GET", "/v1/whoami", signed=signed).identity

    def provision(self, token: str, owner_config: OwnerConfig) -> Provisioned:
        """Attested provisioning: make this client's identity the owner of the CAS.

        ``token`` is the CAS's one-time provisioning token. Errors: ``already-provisioned``,
        ``wrong-token``, ``provisioning-backoff`` (429), ``invalid-config``.
        """
        body = {"token": token, "owner_config": owner_config.normal_form()}
        return self._channel.call(Provisioned, "POST", "/v1/provision", json_body=body, signed=True)

    def owner_config(self) -> OwnerConfigView:
        """The owner config, secrets redacted (owner only: ``not-owner``, ``not-provisioned``)."""
        return self._channel.call(OwnerConfigView, "GET", "/v1/owner/config", signed=True)

    def update_owner_config(self, owner_config: OwnerConfig) -> str:
        """Replace the owner config (owner only); returns its SHA-256, as reports carry it."""
        body = {"owner_config": owner_config.normal_form()}
        updated = self._channel.call(
            OwnerConfigUpdated, "PUT", "/v1/owner/config", json_body=body, signed=True
        )
        return updated.owner_config_sha256

    def recovery_shares(self) -> list[ShareDocument]:
        """The recovery shares, each sealed to its recovery key (owner only:
        ``not-owner``; ``recovery-not-configured`` without ``[recovery]``)."""
        answer = self._channel.call(
            RecoverySharesAnswer, "GET", "/v1/owner/recovery/shares", signed=True
        )
        try:
            return [ShareDocument.model_validate(share) for share in answer.shares]
        except ValidationError as exc:
            raise ClientError(f"the CAS answered a malformed recovery share: {exc}") from None

    def key_rollover(self) -> KeyRolloverAnswer:
        """The progress of the running or last database key rollover (owner only)."""
        return self._channel.call(KeyRolloverAnswer, "GET", "/v1/owner/key-rollover", signed=True)

    def start_key_rollover(self) -> KeyRolloverAnswer:
        """Start rolling the database key over (owner only; ``key-rollover-running`` while one
        runs); it goes on in the background: poll :meth:`key_rollover`."""
        return self._channel.call(KeyRolloverAnswer, "POST", "/v1/owner/key-rollover", signed=True)

    def register_upgrade(
        self,
        measurement: str | None = None,
        *,
        mrsigner: str | None = None,
        isv_prod_id: int | None = None,
        isv_svn: int | None = None,
    ) -> UpgradeAnswer:
        """Register the build with ``measurement`` (or, on SGX, the signer form) as an upgrade
        of this CAS (owner only; ``too-many-upgrades``, ``upgrade-is-running-build``)."""
        body = {
            key: value
            for key, value in (
                ("measurement", measurement),
                ("mrsigner", mrsigner),
                ("isv_prod_id", isv_prod_id),
                ("isv_svn", isv_svn),
            )
            if value is not None
        }
        return self._channel.call(
            UpgradeAnswer, "POST", "/v1/owner/upgrades", json_body=body, signed=True
        )

    def list_upgrades(self) -> list[UpgradeAnswer]:
        """The registered upgrades, oldest first (owner only)."""
        answer = self._channel.call(UpgradesAnswer, "GET", "/v1/owner/upgrades", signed=True)
        return answer.upgrades

    def unregister_upgrade(self, upgrade_id: str) -> UpgradeAnswer:
        """Unregister the upgrade ``upgrade_id`` (owner only; ``upgrade-not-found``)."""
        if not re.fullmatch(r"[0-9a-f]{16}", upgrade_id):
            raise ClientError(f"{upgrade_id!r} is not an upgrade id (16 hex digits)")
        return self._channel.call(
            UpgradeAnswer, "DELETE", f"/v1/owner/upgrades/{upgrade_id}", signed=True
        )

    def write_snapshot(self) -> SnapshotAnswer:
        """Have the CAS write a snapshot of its store to its ``[backup]`` target now (owner
        only; ``backup-not-configured`` without one)."""
        return self._channel.call(SnapshotAnswer, "POST", "/v1/owner/snapshots", signed=True)

    def register_backup(self, name: str, url: str, request: dict[str, Any]) -> BackupAnswer:
        """Register the backup CAS at ``url`` as ``name`` with the key handover ``request`` it
        answered (:func:`opencas.client.backups.fetch_backup_request`); owner only. The CAS
        verifies the request's evidence itself (``handover-refused`` with the failed check)."""
        body = {"name": name, "url": url, "request": request}
        return self._channel.call(
            BackupAnswer, "POST", "/v1/owner/backups", json_body=body, signed=True
        )

    def backups(self) -> list[BackupAnswer]:
        """The registered backups (owner only)."""
        return self._channel.call(BackupsAnswer, "GET", "/v1/owner/backups", signed=True).backups

    def unregister_backup(self, name: str) -> BackupAnswer:
        """Unregister the backup ``name`` (owner only; ``unknown-backup`` when there is none)."""
        return self._channel.call(
            BackupAnswer, "DELETE", f"/v1/owner/backups/{quote(name, safe='')}", signed=True
        )

    def audit_page(self, start: int = 1) -> AuditPageAnswer:
        """One page of the audit log from ``seq`` ``start`` on (owner only)."""
        return self._channel.call(
            AuditPageAnswer, "GET", "/v1/audit", params={"from": str(start)}, signed=True
        )

    def create_session(self, text: str, signatures: Sequence[Signature] = ()) -> SessionWritten:
        """Create the session ``text`` (YAML); this client's identity becomes its creator.

        Errors: ``invalid-session`` (with ``problems``), ``session-exists``, ``access-denied``.
        """
        body = {"session": text, "signatures": [dict(s) for s in signatures]}
        return self._channel.call(
            SessionWritten, "POST", "/v1/sessions", json_body=body, signed=True
        )

    def update_session(
        self, name: str, text: str, signatures: Sequence[Signature] = ()
    ) -> SessionWritten:
        """Replace session ``name`` by ``text``, whose ``predecessor`` names the current hash.

        A stale predecessor raises :class:`ApiError` ``stale-predecessor`` (409) whose
        ``details["current_hash"]`` is the current hash.
        """
        body = {"session": text, "signatures": [dict(s) for s in signatures]}
        return self._channel.call(
            SessionWritten, "PUT", _session_path(name), json_body=body, signed=True
        )

    def read_session(self, name: str, signed: bool = True) -> StoredSession:
        """Session ``name`` as stored, with its hash and revision (its ``read`` rule decides)."""
        return self._channel.call(StoredSession, "GET", _session_path(name), signed=signed)

    def session_values(self, session: str, secret: str | None = None) -> SessionValues:
        """The public values ``session`` exports (all, or just ``secret``); anonymous."""
        selector = f"session={session}" + (f",secret={secret}" if secret is not None else "")
        return self._channel.call(SessionValues, "GET", f"/v1/values/{selector}")


class AsyncCasClient(AsyncListenerClient):
    """The anonymous part of the client API for asyncio, for programs that load a CAS.

    ``attestation`` answers the CAS's attestation response as sent, *unverified*: it is for
    measuring how fast a CAS answers, and for verifying later with
    :func:`~opencas.attestation.report.verify_cas_attestation`; to trust a CAS, use
    :meth:`CasClient.attest`. Pinned to ``ca_certificate_pem`` when given; ``max_connections``
    bounds the connection pool; ``transport`` replaces the network. Errors are
    :class:`CasClient`'s.
    """

    async def attestation(self, nonce: str) -> Any:
        """The CAS's unverified attestation response for ``nonce`` (its parsed JSON body)."""
        response = await self._channel.send("GET", ATTEST_PATH, params={"nonce": nonce})
        return _attestation_of(response)


#: The client API's attestation route.
ATTEST_PATH = "/v1/attest"


def _attestation_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise MalformedAnswer(f"the CAS answered {ATTEST_PATH} with invalid JSON") from exc


def _session_path(name: str) -> str:
    return f"/v1/sessions/{name}"


def _peer_certificate(response: httpx.Response) -> bytes | None:
    stream = response.extensions.get("network_stream")
    if stream is None:
        return None  # an in-process transport: there is no TLS peer to compare
    ssl_object = stream.get_extra_info("ssl_object")
    if ssl_object is None:
        raise ClientError("the CAS connection is not TLS")
    certificate: bytes | None = ssl_object.getpeercert(True)
    return certificate
