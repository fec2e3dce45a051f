"""``casctl session ...``: write, check, upload, read and verify session policies."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from opencas.cli.casctl_common import identity_from, identity_option, reports_errors
from opencas.client.pinning import pinned_client
from opencas.client.templates import fill_template, parse_assignments, used_variables
from opencas.crypto.pem import load_private_key_pem
from opencas.errors import ClientError
from opencas.policy.access import sign_session_hash
from opencas.policy.hashing import session_hash
from opencas.policy.model import Session, check_hex64
from opencas.policy.parse import read_session
from opencas.sources.problems import render

F = TypeVar("F", bound=Callable[..., Any])


def _template_options(command: F) -> F:
    command = click.option(
        "--use-env", is_flag=True, help="Fill ${VAR} from the environment as well."
    )(command)
    return click.option(
        "-e",
        "assignments",
        multiple=True,
        metavar="VAR=VALUE",
        help="Fill ${VAR} in the file with VALUE (repeatable).",
    )(command)


def session_text(path: Path, assignments: tuple[str, ...], use_env: bool) -> str:
    """The session file with its template variables filled in.

    Warns (on stderr) about each ``-e`` variable the file never uses: a misspelt name would
    otherwise leave the value out unnoticed.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"cannot read {path}: {exc}") from exc
    variables = dict(os.environ) if use_env else {}
    given = parse_assignments(assignments)
    variables.update(given)
    filled = fill_template(text, variables, str(path))
    for name in sorted(set(given) - used_variables(text)):
        click.echo(f"casctl: warning: -e {name}: {path} does not use ${{{name}}}", err=True)
    return filled


def _parse(text: str, path: Path) -> Session:
    """The session in ``text``; each note on what it writes but this CAS ignores is printed."""
    read = read_session(text, str(path))
    for note in read.notes:
        click.echo(f"casctl: note: {render(note)}", err=True)
    return read.session


def _signatures(paths: tuple[Path, ...]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for path in paths:
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ClientError(f"cannot read the signature {path}: {exc}") from exc
        items.extend(loaded if isinstance(loaded, list) else [loaded])
    return items


def with_predecessor(text: str, predecessor: str) -> str:
    """``text`` with a top-level ``predecessor`` line added (after a leading ``---``)."""
    line = f'predecessor: "{predecessor}"\n'
    match = re.match(r"(?:(?:#[^\n]*|\s*)\n)*---[^\n]*\n", text)
    if match:
        return text[: match.end()] + line + text[match.end() :]
    return line + text


# `session read` starts its output with this line, so the text stays YAML that names its version.
_READ_BACK = re.compile(r"# hash: ([0-9a-f]{64})[ \t]*\r?\n")


def with_hash_comment(text: str, session_hash: str) -> str:
    """``text`` as ``session read`` shows it: a leading ``# hash: HASH`` line, then the text."""
    return f"# hash: {session_hash}\n{text}"


def split_hash_comment(text: str) -> tuple[str | None, str]:
    """The hash a leading ``# hash: HASH`` line names (None without one), and the text after."""
    match = _READ_BACK.match(text)
    if match is None:
        return None, text
    return match.group(1), text[match.end() :]


def replacing(text: str, session: Session, predecessor: str, path: Path) -> str:
    """``text`` with its ``predecessor`` set to ``predecessor`` (added, or its line replaced)."""
    if session.predecessor is None:
        return with_predecessor(text, predecessor)
    if session.predecessor == predecessor:
        return text
    replaced, count = re.subn(
        r"^predecessor:[^\n]*$", f'predecessor: "{predecessor}"', text, flags=re.MULTILINE
    )
    if count != 1 or read_session(replaced, str(path)).session.predecessor != predecessor:
        raise ClientError(
            f"{path}: cannot set its predecessor to {predecessor}: write it into the file's "
            "`predecessor` line yourself"
        )
    return replaced


def _remote_options(command: F) -> F:
    command = identity_option(command)
    return click.option("--cas", "cas_name", help="Attested CAS (default: the default CAS).")(
        command
    )


@click.group("session")
def session_group() -> None:
    """Session policies: check and hash offline; create, update, read, verify on a CAS."""


signature_option = click.option(
    "--signature",
    "signature_paths",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A detached signature from `casctl session sign` (repeatable).",
)


@session_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_template_options
@reports_errors
def check(file: Path, assignments: tuple[str, ...], use_env: bool) -> None:
    """Validate FILE offline; print its name and hash."""
    session = _parse(session_text(file, assignments, use_env), file)
    click.echo(f"{file}: session {session.name} is valid; hash {session_hash(session)}")


@session_group.command("hash")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_template_options
@reports_errors
def hash_(file: Path, assignments: tuple[str, ...], use_env: bool) -> None:
    """Print the session hash of FILE (what the CAS reports for it)."""
    click.echo(session_hash(_parse(session_text(file, assignments, use_env), file)))


@session_group.command("sign")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM private key (P-256, P-384 or Ed25519) to sign with.",
)
@click.option(
    "--creator",
    metavar="KEY_HASH",
    help="Bind the one identity (its key hash, as `casctl self show-identity` prints it) "
    "that may submit the signed version; it becomes the session's approved creator.",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path))
