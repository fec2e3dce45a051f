"""The CAS application: opening its state and answering what the API asks of it.

:func:`open_cas` turns an availability config into a running :class:`Cas`: it takes the database
lock, prepares the platform, creates the database on the first start (atomically, with the sealed
key store written before the database appears) or opens it with the unsealed (or injected)
database master key, and loads the CAS identity.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opencas import __version__
from opencas.attestation.peer_admission import SoftwareIdentity
from opencas.attestation.report import (
    AUDIT_GENESIS_HEAD,
    REPORT_VERSION,
    AuditHead,
    CasReport,
    RecoveryClaim,
    RestoredClaim,
    StoreStateClaim,
    report_data,
    report_json,
)
from opencas.attestation.verifier import NO_COLLATERAL, CollateralSource, Verifier
from opencas.attestation.verify import verifiers_trusting
from opencas.audit.archive import EvidenceArchive, archive_path
from opencas.audit.chain import Head
from opencas.audit.log import AuditLog
from opencas.collateral.configured import CasCollateral
from opencas.config.availability import AvailabilityConfig
from opencas.config.owner import DcapConfig, OwnerConfig
from opencas.errors import CasError, KeyStoreError, StoreError
from opencas.platform.base import Platform
from opencas.platform.choice import open_platform
from opencas.platform.measurement import package_measurement
from opencas.service.audit import open_audit_log
from opencas.service.cas_records import (
    StateRecord,
    read_audit_head,
    read_owner_config,
    read_provisioning_token,
    read_state,
)
from opencas.service.cluster import ALIVE_SECONDS, ClusterMember, MemberFacts, join_cluster
from opencas.service.identity import (
    CasIdentity,
    load_identity,
    local_instance_id,
    mark_db_key_injected,
    populate_new_identity,
    register_joined_instance,
    reshape_tls,
    utc_now_text,
)
from opencas.service.key_handover import HandoverSecret, own_identity
from opencas.service.software import TakeOver, registered_upgrades, serving_build, take_over
from opencas.service.store_migrations import store_schema_problem
from opencas.store import (
    DatabaseInUse,
    DatabaseLock,
    KeyStoreContents,
    PostgresStore,
    SqliteStore,
    key_store_path,
    load_key_store,
    save_key_store,
)
from opencas.store.base import Store, Transaction
from opencas.store.guards import PostgresGuards
from opencas.store.keystore import pending_key_store_path, promote_key_store

log = logging.getLogger("opencas")

DMK_SIZE = 32


@dataclass
class Cas:
    """An open CAS: its store, platform and identity. Close it to release the database lock."""

    config: AvailabilityConfig
    store: Store
    platform: Platform
    identity: CasIdentity
    lock: DatabaseLock
    created: bool = field(default=False)
    identity_listeners: list[Callable[[CasIdentity], None]] = field(default_factory=list)
    collateral: CollateralSource = NO_COLLATERAL
    """Where evidence verification gets its collateral; :func:`open_cas` sets it from the config."""
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    """The time workloads' evidence is verified as of (tests pin it to their vectors' window)."""
    audit: AuditLog | None = field(default=None)
    """The audit log writer; ``None`` only for a CAS opened to be inspected."""
    database_key: bytes = field(default=b"", repr=False)
    """The database master key, for splitting it among recovery keys (empty when inspected)."""
    previous_key: bytes | None = field(default=None, repr=False)
    """The key a running key rollover moves records away from (``None`` when none runs)."""
    simulated_roots: frozenset[str] = frozenset()
    """The simulated collateral roots workloads' simulated evidence is checked against."""
    evidence_archive: EvidenceArchive | None = None
    """Where workload decisions' evidence is kept (owner config ``[audit_log] keep_evidence``)."""
    background_stops: list[Callable[[], None]] = field(default_factory=list)
    """Each stops (and waits for) a background task, such as a key rollover, before closing."""
    member: ClusterMember | None = field(default=None)
    """This instance's part in the cluster while it serves on PostgreSQL (heartbeats, joins)."""
    took_over: TakeOver | None = field(default=None)
    """What the check of this build against the serving one found at open (None: inspected)."""

    @property
    def verifiers(self) -> Mapping[str, Verifier]:
        """The evidence verifiers of workloads, with this CAS's simulated collateral roots."""
        return verifiers_trusting(self.simulated_roots)

    def keep_evidence(self, config: OwnerConfig | None) -> None:
        """Keep workload decisions' evidence beside the audit log from now on when the owner
        ``config`` says so (``[audit_log] keep_evidence``); else stop."""
        if config is None or not config.audit_log.keeps_evidence:
            self.evidence_archive = None
        elif self.evidence_archive is None:
            self.evidence_archive = EvidenceArchive(archive_path(self.config.audit_log_path))

    @property
    def audit_log(self) -> AuditLog:
        """The audit log writer (a CAS opened to be inspected has none and writes nothing)."""
        if self.audit is None:
            raise RuntimeError("this CAS was opened to be inspected: it writes no audit entries")
        return self.audit

    @property
    def guards(self) -> PostgresGuards | None:
        """The guards' state shared by every instance on the database (PostgreSQL), or
        ``None`` when this instance is the only one (SQLite) and keeps it in memory."""
        return self.store.guards if isinstance(self.store, PostgresStore) else None

    def audit_head(self) -> Head:
        """The head of the audit log: its last entry written (or the stored one, inspected); on
        PostgreSQL the cluster's, as the database has it now."""
        if self.audit is not None:
            return self.audit.current_head()
        if isinstance(self.store, PostgresStore):
            return self.store.audit_entries.head()
        stored = read_audit_head(self.store)
        return Head(0, AUDIT_GENESIS_HEAD) if stored is None else Head(stored.seq, stored.hash)

    def reload_identity(self) -> None:
        """Re-read the identity (after its TLS certificate was reissued) and tell the listeners.

        The TLS server registers a listener so that new connections present the new certificate.
        """
        self.identity = load_identity(
            self.store, self.config.hostnames, self.identity.instance_id, reissue=False
        )
        for listener in self.identity_listeners:
            listener(self.identity)

    def refresh_tls(self) -> bool:
        """Reissue the TLS certificate if it expires soon (or its shape changed); True if it did.

        Meant to run periodically while serving, so a long-running CAS never presents an
        expired certificate.
        """
        with self.store.transaction() as txn:
            changed = reshape_tls(txn, self.config.hostnames, self.identity.scope)
        if changed:
            self.reload_identity()
        return changed

    def follow_owner_config(self, config: OwnerConfig | None) -> None:
        """Apply an owner config that another instance committed: keep the evidence as it says,
        and reissue this instance's TLS certificate if its names changed.

        Called by the audit log's writer when it takes the config up (within a second, or before
        its next append); the certificate is reissued in a thread of its own, because the caller
        may be appending inside a store transaction.
        """
        self.keep_evidence(config)
        threading.Thread(target=self._refresh_tls_logged, name="tls-follow", daemon=True).start()

    def _refresh_tls_logged(self) -> None:
        try:
            if self.refresh_tls():
                log.info("TLS certificate reissued for the owner config another instance committed")
        except CasError as exc:
            log.error(
                "cannot reissue the TLS certificate for the new owner config: %s", exc.message
            )

    def start_cluster_member(self, refresh_key: Callable[[], None] | None = None) -> None:
        """On PostgreSQL, announce this instance and answer the join requests of new ones
        (in a thread, until :meth:`close`); nothing on SQLite, where it is alone.

        ``refresh_key`` is called there when another instance rolled the database key over
        (:func:`opencas.service.key_rollover.refresh_database_key`)."""
        store = self.store
        if not isinstance(store, PostgresStore) or self.member is not None:
            return
        self.member = ClusterMember(
            store.cluster,
            self.platform,
            self._member_facts,
            self.collateral,
            clock=self.clock,
            upgrades=lambda: registered_upgrades(self.store),
            serving=lambda: serving_build(self.store),
            audit=lambda: self.audit_log,
            key_current=store.key_opens_state,
            refresh_key=refresh_key,
        )
        self.member.start()

    def handover_secret(self) -> HandoverSecret:
        """What this instance hands a peer it admitted: the database key and facts about it."""
        return HandoverSecret(
            self.database_key,
            self.state().db_key_injected,
            self.identity.cas_key_hash,
            self.identity.cluster_id,
            self.previous_key,
        )

    def _member_facts(self) -> MemberFacts:
        identity = self.identity
        return MemberFacts(
            instance_id=identity.instance_id,
            api_url=f"https://{self.config.api_listen}",
            secret=self.handover_secret(),
            tls_key_hash=identity.tls_key_hash,
            tls_certificate_pem=identity.tls_certificate_pem.decode("ascii"),
        )

    def close(self) -> None:
        """Stop the background tasks, close the audit log, the store, the database lock and the
        collateral connections."""
        for stop in self.background_stops:
            stop()
        if self.member is not None:
            self.member.stop()
        if self.audit is not None:
            self.audit.close()
        self.store.close()
        self.lock.release()
        if isinstance(self.collateral, CasCollateral):
            self.collateral.close()

    def owner_dcap(self) -> DcapConfig | None:
        """The owner config's ``[dcap]`` as stored now (None before provisioning or without it)."""
        config = read_owner_config(self.store)
        return config.dcap if config is not None else None

    @property
    def mode(self) -> str:
        """``debug`` on a platform that cannot keep secrets from its operator, else production."""
        return "debug" if self.platform.debug else "production"

    def state(self) -> StateRecord:
        """The current state record, read from the store (another instance may have changed it)."""
        return read_state(self.store)

    def readiness_problem(self) -> str | None:
        """Why this instance cannot answer from its store now, or ``None`` when it can.

        It reads the commit state: the database answers and this instance's key opens what it
        holds. An instance serves only once it has its database key, so it is never ready
        without one.
        """
        try:
            self.store.state()
            # A newer build that joined may have migrated the store past what this one reads.
            return store_schema_problem(self.store)
        except StoreError as exc:
            return exc.message

    def provisioning_token(self) -> str | None:
        """The one-time provisioning token while unprovisioned, else ``None``."""
        return read_provisioning_token(self.store)

    def report(self, nonce: str) -> CasReport:
        """The attestation report for ``nonce``, from the current state."""
        state = self.state()
        committed = self.store.state()
        audit = self.audit_head()
        return CasReport(
            version=REPORT_VERSION,
            cas_version=__version__,
            instance_id=self.identity.instance_id,
            cluster_id=self.identity.cluster_id,
            time=utc_now_text(),
            nonce=nonce,
            cas_key_hash=self.identity.cas_key_hash,
            tls_key_hash=self.identity.tls_key_hash,
            software_measurement=self.platform.measurement,
            platform=self.platform.kind,
            mode="debug" if self.platform.debug else "production",
            provisioned=state.provisioned,
            self_provisioned=state.self_provisioned,
            provisioned_at=state.provisioned_at,
            owner_identity_hash=state.owner_identity_hash,
            owner_config_sha256=state.owner_config_sha256,
            db_key_injected=state.db_key_injected,
            state=StoreStateClaim(counter=committed.counter, digest=committed.digest),
            audit=AuditHead(seq=audit.seq, head=audit.hash),
            **_recovery_claims(state),
        )

    def attest(self, nonce: str) -> dict[str, Any]:
        """The body of ``GET /v1/attest``: report, evidence binding it, certificate chain."""
        report = self.report(nonce)
        evidence = self.platform.evidence(report_data(report))
        return {
            "report": report_json(report),
            "evidence": evidence.to_json(),
            "certificate_chain": [
                self.identity.tls_certificate_pem.decode("ascii"),
                self.identity.ca_certificate_pem.decode("ascii"),
            ],
        }

    def identification(self) -> dict[str, Any]:
        """What ``cas show-identification`` prints."""
        state = self.state()
        return {
            "cas_key_hash": self.identity.cas_key_hash,
            "software_measurement": self.platform.measurement,
            "cluster_id": self.identity.cluster_id,
            "instance_id": self.identity.instance_id,
            "platform": self.platform.kind,
            "mode": self.mode,
            "key_protection": self.platform.key_protection,
            "provisioned": state.provisioned,
            "db_key_injected": state.db_key_injected,
        }


