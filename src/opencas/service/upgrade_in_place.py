"""Upgrading a CAS on SQLite in place to a build that cannot unseal its key store.

On Gramine SGX the key store is sealed with the MRENCLAVE key (a simulated machine does the same
with ``[platform] simulated_sealing = "measurement"``), so a new build cannot unseal the key
store of the build before it. It gets the database key from the running instance instead, by
attesting to it, as a new instance does on PostgreSQL (:mod:`opencas.service.cluster`):

1. The new build, finding the database locked by another ``cas`` process and the key store
   sealed to another build, asks with a :class:`opencas.service.key_handover.HandoverRequest`
   (purpose ``upgrade``) in the file ``<database>.upgrade-request``.
2. The running instance looks for that file every :data:`REQUEST_POLL_SECONDS` (one ``stat``),
   checks the request exactly as a join request (:class:`opencas.service.cluster.KeyGiver`:
   against the build the store records as serving the CAS, as a registered upgrade on the same
   platform, TCB and debug mode), writes ``instance_admitted`` or ``instance_refused`` to its
   audit log, and answers in ``<database>.upgrade-answer``: the key sealed to the request, or a
   :class:`HandoverRefusal` saying why.
3. The new build takes the key only from a build it names as its predecessor (or on SGX of its
   own signer and product), seals it into a key store of its own (``<database>.key-store.next``,
   never over the serving build's, so an abandoned upgrade leaves the old build able to start),
   and waits for the database lock: the operator stops the running instance.
4. It then opens the database as any registered upgrade does (:func:`opencas.service.software.
   take_over`: migrations and the serving build record in one transaction), and once that
   committed puts its key store in place of the old one (a rename, fsynced).

Why files: the two processes share the database's directory already; a file needs no listener,
no address and no TLS trust before the new build has a key. The carrier may be untrusted: the
request and the answer are each bound by their maker's evidence and the key is sealed to a key
that never leaves the new build, so whoever can write the files can only drop, delay or refuse.
At most one request is pending: a new build asks only while it holds ``<database>.upgrade.lock``,
and the running instance takes a request by renaming it before it reads it (at most
:data:`MAX_REQUEST_BYTES`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from opencas.backoff import backoff_delays
from opencas.collateral.configured import CasCollateral
from opencas.config.availability import AvailabilityConfig
from opencas.crypto.canonical import canonical_json, strict_json_object
from opencas.durable_files import publish_file
from opencas.errors import CasError, KeyStoreError
from opencas.platform.base import Platform
from opencas.service.cas import Cas, load_platform, open_cas
from opencas.service.cluster import KeyGiver
from opencas.service.key_handover import (
    HandoverAnswer,
    HandoverRefused,
    HandoverRequest,
    HandoverSecret,
    document_text,
    make_request,
    open_handover,
    own_identity,
    parse_answer,
)
from opencas.service.software import registered_upgrades, serving_build
from opencas.service.step_thread import StepThread
from opencas.store import (
    DatabaseInUse,
    DatabaseLock,
    KeyStoreContents,
    SqliteStore,
    key_store_path,
    load_key_store,
    save_key_store,
)
from opencas.store.keystore import pending_key_store_path

log = logging.getLogger("opencas")

#: How often the running instance looks for an upgrade request.
REQUEST_POLL_SECONDS: Final = 1.0
#: The largest request or answer file read (evidence is at most 64 KiB, base64 in the JSON).
MAX_REQUEST_BYTES: Final = 128 * 1024
MAX_ANSWER_BYTES: Final = 128 * 1024
REFUSAL_FORMAT: Final = "opencas-key-handover-refusal/v1"
_ANSWER_POLL_SECONDS: Final = 0.2
_FIRST_DELAY: Final = 0.1
_LONGEST_DELAY: Final = 2.0


class UpgradeRefused(CasError, code="upgrade-refused"):
    """The running instance refused this build the database key, or its answer cannot be
    trusted; the message says why."""


class HandoverRefusal(BaseModel):
    """What the running instance answers a request it refused (``check`` and ``reason`` as
    :class:`opencas.service.key_handover.HandoverRefused` has them). Not bound by evidence: a
    forged refusal can only stop an upgrade, which whoever can write the file can do anyway."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    format: Literal["opencas-key-handover-refusal/v1"] = REFUSAL_FORMAT
    request_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None
    check: Annotated[str, Field(min_length=1, max_length=32)]
    reason: Annotated[str, Field(min_length=1, max_length=2000)]


