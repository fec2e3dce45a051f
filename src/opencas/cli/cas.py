"""``cas``: the OpenCAS server.

Exit codes: 0 success; 1 the CAS cannot start or run (store, key store, lock, platform, port);
2 usage error, invalid configuration or owner files, or (``provision`` without
``--skip-if-already-provisioned``) the CAS is already provisioned; 3 this build may not serve
the CAS: the running instances refused it the database key (on PostgreSQL as a new instance, on
SQLite as an upgrade in place) or the store names another serving build and no registered
upgrade names this one (its software or platform does not satisfy the CAS; the message says
why); 4 ``restore``
refused the snapshot (this machine is not a registered backup of its CAS, the snapshot does not
open, or a database is here already; the message says which).
"""

from __future__ import annotations

import binascii
import json
import logging
from pathlib import Path

import click

from opencas import __version__
from opencas.api.app import create_backup_api, create_client_api, create_enclave_api
from opencas.api.metrics import ApiMetrics
from opencas.api.server import (
    Listener,
    present_certificate,
    present_identity,
    run_event_loop,
    serve_forever,
    server_context,
    tls_context,
)
from opencas.cli.common import describe_os_error, fail, setup_logging
from opencas.config.availability import (
    AvailabilityConfig,
    default_availability_config,
    load_availability_config,
)
from opencas.config.owner import load_owner_config, owner_config_sha256
from opencas.config.owner_identity import load_owner_certificate
from opencas.crypto.recovery_documents import (
    MAX_DOCUMENT_BYTES,
    TransferDocument,
    document_json,
    parse_document,
)
from opencas.errors import CasError, ConfigError, RecoveryError
from opencas.service.audit import log_start, log_stop
from opencas.service.backups import (
    RestoreRefused,
    backup_key,
    backup_key_hash,
    backup_tls_chain,
    record_restored,
)
from opencas.service.backups import restore as restore_cas
from opencas.service.cas import Cas, inspect_cas, load_platform, open_cas, store_exists
from opencas.service.cas_records import StateRecord
from opencas.service.cluster import JoinRefused
from opencas.service.key_rollover import refresh_database_key, resume_key_rollover
from opencas.service.provisioning import provision as provision_cas
from opencas.service.recovery import make_request, record_recovered
from opencas.service.recovery import recover as recover_cas
from opencas.service.snapshots import run_periodically
from opencas.service.software import SoftwareRefused, log_take_over
from opencas.service.upgrade_in_place import UpgradeRefused, answer_upgrades, open_cas_or_upgrade

log = logging.getLogger("opencas")

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_JOIN_REFUSED = 3
EXIT_RESTORE_REFUSED = 4


@click.group(invoke_without_command=True)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("cas.toml"),
    show_default=True,
    help="Availability config (TOML).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.version_option(__version__, prog_name="cas")
@click.pass_context
def cli(ctx: click.Context, config_path: Path, log_level: str) -> None:
    """Run an OpenCAS server. Without a command: `serve`."""
    setup_logging(log_level)
    ctx.obj = config_path
    if ctx.invoked_subcommand is None:
        ctx.invoke(serve)


def _load_config(config_path: Path) -> AvailabilityConfig:
    return load_availability_config(config_path)