def _recovery_claims(state: StateRecord) -> dict[str, Any]:
    """The report's ``recovery``, ``recovered`` and ``restored_from`` from the state."""
    return {
        "recovery": RecoveryClaim(
            configured=state.recovery_threshold is not None,
            threshold=state.recovery_threshold,
            key_hashes=list(state.recovery_key_hashes),
        ),
        "recovered": state.recovered,
        "restored_from": None
        if state.restored_from is None
        else RestoredClaim.model_validate(state.restored_from.model_dump()),
    }


def load_platform(config: AvailabilityConfig) -> Platform:
    """The platform ``[platform]`` chooses (``auto``: the TEE this CAS finds itself in).

    The simulated platform measures the installed package. Raises :class:`PlatformError` when
    the chosen platform cannot be opened.
    """
    return open_platform(config.platform, package_measurement, log.warning)


def open_cas(
    config: AvailabilityConfig,
    injected_dmk: bytes | None = None,
    lock: DatabaseLock | None = None,
) -> Cas:
    """Open (or, on the first start, create) the CAS described by ``config``.

    ``injected_dmk`` is the operator's database master key (debug only); once used, the CAS
    reports ``db_key_injected: true`` for good. ``lock`` is the database lock when the caller
    holds it already (else it is taken here). Raises :class:`StoreError`,
    :class:`KeyStoreError`, :class:`PlatformError`, :class:`RecordDamagedError` or (for
    ``[collateral] ca_certificates`` that cannot be loaded) :class:`ConfigError` with a message
    that names what is wrong; on error nothing is left locked.
    """
    if injected_dmk is not None and len(injected_dmk) != DMK_SIZE:
        raise ValueError("an injected database key must be 32 bytes")
    database = config.database_path
    database.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if lock is None:
        lock = DatabaseLock(database)
        lock.acquire()
    try:
        platform = load_platform(config)
        if injected_dmk is not None and not platform.debug:
            raise KeyStoreError(
                f"a database key may only be injected on a debug platform, not on {platform.kind}"
            )
        store, created, contents, pending = _open_or_create_store(
            database, platform, config, injected_dmk
        )
        _log_damaged_records(store)
        try:
            identity = load_identity(store, config.hostnames, local_instance_id(database))
            cas = Cas(
                config,
                store,
                platform,
                identity,
                lock,
                created,
                database_key=contents.dmk,
                previous_key=contents.previous_dmk,
            )
            cas.collateral = CasCollateral(config.collateral, cas.owner_dcap)
            cas.simulated_roots = config.collateral.simulated_roots
            cas.took_over = take_over(
                store, platform, lambda: build_identity(cas), config.database_shown
            )
            if pending:
                # This build is the serving one now: its key store goes in place of the build's
                # before it (which, until this point, still started with it).
                promote_key_store(pending_key_store_path(database), key_store_path(database))
                log.info("this build's key store is in place: %s", key_store_path(database))
            cas.audit = open_audit_log(
                store, identity, config.audit_log_path, cas.attest, cas.follow_owner_config
            )
            cas.keep_evidence(read_owner_config(store))
        except BaseException:
            store.close()
            raise
    except BaseException:
        lock.release()
        raise
    return cas


