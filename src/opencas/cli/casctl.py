"""``casctl``: the OpenCAS client.

Exit codes (also in docs/cli.md): 0 success; 1 error (bad input, the CAS refused the request,
damaged local state); 2 usage error; 3 the CAS cannot be reached; 4 attestation refused (evidence,
binding, nonce, debug mode, measurement, key hash, injected database key, TLS certificate);
5 freshness: not the CAS attested before, or its state went back.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click

from opencas import __version__
from opencas.attestation.report import CasExpectations, VerifiedCas
from opencas.cli.common import fail
from opencas.client.cas_client import CasClient, CasUnreachable, new_nonce
from opencas.client.freshness import FreshnessError, check_freshness
from opencas.client.identity import ClientIdentity
from opencas.client.state import (
    ALIAS_PATTERN,
    CasctlState,
    PinnedCas,
    casctl_home,
    load_state,
    save_state,
)
from opencas.crypto.keys import is_valid_key_hash
from opencas.errors import AttestationRefused, CasError, EvidenceError

EXIT_ERROR = 1
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4
EXIT_FRESHNESS = 5

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(command: F) -> F:
    """Turn OpenCAS errors into one line on stderr and the documented exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FreshnessError as exc:
            fail("casctl", exc.message, EXIT_FRESHNESS)
        except AttestationRefused as exc:
            fail("casctl", f"attestation refused ({exc.check}): {exc.message}", EXIT_REFUSED)
        except EvidenceError as exc:
            fail("casctl", f"attestation refused (evidence): {exc.message}", EXIT_REFUSED)
        except CasUnreachable as exc:
            fail("casctl", exc.message, EXIT_UNREACHABLE)
        except CasError as exc:
            fail("casctl", exc.message, EXIT_ERROR)

    return wrapper  # type: ignore[return-value]


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
        if len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value):
            raise click.BadParameter(f"{value!r} is not a measurement (64 hex digits)")
    return frozenset(value.lower() for value in values)


def _alias_for(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or url


@cli.command()
@click.argument("url")
@click.option(
    "--mrenclave",
    "measurements",
    multiple=True,
    callback=_measurements_option,
    help="Accepted software measurement (repeat: any of them).",
)
@click.option(
    "-c", "--cas-key-hash", callback=_key_hash_option, help="Expected CAS key hash (pin)."
)
@click.option(
    "--only-for-testing-debug", is_flag=True, help="Accept a CAS in debug mode (simulated)."
)
@click.option(
    "--allow-cas-owner-secret-access",
    is_flag=True,
    help="Accept a CAS whose database key was injected by its operator.",
)
@click.option(
    "--accept-new-instance",
    is_flag=True,
    help="Accept a CAS that replaced the one attested before under this name.",
)
@click.option("--alias", help="Name to remember this CAS by (default: host:port).")
@click.option("--json", "as_json", is_flag=True, help="Print what was verified as JSON.")
@reports_errors
def attest(
    url: str,
    measurements: frozenset[str],
    cas_key_hash: str | None,
    only_for_testing_debug: bool,
    allow_cas_owner_secret_access: bool,
    accept_new_instance: bool,
    alias: str | None,
    as_json: bool,
) -> None:
    """Attest the CAS at URL, then pin it for later commands."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.netloc:
        raise click.BadParameter("the CAS URL must be https://HOST:PORT", param_hint="URL")
    url = f"https://{parts.netloc}"
    name = alias or _alias_for(url)
    if not _valid_alias(name):
        raise click.BadParameter(f"{name!r} is not a valid name", param_hint="--alias")
    home = casctl_home()
    state = load_state(home)
    expectations = CasExpectations(
        nonce=new_nonce(),
        allow_debug=only_for_testing_debug,
        measurements=measurements,
        cas_key_hash=cas_key_hash,
        allow_db_key_injected=allow_cas_owner_secret_access,
    )
    with CasClient(url) as client:
        verified = client.attest(expectations)
    check_freshness(state.cas.get(name), verified.report, accept_new_instance=accept_new_instance)
    _remember(home, state, name, url, verified)
    facts = _verified_facts(url, name, state.default == name, verified, expectations)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        _print_facts(facts)


def _valid_alias(name: str) -> bool:
    return re.fullmatch(ALIAS_PATTERN, name) is not None


def _remember(home: Path, state: CasctlState, name: str, url: str, verified: VerifiedCas) -> None:
    report = verified.report
    previous = state.cas.get(name)
    same_instance = previous is not None and previous.instance_id == report.instance_id
    seen = max(report.audit.seq, previous.audit_seq if previous and same_instance else 0)
    state.cas[name] = PinnedCas(
        url=url,
        cas_key_hash=report.cas_key_hash,
        ca_certificate_pem=verified.ca_certificate_pem.decode("ascii"),
        instance_id=report.instance_id,
        audit_seq=seen,
        software_measurement=report.software_measurement,
        platform=report.platform,
        mode=report.mode,
        attested_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    if state.default is None:
        state.default = name
    save_state(home, state)


def _verified_facts(
    url: str, name: str, is_default: bool, verified: VerifiedCas, expected: CasExpectations
) -> dict[str, Any]:
    report = verified.report
    return {
        "url": url,
        "alias": name,
        "default": is_default,
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
        "owner_identity_hash": report.owner_identity_hash,
        "owner_config_sha256": report.owner_config_sha256,
        "audit_seq": report.audit.seq,
    }


def _print_facts(facts: dict[str, Any]) -> None:
    default = " (default)" if facts["default"] else ""
    measurement_note = "accepted" if facts["measurement_checked"] else "not checked: no --mrenclave"
    key_note = "matches -c" if facts["cas_key_hash_checked"] else "pinned now"
    mode = facts["mode"]
    mode_note = "accepted with --only-for-testing-debug" if mode == "debug" else "production"
    injected = "INJECTED by the operator" if facts["db_key_injected"] else "sealed by the platform"
    owner = "provisioned" if facts["provisioned"] else "not provisioned"
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
        f"  instance:          {facts['instance_id']} (CAS {facts['cas_version']})",
    ]
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
        click.echo(f"{marker} {name}\t{pinned.url}\t{pinned.cas_key_hash}\t{pinned.mode}")


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
        click.echo(f"{key}: {value}")


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
def self_show_identity(as_json: bool) -> None:
    """Print this client's key hash and certificate (created on first use)."""
    identity = ClientIdentity.load_or_create(casctl_home())
    pem = identity.certificate_pem.decode("ascii")
    if as_json:
        click.echo(json.dumps({"key_hash": identity.key_hash, "certificate": pem}, indent=2))
        return
    click.echo(f"key hash: {identity.key_hash}")
    click.echo(pem, nl=False)


def pinned_client(name: str | None) -> CasClient:
    """A client for the attested CAS ``name`` (or the default), signing with our identity."""
    home = casctl_home()
    _, pinned = load_state(home).resolve(name)
    return CasClient(
        pinned.url,
        ca_certificate_pem=pinned.ca_certificate_pem.encode("ascii"),
        cas_key_hash=pinned.cas_key_hash,
        identity=ClientIdentity.load_or_create(home),
    )


@cli.command()
@click.option("--cas", "cas_name", help="Attested CAS to ask (default: the default CAS).")
@click.option("--anonymous", is_flag=True, help="Send the request unsigned.")
@reports_errors
def whoami(cas_name: str | None, anonymous: bool) -> None:
    """Print the identity the CAS sees for this client."""
    with pinned_client(cas_name) as client:
        click.echo(client.whoami(signed=not anonymous))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="casctl")


if __name__ == "__main__":
    main()