def _read_database_key(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
        key = binascii.unhexlify(text)
    except (OSError, UnicodeDecodeError, binascii.Error, ValueError) as exc:
        fail("cas", f"database key file {path}: not readable as 64 hex digits ({exc})", EXIT_USAGE)
    if len(key) != 32:
        fail("cas", f"database key file {path}: must hold 64 hex digits (32 bytes)", EXIT_USAGE)
    return key


@cli.command()
@click.option(
    "--database-key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="DEBUG ONLY: open the store with this database key (64 hex digits). "
    "The CAS then reports db_key_injected: true for good.",
)
@click.pass_obj
def serve(config_path: Path, database_key_file: Path | None) -> None:
    """Open (or create) the CAS and serve its APIs until SIGTERM or SIGINT."""
    config = _load_config(config_path)
    injected = _read_database_key(database_key_file) if database_key_file else None
    cas = open_cas_or_upgrade(config, injected)
    try:
        _announce(cas, injected is not None)
        _serve(cas)
    finally:
        cas.close()


@cli.command()
@click.option(
    "--owner-config",
    "owner_config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Owner config (TOML, JSON or YAML).",
)
@click.option(
    "--owner-identity",
    "owner_identity_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM certificate carrying the owner's key.",
)
@click.option(
    "--skip-if-already-provisioned",
    is_flag=True,
    help="If the CAS is already provisioned, start it anyway (and say whether the files match).",
)
@click.option("--no-serve", is_flag=True, help="Provision, then exit instead of serving.")
@click.pass_obj
def provision(
    config_path: Path,
    owner_config_path: Path,
    owner_identity_path: Path,
    skip_if_already_provisioned: bool,
    no_serve: bool,
) -> None:
    """Self-provision the CAS from local files, then serve.

    Convenient for development, tests, transient and air-gapped CAS instances; the report says
    self_provisioned: true and carries what was provisioned, so clients can check it.
    """
    config = _load_config(config_path)
    loaded = load_owner_config(owner_config_path)
    # Validity matters when the owner is provisioned, not when an existing owner is compared.
    owner = load_owner_certificate(owner_identity_path, check_validity=False)
    for warning in loaded.warnings:
        log.warning("%s", warning)
    cas = open_cas_or_upgrade(config)
    try:
        state = cas.state()
        if state.provisioned:
            if not skip_if_already_provisioned:
                fail(
                    "cas",
                    f"this CAS is already provisioned (owner {state.owner_identity_hash}); "
                    "pass --skip-if-already-provisioned to start it as it is",
                    EXIT_USAGE,
                )
            _compare_provisioned(state, owner.key_hash, owner_config_sha256(loaded.config))
        else:
            load_owner_certificate(owner_identity_path)
            provision_cas(cas, owner, loaded.config, self_provisioned=True)
        _announce(cas, False)
        if not no_serve:
            _serve(cas)
    finally:
        cas.close()


def _compare_provisioned(state: StateRecord, owner_hash: str, config_sha: str) -> None:
    differences = []
    if state.owner_identity_hash != owner_hash:
        differences.append(
            f"owner identity (provisioned {state.owner_identity_hash}, given {owner_hash})"
        )
    if state.owner_config_sha256 != config_sha:
        differences.append(
            f"owner config (provisioned {state.owner_config_sha256}, given {config_sha})"
        )
    if differences:
        log.warning(
            "already provisioned, skipping; the given files do NOT match what is provisioned: %s",
            "; ".join(differences),
        )
    else:
        log.info("already provisioned, skipping; the given owner identity and config match")


def _serve(cas: Cas) -> None:
    metrics = ApiMetrics()
    config = cas.config
    listeners = [
        Listener("client", "[api] api_listen", config.api_listen, create_client_api(cas, metrics)),
        Listener(
            "enclave",
            "[api] enclave_listen",
            config.enclave_listen,
            create_enclave_api(cas, metrics),
        ),
    ]
    context = tls_context(cas.identity)
    cas.identity_listeners.append(lambda identity: present_identity(context, identity))
    log_start(cas.audit_log)
    log_take_over(cas.audit_log, cas.took_over, created=cas.created)
    resume_key_rollover(cas)
    run_periodically(cas)
    cas.start_cluster_member(refresh_key=lambda: refresh_database_key(cas))
    answer_upgrades(cas)
    run_event_loop(
        serve_forever(listeners, context, config.connection_limits, maintenance=cas.refresh_tls)
    )
    log_stop(cas.audit_log)
    log.info("stopped")


def _announce(cas: Cas, injected: bool) -> None:
    if cas.created:
        log.info("created a new CAS database at %s", cas.config.database_shown)
    log.info("CAS key hash: %s", cas.identity.cas_key_hash)
    log.info("software measurement: %s", cas.platform.measurement)
    log.info(
        "CAS id: %s, instance id: %s, platform: %s, mode: %s",
        cas.identity.cluster_id,
        cas.identity.instance_id,
        cas.platform.kind,
        cas.mode,
    )
    log.info("database key protection: %s", cas.platform.key_protection)
    if cas.state().recovered:
        log.warning(
            "this CAS was recovered from recovery shares at %s: the report says recovered: true",
            cas.state().recovered_at,
        )
    restored_from = cas.state().restored_from
    if restored_from is not None:
        log.warning(
            "this CAS was restored at %s from snapshot %s (commit %d, taken %s): the report says "
            "restored_from",
            restored_from.restored_at,
            restored_from.snapshot_id,
            restored_from.state_counter,
            restored_from.taken_at,
        )
    if injected or cas.state().db_key_injected:
        log.warning(
            "the database key was injected by an operator: the report says "
            "db_key_injected: true and clients refuse this CAS unless told otherwise"
        )
    state = cas.state()
    if state.provisioned:
        how = "self-provisioned" if state.self_provisioned else "provisioned"
        log.info("%s at %s by owner %s", how, state.provisioned_at, state.owner_identity_hash)
        return
    token = cas.provisioning_token()
    if token is not None:
        log.info("this CAS is not provisioned; one-time provisioning token: %s", token)


@cli.command("recovery-request")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the request for the recovery-key holders.",
)
@click.pass_obj
def recovery_request(config_path: Path, output: Path) -> None:
    """Ask for recovery shares: a key sealed to this machine, and evidence that binds it.

    Run it on the new machine, with the old CAS's database (and audit log) in place.
    """
    request = make_request(_load_config(config_path))
    output.write_text(json.dumps(document_json(request), indent=2) + "\n", encoding="utf-8")
    click.echo(f"wrote {output}: give it to the recovery-key holders with their shares")


