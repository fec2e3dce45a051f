"""``casctl evidence verify``: verify a TEE's evidence file offline and print what it proves.

Exit codes (also in docs/cli.md): 0 the evidence verified; 4 it did not (the message, or with
``--json`` the ``error`` object, names the failed check); 1 a file cannot be read; 2 usage.
"""

from __future__ import annotations

import binascii
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from opencas.attestation.evidence import MAX_EVIDENCE_BYTES, Evidence, VerifiedEvidence
from opencas.attestation.verify import verify_evidence
from opencas.cli.casctl_common import EXIT_REFUSED, reports_errors
from opencas.cli.common import fail
from opencas.collateral.given import command_line_source
from opencas.errors import ClientError, EvidenceError

#: ``--type`` names and the evidence types they stand for.
EVIDENCE_TYPES = {"sgx": "sgx-dcap", "tdx": "tdx", "snp": "snp"}
MAX_EVIDENCE_FILE_BYTES = 4 * MAX_EVIDENCE_BYTES
"""An evidence file's size limit: the largest evidence, written as hex with line breaks."""

_HEX = re.compile(rb"(?:[0-9a-fA-F]{2})+")
_BASE64 = re.compile(rb"[A-Za-z0-9+/_-]+={0,2}")
_TEXT = re.compile(rb"[\x20-\x7e\t\r\n]*")


def read_evidence_file(path: Path) -> tuple[bytes, str]:
    """The bytes in the evidence file ``path`` and the form they were written in.

    The file holds the raw bytes (``binary``), or them as hex or base64 (standard or URL-safe),
    white space anywhere ignored. Text of hex digits only is read as hex. Raises
    :class:`ClientError` naming the file when it cannot be read, is larger than
    :data:`MAX_EVIDENCE_FILE_BYTES`, or is base64-looking text that does not decode.
    """
    with path.open("rb") as file:
        raw = file.read(MAX_EVIDENCE_FILE_BYTES + 1)
    if len(raw) > MAX_EVIDENCE_FILE_BYTES:
        raise ClientError(f"{path}: larger than the limit of {MAX_EVIDENCE_FILE_BYTES} bytes")
    if not raw or not _TEXT.fullmatch(raw):
        return raw, "binary"
    compact = b"".join(raw.split())
    if _HEX.fullmatch(compact):
        return bytes.fromhex(compact.decode("ascii")), "hex"
    if _BASE64.fullmatch(compact):
        standard = compact.replace(b"-", b"+").replace(b"_", b"/")
        try:
            return binascii.a2b_base64(standard + b"=" * (-len(standard) % 4), strict_mode=True), (
                "base64"
            )
        except binascii.Error as exc:
            raise ClientError(f"{path}: looks like base64 but does not decode ({exc})") from exc
    return raw, "binary"