@_template_options
@reports_errors
def sign(
    file: Path,
    key_path: Path,
    creator: str | None,
    output: Path | None,
    assignments: tuple[str, ...],
    use_env: bool,
) -> None:
    """Sign the hash of FILE (for governance rules); write the signature as JSON.

    For an update, write the predecessor into FILE first: the signature covers it.
    """
    if creator is not None:
        try:
            check_hex64(creator)
        except ValueError as exc:
            raise ClientError(f"--creator takes a key hash: {exc}") from None
    session = _parse(session_text(file, assignments, use_env), file)
    try:
        key = load_private_key_pem(key_path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise ClientError(f"cannot load the key {key_path}: {exc}") from exc
    signature = json.dumps(sign_session_hash(key, session_hash(session), creator), indent=2)
    if output is None:
        click.echo(signature)
    else:
        output.write_text(signature + "\n", encoding="utf-8")


@session_group.command("create")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_template_options
@signature_option
@_remote_options
@reports_errors
def create(
    file: Path,
    assignments: tuple[str, ...],
    use_env: bool,
    signature_paths: tuple[Path, ...],
    cas_name: str | None,
    identity_path: Path | None,
) -> None:
    """Create the session in FILE; you become its creator."""
    _, text = split_hash_comment(session_text(file, assignments, use_env))
    _parse(text, file)
    with pinned_client(cas_name, identity_from(identity_path)) as client:
        created = client.create_session(text, _signatures(signature_paths))
    click.echo(f"created session {created.name}: hash {created.hash}")


@session_group.command("update")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_template_options
@signature_option
@_remote_options
@reports_errors
def update(
    file: Path,
    assignments: tuple[str, ...],
    use_env: bool,
    signature_paths: tuple[Path, ...],
    cas_name: str | None,
    identity_path: Path | None,
) -> None:
    """Update the session in FILE.

    FILE as `session read` wrote it (a leading `# hash: HASH` line) replaces that version: its
    predecessor becomes HASH, so the update is refused if the session changed since. Otherwise,
    without a `predecessor` in FILE, the current hash is fetched and filled in; a `predecessor`
    written in FILE is sent as written, so a stale one is refused.
    """
    read_from, text = split_hash_comment(session_text(file, assignments, use_env))
    session = _parse(text, file)
    with pinned_client(cas_name, identity_from(identity_path)) as client:
        if read_from is not None:
            text = replacing(text, session, read_from, file)
        elif session.predecessor is None:
            text = with_predecessor(text, client.read_session(session.name).hash)
        updated = client.update_session(session.name, text, _signatures(signature_paths))
    click.echo(f"updated session {updated.name}: hash {updated.hash}")


@session_group.command("read")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the whole answer as JSON.")
@_remote_options
@reports_errors
def read(
    name: str,
    output: Path | None,
    as_json: bool,
    cas_name: str | None,
    identity_path: Path | None,
) -> None:
    """Print (or write to a file) the session NAME as stored, after a `# hash: HASH` line.

    The output is YAML that `session update` takes back, as an update of that version.
    """
    with pinned_client(cas_name, identity_from(identity_path)) as client:
        stored = client.read_session(name)
    if as_json:
        shown = json.dumps(stored.to_json(), indent=2) + "\n"
    else:
        shown = with_hash_comment(stored.text, stored.hash)
    if output is None:
        sys.stdout.write(shown)
        return
    output.write_text(shown, encoding="utf-8")
    click.echo(f"wrote session {name} (hash {stored.hash}) to {output}", err=True)


@session_group.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_template_options
@_remote_options
@reports_errors
def verify(
    file: Path,
    assignments: tuple[str, ...],
    use_env: bool,
    cas_name: str | None,
    identity_path: Path | None,
) -> None:
    """Exit 0 only if the active session on the CAS equals FILE."""
    session = _parse(session_text(file, assignments, use_env), file)
    expected = session_hash(session)
    with pinned_client(cas_name, identity_from(identity_path)) as client:
        stored = client.read_session(session.name)
    if stored.hash != expected:
        raise ClientError(
            f"session {session.name} differs: the CAS has {stored.hash}, {file} is {expected}"
        )
    click.echo(f"session {session.name} on the CAS equals {file} (hash {expected})")