def build_identity(cas: Cas) -> SoftwareIdentity:
    """This build's identity, from its own evidence verified as a peer's would be; where that
    evidence cannot be verified here, what the platform says of itself (platform and
    measurement, no signer: a rule that needs the signer then fails)."""
    try:
        return own_identity(cas.platform, at=cas.clock(), collateral=cas.collateral)
    except CasError as exc:
        log.debug("own evidence not verified (%s); using the platform's own facts", exc.message)
        platform = cas.platform
        return SoftwareIdentity(platform.kind, platform.measurement, platform.debug, "")


def _log_damaged_records(store: Store) -> None:
    # Each one is refused when read; saying so at start tells the operator before a user does.
    for damage in store.damaged_records:
        log.error("record-damaged at open: %s", damage)


def inspect_cas(config: AvailabilityConfig) -> Cas:
    """Open the CAS to read its identity, also while a running ``cas`` holds the database.

    When the database is free this is :func:`open_cas` (so a new CAS is created). When another
    process serves it, the store is opened without the lock and nothing is written.
    """
    try:
        return open_cas(config)
    except DatabaseInUse:
        pass
    database = config.database_path
    platform = load_platform(config)
    _check_store(config)
    contents, _ = _load_local_key_store(database, platform)
    store = _open_store(config, contents.dmk, contents.previous_dmk)
    try:
        identity = load_identity(
            store, config.hostnames, local_instance_id(database), reissue=False
        )
    except BaseException:
        store.close()
        raise
    return Cas(config, store, platform, identity, DatabaseLock(database))


