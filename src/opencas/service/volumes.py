"""Volumes for workloads: what an attested workload receives, and the tags it reports back.

An attested service receives, for each volume its image maps, the volume key, the current tag
and a *report ticket* with its *report secret*. The ticket is the canonical JSON of what the
attestation established (config id, session hash, nonce, evidence hash, the platform key hash
that is the attestation's actor, the volume); the secret is HMAC-SHA256 of the ticket under the
volume's report key, which never leaves the CAS. Only the workload that opened the sealed
configuration knows the secret, so a tag report proven with it (an HMAC over the ticket, the
previous tag and the new tag) comes from that attestation. The CAS accepts a new tag only when
the report's previous tag is the current one (compare-and-swap): of two writers that started
from the same tag, the second is refused (``409 stale-volume-tag``) and its writes are not kept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opencas.attestation.workload_binding import ConfigId
from opencas.crypto.canonical import canonical_json, member_mismatch, strict_json_object
from opencas.crypto.volume_format import report_proof
from opencas.errors import (
    AttestationRefused,
    ConflictError,
    ForbiddenError,
    InvalidRequest,
    NotFoundError,
    RateLimitedError,
)
from opencas.policy.errors import SessionError
from opencas.policy.model import Service, Session
from opencas.policy.volumes import check_volume_import
from opencas.service.audit import state_change
from opencas.service.cas import Cas
from opencas.service.sessions import StoredSession, load_session
from opencas.service.volume_states import VolumeState, load_volume_states, write_volume_state
from opencas.store.base import Reader

TICKET_CONTEXT = "opencas-volume-ticket/v1"
#: A ticket's bytes (base64url) at most: its members are bounded (config id ≤ 1024 characters).
MAX_TICKET_CHARS = 4096
#: Refused tag reports per config id within :data:`REFUSAL_WINDOW` seconds before its reports
#: are refused unchecked (429) for the rest of the window.
REFUSALS_PER_SERVICE = 30
REFUSAL_WINDOW = 60.0
MAX_TRACKED_SERVICES = 100_000
_TICKET_MEMBERS = frozenset(
    {"config_id", "session_hash", "nonce", "evidence_sha256", "actor", "volume"}
)


@dataclass(frozen=True)
class Attestation:
    """What a workload's attestation established, as the tickets of its volumes carry it."""

    config_id: str
    session_hash: str
    nonce: str
    evidence_sha256: str
    actor: str


def _ticket(attestation: Attestation, volume: str) -> str:
    document = {
        "config_id": attestation.config_id,
        "session_hash": attestation.session_hash,
        "nonce": attestation.nonce,
        "evidence_sha256": attestation.evidence_sha256,
        "actor": attestation.actor,
        "volume": volume,
    }
    return base64.urlsafe_b64encode(canonical_json(document)).decode().rstrip("=")


def report_secret(report_key: str, ticket: str) -> bytes:
    """The secret that proves tag reports for ``ticket``: HMAC-SHA256 under the report key."""
    message = f"{TICKET_CONTEXT}\0{ticket}".encode()
    return hmac.new(bytes.fromhex(report_key), message, hashlib.sha256).digest()


def _owner(view: Reader, stored: StoredSession, volume: str) -> tuple[str, str, VolumeState | None]:
    """Which session keeps ``volume`` of ``stored`` (itself, or its exporter) and the state.

    An import is checked against the exporter's current version, as at upload;
    :class:`SessionError` when it no longer holds.
    """
    spec = stored.session.volume(volume)
    if spec is None or spec.import_ is None:
        return (
            stored.session.name,
            volume,
            load_volume_states(view, stored.session.name).get(volume),
        )
    source = spec.import_
    exporter = load_session(view, source.session)
    check_volume_import(
        stored.session,
        volume,
        source,
        exporter.session if exporter else None,
        exporter.record.hash if exporter else None,
        stored.record.hash,
    )
    return (
        source.session,
        source.volume,
        load_volume_states(view, source.session).get(source.volume),
    )


def _mapped(session: Session, service: Service) -> dict[str, str]:
    image = session.image(service.image_name) if service.image_name else None
    return {item.name: item.path for item in image.volumes} if image else {}


def volume_grants(
    view: Reader, stored: StoredSession, service: Service, attestation: Attestation
) -> list[dict[str, Any]]:
    """The volumes of the configuration of an attested ``service``: for each volume its image
    maps, ``name``, ``path``, ``key``, ``tag`` (``None``: empty), ``ticket`` and
    ``report_secret``. Raises :class:`AttestationRefused` (check ``import``) for an import its
    exporter no longer allows."""
    grants = []
    for name, path in sorted(_mapped(stored.session, service).items()):
        try:
            owner, owner_volume, state = _owner(view, stored, name)
        except SessionError as exc:
            raise AttestationRefused("import", exc.message) from exc
        if state is None:
            raise AttestationRefused(
                "import", f"session {owner} keeps no state for its volume {owner_volume}"
            )
        ticket = _ticket(attestation, name)
        grants.append(
            {
                "name": name,
                "path": path,
                "key": state.key,
                "tag": state.tag,
                "ticket": ticket,
                "report_secret": report_secret(state.report_key, ticket).hex(),
            }
        )
    return grants


