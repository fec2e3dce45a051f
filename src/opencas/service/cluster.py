"""Several instances of one CAS on one PostgreSQL database: how a new instance gets the key, and
what a running instance does for the others.

**Joining.** An instance started with the ``[database] url`` of an existing CAS and no key store
of its own has no database key. :func:`join_cluster` asks for it through the database: it posts
a :class:`opencas.service.key_handover.HandoverRequest` (an X25519 key kept in memory, bound by
its evidence) as a row of ``cluster_join_requests`` and waits for an answer. A running instance
(:class:`ClusterMember`) claims the row, checks the evidence with
:func:`opencas.service.key_handover.check_request` (the same software on the same platform, or a
registered upgrade) and writes either the key sealed to the request's key, bound by its own
evidence, or the reason it refused. The newcomer checks that evidence in turn, opens the key,
checks that it opens this database and belongs to its CAS, and seals it in its own key store; it
never needs to be told anything but the database URL.

Why the database and not a call to a running instance: the database is the one thing every
instance reaches already, and it is already the place the instances trust for nothing; a request
row needs no new listener, no address of another instance and no TLS trust before the newcomer
has a key, and a refused or stuck join leaves its reason where the operator looks. The price is a
poll (every :data:`ANSWER_POLL_SECONDS`) by each running instance.

**A key rolled over elsewhere.** When one instance rolls the database key over
(:mod:`opencas.service.key_rollover`), the others find at their next round that their key no
longer opens the commit state. Such an instance answers no join request (it would hand over a
retired key) and asks for the key again exactly as a newcomer does; the answer holds the new key
and, while the rollover runs, the previous one (``refresh_key``).

**Heartbeats.** Each running instance refreshes its row in ``cluster_instances`` every
:data:`HEARTBEAT_SECONDS`: where it listens, its measurement, its TLS certificate, and evidence
that binds its TLS key to its instance id, so instances (and operators) find each other.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from opencas.attestation.peer_admission import (
    PeerDecision,
    RegisteredUpgrade,
    SoftwareIdentity,
    admitting_as,
)
from opencas.attestation.verifier import CollateralSource
from opencas.audit.log import AuditLog
from opencas.crypto.canonical import canonical_json, canonical_sha512
from opencas.errors import CasError, KeyStoreError, StoreError
from opencas.platform.base import Platform
from opencas.service.key_handover import (
    HandoverAnswer,
    HandoverPurpose,
    HandoverRefused,
    HandoverRequest,
    HandoverSecret,
    check_request,
    document_text,
    make_request,
    open_handover,
    own_identity,
    parse_answer,
    parse_request,
    seal_handover,
)
from opencas.service.step_thread import StepThread
from opencas.store.cluster import ClusterRows, InstanceRow

log = logging.getLogger("opencas")

#: How often a running instance looks for join requests.
ANSWER_POLL_SECONDS: Final = 0.5
#: How often a running instance refreshes its row; one not refreshed for
#: :data:`ALIVE_SECONDS` is taken for gone.
HEARTBEAT_SECONDS: Final = 5.0
ALIVE_SECONDS: Final = 30.0
#: How long a new instance waits for an answer before it gives up.
JOIN_TIMEOUT_SECONDS: Final = 60.0
_JOIN_POLL_SECONDS: Final = 0.2


class JoinRefused(CasError, code="join-refused"):
    """The cluster refused this instance the database key; the message says why."""


@dataclass(frozen=True)
class Joined:
    """What a new instance got by joining: the key and facts about it, and who answered."""

    secret: HandoverSecret
    answered_by: str
    request_id: str


def join_cluster(
    rows: ClusterRows,
    platform: Platform,
    instance_id: str,
    *,
    collateral: CollateralSource,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    timeout: float = JOIN_TIMEOUT_SECONDS,
) -> Joined:
    """Ask the running instances for the database key and return it once one handed it over.

    Raises :class:`JoinRefused` with the answering instance's reason when it refused this
    instance, or when its answer cannot be trusted (the reason names the check);
    :class:`KeyStoreError` when no instance answered within ``timeout`` seconds; what the
    database raises when it cannot be reached.
    """
    own = own_identity(platform, at=clock(), collateral=collateral)
    key, request = make_request(platform, "join")
    alive = rows.instances(time.time() - ALIVE_SECONDS)
    log.info(
        "no key store: asking the running instances for the database key (join request %s; "
        "instances alive: %s)",
        request.request_id,
        ", ".join(row.instance_id for row in alive) or "none yet",
    )
    rows.post_request(request.request_id, instance_id, document_text(request), time.time())
    try:
        deadline = time.monotonic() + timeout
        while True:
            outcome = rows.outcome(request.request_id)
            if outcome is not None and outcome.refusal is not None:
                raise JoinRefused(
                    f"the cluster refused this instance the database key (instance "
                    f"{outcome.answered_by} answered): {outcome.refusal}"
                )
            if outcome is not None and outcome.answer is not None:
                answered_by = outcome.answered_by or "?"
                try:
                    secret = open_handover(
                        parse_answer(outcome.answer),
                        request,
                        key,
                        own,
                        at=clock(),
                        collateral=collateral,
                    )
                except HandoverRefused as exc:
                    raise JoinRefused(
                        f"the answer of instance {answered_by} cannot be trusted "
                        f"({exc.check}): {exc.message}"
                    ) from exc
                return Joined(secret, answered_by, request.request_id)
            if outcome is None:
                raise KeyStoreError(
                    f"the join request {request.request_id} disappeared from the database "
                    "before it was answered; start again"
                )
            if time.monotonic() > deadline:
                raise KeyStoreError(
                    f"no running instance answered the join request {request.request_id} within "
                    f"{timeout:g} seconds; start an instance that has the key (its key store), "
                    "or check that the instances run this software"
                )
            time.sleep(_JOIN_POLL_SECONDS)
    finally:
        try:
            rows.withdraw(request.request_id)
        except StoreError as exc:
            log.warning("cannot withdraw the join request %s: %s", request.request_id, exc)


@dataclass
class MemberFacts:
    """What a running instance hands over and announces."""

    instance_id: str
    api_url: str
    secret: HandoverSecret
    tls_key_hash: str
    tls_certificate_pem: str


def instance_binding(cluster_id: str, instance_id: str, tls_key_hash: str) -> bytes:
    """The 64 bytes an instance's announced evidence binds: its cluster, id and TLS key."""
    return canonical_sha512(
        {
            "format": "opencas-cluster-instance/v1",
            "cluster_id": cluster_id,
            "instance_id": instance_id,
            "tls_key_hash": tls_key_hash,
        }
    )


