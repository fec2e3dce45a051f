"""``casctl register-backup``, ``casctl list-backups`` and ``casctl unregister-backup``: the
backup CASes of a CAS you own, which alone can restore its snapshots."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import click

from opencas.attestation.peer_admission import BACKUP_NAME_PATTERN, MAX_BACKUP_URL_LENGTH
from opencas.cli.casctl_common import EXIT_REFUSED, identity_from, identity_option, reports_errors
from opencas.cli.common import fail
from opencas.client.backups import fetch_backup_request
from opencas.client.channel import ApiError
from opencas.client.pinning import cas_url, pinned_client
from opencas.collateral.given import command_line_source


def _check_name(_context: click.Context, _parameter: click.Parameter, name: str) -> str:
    """The backup's name as the CAS will take it; a usage error naming ``--name`` otherwise,
    before the backup is attested."""
    if re.fullmatch(BACKUP_NAME_PATTERN, name) is None:
        raise click.UsageError(
            "--name must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or "
            f"digit; {name[:80]!r} is not"
        )
    return name


@click.command("register-backup")
@click.argument("url")
@click.option(
    "--name",
    required=True,
    callback=_check_name,
    help="The backup's name (letters, digits, '.', '_', '-').",
)
@click.option("--cas", "cas_name", help="Attested CAS to back up (default: the default CAS).")
@click.option(
    "--only-for-testing-debug", is_flag=True, help="Accept a backup in debug mode (simulated)."
)
@click.option(
    "--collateral",
    type=click.Path(exists=True, path_type=Path),
    help="Verify the backup's evidence with this collateral (a bundle directory or a DCAP "
    "collateral JSON file).",
)
@identity_option
@reports_errors
def register_backup(
    url: str,
    name: str,
    cas_name: str | None,
    only_for_testing_debug: bool,
    collateral: Path | None,
    identity_path: Path | None,
) -> None:
    """Attest the backup CAS at URL (`cas backup` there) and register it with a CAS you own.

    The CAS verifies the backup's evidence again and admits it only when it runs the same
    software family at an equal or higher security version on an equal or better TCB; every
    later snapshot then carries the database key sealed to the backup's attested key.
    """
    if len(url) > MAX_BACKUP_URL_LENGTH:
        raise click.BadParameter(
            f"the backup's URL must be at most {MAX_BACKUP_URL_LENGTH} characters", param_hint="URL"
        )
    try:
        url = cas_url(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from exc
    fetched = fetch_backup_request(
        url,
        at=datetime.now(UTC),
        allow_debug=only_for_testing_debug,
        collateral=command_line_source(collateral),
    )
    with pinned_client(cas_name, identity_from(identity_path)) as client:
        try:
            backup = client.register_backup(name, url, fetched.request)
        except ApiError as exc:
            if exc.code != "handover-refused":
                raise
            fail(
                "casctl",
                f"backup refused ({exc.details.get('check', '?')}): {exc.message}",
                EXIT_REFUSED,
            )
    click.echo(
        f"registered backup {backup.name} at {backup.url}: key {backup.key_hash}, "
        f"{backup.platform} measurement {backup.measurement} ({backup.basis})"
    )


@click.command("list-backups")
@click.option("--cas", "cas_name", help="Attested CAS (default: the default CAS).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@identity_option
@reports_errors
def list_backups(cas_name: str | None, as_json: bool, identity_path: Path | None) -> None:
    """List the backups registered with a CAS you own."""
    with pinned_client(cas_name, identity_from(identity_path)) as client:
        backups = client.backups()
    if as_json:
        click.echo(json.dumps([asdict(backup) for backup in backups], indent=2))
        return
    if not backups:
        click.echo("no backups are registered")
    for backup in backups:
        click.echo(
            f"{backup.name}\t{backup.url}\tkey {backup.key_hash}\t{backup.platform}\t"
            f"registered {backup.registered_at}"
        )


@click.command("unregister-backup")
@click.argument("name")
@click.option("--cas", "cas_name", help="Attested CAS (default: the default CAS).")
@identity_option
@reports_errors
def unregister_backup(name: str, cas_name: str | None, identity_path: Path | None) -> None:
    """Unregister the backup NAME: snapshots from now on carry no key for it."""
    with pinned_client(cas_name, identity_from(identity_path)) as client:
        backup = client.unregister_backup(name)
    click.echo(
        f"unregistered backup {backup.name} at {backup.url}; snapshots written before still "
        "open there"
    )
