"""``casctl fspf``: build a service's protection file (docs/sessions.md#protected-files)."""

from __future__ import annotations

from pathlib import Path

import click

from opencas.cli.casctl_common import reports_errors
from opencas.crypto.fspf_format import Protection
from opencas.runtime.fspf import add_region, create_protection_file, seal_protection_file


@click.group("fspf")
def fspf_group() -> None:
    """Build a protection file: which files of a program's tree are authenticated or encrypted."""


@fspf_group.command("create")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@reports_errors
def create_command(file: Path) -> None:
    """Write a new, empty protection file FILE (keep it private until it is sealed)."""
    create_protection_file(file)
    click.echo(f"created {file}")


@fspf_group.command("add")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--authenticated",
    "protection",
    flag_value="authenticated",
    help="Files in REGION must be as recorded (their SHA-256).",
)
@click.option(
    "--encrypted",
    "protection",
    flag_value="encrypted",
    help="Files in REGION are stored encrypted, and authenticated.",
)
@click.option(
    "--not-protected",
    "protection",
    flag_value="not-protected",
    help="Files in REGION are not checked (to exempt a part of a protected region).",
)
@click.argument("region")
@click.option(
    "--from",
    "source",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Record every file below SRC_DIR as REGION/<its relative path>.",
    metavar="SRC_DIR",
)
@click.option(
    "--to",
    "destination",
    type=click.Path(file_okay=False, path_type=Path),
    help="Encrypted region: write the encrypted files here (then deploy this at REGION).",
    metavar="DST_DIR",
)
@reports_errors
def add_command(
    file: Path,
    protection: Protection | None,
    region: str,
    source: Path | None,
    destination: Path | None,
) -> None:
    """Declare REGION (an absolute directory) of FILE, and with --from add the files in it.

    A file belongs to the longest region that holds it.
    """
    if protection is None:
        raise click.UsageError("say how REGION is protected: --authenticated or --encrypted")
    if destination is not None and source is None:
        raise click.UsageError("--to goes with --from")
    added = add_region(file, region, protection, source, destination)
    if source is None:
        # Declaring a region alone is allowed (its files may come later), but a user who
        # expected files to be recorded should hear why none were.
        click.echo(f"region {region} is {protection}; no files added (--from SRC_DIR adds them)")
    else:
        click.echo(f"region {region} is {protection}; {added} files added from {source}")


@fspf_group.command("encrypt")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@reports_errors
def encrypt_command(file: Path) -> None:
    """Seal FILE and print the lines that name it in the service: fspf_key and fspf_tag."""
    key, tag = seal_protection_file(file)
    # Quoted: hex of digits only would be a number in YAML.
    click.echo(f'fspf_key: "{key}"')
    click.echo(f'fspf_tag: "{tag}"')
