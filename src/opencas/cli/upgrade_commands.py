"""``casctl start-upgrade`` and ``casctl upgrade-status``: the database key rollover of a CAS
you own, with its progress; ``casctl snapshot``: a snapshot of its store now."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from rich.progress import Progress

from opencas.cli.casctl_common import identity_from, identity_option, reports_errors
from opencas.client.answers import KeyRolloverAnswer
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
