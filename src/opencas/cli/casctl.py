"""``casctl``: the OpenCAS client.

Exit codes (also in docs/cli.md): 0 success; 1 error (bad input, the CAS refused the request,
damaged local state); 2 usage error; 3 the CAS cannot be reached; 4 attestation refused (evidence,
binding, nonce, debug mode, measurement, key hash, injected database key, TLS certificate);
5 freshness: not the CAS attested before, or its state went back.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from opencas import __version__
from opencas.attestation.report import CasExpectations, cluster_of
from opencas.cli.audit_commands import audit_group
from opencas.cli.backup_commands import list_backups, register_backup, unregister_backup
from opencas.cli.casctl_common import F, identity_from, identity_option, reports_errors
from opencas.cli.collateral_commands import collateral_group
from opencas.cli.evidence_commands import evidence_group
from opencas.cli.fspf_commands import fspf_group
from opencas.cli.recovery_commands import recovery_group
from opencas.cli.run_commands import register_run_commands
from opencas.cli.session_commands import session_group
from opencas.cli.upgrade_commands import (
    list_upgrades,
    register_upgrade,
    snapshot,
    start_upgrade,
    unregister_upgrade,
    upgrade_status,
)
from opencas.cli.volume_commands import volume_group
from opencas.client.cas_client import new_nonce
from opencas.client.identity import ClientIdentity
from opencas.client.pinning import Attested, attest_and_pin, cas_url, pin_name, pinned_client
from opencas.client.state import casctl_home, load_state, save_state
from opencas.collateral.given import command_line_source
from opencas.config.owner import load_owner_config, owner_config_sha256
from opencas.config.owner_identity import load_owner_certificate
from opencas.crypto.keys import is_valid_key_hash
from opencas.crypto.scone_keys import to_scone_key_hash
from opencas.errors import ConflictError


@click.group()
@click.version_option(__version__, prog_name="casctl")
def cli() -> None:
    """Attest OpenCAS instances and manage what they keep."""


def _key_hash_option(_: click.Context, __: click.Parameter, value: str | None) -> str | None:
    if value is not None and not is_valid_key_hash(value.lower()):
        raise click.BadParameter("a key hash is 64 hex digits")
    return value.lower() if value else None


def _measurements_option(
    _: click.Context, __: click.Parameter, values: tuple[str, ...]
) -> frozenset[str]:
    for value in values:
        if not re.fullmatch(r"(?:[0-9a-fA-F]{2}){16,64}", value):
            raise click.BadParameter(f"{value!r} is not a measurement (32 to 128 hex digits)")
    return frozenset(value.lower() for value in values)


def attest_options(command: F) -> F:
    """The options every command that attests a CAS takes."""
    options = [
        click.option(
            "--mrenclave",
            "measurements",
            multiple=True,
            callback=_measurements_option,
            help="Accepted software measurement (repeat: any of them).",
        ),
        click.option(
            "--mrsigner",
            callback=_key_hash_option,
            help="Accept the SGX enclaves of this signer (64 hex digits).",
        ),
        click.option(
            "--isvprodid",
            type=click.IntRange(0, 0xFFFF),
            help="With --mrsigner: the enclave's product id must be this.",
        ),
        click.option(
            "--isvsvn",
            type=click.IntRange(0, 0xFFFF),
            help="With --mrsigner: the enclave's security version must be at least this.",
        ),
        click.option(
            "-C",
            "--accept-configuration-needed",
            is_flag=True,
            help="Accept a platform whose TCB needs configuration (insecure-configuration).",
        ),
        click.option(
            "-G",
            "--accept-group-out-of-date",
            is_flag=True,
            help="Accept a platform whose TCB is out of date (outdated-tcb).",
        ),
        click.option(
            "-S",
            "--accept-sw-hardening-needed",
            is_flag=True,
            help="Accept a platform that needs software hardening (software-hardening-needed).",
        ),
        click.option(
            "--verification-time",
            type=click.DateTime(["%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
            help="Verify the evidence as of this UTC time (default: now).",
        ),
        click.option(
            "-c", "--cas-key-hash", callback=_key_hash_option, help="Expected CAS key hash (pin)."
        ),
        click.option(
            "--only-for-testing-debug", is_flag=True, help="Accept a CAS in debug mode (simulated)."
        ),
        click.option(
            "--allow-cas-owner-secret-access",
            is_flag=True,
            help="Accept a CAS whose database key was injected by its operator.",
        ),
        click.option(
            "--allow-recovered",
            is_flag=True,
            help="Accept a CAS recovered from recovery shares (its key left the TEE).",
        ),
        click.option(
            "--expect-owner-identity",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Refuse unless this certificate's key is the CAS owner.",
        ),
        click.option(
            "--expect-owner-config",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Refuse unless this owner config is the one provisioned.",
        ),
        click.option(
            "--accept-new-instance",
            is_flag=True,
            help="Accept a CAS that replaced the one attested before under this name.",
        ),
        click.option("--alias", help="Name to remember this CAS by (default: host:port)."),
        click.option(
            "--collateral",
            type=click.Path(exists=True, path_type=Path),
            help="Verify the evidence with this collateral: a bundle directory "
            "(`casctl collateral fetch`) or a DCAP collateral JSON file.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@dataclass(frozen=True)
class AttestFlags:
    """What the attest options asked for."""

    measurements: frozenset[str]
    mrsigner: str | None
    isvprodid: int | None
    isvsvn: int | None
    accept_configuration_needed: bool
    accept_group_out_of_date: bool
    accept_sw_hardening_needed: bool
    verification_time: datetime | None
    cas_key_hash: str | None
    only_for_testing_debug: bool
    allow_cas_owner_secret_access: bool
    allow_recovered: bool
    expect_owner_identity: Path | None
    expect_owner_config: Path | None
    accept_new_instance: bool
    alias: str | None
    collateral: Path | None

    def expectations(
        self,
        *,
        allow_unprovisioned: bool,
        owner_hash: str | None = None,
        config_sha: str | None = None,
    ) -> CasExpectations:
        """The expectations these flags describe, with a fresh nonce.

        ``owner_hash`` and ``config_sha``, when given, are expected in place of the files.
        """
        if owner_hash is None and self.expect_owner_identity is not None:
            # An owner is its key: an expired certificate still names it.
            owner_hash = load_owner_certificate(
                self.expect_owner_identity, check_validity=False
            ).key_hash
        if config_sha is None and self.expect_owner_config is not None:
            config_sha = owner_config_sha256(load_owner_config(self.expect_owner_config).config)
        if (self.isvprodid is not None or self.isvsvn is not None) and self.mrsigner is None:
            raise click.UsageError("--isvprodid and --isvsvn need --mrsigner")
        tolerate = {
            name
            for name, wanted in (
                ("insecure-configuration", self.accept_configuration_needed),
                ("outdated-tcb", self.accept_group_out_of_date),
                ("software-hardening-needed", self.accept_sw_hardening_needed),
            )
            if wanted
        }
        at = self.verification_time
        return CasExpectations(
            nonce=new_nonce(),
            allow_debug=self.only_for_testing_debug,
            measurements=self.measurements,
            mrsigner=self.mrsigner,
            isv_prod_id=self.isvprodid,
            isv_svn=self.isvsvn,
            tolerate=frozenset(tolerate),
            verification_time=at.replace(tzinfo=UTC) if at is not None else None,
            cas_key_hash=self.cas_key_hash,
            allow_db_key_injected=self.allow_cas_owner_secret_access,
            allow_unprovisioned=allow_unprovisioned,
            owner_identity_hash=owner_hash,
            owner_config_sha256=config_sha,
            allow_recovered=self.allow_recovered,
        )


def pin(
    url: str,
    flags: AttestFlags,
    *,
    allow_unprovisioned: bool,
    owner_hash: str | None = None,
    config_sha: str | None = None,
) -> Attested:
    """Attest and pin the CAS at ``url`` as ``flags`` ask; a bad URL or alias is a usage error."""
    try:
        url = cas_url(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from exc
    try:
        pin_name(url, flags.alias)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--alias") from exc
    expectations = flags.expectations(
        allow_unprovisioned=allow_unprovisioned, owner_hash=owner_hash, config_sha=config_sha
    )
    return attest_and_pin(
        url,
        expectations,
        alias=flags.alias,
        accept_new_instance=flags.accept_new_instance,
        collateral=command_line_source(flags.collateral),
    )


def show_attested(attested: Attested, as_json: bool) -> None:
    """Print what was verified (``--json``: as JSON)."""
    facts = _verified_facts(attested)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        _print_facts(facts)


@cli.command()
@click.argument("url")
@attest_options
@click.option("--allow-unprovisioned", is_flag=True, help="Accept a CAS that has no owner yet.")
@click.option("--json", "as_json", is_flag=True, help="Print what was verified as JSON.")
@reports_errors
def attest(url: str, allow_unprovisioned: bool, as_json: bool, **options: Any) -> None:
    """Attest the CAS at URL, then pin it for later commands."""
    attested = pin(url, AttestFlags(**options), allow_unprovisioned=allow_unprovisioned)
    show_attested(attested, as_json)


def _verified_facts(attested: Attested) -> dict[str, Any]:
    verified, expected = attested.verified, attested.expectations
    report = verified.report
    return {
        "url": attested.url,
        "alias": attested.name,
        "default": attested.is_default,
        "cluster_id": cluster_of(report),
        "instance_id": report.instance_id,
        "cas_version": report.cas_version,
        "platform": report.platform,
        "evidence": {
            "verified": True,
            "platform_key_hash": verified.evidence.platform_key_hash,
            "tcb_status": verified.evidence.tcb_status,
        },
        "report_bound_to_evidence": True,
        "nonce_fresh": True,
        "mode": report.mode,
        "debug_accepted": report.mode == "debug",
        "software_measurement": report.software_measurement,
        "measurement_checked": bool(expected.measurements),
        "cas_key_hash": report.cas_key_hash,
        "cas_key_hash_checked": expected.cas_key_hash is not None,
        "tls_key_hash": report.tls_key_hash,
        "tls_certificate_matches": True,
        "db_key_injected": report.db_key_injected,
        "provisioned": report.provisioned,
        "self_provisioned": report.self_provisioned,
        "provisioned_at": report.provisioned_at,
        "owner_identity_hash": report.owner_identity_hash,
        "owner_identity_checked": expected.owner_identity_hash is not None,
        "owner_config_sha256": report.owner_config_sha256,
        "owner_config_checked": expected.owner_config_sha256 is not None,
        "audit_seq": report.audit.seq,
        "state_counter": report.state.counter,
        "recovery": report.recovery.model_dump(mode="json"),
        "recovered": report.recovered,
        "restored_from": None
        if report.restored_from is None
        else report.restored_from.model_dump(mode="json"),
    }


def _owner_line(facts: dict[str, Any]) -> str:
    if not facts["provisioned"]:
        return "not provisioned (accepted with --allow-unprovisioned)"
    how = "self-provisioned from files" if facts["self_provisioned"] else "provisioned"
    owner_note = "as expected" if facts["owner_identity_checked"] else "not checked"
    config_note = "as expected" if facts["owner_config_checked"] else "not checked"
    return (
        f"{how} at {facts['provisioned_at']}\n"
        f"    owner identity   {facts['owner_identity_hash']} ({owner_note})\n"
        f"    owner config     {facts['owner_config_sha256']} ({config_note})"
    )


def _recovery_line(facts: dict[str, Any]) -> str:
    recovery = facts["recovery"]
    if recovery["configured"]:
        keys = ", ".join(key[:16] + "…" for key in recovery["key_hashes"])
        line = f"any {recovery['threshold']} of {len(recovery['key_hashes'])} keys ({keys})"
    else:
        line = "not configured"
    if facts["recovered"]:
        line += "; this CAS WAS RECOVERED from shares (accepted with --allow-recovered)"
    return line


def _print_facts(facts: dict[str, Any]) -> None:
    default = " (default)" if facts["default"] else ""
    measurement_note = "accepted" if facts["measurement_checked"] else "not checked: no --mrenclave"
    key_note = "matches -c" if facts["cas_key_hash_checked"] else "pinned now"
    mode = facts["mode"]
    mode_note = "accepted with --only-for-testing-debug" if mode == "debug" else "production"
    injected = "INJECTED by the operator" if facts["db_key_injected"] else "sealed by the platform"
    owner = _owner_line(facts)
    lines = [
        f"attested the CAS at {facts['url']} as {facts['alias']!r}{default}",
        f"  evidence:          {facts['platform']} evidence verified"
        f" (platform key {facts['evidence']['platform_key_hash'][:16]}…,"
        f" TCB {facts['evidence']['tcb_status']})",
        "  report:            bound to the evidence; nonce fresh",
        f"  mode:              {mode} ({mode_note})",
        f"  software:          {facts['software_measurement']} ({measurement_note})",
        f"  CAS key hash:      {facts['cas_key_hash']} ({key_note})",
        "  TLS certificate:   issued by the CAS key; the connection presented it",
        f"  database key:      {injected}",
        f"  owner:             {owner}",
        f"  recovery:          {_recovery_line(facts)}",
        f"  CAS id:            {facts['cluster_id']}",
        f"  instance:          {facts['instance_id']} (CAS {facts['cas_version']})",
    ]
    restored = facts["restored_from"]
    if restored is not None:
        lines.append(
            f"  restored:          at {restored['restored_at']} from snapshot "
            f"{restored['snapshot_id']} (commit {restored['state_counter']}, taken "
            f"{restored['taken_at']})"
        )
    click.echo("\n".join(lines))


@cli.group("cas")
def cas_group() -> None:
    """The CAS instances casctl attested."""


@cas_group.command("list")
@reports_errors
def cas_list() -> None:
    """List attested CAS instances (* marks the default)."""
    state = load_state(casctl_home())
    if not state.cas:
        click.echo("no CAS attested yet; run `casctl attest URL`")
        return
    for name in sorted(state.cas):
        pinned = state.cas[name]
        marker = "*" if name == state.default else " "
        seen = f"{len(pinned.instances)} instance{'s' if len(pinned.instances) != 1 else ''} seen"
        click.echo(f"{marker} {name}\t{pinned.url}\t{pinned.cas_key_hash}\t{pinned.mode}\t{seen}")


@cas_group.command("show")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@reports_errors
def cas_show(name: str | None, as_json: bool) -> None:
    """Show what casctl pinned for NAME (default: the default CAS)."""
    state = load_state(casctl_home())
    chosen, pinned = state.resolve(name)
    facts = {"name": chosen, "default": chosen == state.default, **pinned.model_dump()}
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    for key, value in facts.items():
        if key == "ca_certificate_pem":
            continue
        click.echo(f"{key}: {_shown(value)}")


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


@cas_group.command("set-default")
@click.argument("name")
@reports_errors
def cas_set_default(name: str) -> None:
    """Make NAME the CAS that commands use when none is named."""
    home = casctl_home()
    state = load_state(home)
    chosen, _ = state.resolve(name)
    state.default = chosen
    save_state(home, state)
    click.echo(f"default CAS: {chosen}")


@cli.group("self")
def self_group() -> None:
    """This client's own identity."""