@cli.command()
@click.option(
    "--share",
    "share_paths",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A share sealed to this machine's request (`casctl recovery open-share`); repeat.",
)
@click.option("--no-serve", is_flag=True, help="Recover, then exit instead of serving.")
@click.pass_obj
def recover(config_path: Path, share_paths: tuple[Path, ...], no_serve: bool) -> None:
    """Recover the CAS on this machine from its recovery shares, then serve.

    The report says recovered: true from then on, and clients refuse the CAS unless told
    --allow-recovered.
    """
    config = _load_config(config_path)
    recovered = recover_cas(config, [_read_transfer(path) for path in share_paths])
    cas = open_cas(config)
    try:
        record_recovered(cas, recovered)
        _announce(cas, False)
        if not no_serve:
            _serve(cas)
    finally:
        cas.close()


def _read_transfer(path: Path) -> TransferDocument:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_DOCUMENT_BYTES + 1)
        return parse_document(data, TransferDocument, str(path))
    except ValueError as exc:
        raise RecoveryError(str(exc)) from None


@cli.command()
@click.pass_obj
def backup(config_path: Path) -> None:
    """Serve as a backup CAS: only the attested backup key that `casctl register-backup` takes
    to the CAS to be backed up, until SIGTERM or SIGINT.

    The key is made on the first start and kept sealed to this machine; `cas restore` opens
    the snapshots that carry the database key for it.
    """
    config = _load_config(config_path)
    if store_exists(config):
        fail(
            "cas",
            f"a database {config.database_shown} is here: this machine runs a CAS, not a "
            "backup; a backup has no database until 'cas restore' creates it",
            EXIT_USAGE,
        )
    platform = load_platform(config)
    key = backup_key(config, platform, create=True)
    log.info("backup mode: backup key hash %s", backup_key_hash(key))
    log.info("software measurement: %s, platform: %s", platform.measurement, platform.kind)
    context = server_context()
    chain, tls_key = backup_tls_chain(config.hostnames)
    present_certificate(context, chain, tls_key)
    listener = Listener(
        "backup", "[api] api_listen", config.api_listen, create_backup_api(platform, key)
    )
    run_event_loop(serve_forever([listener], context, config.connection_limits))
    log.info("stopped")


@cli.command()
@click.argument("snapshot", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--no-serve", is_flag=True, help="Restore, then exit instead of serving.")
@click.pass_obj
def restore(config_path: Path, snapshot: Path, no_serve: bool) -> None:
    """Restore the CAS from SNAPSHOT on this backup machine, then serve.

    Only a machine registered as a backup (`casctl register-backup`) before the snapshot was
    taken can: the snapshot carries the database key sealed to its backup key. The report says
    restored_from from then on, and the state counter goes on from the snapshot's.
    """
    config = _load_config(config_path)
    restored = restore_cas(config, snapshot)
    cas = open_cas(config)
    try:
        record_restored(cas, restored)
        _announce(cas, False)
        if not no_serve:
            _serve(cas)
    finally:
        cas.close()


@cli.command("show-identification")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def show_identification(config_path: Path, as_json: bool) -> None:
    """Print the CAS identity without starting a server (also while one is running)."""
    cas = inspect_cas(_load_config(config_path))
    try:
        facts = cas.identification()
    finally:
        cas.close()
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    for key, value in facts.items():
        shown = str(value).lower() if isinstance(value, bool) else value
        click.echo(f"{key.replace('_', ' ')}: {shown}")


@cli.command("init-config")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.pass_obj
def init_config(config_path: Path, force: bool) -> None:
    """Write a default availability config (simulated platform, local addresses)."""
    if config_path.exists() and not force:
        fail("cas", f"{config_path} exists; pass --force to overwrite it", EXIT_USAGE)
    config_path.write_text(default_availability_config(), encoding="utf-8")
    click.echo(f"wrote {config_path}")


def main() -> None:
    """Console-script entry point: every refusal is one line on stderr and an exit code."""
    try:
        cli(prog_name="cas")
    except ConfigError as exc:
        fail("cas", exc.message, EXIT_USAGE)
    except (JoinRefused, SoftwareRefused, UpgradeRefused) as exc:
        fail("cas", exc.message, EXIT_JOIN_REFUSED)
    except RestoreRefused as exc:
        fail("cas", exc.message, EXIT_RESTORE_REFUSED)
    except CasError as exc:
        fail("cas", exc.message, EXIT_FAILURE)
    except OSError as exc:
        fail("cas", describe_os_error(exc), EXIT_FAILURE)


if __name__ == "__main__":
    main()
