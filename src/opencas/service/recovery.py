"""Recovery: the database key split among the owner's recovery keys, and a CAS brought back with
enough of them on a new machine when no backup of its key store can be unsealed there.

While the owner config has ``[recovery]``, the CAS keeps one share of its database master key
per recovery key, HPKE-sealed to that key (record ``cas/recovery-shares``); a new split is made
whenever the keys or the threshold change, in the transaction that changes them. On a new
machine, ``cas recovery-request`` makes an X25519 key sealed to that machine and evidence that
binds it; each holder opens their share and seals it to that key (``casctl recovery
open-share``); ``cas recover`` combines ``threshold`` of them, checks that the result opens this
database, seals the key store to the new machine and marks the CAS ``recovered`` for good.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric import x25519
from pydantic import BaseModel, ConfigDict

from opencas.config.availability import AvailabilityConfig
from opencas.config.owner import OwnerConfig, RecoveryConfig
from opencas.crypto.encoding import b64_decode, b64_encode
from opencas.crypto.keys import key_hash
from opencas.crypto.recovery import (
    SHARE_INFO_PREFIX,
    TRANSFER_INFO_PREFIX,
    RecoveryShareError,
    ShareLabel,
    combine_shares,
    open_share,
    recovery_key_hash,
    recovery_public_der,
    seal_share,
    split_key,
)
from opencas.crypto.recovery_documents import (
    REQUEST_FORMAT,
    SHARE_FORMAT,
    RequestDocument,
    ShareDocument,
    TransferDocument,
    request_report_data,
)
from opencas.errors import ConflictError, KeyStoreError, RecoveryError
from opencas.service.audit import state_change
from opencas.service.cas import Cas, load_platform, open_store_with_key, store_exists
from opencas.service.cas_records import StateRecord, read_identity, read_state, write_state
from opencas.service.identity import utc_now_text
from opencas.service.records import read_record, write_record
from opencas.store import DatabaseLock, KeyStoreContents, key_store_path, load_key_store
from opencas.store.base import Reader, Transaction
from opencas.store.keystore import save_key_store

log = logging.getLogger("opencas")

_TABLE: Final = "cas"
_SHARES: Final = "recovery-shares"
_PRIVATE_KEY_SIZE = 32


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SealedShareRecord(_Record):
    """One share: its index, the recovery key it is sealed to, the sealed bytes (base64)."""

    index: int
    key_hash: str
    sealed: str


class RecoverySharesRecord(_Record):
    """The shares of one split of the database key (record ``cas/recovery-shares``)."""

    split_id: str
    threshold: int
    shares: tuple[SealedShareRecord, ...]


# --- on the CAS that is recoverable -------------------------------------------------------------


def configure_recovery(
    txn: Transaction, cas: Cas, config: OwnerConfig, state: StateRecord
) -> StateRecord:
    """The state after ``config``'s ``[recovery]`` takes effect in ``txn``.

    When the keys or threshold differ from what the state records, a new split is sealed and
    stored (or, without ``[recovery]``, the shares are deleted); otherwise nothing is written and
    ``state`` is returned as it is, so shares the owner fetched stay valid.
    """
    recovery = config.recovery
    hashes = recovery.key_hashes() if recovery is not None else ()
    threshold = recovery.threshold if recovery is not None else None
    if hashes == state.recovery_key_hashes and threshold == state.recovery_threshold:
        return state
    if recovery is None:
        txn.delete(_TABLE, _SHARES)
    else:
        write_record(txn, _TABLE, _SHARES, _split(cas, recovery))
    return state.model_copy(update={"recovery_threshold": threshold, "recovery_key_hashes": hashes})


def split_again(txn: Transaction, cas: Cas, config: OwnerConfig | None) -> bool:
    """Seal a new split of ``cas.database_key`` (a new key, after a rollover started) in
    ``txn`` when ``config`` names recovery keys; whether it did. Shares of the old key would
    only rebuild a key that opens nothing once the rollover finished."""
    if config is None or config.recovery is None:
        return False
    write_record(txn, _TABLE, _SHARES, _split(cas, config.recovery))
    return True


def recovery_changed(before: StateRecord, after: StateRecord) -> bool:
    """Whether ``after`` has other recovery keys or another threshold than ``before``."""
    return (before.recovery_key_hashes, before.recovery_threshold) != (
        after.recovery_key_hashes,
        after.recovery_threshold,
    )


def recovery_details(state: StateRecord) -> dict[str, object]:
    """What an audit entry says about the recovery configuration in ``state``."""
    return {
        "configured": state.recovery_threshold is not None,
        "threshold": state.recovery_threshold,
        "key_hashes": list(state.recovery_key_hashes),
    }


def _split(cas: Cas, recovery: RecoveryConfig) -> RecoverySharesRecord:
    split_id = secrets.token_hex(16)
    cas_key_hash = cas.identity.cas_key_hash
    keys = [b64_decode(key) for key in recovery.keys]
    pieces = split_key(cas.database_key, recovery.threshold, len(keys))
    shares = []
    for der, (index, piece) in zip(keys, pieces, strict=True):
        key_hash = recovery_key_hash(der)
        label = ShareLabel(cas_key_hash, split_id, recovery.threshold, index, key_hash)
        sealed = b64_encode(seal_share(der, piece, label, SHARE_INFO_PREFIX))
        shares.append(SealedShareRecord(index=index, key_hash=key_hash, sealed=sealed))
    return RecoverySharesRecord(
        split_id=split_id, threshold=recovery.threshold, shares=tuple(shares)
    )


def read_recovery_shares(source: Reader) -> RecoverySharesRecord | None:
    """The stored shares, or ``None`` while the owner config has no ``[recovery]``."""
    return read_record(source, RecoverySharesRecord, _TABLE, _SHARES)


def share_documents(cas: Cas) -> list[ShareDocument]:
    """The sealed shares as files for their holders (the owner's to fetch: the caller checks).

    Raises ``ConflictError`` (``recovery-not-configured``) when the owner config has no
    ``[recovery]``.
    """
    record = read_recovery_shares(cas.store)
    if record is None:
        raise ConflictError(
            "this CAS has no recovery keys: its owner config has no [recovery] section",
            code="recovery-not-configured",
        )
    return [
        ShareDocument(
            format=SHARE_FORMAT,
            cas_key_hash=cas.identity.cas_key_hash,
            split_id=record.split_id,
            threshold=record.threshold,
            index=share.index,
            key_hash=share.key_hash,
            sealed=share.sealed,
        )
        for share in record.shares
    ]


# --- on the new machine -------------------------------------------------------------------------


def recovery_key_path(database: Path) -> Path:
    """Where a CAS being recovered keeps its sealed request key: ``<database>.recovery-key``."""
    return database.with_name(database.name + ".recovery-key")


def make_request(config: AvailabilityConfig) -> RequestDocument:
    """A recovery request from this machine: its request key and evidence that binds it.

    The request key (X25519) is made once and kept sealed to this machine, so asking again gives
    the same key. Raises :class:`RecoveryError` when this machine can already open the database
    or there is no database to recover, :class:`PlatformError` when the platform cannot seal or
    produce evidence.
    """
    _require_locked_out(config)
    platform = load_platform(config)
    key = _request_key(config, create=True)
    public = b64_encode(recovery_public_der(key))
    evidence = platform.evidence(request_report_data(public))
    return RequestDocument(format=REQUEST_FORMAT, public_key=public, evidence=evidence.to_json())


def _request_key(config: AvailabilityConfig, *, create: bool) -> x25519.X25519PrivateKey:
    platform = load_platform(config)
    path = recovery_key_path(config.database_path)
    if not path.exists():
        if not create:
            raise RecoveryError(
                f"there is no recovery request key {path}; run 'cas recovery-request' on this "
                "machine first, and have the shares sealed to that request"
            )
        _create_private(path, platform.seal(x25519.X25519PrivateKey.generate().private_bytes_raw()))
    try:
        raw = platform.unseal(path.read_bytes())
        return x25519.X25519PrivateKey.from_private_bytes(raw)
    except (ValueError, OSError) as exc:
        raise RecoveryError(f"the recovery request key {path} cannot be used here: {exc}") from exc
    except Exception as exc:
        raise RecoveryError(
            f"the recovery request key {path} cannot be unsealed on this machine ({exc}); "
            "move it away and make a new request"
        ) from exc


def _create_private(path: Path, data: bytes) -> None:
    """Create ``path`` (mode 0600) holding ``data``; never replaces an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _require_locked_out(config: AvailabilityConfig) -> None:
    """Refuse to recover what needs no recovery: no database, or one this machine opens."""
    if not store_exists(config):
        raise RecoveryError(
            f"there is no database {config.database_shown} to recover; copy the old CAS's "
            "database (and its audit log) here first"
        )
    key_store = key_store_path(config.database_path)
    if not key_store.exists():
        return
    try:
        load_key_store(key_store, load_platform(config).unseal)
    except KeyStoreError:
        return
    raise RecoveryError(
        f"this machine can unseal {key_store}: the CAS starts as it is and needs no recovery"
    )


@dataclass(frozen=True)
class Recovered:
    """What :func:`recover` did: the CAS it recovered, from which shares, and when."""

    cas_key_hash: str
    split_id: str
    indices: tuple[int, ...]
    threshold: int
    recovered_at: str


def recover(config: AvailabilityConfig, transfers: Sequence[TransferDocument]) -> Recovered:
    """Recover the database key from ``transfers`` and seal it to this machine.

    The shares must all be sealed to this machine's request key, belong to one CAS and split,
    and be at least their threshold; the key they give must open the database, whose CAS key
    must be theirs. The state is marked ``recovered`` before the new key store is written, so a
    crash in between leaves a CAS that says so. Raises :class:`RecoveryError` naming the
    problem (for too few shares: how many more are needed).
    """
    _require_locked_out(config)
    key = _request_key(config, create=False)
    pieces, label = _open_transfers(key, transfers)
    dmk = combine_shares(pieces)
    lock = DatabaseLock(config.database_path)
    lock.acquire()
    try:
        when = _mark_recovered(config, dmk, label)
        save_key_store(
            key_store_path(config.database_path),
            KeyStoreContents(dmk, db_key_injected=False),
            load_platform(config).seal,
        )
    finally:
        lock.release()
    with contextlib.suppress(FileNotFoundError):
        recovery_key_path(config.database_path).unlink()
    indices = tuple(index for index, _ in pieces)
    return Recovered(label.cas_key_hash, label.split_id, indices, label.threshold, when)


def _open_transfers(
    key: x25519.X25519PrivateKey, transfers: Sequence[TransferDocument]
) -> tuple[list[tuple[int, bytes]], ShareLabel]:
    if not transfers:
        raise RecoveryError("no shares were given")
    first = transfers[0]
    recipient = recovery_key_hash(recovery_public_der(key))
    pieces: list[tuple[int, bytes]] = []
    for transfer in transfers:
        if (transfer.cas_key_hash, transfer.split_id) != (first.cas_key_hash, first.split_id):
            raise RecoveryError(
                f"share {transfer.index} belongs to CAS {transfer.cas_key_hash[:16]}… split "
                f"{transfer.split_id}, share {first.index} to CAS {first.cas_key_hash[:16]}… "
                f"split {first.split_id}: all shares must come from one fetch of one CAS"
            )
        if transfer.recipient != recipient:
            raise RecoveryError(
                f"share {transfer.index} was sealed to request key {transfer.recipient[:16]}…, "
                f"not to this machine's {recipient[:16]}…; seal it to this machine's request"
            )
        if any(index == transfer.index for index, _ in pieces):
            raise RecoveryError(f"share {transfer.index} was given twice")
        try:
            piece = open_share(
                key, b64_decode(transfer.sealed), transfer.label(), TRANSFER_INFO_PREFIX
            )
        except (RecoveryShareError, ValueError) as exc:
            raise RecoveryError(str(exc)) from exc
        pieces.append((transfer.index, piece))
    if len(pieces) < first.threshold:
        raise RecoveryError(
            f"{len(pieces)} of the {first.threshold} shares needed were given; "
            f"{first.threshold - len(pieces)} more are needed to recover the database key"
        )
    return pieces, first.label()


def _mark_recovered(config: AvailabilityConfig, dmk: bytes, label: ShareLabel) -> str:
    try:
        store = open_store_with_key(config, dmk)
    except KeyStoreError as exc:
        raise RecoveryError(
            f"the shares do not give the key of database {config.database_shown}: {exc}"
        ) from exc
    try:
        cas_key_hash = key_hash(read_identity(store).load_cas_key())
        if cas_key_hash != label.cas_key_hash:
            raise RecoveryError(
                f"the database is CAS {cas_key_hash}, the shares are for {label.cas_key_hash}"
            )
        when = utc_now_text()
        with store.transaction() as txn:
            state = read_state(txn)
            write_state(txn, state.model_copy(update={"recovered": True, "recovered_at": when}))
        return when
    finally:
        store.close()


def record_recovered(cas: Cas, recovered: Recovered) -> None:
    """Write the ``recovered`` audit entry of the CAS :func:`recover` brought back, now open."""
    with state_change(cas.audit_log) as entry, cas.store.transaction() as txn:
        write_state(txn, read_state(txn))
        entry.record(
            txn,
            "recovered",
            actor="cas",
            subject=recovered.cas_key_hash,
            details={
                "split_id": recovered.split_id,
                "threshold": recovered.threshold,
                "shares": list(recovered.indices),
                "recovered_at": recovered.recovered_at,
                "machine": cas.platform.kind,
            },
        )
    log.warning(
        "recovered from %d shares: the database key was rebuilt outside a TEE's sealing, and "
        "the report says recovered: true for good",
        len(recovered.indices),
    )
