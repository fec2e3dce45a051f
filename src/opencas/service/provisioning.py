"""Provisioning: giving a CAS its owner and owner config, and the owner's operations after that.

Provisioning is one transaction: the owner, the owner config, the state the report shows and the
removal of the one-time token are committed together or not at all, and only the first
provisioning succeeds, however many race for it.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Any

from opencas.config.owner import OwnerConfig, owner_config_sha256
from opencas.config.owner_identity import OwnerIdentity, owner_identity_of
from opencas.crypto.recovery_documents import ShareDocument
from opencas.errors import ConflictError, ForbiddenError
from opencas.policy.caller import Caller
from opencas.service.audit import actor_of, mode_of, next_sink, state_change
from opencas.service.cas import Cas
from opencas.service.cas_records import (
    OwnerRecord,
    StateRecord,
    delete_provisioning_token,
    read_owner,
    read_owner_config,
    read_provisioning_token,
    read_state,
    write_owner,
    write_owner_config,
    write_state,
)
from opencas.service.identity import reshape_tls, utc_now_text
from opencas.service.recovery import (
    configure_recovery,
    recovery_changed,
    recovery_details,
    share_documents,
)
from opencas.service.token_guard import TokenGuard

log = logging.getLogger("opencas")


@dataclass(frozen=True)
class ProvisionedConfig:
    """The owner config as the owner may see it: secrets redacted, with its hash."""

    redacted: dict[str, Any]
    sha256: str


def provision(
    cas: Cas, owner: OwnerIdentity, config: OwnerConfig, *, self_provisioned: bool
) -> StateRecord:
    """Make ``owner`` the owner of ``cas`` with ``config``; raise ``ConflictError`` if it has one.

    Returns the new state. The TLS certificate is reissued in the same transaction when the
    owner config shapes it.
    """
    audit = cas.audit_log
    if read_state(cas.store).provisioned:
        # Before the sink is tried: a network sink would be sent the log.
        raise ConflictError("this CAS is already provisioned", code="already-provisioned")
    sink = next_sink(cas.config.audit_log_path, None, config)
    with state_change(audit, sink, config) as entry, cas.store.transaction() as txn:
        state = read_state(txn)
        if state.provisioned:
            raise ConflictError("this CAS is already provisioned", code="already-provisioned")
        new_state = state.model_copy(
            update={
                "provisioned": True,
                "self_provisioned": self_provisioned,
                "provisioned_at": utc_now_text(),
                "owner_identity_hash": owner.key_hash,
                "owner_config_sha256": owner_config_sha256(config),
            }
        )
        write_owner(
            txn, OwnerRecord(key_hash=owner.key_hash, certificate_pem=owner.certificate_pem)
        )
        write_owner_config(txn, config)
        new_state = configure_recovery(txn, cas, config, new_state)
        write_state(txn, new_state)
        delete_provisioning_token(txn)
        tls_changed = reshape_tls(txn, cas.config.hostnames, cas.identity.scope)
        entry.record(
            txn,
            "provisioned",
            actor="cas" if self_provisioned else owner.key_hash,
            subject=owner.key_hash,
            details={
                "how": "self" if self_provisioned else "attested",
                "owner_config_sha256": new_state.owner_config_sha256,
                "audit_log_mode": mode_of(config),
                "recovery": recovery_details(new_state),
            },
        )
    audit.change_mode(mode_of(config))
    cas.keep_evidence(config)
    if tls_changed:
        cas.reload_identity()
    how = "self-provisioned from files" if self_provisioned else "provisioned"
    log.info("%s: owner %s, owner config %s", how, owner.key_hash, new_state.owner_config_sha256)
    return new_state


def provision_with_token(
    cas: Cas, guard: TokenGuard, token: str, caller: Caller, config: OwnerConfig
) -> StateRecord:
    """Attested provisioning: ``caller`` becomes the owner; ``token`` must be the one-time token.

    Refuses with ``AuthenticationRequired`` for an anonymous caller, ``ConflictError`` when
    already provisioned, ``RateLimitedError`` while the token back-off is closed, and
    ``ForbiddenError`` for a wrong token (which counts toward back-off).
    """
    owner = _owner_of(caller)
    # State and token from one snapshot: a rival that provisions in between must make this a
    # conflict, not a wrong token (its provisioning deleted the token).
    with cas.store.snapshot() as view:
        provisioned = read_state(view).provisioned
        expected = read_provisioning_token(view)
    if provisioned:
        raise ConflictError("this CAS is already provisioned", code="already-provisioned")
    guard.check_open()
    if expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
        closed_for = guard.record_failure()
        if closed_for:
            log.warning(
                "%d wrong provisioning tokens; provisioning is closed for %.0f s",
                guard.failures,
                closed_for,
            )
        raise ForbiddenError("wrong provisioning token", code="wrong-token")
    return provision(cas, owner, config, self_provisioned=False)


def _owner_of(caller: Caller) -> OwnerIdentity:
    """The owner identity ``caller`` would be: its key hash and, when it sent one, certificate.

    Raises ``AuthenticationRequired`` for an anonymous caller: an owner is always a key.
    """
    key = caller.signer("provisioning")
    if caller.certificate is not None:
        return owner_identity_of(caller.certificate)
    return OwnerIdentity(key, None)


def require_owner(cas: Cas, caller: Caller) -> None:
    """Raise unless ``caller`` is the owner of the provisioned ``cas``.

    An anonymous caller gets ``AuthenticationRequired``; before provisioning every signed caller
    gets ``ConflictError`` (``not-provisioned``), after it anyone but the owner
    ``ForbiddenError`` (``not-owner``).
    """
    key = caller.signer("an owner operation")
    owner = read_owner(cas.store)
    if owner is None:
        raise ConflictError("this CAS is not provisioned yet", code="not-provisioned")
    if not hmac.compare_digest(owner.key_hash, key):
        raise ForbiddenError("only the CAS owner may do this", code="not-owner")


def update_owner_config(cas: Cas, caller: Caller, config: OwnerConfig) -> str:
    """Replace the owner config (owner only); returns its new hash."""
    require_owner(cas, caller)
    audit = cas.audit_log
    sink = next_sink(cas.config.audit_log_path, read_owner_config(cas.store), config)
    with state_change(audit, sink, config) as entry, cas.store.transaction() as txn:
        state = read_state(txn)
        previous = mode_of(read_owner_config(txn))
        sha = write_owner_config(txn, config)
        new_state = configure_recovery(
            txn, cas, config, state.model_copy(update={"owner_config_sha256": sha})
        )
        write_state(txn, new_state)
        tls_changed = reshape_tls(txn, cas.config.hostnames, cas.identity.scope)
        mode = mode_of(config)
        changed = mode != previous
        recovery = recovery_changed(state, new_state)
        entry.record(
            txn,
            _update_event(mode_changed=changed, recovery_changed=recovery),
            actor=actor_of(caller),
            subject="owner-config",
            details={"owner_config_sha256": sha, "previous_sha256": state.owner_config_sha256}
            | ({"from": previous, "to": mode} if changed else {})
            | ({"recovery": recovery_details(new_state)} if recovery else {}),
        )
    audit.change_mode(mode)
    cas.keep_evidence(config)
    if tls_changed:
        cas.reload_identity()
    log.info("owner config updated: %s", sha)
    return sha


def _update_event(*, mode_changed: bool, recovery_changed: bool) -> str:
    """The one entry of an owner config update: turning the log off (or on) is always written,
    signed, so it names the update even when the recovery keys change with it."""
    if mode_changed:
        return "audit_log_mode_changed"
    return "recovery_configured" if recovery_changed else "owner_config_updated"


def show_recovery_shares(cas: Cas, caller: Caller) -> list[ShareDocument]:
    """The recovery shares, each sealed to its recovery key (owner only)."""
    require_owner(cas, caller)
    return share_documents(cas)


def show_owner_config(cas: Cas, caller: Caller) -> ProvisionedConfig:
    """The owner config with secrets redacted (owner only)."""
    require_owner(cas, caller)
    config = read_owner_config(cas.store)
    if config is None:
        raise ConflictError("this CAS is not provisioned yet", code="not-provisioned")
    return ProvisionedConfig(config.redacted(), owner_config_sha256(config))
