"""Workloads: attest a program's evidence against its service's policy and hand it its config.

The enclave API's attestation lives here (its single-use nonces in
:mod:`opencas.service.nonces`): it checks that the evidence binds ``{config_id, nonce,
public_key}``, decides it against the service's attestation policy
(:mod:`opencas.attestation.workload_policy`), renders the service's configuration with its
secrets, issues per-workload certificates to the workload's key, and seals the whole answer to
that key with HPKE. The session, its secrets and the exporters'
secrets are read from one store snapshot, so an update in flight is seen entirely or not at
all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from opencas.attestation.evidence import Evidence, VerifiedEvidence
from opencas.attestation.report import report_time
from opencas.attestation.verify import RecordingSource, collateral_manifest, verify_evidence
from opencas.attestation.workload_binding import ConfigId, workload_report_data
from opencas.attestation.workload_policy import check_workload
from opencas.audit.log import Durable, Expected
from opencas.audit.replay import decision_context
from opencas.config.availability import SessionLimits
from opencas.crypto.canonical import canonical_json
from opencas.crypto.hpke_seal import (
    RecipientPublicKey,
    SealedConfig,
    load_recipient_public_key,
    seal_workload_config,
)
from opencas.crypto.pem import certificate_pem
from opencas.crypto.x509 import MAX_COMMON_NAME
from opencas.errors import (
    AttestationRefused,
    AuditLogError,
    CasError,
    EvidenceError,
    InvalidRequest,
    NotFoundError,
)
from opencas.policy.certificates import issue_certificate, parse_valid_for
from opencas.policy.errors import SessionError
from opencas.policy.model import AttestationSecurity, InjectionFile, Service, Session
from opencas.policy.placeholders import Placeholder, find_placeholders, render
from opencas.policy.secret_values import SecretValue, render_value
from opencas.service.cas import Cas
from opencas.service.nonces import NonceStore
from opencas.service.otp_guard import OtpGuard
from opencas.service.session_limits import RenderBudget
from opencas.service.sessions import imported_values, load_secret_values, load_session
from opencas.service.volumes import Attestation, volume_grants
from opencas.store.base import Reader

PER_WORKLOAD_VALIDITY = "1d"


@dataclass(frozen=True)
class WorkloadRequest:
    """The body of ``POST /v1/enclave/attest``, shape-checked by the API."""

    config_id: ConfigId
    nonce: str
    public_key: str
    evidence: Mapping[str, Any]
    otp: str | None = field(default=None, repr=False)


def attest_workload(
    cas: Cas, nonces: NonceStore, request: WorkloadRequest, otp_guard: OtpGuard | None = None
) -> SealedConfig:
    """Attest a workload and return its sealed configuration.

    Refuses with :class:`AttestationRefused` (a check name and a reason that reveals no secrets
    and no other service), :class:`EvidenceError` for evidence that does not verify,
    :class:`NotFoundError` for an unknown session or service, :class:`InvalidRequest` for a
    malformed key or evidence. The decision, either way, is in the audit log before it is
    answered (``workload_attested`` or ``workload_refused``). A service with a one-time password
    needs ``request.otp`` to pass ``otp_guard`` (check ``otp``); without a guard it is refused.
    """
    return decide_workload(cas, nonces, request, otp_guard).answer()


@dataclass(frozen=True)
class WorkloadDecision:
    """A workload's attestation decided and written to the audit log, not yet durable there.

    :meth:`answer` waits until the entry is durable, then returns the sealed configuration or
    raises the refusal; an event loop can instead await ``durable.future`` first.
    """

    sealed: SealedConfig | None
    refusal: CasError | None
    durable: Durable

    def answer(self) -> SealedConfig:
        """The sealed configuration once the decision is durable; raises the refusal."""
        self.durable.wait()
        if self.refusal is not None:
            raise self.refusal
        assert self.sealed is not None
        return self.sealed


def decide_workload(
    cas: Cas,
    nonces: NonceStore,
    request: WorkloadRequest,
    otp_guard: OtpGuard | None = None,
    expected: Expected | None = None,
) -> WorkloadDecision:
    """Decide a workload's attestation and write the decision to the audit log (see
    :func:`attest_workload`); a malformed request raises :class:`InvalidRequest` unlogged.

    ``expected``, the decision's entry announced to the audit log when the request was queued,
    is released whatever happens.

    With the owner config's ``[audit_log] keep_evidence`` what the decision rested on is in the
    evidence archive, durably, before its entry is written; when the archive cannot take it the
    decision fails with :class:`AuditLogError` and nothing is logged or answered.
    """
    try:
        return _decide(cas, nonces, request, otp_guard, expected)
    finally:
        if expected is not None:
            expected.release()


def _decide(
    cas: Cas,
    nonces: NonceStore,
    request: WorkloadRequest,
    otp_guard: OtpGuard | None,
    expected: Expected | None,
) -> WorkloadDecision:
    config_id = request.config_id
    public_key = _workload_key(request.public_key)
    evidence = Evidence.from_json(dict(request.evidence))
    grounds = _Grounds(
        evidence,
        cas.clock(),
        RecordingSource(cas.collateral),
        workload_report_data(config_id, request.nonce, request.public_key),
    )
    try:
        sealed = _attest(cas, nonces, request, public_key, evidence, grounds, otp_guard)
    except (AttestationRefused, EvidenceError, NotFoundError) as exc:
        check = getattr(exc, "check", "service")
        details = _kept(cas, grounds) | {"check": check, "reason": exc.message}
        durable = cas.audit_log.append(
            "workload_refused",
            actor=grounds.actor(),
            subject=str(config_id),
            details=details,
            expected=expected,
        )
        return WorkloadDecision(None, exc, durable)
    durable = cas.audit_log.append(
        "workload_attested",
        actor=grounds.actor(),
        subject=str(config_id),
        details=_kept(cas, grounds),
        expected=expected,
    )
    return WorkloadDecision(sealed, None, durable)


def _kept(cas: Cas, grounds: _Grounds) -> dict[str, Any]:
    """The details of the decision's entry; with an evidence archive, what it rested on is
    archived first and the entry names its decision context."""
    details = grounds.details()
    archive = cas.evidence_archive
    if archive is None:
        return details
    context = decision_context(
        config_id=grounds.config_id,
        report_data=grounds.report_data,
        service=grounds.service,
        security=grounds.security,
        cas_debug=cas.platform.debug,
        simulated_roots=cas.simulated_roots,
    )
    try:
        archive.put(grounds.evidence.data)
        for document in grounds.collateral.documents.values():
            archive.put(document)
        if grounds.collateral.documents:
            archive.put(collateral_manifest(grounds.collateral.documents))
        details["context_sha256"] = archive.put(context)
    except OSError as exc:
        raise AuditLogError(
            f"the evidence archive {archive.directory} cannot take this decision's evidence "
            f"({exc.strerror or exc}); the decision is not answered"
        ) from exc
    return details


@dataclass
class _Grounds:
    """What a workload decision rested on, as far as the attestation got."""

    evidence: Evidence
    at: datetime
    collateral: RecordingSource
    report_data: bytes
    """What the evidence must bind: the request's config id, nonce and public key."""
    config_id: str = ""
    verified: VerifiedEvidence | None = None
    session_hash: str | None = None
    service: Service | None = None
    security: AttestationSecurity | None = None

    def actor(self) -> str:
        return self.verified.platform_key_hash if self.verified else "anonymous"

    @cached_property
    def evidence_sha256(self) -> str:
        """The evidence's SHA-256, which the decision's entry and the volume grants both name."""
        return hashlib.sha256(self.evidence.data).hexdigest()

    def details(self) -> dict[str, Any]:
        verified = self.verified
        used = self.collateral.documents
        return {
            "evidence_type": self.evidence.type,
            "evidence_sha256": self.evidence_sha256,
            "verified_at": report_time(self.at),
            "session_hash": self.session_hash,
            "verifier": verified.verifier if verified else None,
            # Also when verification failed: the collateral it failed against.
            "collateral_digest": self.collateral.digest() if used else None,
            "tcb_evaluation_number": verified.tcb_evaluation_number if verified else None,
            "tcb_status": verified.tcb_status if verified else None,
            "measurement": verified.measurement if verified else None,
        }