def store_exists(config: AvailabilityConfig) -> bool:
    """Whether the configured store exists: the SQLite file, or the schema in PostgreSQL."""
    if config.database_url is not None:
        return PostgresStore.exists(config.database_url)
    return config.database_path.exists()


def _check_store(config: AvailabilityConfig) -> None:
    """Refuse a file that is not an OpenCAS database before its key store is unsealed."""
    if config.database_url is None:
        SqliteStore.check_file(config.database_path)


def open_store_with_key(config: AvailabilityConfig, dmk: bytes) -> Store:
    """Open the configured store with the database key ``dmk``, without the lock or audit log.

    Raises :class:`KeyStoreError` when ``dmk`` is not the database's key, and what opening the
    store raises otherwise.
    """
    _check_store(config)
    return _open_store(config, dmk)


def create_store_with_key(
    config: AvailabilityConfig,
    dmk: bytes,
    populate: Callable[[Transaction], None],
    before_publish: Callable[[], None],
) -> Store:
    """Create the configured store under the database key ``dmk`` holding what ``populate``
    writes in its one transaction; ``before_publish`` runs before the store appears (see
    :meth:`SqliteStore.create_atomically`, :meth:`PostgresStore.create`). The caller holds the
    database lock. Raises what creating the store raises."""
    return _create_store(config, dmk, populate, before_publish)


