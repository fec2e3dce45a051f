"""``casctl volume``: prepare an encrypted volume outside the CAS (docs/sessions.md#volumes).

An operator encrypts an existing directory into a volume's store here, then gives the key and
tag to the session (``fspf_key``, ``fspf_tag`` of the volume); ``casctl run`` opens it from then
on and the CAS keeps the tag.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from opencas.cli.casctl_common import reports_errors
from opencas.crypto.volume_format import KEY_SIZE, check_tag, new_volume_key
from opencas.errors import ClientError
from opencas.runtime.volume_store import add_directory, check_volume, seal_directory

_KEY_FILE_HELP = (
    "A file holding the volume key as 64 hexadecimal digits (as 'volume create --key-file' "
    "writes it)."
)


@click.group("volume")
def volume_group() -> None:
    """Prepare an encrypted volume outside the CAS: encrypt a directory, add files, check it."""


def _read_key(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"cannot read the volume key {path}: {exc}") from exc
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_SIZE:
        # Never shown: the file may hold a real key with a typo.
        raise ClientError(f"{path} does not hold a volume key (64 hexadecimal digits)")
    return key


def _write_key(path: Path, key: bytes) -> None:
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ClientError(f"cannot write the volume key {path}: {exc.strerror}") from exc
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(key.hex() + "\n")


def _tag(text: str) -> str:
    try:
        return check_tag(text.lower())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@volume_group.command("create")
@click.argument("store", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The directory whose files the volume holds (read where they are, not copied).",
    metavar="DIR",
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Use the key in this file; a file that does not exist yet gets a new key (mode 0600).",
)
@click.option(
    "--envar-output",
    is_flag=True,
    help="Print 'export VOLUME_KEY=…' and 'export VOLUME_TAG=…' for a shell, as SCONE's "
    "'fspf create-volume --envar-output' does.",
)
@reports_errors
def create_command(store: Path, source: Path, key_file: Path | None, envar_output: bool) -> None:
    """Encrypt every file below DIR into the volume store STORE, and print the two lines that
    name it in the session's volume: fspf_key and fspf_tag."""
    if store.exists() and any(store.iterdir()):
        raise ClientError(f"{store} is not empty: a new volume needs a store of its own")
    if key_file is not None and key_file.exists():
        key = _read_key(key_file)
    else:
        key = new_volume_key()
        if key_file is not None:
            _write_key(key_file, key)
    manifest, tag = seal_directory(store, key, source)
    click.echo(f"# {len(manifest.files)} files from {source}, in {store}", err=True)
    if envar_output:
        click.echo(f"export VOLUME_KEY={key.hex()}")
        click.echo(f"export VOLUME_TAG={tag}")
        return
    # Quoted: hex of digits only would be a number in YAML.
    click.echo(f'fspf_key: "{key.hex()}"')
    click.echo(f'fspf_tag: "{tag}"')


@volume_group.command("add")
@click.argument("store", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--key-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=_KEY_FILE_HELP,
)
@click.option("--tag", required=True, help="The volume's tag now (fspf_tag).")
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The directory whose files are added.",
    metavar="DIR",
)
@click.option(
    "--at", "inside", default="", help="Where in the volume (a relative path; default: its top)."
)
@reports_errors
def add_command(store: Path, key_file: Path, tag: str, source: Path, inside: str) -> None:
    """Add the files below DIR to the volume in STORE at tag TAG, and print its new fspf_tag.

    A file already at a path is replaced. The volume is checked first; its plaintext passes
    through a private temporary directory, removed afterwards.
    """
    key = _read_key(key_file)
    with tempfile.TemporaryDirectory(prefix="casctl-volume-") as workdir:
        os.chmod(workdir, 0o700)
        sealed = add_directory(store, key, _tag(tag), source, inside.strip("/"), Path(workdir))
    if sealed is None:
        click.echo(f"# nothing changed; the tag stays {tag}", err=True)
        click.echo(f'fspf_tag: "{tag.lower()}"')
        return
    click.echo(f'fspf_tag: "{sealed[1]}"')


@volume_group.command("check")
@click.argument("store", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--key-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=_KEY_FILE_HELP,
)
@click.option("--tag", required=True, help="The tag to check the store against (fspf_tag).")
@reports_errors
def check_command(store: Path, key_file: Path, tag: str) -> None:
    """Open the volume in STORE at TAG as casctl run would, checking every file, and say what it
    holds; its plaintext passes through a private temporary directory, removed afterwards."""
    key = _read_key(key_file)
    with tempfile.TemporaryDirectory(prefix="casctl-volume-") as workdir:
        os.chmod(workdir, 0o700)
        manifest = check_volume(store, key, _tag(tag), Path(workdir))
    size = sum(item.size for item in manifest.files)
    click.echo(
        f"volume at tag {tag.lower()}: {len(manifest.files)} files, {size} bytes, all authentic"
    )