def _attest(
    cas: Cas,
    nonces: NonceStore,
    request: WorkloadRequest,
    public_key: RecipientPublicKey,
    evidence: Evidence,
    grounds: _Grounds,
    otp_guard: OtpGuard | None,
) -> SealedConfig:
    config_id = request.config_id
    grounds.config_id = str(config_id)
    nonces.consume(request.nonce)
    verified = grounds.verified = verify_evidence(
        evidence, at=grounds.at, collateral=grounds.collateral, verifiers=cas.verifiers
    )
    if not hmac.compare_digest(verified.report_data, grounds.report_data):
        raise AttestationRefused(
            "binding",
            "the evidence does not bind this config id, nonce and public key",
        )
    with cas.store.snapshot() as view:
        stored = load_session(view, config_id.session)
        service = stored.session.service(config_id.service) if stored else None
        if stored is None or service is None:
            raise NotFoundError(f"there is no service {config_id}")
        grounds.session_hash = stored.record.hash
        grounds.service, grounds.security = service, stored.session.security.attestation
        check_workload(
            verified, service, stored.session.security.attestation, cas_debug=cas.platform.debug
        )
        _check_otp(otp_guard, str(config_id), stored.session, service, request.otp)
        values = _values(view, stored.session, config_id.session, stored.record.hash)
        config = _render(
            stored.session,
            service,
            values,
            public_key,
            stored.record.hash,
            cas.config.session_limits,
        )
        config["volumes"] = volume_grants(
            view,
            stored,
            service,
            Attestation(
                str(config_id),
                stored.record.hash,
                request.nonce,
                grounds.evidence_sha256,
                verified.platform_key_hash,
            ),
        )
    plaintext = canonical_json({"config_id": str(config_id), **config})
    return seal_workload_config(public_key, plaintext, str(config_id), request.nonce)