class ReportLimiter:
    """Refused tag reports per config id: after :data:`REFUSALS_PER_SERVICE` within
    :data:`REFUSAL_WINDOW` seconds, every report of that config id is refused before any check
    until the oldest refusal leaves the window. Thread-safe, bounded."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._refusals: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, config_id: str) -> None:
        """:class:`RateLimitedError` while ``config_id`` has had too many refused reports."""
        with self._lock:
            now = self._clock()
            times = self._refusals.get(config_id)
            while times and times[0] <= now - REFUSAL_WINDOW:
                times.popleft()
            if times is not None and len(times) >= REFUSALS_PER_SERVICE:
                retry = max(times[0] + REFUSAL_WINDOW - now, 1.0)
                raise RateLimitedError(
                    f"too many refused volume tag reports for {config_id}; retry in {retry:.0f} s",
                    retry_after=retry,
                    code="volume-report-rate-limited",
                )

    def refused(self, config_id: str) -> None:
        """Count a refused report of ``config_id``."""
        with self._lock:
            times = self._refusals.pop(config_id, None) or deque()
            times.append(self._clock())
            self._refusals[config_id] = times
            while len(self._refusals) > MAX_TRACKED_SERVICES:
                self._refusals.popitem(last=False)


@dataclass(frozen=True)
class TagReport:
    """The body of ``POST /v1/enclave/volume-tag``, shape-checked by the API."""

    ticket: str
    previous_tag: str | None
    tag: str
    proof: str


def _read_ticket(ticket: str) -> dict[str, str]:
    if len(ticket) > MAX_TICKET_CHARS:
        raise InvalidRequest("the ticket is not one the CAS issued")
    try:
        raw = base64.urlsafe_b64decode(ticket + "=" * (-len(ticket) % 4))
        document = strict_json_object(raw, "ticket")
    except (binascii.Error, ValueError):
        raise InvalidRequest("the ticket is not one the CAS issued") from None
    if (
        member_mismatch(document, _TICKET_MEMBERS) is not None
        or not all(isinstance(value, str) for value in document.values())
        or canonical_json(document) != raw
    ):
        raise InvalidRequest("the ticket is not one the CAS issued")
    try:
        ConfigId.parse(str(document["config_id"]))
    except ValueError:
        raise InvalidRequest("the ticket is not one the CAS issued") from None
    return {key: str(value) for key, value in document.items()}


def report_volume_tag(cas: Cas, limiter: ReportLimiter, report: TagReport) -> dict[str, Any]:
    """Accept the new tag of a volume a workload wrote, if ``report`` proves it and its previous
    tag is the current one; returns the volume's session, name and new tag.

    Refuses: a ticket the CAS did not issue (400); too many refused reports of its config id
    (429); an unknown session, service or volume (404); a proof that does not hold, or an import
    the exporter no longer allows (403 ``volume-report-refused``); a session updated since the
    attestation (409 ``session-changed``); a previous tag that is not the current one (409
    ``stale-volume-tag``, with ``current_tag``). The ``volume_tag_updated`` audit entry is
    durable before the new tag commits.
    """
    fields = _read_ticket(report.ticket)
    config_id = fields["config_id"]
    limiter.check(config_id)
    try:
        # Checked in a snapshot first, so that reports that do not hold never take the write lock.
        with cas.store.snapshot() as view:
            _admit_report(view, fields, report)
        with state_change(cas.audit_log) as entry, cas.store.transaction() as txn:
            owner, owner_volume, state = _admit_report(txn, fields, report)
            write_volume_state(
                txn, owner, owner_volume, state.model_copy(update={"tag": report.tag})
            )
            entry.record(
                txn,
                "volume_tag_updated",
                actor=fields["actor"],
                subject=config_id,
                details={
                    "session": owner,
                    "volume": owner_volume,
                    "previous_tag": report.previous_tag,
                    "tag": report.tag,
                    "session_hash": fields["session_hash"],
                    "evidence_sha256": fields["evidence_sha256"],
                },
            )
    except (NotFoundError, ForbiddenError, ConflictError):
        limiter.refused(config_id)
        raise
    return {"session": owner, "volume": owner_volume, "tag": report.tag}


def _admit_report(
    view: Reader, fields: dict[str, str], report: TagReport
) -> tuple[str, str, VolumeState]:
    """The session and volume ``report`` moves and its current state, if the report may be
    accepted now; raises the refusal otherwise (see :func:`report_volume_tag`)."""
    config_id = ConfigId.parse(fields["config_id"])
    stored = load_session(view, config_id.session)
    service = stored.session.service(config_id.service) if stored else None
    if stored is None or service is None:
        raise NotFoundError(f"there is no service {config_id}")
    volume = fields["volume"]
    if volume not in _mapped(stored.session, service):
        raise NotFoundError(f"the service {config_id} maps no volume {volume}")
    try:
        owner, owner_volume, state = _owner(view, stored, volume)
    except SessionError as exc:
        raise ForbiddenError(exc.message, code="volume-report-refused") from exc
    expected = (
        report_proof(
            report_secret(state.report_key, report.ticket),
            report.ticket,
            report.previous_tag,
            report.tag,
        )
        if state is not None
        else ""
    )
    if state is None or not hmac.compare_digest(expected, report.proof):
        raise ForbiddenError(
            f"the report for volume {volume} of {config_id} is not proven by the attestation "
            "its ticket names",
            code="volume-report-refused",
        )
    if not hmac.compare_digest(stored.record.hash, fields["session_hash"]):
        raise ConflictError(
            f"session {config_id.session} was updated since this workload attested: its tag "
            f"report for volume {volume} is refused; the new version decides who may write it",
            code="session-changed",
        )
    if state.tag != report.previous_tag:
        raise ConflictError(
            f"volume {volume} of {config_id} changed since this workload opened it: its "
            f"current tag is {state.tag}, not {report.previous_tag}; this workload's writes are "
            "not kept",
            code="stale-volume-tag",
            details={"current_tag": state.tag},
        )
    return owner, owner_volume, state
