"""``casctl recovery``: recovery keys, fetching the sealed shares, and a holder's part in recovery.

``keygen`` makes a recovery key; ``shares`` fetches the shares of a CAS you own, one file per
recovery key; ``open-share`` opens one with its key and seals it to an attested CAS on a new
machine (``cas recovery-request`` made the request there).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from opencas.cli.casctl_common import identity_from, identity_option, reports_errors
from opencas.client.files import write_private_file
from opencas.client.pinning import pinned_client
from opencas.client.recovery import RequestChecks, check_request, transfer_share
from opencas.collateral.given import command_line_source
from opencas.crypto.encoding import b64_encode
from opencas.crypto.recovery import recovery_key_hash, recovery_public_der
from opencas.crypto.recovery_documents import (
    MAX_DOCUMENT_BYTES,
    RequestDocument,
    ShareDocument,
    document_json,
    parse_document,
)
from opencas.errors import ClientError

_MAX_KEY_FILE_BYTES = 16 * 1024


@click.group("recovery")
def recovery_group() -> None:
    """Recovery keys and shares: bring a CAS back on a new machine without a backup."""


@recovery_group.command("keygen")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the new private key (PEM, mode 0600); it must not exist.",
)
@reports_errors
def keygen(output: Path) -> None:
    """Make a recovery key; print the public key to list in the owner config's [recovery] keys."""
    if output.exists():
        raise ClientError(f"{output} exists; a recovery key is never overwritten")
    key = x25519.X25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private_file(output, pem)
    der = recovery_public_der(key)
    click.echo(f"# recovery key {recovery_key_hash(der)} (private key in {output})")
    click.echo(b64_encode(der))


@recovery_group.command("shares")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write share-<index>.json into (made if missing).",
)
@click.option("--cas", "cas_name", help="Attested CAS (default: the default CAS).")
@identity_option
@reports_errors
def shares(output: Path, cas_name: str | None, identity_path: Path | None) -> None:
    """Fetch the recovery shares of a CAS you own, one file per recovery key."""
    with pinned_client(cas_name, identity_from(identity_path)) as client:
        documents = client.recovery_shares()
    output.mkdir(parents=True, exist_ok=True, mode=0o700)
    for share in documents:
        path = output / f"share-{share.index}.json"
        path.write_text(json.dumps(document_json(share), indent=2) + "\n", encoding="utf-8")
        click.echo(f"{path}: share {share.index} of {share.threshold}+, for key {share.key_hash}")


def _read(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(MAX_DOCUMENT_BYTES + 1)


def _load_private_key(path: Path) -> x25519.X25519PrivateKey:
    with path.open("rb") as handle:
        data = handle.read(_MAX_KEY_FILE_BYTES + 1)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ClientError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, x25519.X25519PrivateKey):
        raise ClientError(f"{path}: not an X25519 key (`casctl recovery keygen` makes one)")
    return key


@recovery_group.command("open-share")
@click.argument(
    "share_path", metavar="SHARE", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Your recovery key's private key (PEM), as keygen wrote it.",
)
@click.option(
    "--request",
    "request_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The recovery request of the new machine (`cas recovery-request`).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the share sealed to the new machine.",
)
@click.option(
    "--mrenclave",
    "measurements",
    multiple=True,
    help="Accepted software measurement of the new machine's CAS (repeat: any of them).",
)
@click.option(
    "--only-for-testing-debug", is_flag=True, help="Accept a new machine in debug mode (simulated)."
)
@click.option(
    "--collateral",
    type=click.Path(exists=True, path_type=Path),
    help="Verify the request's evidence with this collateral (bundle or DCAP JSON file).",
)
@reports_errors
def open_share(
    share_path: Path,
    key_path: Path,
    request_path: Path,
    output: Path,
    measurements: tuple[str, ...],
    only_for_testing_debug: bool,
    collateral: Path | None,
) -> None:
    """Open SHARE with your recovery key and seal it to the attested CAS of a recovery request."""
    try:
        share = parse_document(_read(share_path), ShareDocument, str(share_path))
        request = parse_document(_read(request_path), RequestDocument, str(request_path))
    except ValueError as exc:
        raise ClientError(str(exc)) from None
    checks = RequestChecks(
        allow_debug=only_for_testing_debug,
        measurements=frozenset(value.lower() for value in measurements),
    )
    verified = check_request(
        request, checks, at=datetime.now(UTC), collateral=command_line_source(collateral)
    )
    transfer = transfer_share(share, _load_private_key(key_path), request)
    text = json.dumps(document_json(transfer), indent=2) + "\n"
    write_private_file(output, text.encode("utf-8"))
    machine = ", ".join(f"{name} {value}" for name, value in verified.platform_id.items())
    click.echo(
        f"sealed share {share.index} of CAS {share.cas_key_hash} to the {verified.platform} "
        f"CAS with measurement {verified.measurement} ({machine or 'no platform id'}): {output}"
    )