def _check_otp(
    guard: OtpGuard | None, service_ref: str, session: Session, service: Service, code: str | None
) -> None:
    """The one-time password check, for a service whose session asks for one."""
    shared_secret = (
        service.one_time_password_shared_secret
        or session.security.attestation.one_time_password_shared_secret
    )
    if shared_secret is None:
        return
    if guard is None:
        raise AttestationRefused(
            "otp",
            f"the service {service_ref} requires a one-time password, which this "
            "endpoint cannot check",
        )
    guard.check(service_ref, shared_secret, code)


def _workload_key(encoded: str) -> RecipientPublicKey:
    """The workload's key, loaded once for the whole attestation (sealing and certificates)."""
    try:
        return load_recipient_public_key(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(
            "public_key must be the base64 DER SubjectPublicKeyInfo of an X25519 or "
            f"uncompressed P-256 key: {exc}"
        ) from exc


def _values(view: Reader, session: Session, name: str, session_hash: str) -> dict[str, SecretValue]:
    """The session's own values, and its imports resolved from the exporters as they are now.

    Imports are checked again at every attestation: an exporter that withdrew an export, or
    changed what a pin names, stops sharing at once.
    """
    try:
        imported = imported_values(view, session, session_hash)
    except SessionError as exc:
        raise AttestationRefused("import", exc.message) from exc
    return {**load_secret_values(view, name), **imported}


def configuration_renderer(
    values: Mapping[str, SecretValue], budget: RenderBudget
) -> Callable[[str], str]:
    """Renders the texts of one configuration: each placeholder replaced by its value.

    Each value is rendered once however often it is used, and every text counts against
    ``budget``, so that a configuration over the limit is refused while it is being built.
    """
    rendered: dict[tuple[str, str | None, str | None], str] = {}

    def value_of(placeholder: Placeholder) -> str:
        key = (placeholder.secret, placeholder.selector, placeholder.format)
        text = rendered.get(key)
        if text is None:
            try:
                text = rendered[key] = render_value(values[key[0]], key[1], key[2])
            except ValueError as exc:
                # Only an import can get here (the session's own references were checked at
                # upload): its exporter gives a certificate without the key asked for.
                raise AttestationRefused(
                    "import", f"the secret {placeholder.secret!r} cannot be given: {exc}"
                ) from None
        return budget.spend(text)

    def resolve(text: str) -> str:
        # The text as written stands for the text around its placeholders (an upper bound).
        return render(budget.spend(text), value_of)

    return resolve


def _render(
    session: Session,
    service: Service,
    values: Mapping[str, SecretValue],
    public_key: RecipientPublicKey,
    session_hash: str,
    limits: SessionLimits,
) -> dict[str, Any]:
    resolve = configuration_renderer(values, RenderBudget(limits))
    image = session.image(service.image_name) if service.image_name else None
    files = image.injection_files if image else ()
    document: dict[str, Any] = {
        "session_hash": session_hash,
        "command": [resolve(argument) for argument in service.command],
        "environment": {key: resolve(value) for key, value in service.environment.items()},
        "pwd": resolve(service.pwd) if service.pwd else None,
        "injection_files": [
            {
                "path": file.path,
                "content": base64.b64encode(resolve(file.content or "").encode()).decode(),
                "permission": file.permission,
            }
            for file in files
        ],
        "certificates": _workload_certificates(session, service, files, values, public_key),
    }
    if service.fspf_path is not None:
        document["fspf"] = {
            "path": service.fspf_path,
            "key": service.fspf_key,
            "tag": service.fspf_tag,
        }
    return document


def _referenced_secrets(service: Service, texts: list[str]) -> set[str]:
    names: set[str] = set()
    for text in [*service.command, *service.environment.values(), service.pwd or "", *texts]:
        names.update(placeholder.secret for placeholder in find_placeholders(text))
    return names


def _workload_certificates(
    session: Session,
    service: Service,
    files: Sequence[InjectionFile],
    values: Mapping[str, SecretValue],
    key: RecipientPublicKey,
) -> dict[str, dict[str, str]]:
    """Certificates for the workload's own key, for each referenced x509 secret with an issuer."""
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return {}  # an X25519 key cannot be certified
    referenced = _referenced_secrets(service, [file.content or "" for file in files])
    issued: dict[str, dict[str, str]] = {}
    for secret in session.secrets:
        # A certificate given as value was not made here: nor are certificates in its name.
        if (
            secret.kind != "x509"
            or secret.issuer is None
            or secret.value is not None
            or secret.name not in referenced
        ):
            continue
        issuer = values[secret.issuer]
        certificate = issue_certificate(
            issuer.private_key(),
            common_name=(secret.common_name or secret.name)[:MAX_COMMON_NAME],
            is_ca=False,
            now=datetime.now(UTC),
            valid_for=parse_valid_for(secret.valid_for or PER_WORKLOAD_VALIDITY),
            issuer=issuer.issuer(),
            endpoint=secret.endpoint,
            san=secret.san,
            subject_public_key=key,
        )
        pem = certificate_pem(certificate).decode("ascii")
        issued[secret.name] = {"certificate": pem, "chain": pem + (issuer.chain_pem or "")}
    return issued