def upgrade_request_path(database: Path) -> Path:
    """Where a new build asks: ``<database>.upgrade-request``."""
    return database.with_name(database.name + ".upgrade-request")


def upgrade_answer_path(database: Path) -> Path:
    """Where the running instance answers: ``<database>.upgrade-answer``."""
    return database.with_name(database.name + ".upgrade-answer")


def _claimed_path(database: Path) -> Path:
    return database.with_name(database.name + ".upgrade-request.claimed")


def _asking_lock(database: Path) -> DatabaseLock:
    """The lock a new build holds while it asks (``<database>.upgrade.lock``)."""
    return DatabaseLock(database.with_name(database.name + ".upgrade"))


def refusal_text(refused: HandoverRefused) -> str:
    """The refusal document for ``refused``, as it travels (canonical JSON)."""
    refusal = HandoverRefusal(
        request_id=refused.request_id, check=refused.check, reason=refused.message[:2000]
    )
    return canonical_json(refusal.model_dump(mode="json")).decode("utf-8")


def parse_answer_file(data: bytes) -> HandoverAnswer | HandoverRefusal:
    """The answer file's document: an answer or a refusal. Raises :class:`HandoverRefused`
    (``format``) naming what is wrong."""
    if len(data) > MAX_ANSWER_BYTES:
        raise HandoverRefused("format", f"the answer is larger than {MAX_ANSWER_BYTES} bytes")
    try:
        document = strict_json_object(data, "key handover answer")
    except ValueError as exc:
        raise HandoverRefused("format", f"the key handover answer is malformed: {exc}") from None
    if document.get("format") != REFUSAL_FORMAT:
        return parse_answer(data)
    try:
        return HandoverRefusal.model_validate(document)
    except ValidationError as exc:
        first = " ".join(str(exc).strip().splitlines()[:3])
        raise HandoverRefused("format", f"the key handover refusal is malformed: {first}") from None