@dataclass
class ClusterMember:
    """A running instance's part in the cluster: heartbeats, and answering join requests.

    :meth:`start` runs it in a daemon thread until :meth:`stop`. ``facts()`` gives what it
    announces and hands over (read again at each heartbeat, so a reissued TLS certificate is
    announced); ``upgrades()`` the upgrades the owner registered.
    """

    rows: ClusterRows
    platform: Platform
    facts: Callable[[], MemberFacts]
    collateral: CollateralSource
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    upgrades: Callable[[], Sequence[RegisteredUpgrade]] = field(default=lambda: ())
    serving: Callable[[], SoftwareIdentity | None] = field(default=lambda: None)
    """The build the store records as serving the CAS (``None`` before one was recorded)."""
    audit: Callable[[], AuditLog] | None = None
    key_current: Callable[[], bool] = field(default=lambda: True)
    """Whether this instance's database key opens the committed state."""
    refresh_key: Callable[[], None] | None = None
    """Ask the cluster for the current database key (when ``key_current`` says no)."""
    _thread: StepThread | None = None
    _started_at: float = field(default_factory=time.time)
    _next_heartbeat: float = 0.0
    # The announced evidence, made again only when what it binds changes (a quote costs a
    # round trip to the TEE; the binding changes with the TLS key only).
    _announced: tuple[bytes, str] | None = None

    def start(self) -> None:
        """Run heartbeats and answers in a daemon thread."""
        self._thread = StepThread("cluster-member", self.step, ANSWER_POLL_SECONDS, _step_failed)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (it finishes the step it is in)."""
        if self._thread is not None:
            self._thread.stop()

    def step(self) -> None:
        """One round: a heartbeat when due; then, when this instance's key is not the current
        one, a request for it; else every pending join request answered."""
        now = time.time()
        if now >= self._next_heartbeat:
            self.heartbeat(now)
            self._next_heartbeat = now + HEARTBEAT_SECONDS
        if not self.key_current():
            if self.refresh_key is not None:
                self.refresh_key()
            return
        for pending in self.rows.pending(now):
            if self.rows.claim(pending.request_id, self.facts().instance_id, time.time()):
                self.answer(pending.request_id, pending.instance_id, pending.request)

    def heartbeat(self, now: float) -> None:
        """Write this instance's row, with evidence binding its TLS key to its id."""
        facts = self.facts()
        binding = instance_binding(facts.secret.cluster_id, facts.instance_id, facts.tls_key_hash)
        if self._announced is None or self._announced[0] != binding:
            evidence = self.platform.evidence(binding)
            self._announced = (binding, canonical_json(evidence.to_json()).decode("ascii"))
        text = self._announced[1].encode("ascii")
        self.rows.heartbeat(
            InstanceRow(
                instance_id=facts.instance_id,
                api_url=facts.api_url,
                software_measurement=self.platform.measurement,
                evidence=text.decode("ascii"),
                evidence_sha256=hashlib.sha256(text).hexdigest(),
                tls_certificate=facts.tls_certificate_pem,
                started_at=self._started_at,
                heartbeat_at=now,
            )
        )

    def giver(self) -> KeyGiver:
        """What decides this instance's answers: the same rule for every way a key is asked."""
        return KeyGiver(
            self.platform,
            self.collateral,
            self.clock,
            self.upgrades,
            self.serving,
            self.audit,
            lambda: self.facts().secret,
        )

    def answer(self, request_id: str, newcomer: str, text: str) -> bool:
        """Answer one claimed join request; True when the key was handed over."""
        try:
            answer, decision = self.giver().answer(
                text, "join", f"instance {newcomer}", newcomer, request_id
            )
        except HandoverRefused as exc:
            self.rows.answer(request_id, None, f"{exc.check}: {exc.message}", time.time())
            return False
        self.rows.answer(request_id, document_text(answer), None, time.time())
        log.info("cluster: handed the database key to instance %s (%s)", newcomer, decision.reason)
        return True


