"""``casctl start-upgrade`` and ``casctl upgrade-status``: the database key rollover of a CAS
you own, with its progress; ``casctl register-upgrade``, ``list-upgrades`` and
``unregister-upgrade``: the builds that may take it over; ``casctl snapshot``: a snapshot of its
store now."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
from rich.progress import Progress

from opencas.attestation.peer_admission import (
    MEASUREMENT_PATTERN,
    MRSIGNER_PATTERN,
    RegisteredUpgrade,
)
from opencas.cli.casctl_common import identity_from, identity_option, reports_errors
from opencas.client.answers import KeyRolloverAnswer, UpgradeAnswer
from opencas.client.cas_client import CasClient
from opencas.client.pinning import pinned_client

#: How often the progress is asked for while waiting: a rollover of 10^5 records takes seconds.
POLL_SECONDS = 0.2


def _wait(client: CasClient, first: KeyRolloverAnswer) -> KeyRolloverAnswer:
    """Poll until the rollover finished, with a progress bar on a terminal."""
    answer = first
    with Progress(transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("re-encrypting records", total=max(answer.total, 1))
        while answer.state == "running":
            bar.update(task, completed=answer.moved, total=max(answer.total, answer.moved, 1))
            time.sleep(POLL_SECONDS)
            answer = client.key_rollover()
    return answer


def _show(answer: KeyRolloverAnswer) -> None:
    if answer.state == "none":
        click.echo("no database key rollover has run on this CAS")
        return
    if answer.state == "finished":
        click.echo(
            f"database key rollover finished at {answer.finished_at}: {answer.moved} records "
            f"moved to key {answer.key_id}; the previous key {answer.previous_key_id} is destroyed"
        )
    else:
        click.echo(
            f"database key rollover running since {answer.started_at}: {answer.moved} of "
            f"about {answer.total} records moved to key {answer.key_id}"
        )
    if answer.damaged:
        click.echo(
            f"casctl: warning: {answer.damaged} damaged records could not be moved and stay "
            "unreadable",
            err=True,
        )


@click.command("start-upgrade")
@click.option("--cas", "cas_name", help="Attested CAS (default: the default CAS).")
@click.option("--no-wait", is_flag=True, help="Start it and return; do not show the progress.")
@identity_option
@reports_errors
def start_upgrade(cas_name: str | None, no_wait: bool, identity_path: Path | None) -> None:
    """Roll the database key of a CAS you own over: a new key, every record re-encrypted
    while the CAS serves, then the old key destroyed."""
    with pinned_client(cas_name, identity_from(identity_path)) as client:
        answer = client.start_key_rollover()
        if not no_wait:
            answer = _wait(client, answer)
    _show(answer)


@click.command("upgrade-status")
@click.option("--cas", "cas_name", help="Attested CAS (default: the default CAS).")
@click.option("--wait", is_flag=True, help="Wait until a running rollover finished.")
@identity_option
@reports_errors
def upgrade_status(cas_name: str | None, wait: bool, identity_path: Path | None) -> None:
    """Show the running or last database key rollover of a CAS you own."""
    with pinned_client(cas_name, identity_from(identity_path)) as client:
        answer = client.key_rollover()
        if wait:
            answer = _wait(client, answer)
    _show(answer)


@click.command("snapshot")
@click.option("--cas", "cas_name", help="Attested CAS (default: the default CAS).")
@identity_option
@reports_errors
def snapshot(cas_name: str | None, identity_path: Path | None) -> None:
    """Have a CAS you own write a snapshot of its store to its [backup] target now."""
    with pinned_client(cas_name, identity_from(identity_path)) as client:
        written = client.write_snapshot()
    click.echo(
        f"snapshot {written.name} written: commit {written.state['counter']}, audit seq "
        f"{written.audit['seq']}, {written.bytes} bytes"
    )


def _hex_flag(
    pattern: str, shape: str
) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    """A click callback that refuses a value not matching ``pattern``, naming the flag and the
    ``shape`` it must have, before anything is sent (the server checks the same pattern)."""

    def check(_context: click.Context, parameter: click.Parameter, value: str | None) -> str | None:
        if value is not None and re.fullmatch(pattern, value) is None:
            flag = parameter.opts[0]
            raise click.UsageError(f"{flag} must be {shape}; {value[:80]!r} is not")
        return value

    return check


def _upgrade_options(command: Callable[..., None]) -> Callable[..., None]:
    """The flags that name a build: ``--measurement``, or ``--mrsigner``, ``--isvprodid`` and
    ``--isvsvn`` together (SGX)."""
    for option in reversed(
        (
            click.option(
                "--measurement",
                callback=_hex_flag(
                    MEASUREMENT_PATTERN,
                    "lowercase hex of 1 to 64 bytes (an MRENCLAVE is 64 hex digits, an MRTD or "
                    "an SNP measurement 96)",
                ),
                help="The build's measurement (lowercase hex).",
            ),
            click.option(
                "--mrsigner",
                callback=_hex_flag(MRSIGNER_PATTERN, "64 lowercase hex digits"),
                help="SGX: the signer's MRSIGNER (64 hex digits).",
            ),
            click.option("--isvprodid", type=click.IntRange(0, 65535), help="SGX: product id."),
            click.option(
                "--isvsvn",
                type=click.IntRange(0, 65535),
                help="SGX: the lowest security version accepted.",
            ),
        )
    ):
        command = option(command)
    return command


def _upgrade_of(
    measurement: str | None, mrsigner: str | None, isvprodid: int | None, isvsvn: int | None
) -> RegisteredUpgrade:
    """The upgrade the flags name; a usage error when they name none or both forms."""
    try:
        return RegisteredUpgrade(measurement, mrsigner, isvprodid, isvsvn)
    except ValueError:
        raise click.UsageError(
            "name the build with --measurement alone, or with --mrsigner, --isvprodid and "
            "--isvsvn together"
        ) from None


def _describe(answer: UpgradeAnswer) -> str:
    return _upgrade_of(
        answer.measurement, answer.mrsigner, answer.isv_prod_id, answer.min_isv_svn
    ).describe()


@click.command("register-upgrade")
@_upgrade_options
@click.option("--cas", "cas_name", help="Attested CAS (default: the default CAS).")
@identity_option
@reports_errors
def register_upgrade(
    measurement: str | None,
    mrsigner: str | None,
    isvprodid: int | None,
    isvsvn: int | None,
    cas_name: str | None,
    identity_path: Path | None,
) -> None:
    """Register the build that may take over a CAS you own: a CAS of that build started on
    its database gets the key and serves."""
    upgrade = _upgrade_of(measurement, mrsigner, isvprodid, isvsvn)
    with pinned_client(cas_name, identity_from(identity_path)) as client:
        answer = client.register_upgrade(
            upgrade.measurement,
            mrsigner=upgrade.mrsigner,
            isv_prod_id=upgrade.isv_prod_id,
            isv_svn=upgrade.min_isv_svn,
        )
    click.echo(f"upgrade {answer.upgrade_id} registered: {_describe(answer)}")


@click.command("list-upgrades")
@click.option("--cas", "cas_name", help="Attested CAS (default: the default CAS).")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@identity_option
@reports_errors
def list_upgrades(cas_name: str | None, as_json: bool, identity_path: Path | None) -> None:
    """List the upgrades registered for a CAS you own."""
    with pinned_client(cas_name, identity_from(identity_path)) as client:
        answers = client.list_upgrades()
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(answer) for answer in answers], indent=2))
        return
    if not answers:
        click.echo("no upgrades are registered")
    for answer in answers:
        click.echo(
            f"{answer.upgrade_id}  {_describe(answer)}  (registered {answer.registered_at} "
            f"by {answer.registered_by})"
        )


@click.command("unregister-upgrade")
@click.argument("upgrade_id", required=False)
@_upgrade_options
@click.option("--cas", "cas_name", help="Attested CAS (default: the default CAS).")
@identity_option
@reports_errors
def unregister_upgrade(
    upgrade_id: str | None,
    measurement: str | None,
    mrsigner: str | None,
    isvprodid: int | None,
    isvsvn: int | None,
    cas_name: str | None,
    identity_path: Path | None,
) -> None:
    """Unregister an upgrade of a CAS you own, by its id (list-upgrades) or by the flags it was
    registered with."""
    named = any(flag is not None for flag in (measurement, mrsigner, isvprodid, isvsvn))
    if (upgrade_id is None) == (not named):
        raise click.UsageError("name the upgrade by its id or by its flags, not both")
    if upgrade_id is None:
        upgrade_id = _upgrade_of(measurement, mrsigner, isvprodid, isvsvn).upgrade_id
    with pinned_client(cas_name, identity_from(identity_path)) as client:
        answer = client.unregister_upgrade(upgrade_id)
    click.echo(f"upgrade {answer.upgrade_id} unregistered: {_describe(answer)}")