def _open_store(config: AvailabilityConfig, dmk: bytes, previous_dmk: bytes | None = None) -> Store:
    if config.database_url is not None:
        return PostgresStore.open(config.database_url, dmk, previous_dmk=previous_dmk)
    return SqliteStore.open(config.database_path, dmk, previous_dmk)


def _create_store(
    config: AvailabilityConfig,
    dmk: bytes,
    populate: Callable[[Transaction], None],
    before_publish: Callable[[], None],
) -> Store:
    if config.database_url is not None:
        return PostgresStore.create(config.database_url, dmk, populate, before_publish)
    return SqliteStore.create_atomically(config.database_path, dmk, populate, before_publish)


def _refuse_orphaned_key_store(config: AvailabilityConfig, key_store: Path) -> None:
    """A key store without its database is a lost or moved database, not a new CAS.

    The one exception is a first start that was interrupted after the key store was written:
    its SQLite build file is still there, and the creation starts over. PostgreSQL has no such
    file, so an emptied PostgreSQL database with a key store always stops the start.
    """
    database = config.database_path
    interrupted = config.database_url is None and any(
        database.parent.glob(f"{database.name}.init-*")
    )
    if key_store.exists() and not interrupted:
        raise StoreError(
            f"database {config.database_shown} is missing but its key store {key_store} exists; "
            "restore the database, or move the key store away to create a new CAS"
        )


def _create(
    database: Path, platform: Platform, config: AvailabilityConfig, injected_dmk: bytes | None
) -> tuple[Store, bool, KeyStoreContents]:
    key_store = key_store_path(database)
    _refuse_orphaned_key_store(config, key_store)
    dmk = injected_dmk if injected_dmk is not None else secrets.token_bytes(DMK_SIZE)
    injected = injected_dmk is not None
    contents = KeyStoreContents(dmk, injected)
    store = _create_store(
        config,
        dmk,
        populate=lambda txn: populate_new_identity(txn, config.hostnames, db_key_injected=injected),
        before_publish=lambda: save_key_store(key_store, contents, platform.seal),
    )
    return store, True, contents


def _load_local_key_store(database: Path, platform: Platform) -> tuple[KeyStoreContents, bool]:
    """The contents of the key store beside ``database``, and whether they came from the
    pending key store of an upgrade in place (:func:`pending_key_store_path`): a build that
    cannot unseal the serving build's key store got the key from it and kept it there.

    Raises :class:`KeyStoreError` when neither unseals, saying how a new build gets the key.
    """
    key_store = key_store_path(database)
    try:
        return load_key_store(key_store, platform.unseal), False
    except KeyStoreError as exc:
        pending = pending_key_store_path(database)
        if not pending.exists():
            raise KeyStoreError(
                f"{exc.message}; if this build is a registered upgrade of the build that "
                "serves the CAS, start it while that one runs: it gets the database key from "
                "it (docs/operations.md, Upgrading to a new build)"
            ) from exc
        try:
            return load_key_store(pending, platform.unseal), True
        except KeyStoreError:
            raise exc from None