def _parse_time(_: click.Context, __: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    text = value.strip()
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a time; write RFC 3339, such as 2025-07-01T12:00:00Z"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


_CLAIMS_FIELDS = (
    "valid",
    "tee",
    "platform",
    "verified_at",
    "tcb_status",
    "advisory_ids",
    "debug",
    "measurement",
    "report_data",
    "measurements",
    "platform_id",
    "platform_key_hash",
    "collateral_not_before",
    "collateral_not_after",
    "tcb_evaluation_number",
    "collateral_digest",
    "verifier",
)


def claims_fields() -> tuple[str, ...]:
    """The members of the ``--json`` object of valid evidence, in order."""
    return _CLAIMS_FIELDS


def claims(tee: str, verified: VerifiedEvidence, at: datetime) -> dict[str, Any]:
    """What verified evidence proves, as the JSON object ``--json`` prints."""

    def when(moment: datetime | None) -> str | None:
        return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    return {
        "valid": True,
        "tee": tee,
        "platform": verified.platform,
        "verified_at": when(at),
        "tcb_status": verified.tcb_status,
        "advisory_ids": list(verified.advisories),
        "debug": verified.debug,
        "measurement": verified.measurement,
        "report_data": verified.report_data.hex(),
        "measurements": dict(verified.measurements),
        "platform_id": dict(verified.platform_id),
        "platform_key_hash": verified.platform_key_hash,
        "collateral_not_before": when(verified.collateral_not_before),
        "collateral_not_after": when(verified.collateral_not_after),
        "tcb_evaluation_number": verified.tcb_evaluation_number,
        "collateral_digest": verified.collateral_digest,
        "verifier": verified.verifier,
    }


def _print_claims(facts: dict[str, Any], form: str) -> None:
    advisories = ", ".join(facts["advisory_ids"]) or "none"
    window = (
        f"{facts['collateral_not_before']} .. {facts['collateral_not_after']}"
        if facts["collateral_not_after"]
        else "none used"
    )
    debug = "YES: its memory can be read from outside" if facts["debug"] else "no"
    lines = [
        f"valid: {facts['tee']} evidence ({form}) verified as of {facts['verified_at']}",
        f"  TCB status:     {facts['tcb_status']}",
        f"  advisories:     {advisories}",
        f"  debug:          {debug}",
        f"  measurement:    {facts['measurement']}",
        f"  report data:    {facts['report_data']}",
        *(f"  {name + ':':<15} {value}" for name, value in facts["measurements"].items()),
        *(f"  {name + ':':<15} {value}" for name, value in facts["platform_id"].items()),
        f"  platform key:   {facts['platform_key_hash']}",
        f"  collateral:     {window}",
        f"  verifier:       {facts['verifier'] or 'unnamed'}",
    ]
    click.echo("\n".join(lines))


@click.group("evidence")
def evidence_group() -> None:
    """TEE evidence files: verify them offline."""


_file = click.Path(exists=True, dir_okay=False, path_type=Path)


@evidence_group.command("verify")
@click.argument("file", type=_file)
@click.option(
    "--type", "tee", required=True, type=click.Choice(sorted(EVIDENCE_TYPES)), help="The TEE."
)
@click.option(
    "--collateral",
    type=click.Path(exists=True, path_type=Path),
    help="A collateral bundle directory, or a DCAP collateral JSON file.",
)
@click.option("--vcek", type=_file, help="The DER VCEK (or VLEK) that signed an SNP report.")
@click.option("--chain", type=_file, help="The PEM AMD chain: ASK (or ASVK) and ARK.")
@click.option(
    "--at",
    callback=_parse_time,
    help="Verify as of this time (RFC 3339; UTC unless it names an offset). Default: now.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@reports_errors
def evidence_verify(
    file: Path,
    tee: str,
    collateral: Path | None,
    vcek: Path | None,
    chain: Path | None,
    at: datetime | None,
    as_json: bool,
) -> None:
    """Verify the evidence in FILE (binary, hex or base64) and print what it proves."""
    data, form = read_evidence_file(file)
    moment = at or datetime.now(UTC)
    source = command_line_source(collateral, vcek=vcek, chain=chain)
    try:
        if len(data) > MAX_EVIDENCE_BYTES:
            raise EvidenceError(
                f"{file}: {len(data)} bytes of evidence, more than the limit of "
                f"{MAX_EVIDENCE_BYTES} bytes"
            )
        verified = verify_evidence(
            Evidence(EVIDENCE_TYPES[tee], data), at=moment, collateral=source
        )
    except EvidenceError as exc:
        if not as_json:
            fail("casctl", f"evidence refused ({exc.check}): {exc.message}", EXIT_REFUSED)
        error = {"code": exc.check, "message": exc.message}
        # Every field a valid answer has is there, null: a script reads one shape either way.
        refused = dict.fromkeys(claims_fields(), None) | {"valid": False, "tee": tee}
        click.echo(json.dumps(refused | {"error": error}, indent=2))
        sys.exit(EXIT_REFUSED)
    facts = claims(tee, verified, moment)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        _print_claims(facts, form)