@dataclass(frozen=True)
class KeyGiver:
    """What a running instance needs to decide whether a peer gets the database key, and to
    answer it: the check is one rule however the request came (a join row, an upgrade file).

    ``upgrades`` gives the registered upgrades, ``serving`` the build the store records as
    serving the CAS (``None`` before one was recorded), ``audit`` the audit log the decisions
    are written to, ``secret`` what is handed over.
    """

    platform: Platform
    collateral: CollateralSource
    clock: Callable[[], datetime]
    upgrades: Callable[[], Sequence[RegisteredUpgrade]]
    serving: Callable[[], SoftwareIdentity | None]
    audit: Callable[[], AuditLog] | None
    secret: Callable[[], HandoverSecret]

    def answer(
        self,
        text: str | bytes,
        purpose: HandoverPurpose,
        who: str,
        subject: str,
        request_id: str | None = None,
    ) -> tuple[HandoverAnswer, PeerDecision]:
        """The answer to the request ``text`` (of ``purpose``; of ``request_id`` when given),
        once its evidence verified and its maker passed the admission rule against the build
        that serves the CAS; ``instance_admitted`` is durable in the audit log before it returns.

        ``who`` names the asker in the log, ``subject`` in the audit entry. Raises
        :class:`HandoverRefused` naming the check and the request, the refusal
        (``instance_refused``) logged.
        """
        request: HandoverRequest | None = None
        try:
            request = parse_request(text)
            if request.purpose != purpose or request_id not in (None, request.request_id):
                raise HandoverRefused("binding", f"the request is not a {purpose} request here")
            own = own_identity(self.platform, at=self.clock(), collateral=self.collateral)
            decision = check_request(
                request,
                admitting_as(own, self._serving()),
                self.upgrades(),
                at=self.clock(),
                collateral=self.collateral,
            )
            answer = seal_handover(request, self.secret(), self.platform)
        except HandoverRefused as exc:
            log.warning("refused %s the database key: %s: %s", who, exc.check, exc.message)
            shown_id = request.request_id if request is not None else request_id
            self._record(
                "instance_refused",
                subject,
                {"request_id": shown_id, "check": exc.check, "reason": exc.message},
            )
            raise HandoverRefused(exc.check, exc.message, shown_id) from exc
        # The entry is durable before the key leaves: a handover the log does not show never
        # happens (an AuditLogError leaves the request unanswered).
        self._record(
            "instance_admitted",
            subject,
            {"request_id": request.request_id, "basis": decision.basis, "reason": decision.reason},
        )
        return answer, decision

    def _serving(self) -> SoftwareIdentity | None:
        try:
            return self.serving()
        except CasError as exc:
            # Fail closed: without knowing which build serves, no build is admitted.
            raise HandoverRefused(
                "software", f"this instance cannot read which build serves the CAS: {exc.message}"
            ) from exc

    def _record(self, event: str, subject: str, details: dict[str, str | None]) -> None:
        """Write ``event`` about ``subject`` to the audit log and wait until it is durable."""
        if self.audit is not None:
            self.audit().append(event, actor="cas", subject=subject, details=details).wait()


def _step_failed(exc: Exception) -> None:
    if isinstance(exc, StoreError):
        # The database is away: the instance's readiness says so; the next step tries again.
        log.debug("cluster: %s", exc)
    else:
        log.error("cluster: unexpected error", exc_info=exc)