@self_group.command("show-identity")
@click.option("--json", "as_json", is_flag=True)
@reports_errors
def self_showidentity_from(as_json: bool) -> None:
    """Print this client's key hash (also as SCONE writes it) and certificate (created on
    first use)."""
    identity = ClientIdentity.load_or_create(casctl_home())
    pem = identity.certificate_pem.decode("ascii")
    scone = to_scone_key_hash(identity.key_hash)
    if as_json:
        shown = {"key_hash": identity.key_hash, "scone_key_hash": scone, "certificate": pem}
        click.echo(json.dumps(shown, indent=2))
        return
    click.echo(f"key hash: {identity.key_hash}")
    click.echo(f"key hash as SCONE writes it: {scone}")
    click.echo(pem, nl=False)


@cli.command()
@click.option("--cas", "cas_name", help="Attested CAS to ask (default: the default CAS).")
@click.option("--anonymous", is_flag=True, help="Send the request unsigned.")
@reports_errors
def whoami(cas_name: str | None, anonymous: bool) -> None:
    """Print the identity the CAS sees for this client."""
    with pinned_client(cas_name) as client:
        click.echo(client.whoami(signed=not anonymous))


@cli.command()
@click.argument("url")
@click.option("--token", required=True, help="The CAS's one-time provisioning token.")
@click.option(
    "--config-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Owner config (TOML, JSON or YAML).",
)
@identity_option
@attest_options
@click.option("--json", "as_json", is_flag=True, help="Print the provisioned report as JSON.")
@reports_errors
def provision(
    url: str,
    token: str,
    config_file: Path,
    identity_path: Path | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Attest the CAS at URL, provision it as its owner, and attest it again."""
    loaded = load_owner_config(config_file)
    for warning in loaded.warnings:
        click.echo(f"casctl: warning: {warning}", err=True)
    identity = identity_from(identity_path)
    flags = AttestFlags(**options)
    # Before provisioning there is no owner to expect; the second attestation checks it.
    unowned = replace(flags, expect_owner_identity=None, expect_owner_config=None)
    first = pin(url, unowned, allow_unprovisioned=True)
    if first.verified.report.provisioned:
        raise ConflictError(
            f"the CAS at {first.url} is already provisioned "
            f"(owner {first.verified.report.owner_identity_hash})",
            code="already-provisioned",
        )
    with first.client(identity) as client:
        client.provision(token, loaded.config)
    owner_flags = replace(
        flags,
        cas_key_hash=first.verified.report.cas_key_hash,
        alias=first.name,
    )
    second = pin(
        first.url,
        owner_flags,
        allow_unprovisioned=False,
        owner_hash=identity.key_hash,
        config_sha=owner_config_sha256(loaded.config),
    )
    show_attested(second, as_json)


@cli.command("update-config")
@click.option(
    "--config-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The new owner config (TOML, JSON or YAML).",
)
@click.option("--cas", "cas_name", help="Attested CAS (default: the default CAS).")
@identity_option
@reports_errors
def update_config(config_file: Path, cas_name: str | None, identity_path: Path | None) -> None:
    """Replace the owner config of a CAS you own."""
    loaded = load_owner_config(config_file)
    for warning in loaded.warnings:
        click.echo(f"casctl: warning: {warning}", err=True)
    with pinned_client(cas_name, identity_from(identity_path)) as client:
        sha256 = client.update_owner_config(loaded.config)
    click.echo(f"owner config updated: {sha256}")


@cli.command("show-config")
@click.option("--cas", "cas_name", help="Attested CAS (default: the default CAS).")
@identity_option
@click.option("--json", "as_json", is_flag=True)
@reports_errors
def show_config(cas_name: str | None, identity_path: Path | None, as_json: bool) -> None:
    """Print the owner config of a CAS you own (secrets redacted)."""
    with pinned_client(cas_name, identity_from(identity_path)) as client:
        shown = client.owner_config()
    if as_json:
        click.echo(json.dumps(asdict(shown), indent=2))
        return
    click.echo(f"# owner config SHA-256: {shown.owner_config_sha256}")
    click.echo(json.dumps(shown.owner_config, indent=2))


cli.add_command(session_group)
cli.add_command(evidence_group)
cli.add_command(collateral_group)
cli.add_command(audit_group)
cli.add_command(fspf_group)
cli.add_command(volume_group)
cli.add_command(recovery_group)
cli.add_command(start_upgrade)
cli.add_command(upgrade_status)
cli.add_command(register_upgrade)
cli.add_command(list_upgrades)
cli.add_command(unregister_upgrade)
cli.add_command(snapshot)
cli.add_command(register_backup)
cli.add_command(list_backups)
cli.add_command(unregister_backup)
register_run_commands(cli)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="casctl")


if __name__ == "__main__":
    main()