def _read_limited(path: Path, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of ``path`` (so that a longer file shows as too long)."""
    with path.open("rb") as handle:
        return handle.read(limit + 1)


# --- the running instance -----------------------------------------------------------------------


@dataclass
class UpgradeAnswerer:
    """The running instance's side: answers upgrade requests in a daemon thread until
    :meth:`stop`. ``subject`` names this CAS instance in the audit entries."""

    database: Path
    giver: KeyGiver
    subject: str
    _thread: StepThread | None = None

    def start(self) -> None:
        """Look for requests in a daemon thread."""
        self._thread = StepThread(
            "upgrade-answerer", self.step, REQUEST_POLL_SECONDS, _step_failed, wait_first=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (it finishes the answer it is writing)."""
        if self._thread is not None:
            self._thread.stop()

    def step(self) -> bool:
        """Answer the pending request, if there is one; True when one was answered."""
        request_path = upgrade_request_path(self.database)
        claimed = _claimed_path(self.database)
        try:
            # Taking the file by renaming it: a request written after this is a new one.
            os.replace(request_path, claimed)
        except FileNotFoundError:
            return False
        try:
            text = self._answer(_read_limited(claimed, MAX_REQUEST_BYTES))
            publish_file(upgrade_answer_path(self.database), text.encode("utf-8"))
        finally:
            claimed.unlink(missing_ok=True)
        return True

    def _answer(self, data: bytes) -> str:
        who = "the new build (upgrade in place)"
        try:
            if len(data) > MAX_REQUEST_BYTES:
                raise HandoverRefused(
                    "format", f"the upgrade request is larger than {MAX_REQUEST_BYTES} bytes"
                )
            answer, decision = self.giver.answer(data, "upgrade", who, self.subject)
        except HandoverRefused as exc:
            return refusal_text(exc)
        log.info("handed the database key to %s: %s", who, decision.reason)
        return document_text(answer)


def _step_failed(exc: Exception) -> None:
    log.error("upgrade in place: unexpected error answering a request", exc_info=exc)


def answer_upgrades(cas: Cas) -> None:
    """On SQLite, answer the upgrade requests of new builds (in a thread, until ``cas`` is
    closed); nothing on PostgreSQL, where new builds join through the database."""
    if not isinstance(cas.store, SqliteStore):
        return
    store = cas.store
    giver = KeyGiver(
        cas.platform,
        cas.collateral,
        cas.clock,
        lambda: registered_upgrades(store),
        lambda: serving_build(store),
        lambda: cas.audit_log,
        cas.handover_secret,
    )
    answerer = UpgradeAnswerer(cas.config.database_path, giver, cas.identity.instance_id)
    answerer.start()
    cas.background_stops.append(answerer.stop)


# --- the new build ------------------------------------------------------------------------------


def open_cas_or_upgrade(config: AvailabilityConfig, injected_dmk: bytes | None = None) -> Cas:
    """:func:`opencas.service.cas.open_cas`, or on SQLite, when another ``cas`` process holds
    the database and this build cannot unseal its key store, the upgrade in place of the module
    docstring: ask that process for the key, keep it, wait for it to stop, take over.

    Raises :class:`UpgradeRefused` when the running instance refused this build (nothing
    written) or its answer cannot be trusted; :class:`DatabaseInUse` when the database is in
    use by a build whose key store this build unseals, or the running instance did not stop
    within ``config.upgrade_wait`` seconds; what :func:`open_cas` raises.
    """
    try:
        return open_cas(config, injected_dmk)
    except DatabaseInUse as in_use:
        if config.database_url is not None or injected_dmk is not None:
            raise
        platform = load_platform(config)
        if not _sealed_to_another_build(config.database_path, platform):
            raise
        holder = in_use.holder
    secret = ask_running_instance(config, platform, holder)
    pending = pending_key_store_path(config.database_path)
    contents = KeyStoreContents(secret.dmk, secret.db_key_injected, secret.previous_dmk)
    save_key_store(pending, contents, platform.seal)
    log.info(
        "upgrade in place: this build has the database key of CAS %s (kept in %s) and waits "
        "for the running instance (pid %s) to stop, at most %g s; stop it to let this build "
        "take over",
        secret.cluster_id,
        pending,
        holder,
        config.upgrade_wait,
    )
    lock = wait_for_database(config.database_path, holder, config.upgrade_wait)
    log.info("upgrade in place: the running instance stopped; this build takes over")
    return open_cas(config, lock=lock)


def _sealed_to_another_build(database: Path, platform: Platform) -> bool:
    """Whether the key store beside ``database`` exists and this platform cannot unseal it."""
    path = key_store_path(database)
    if not path.exists():
        return False
    try:
        load_key_store(path, platform.unseal)
    except KeyStoreError:
        return True
    return False


def ask_running_instance(
    config: AvailabilityConfig,
    platform: Platform,
    holder: str,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    timeout: float | None = None,
) -> HandoverSecret:
    """The database key, asked of the running instance (pid ``holder``) through the request
    and answer files, checked to come from a build this one names as its predecessor.

    Raises :class:`UpgradeRefused` when it refused or its answer cannot be trusted,
    :class:`KeyStoreError` when another build is asking already or no answer came within
    ``timeout`` seconds (``None``: ``config.upgrade_answer_timeout``).
    """
    if timeout is None:
        timeout = config.upgrade_answer_timeout
    database = config.database_path
    asking = _asking_lock(database)
    try:
        asking.acquire()
    except DatabaseInUse as exc:
        raise KeyStoreError(
            f"another build (pid {exc.holder}) is asking the running instance for the database "
            f"key of {config.database_shown} already; one build at a time upgrades in place"
        ) from None
    collateral = CasCollateral(config.collateral, lambda: None)
    try:
        own = own_identity(platform, at=clock(), collateral=collateral)
        key, request = make_request(platform, "upgrade")
        answer = _exchange(database, request, holder, timeout)
        if isinstance(answer, HandoverRefusal):
            raise UpgradeRefused(
                f"the running instance (pid {holder}) refused this build the database key: "
                f"{answer.check}: {answer.reason}"
            )
        try:
            return open_handover(answer, request, key, own, at=clock(), collateral=collateral)
        except HandoverRefused as exc:
            raise UpgradeRefused(
                f"the answer of the running instance (pid {holder}) cannot be trusted "
                f"({exc.check}): {exc.message}"
            ) from exc
    finally:
        collateral.close()
        asking.release()


def _exchange(
    database: Path, request: HandoverRequest, holder: str, timeout: float
) -> HandoverAnswer | HandoverRefusal:
    """Post ``request`` and wait for the answer to it; the files are gone afterwards."""
    request_path, answer_path = upgrade_request_path(database), upgrade_answer_path(database)
    # What an earlier build left (it was stopped while it asked) answers nothing now.
    answer_path.unlink(missing_ok=True)
    publish_file(request_path, document_text(request).encode("utf-8"))
    log.info(
        "upgrade in place: this build cannot unseal the key store %s; asking the running "
        "instance (pid %s) for the database key (request %s in %s)",
        key_store_path(database),
        holder,
        request.request_id,
        request_path,
    )
    deadline = time.monotonic() + timeout
    try:
        while True:
            answer = _answer_to(answer_path, request.request_id, holder)
            if answer is not None:
                return answer
            if time.monotonic() > deadline:
                raise KeyStoreError(
                    f"the running instance (pid {holder}) did not answer the upgrade request "
                    f"{request.request_id} within {timeout:g} seconds; check that it runs a "
                    "build that answers upgrade requests, then start this build again"
                )
            time.sleep(_ANSWER_POLL_SECONDS)
    finally:
        request_path.unlink(missing_ok=True)
        answer_path.unlink(missing_ok=True)


def _answer_to(
    answer_path: Path, request_id: str, holder: str
) -> HandoverAnswer | HandoverRefusal | None:
    """The answer in ``answer_path`` if it answers ``request_id``, else ``None``."""
    try:
        data = _read_limited(answer_path, MAX_ANSWER_BYTES)
    except FileNotFoundError:
        return None
    try:
        answer = parse_answer_file(data)
    except HandoverRefused as exc:
        raise UpgradeRefused(
            f"the answer of the running instance (pid {holder}) cannot be trusted "
            f"({exc.check}): {exc.message}"
        ) from exc
    # A refusal without a request id answers a request the instance could not read: this one
    # (the answer file was emptied before it was posted). Any other answers an earlier request.
    unnamed = isinstance(answer, HandoverRefusal) and answer.request_id is None
    return answer if answer.request_id == request_id or unnamed else None


def wait_for_database(database: Path, holder: str, timeout: float) -> DatabaseLock:
    """The database lock, once the process holding it (pid ``holder``) let it go; tried again
    after each of :func:`backoff_delays`. Raises :class:`DatabaseInUse` after ``timeout``
    seconds, naming the key store this build keeps for its next start."""
    lock = DatabaseLock(database)
    deadline = time.monotonic() + timeout
    for delay in backoff_delays(_FIRST_DELAY, _LONGEST_DELAY):
        try:
            lock.acquire()
        except DatabaseInUse:
            if time.monotonic() + delay > deadline:
                raise DatabaseInUse(
                    f"the running instance (pid {holder}) did not stop within {timeout:g} "
                    f"seconds; this build keeps the database key in "
                    f"{pending_key_store_path(database)} and takes over when started again "
                    "once that instance stopped",
                    holder,
                ) from None
            time.sleep(delay)
        else:
            return lock
    raise AssertionError("unreachable")