def _open_or_create_store(
    database: Path,
    platform: Platform,
    config: AvailabilityConfig,
    injected_dmk: bytes | None,
) -> tuple[Store, bool, KeyStoreContents, bool]:
    """The store, whether this start created it, its keys, and whether they came from a pending
    key store (:func:`_load_local_key_store`)."""
    key_store = key_store_path(database)
    if not store_exists(config):
        try:
            return (*_create(database, platform, config, injected_dmk), False)
        except StoreError:
            # Another instance created the CAS on this PostgreSQL database first: join it.
            if config.database_url is None or injected_dmk is not None or not store_exists(config):
                raise
            log.info("another instance created the CAS first; joining it")
    _check_store(config)
    if injected_dmk is not None:
        store = _open_store(config, injected_dmk)
        try:
            mark_db_key_injected(store)
            save_key_store(key_store, KeyStoreContents(injected_dmk, True), platform.seal)
        except BaseException:
            store.close()
            raise
        return store, False, KeyStoreContents(injected_dmk, True), False
    if config.database_url is None:
        contents, pending = _load_local_key_store(database, platform)
    else:
        pending = False
        joining = not key_store.exists()
        contents = (
            _join(config, platform) if joining else load_key_store(key_store, platform.unseal)
        )
    # While a key rollover runs, both keys open records (service/key_rollover.py).
    try:
        store = _open_store(config, contents.dmk, contents.previous_dmk)
    except KeyStoreError as exc:
        if pending:
            raise KeyStoreError(
                f"the database key this build got from the serving build (kept in "
                f"{pending_key_store_path(database)}) no longer opens the database: the key was "
                "rolled over since; start this build again while the serving build runs"
            ) from exc
        if config.database_url is None or not _others_alive(config):
            raise
        # Another instance rolled the key over while this one was stopped, and the old key is
        # gone: this instance's key store opens nothing any more. It asks for the key again.
        log.warning(
            "this instance's key store does not open the database (the key was rolled over "
            "while it was stopped); asking the running instances for the current key"
        )
        contents = _join(config, platform, rejoin=True)
        store = _open_store(config, contents.dmk, contents.previous_dmk)
    if contents.db_key_injected:
        try:
            mark_db_key_injected(store)
        except BaseException:
            store.close()
            raise
    return store, False, contents, pending


def _others_alive(config: AvailabilityConfig) -> bool:
    """Whether another instance of the CAS on ``config``'s PostgreSQL database sent a heartbeat
    lately: only then can a key store that opens nothing be renewed by asking for the key."""
    assert config.database_url is not None
    own = local_instance_id(config.database_path)
    with PostgresStore.cluster_rows(config.database_url) as rows:
        alive = rows.instances(time.time() - ALIVE_SECONDS)
    return any(row.instance_id != own for row in alive)


def _join(
    config: AvailabilityConfig, platform: Platform, *, rejoin: bool = False
) -> KeyStoreContents:
    """Get the database key of the CAS on ``config``'s PostgreSQL database from one of its
    running instances (:func:`opencas.service.cluster.join_cluster`), record this instance as
    joined, and seal the key in this instance's key store.

    The key is checked to open the database and to be its CAS's before anything is kept; the
    instance is recorded before the key store is written, so an instance that stops in between
    joins again and finds itself recorded. Raises :class:`JoinRefused` when the cluster refused
    this instance, :class:`KeyStoreError` when the key does not fit or nobody answered. With
    ``rejoin`` the instance served this CAS before (its key store is out of date): it keeps
    its identity and nothing is recorded.
    """
    assert config.database_url is not None
    database = config.database_path
    instance_id = local_instance_id(database)
    collateral = CasCollateral(config.collateral, lambda: None)
    try:
        with PostgresStore.cluster_rows(config.database_url) as rows:
            joined = join_cluster(rows, platform, instance_id, collateral=collateral)
    finally:
        collateral.close()
    secret = joined.secret
    store = _open_store(config, secret.dmk, secret.previous_dmk)
    try:
        stored = load_identity(store, config.hostnames, instance_id, reissue=False)
        if stored.cas_key_hash != secret.cas_key_hash:
            raise KeyStoreError(
                f"the key handed over by instance {joined.answered_by} is for CAS "
                f"{secret.cas_key_hash}, but the database holds CAS {stored.cas_key_hash}"
            )
        if not rejoin:
            with store.transaction() as txn:
                register_joined_instance(txn, config.hostnames, instance_id, joined.request_id)
    finally:
        store.close()
    contents = KeyStoreContents(secret.dmk, secret.db_key_injected, secret.previous_dmk)
    save_key_store(key_store_path(database), contents, platform.seal)
    log.info(
        "joined CAS %s as instance %s: instance %s handed over the database key",
        secret.cluster_id,
        instance_id,
        joined.answered_by,
    )
    return contents
