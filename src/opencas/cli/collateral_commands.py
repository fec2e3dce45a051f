"""``casctl collateral fetch``: build a collateral bundle on a connected machine.

The bundle (``docs/formats.md``) is then carried to a site without network access and given to
its CAS (``[collateral] bundle``) and to ``casctl evidence verify --collateral``. Exit codes (also
in docs/cli.md): 0 every document was fetched and written; 1 some could not be (each is named
on stderr; the others are written); 2 usage.
"""

from __future__ import annotations

import os
import ssl
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from opencas.attestation.snp_report import PRODUCTS, parse_snp_report
from opencas.attestation.verifier import CollateralKey, CollateralSource
from opencas.cli.casctl_common import EXIT_ERROR, reports_errors
from opencas.cli.evidence_commands import read_evidence_file
from opencas.collateral.bundle import AMD_SIGNERS, DCAP_CAS, DCAP_TEES, BundleSource, bundle_path
from opencas.collateral.http import DEFAULT_TIMEOUT, HttpFetcher
from opencas.collateral.kds import AMD_KDS_URL, KdsSource
from opencas.collateral.pcs import INTEL_PCS_URL, PcsSource
from opencas.collateral.validity import document_window
from opencas.errors import ClientError, EvidenceError

_FMSPC_DIGITS = 12


def _fmspcs(_: click.Context, __: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if len(value) != _FMSPC_DIGITS or not all(c in "0123456789abcdefABCDEF" for c in value):
            raise click.BadParameter(f"{value[:40]!r} is not an FMSPC (12 hex digits)")
    return tuple(dict.fromkeys(value.lower() for value in values))


def _https(_: click.Context, __: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.startswith("https://"):
        raise click.BadParameter(f"{value[:80]!r} is not an https:// URL")
    return value


def vcek_key_for(path: Path, products: tuple[str, ...]) -> CollateralKey:
    """The key of the VCEK that signed the SEV-SNP report in ``path`` (binary, hex or base64).

    The product comes from a version 3 report; a version 2 report names none, so exactly one
    ``--product`` must. Raises :class:`ClientError` naming the file otherwise, or when the report
    does not parse, is VLEK-signed or masks its chip id.
    """
    data, _ = read_evidence_file(path)
    try:
        report = parse_snp_report(data)
    except EvidenceError as exc:
        raise ClientError(f"{path}: not an SEV-SNP report: {exc.message}") from exc
    if report.signing_key != "vcek":
        raise ClientError(f"{path}: the report is signed by a VLEK, which AMD's KDS does not serve")
    if report.mask_chip_key or not any(report.chip_id):
        raise ClientError(f"{path}: the report masks its chip id, so its VCEK cannot be named")
    product: str | None = report.product
    if product is None:
        if len(products) != 1:
            raise ClientError(
                f"{path}: a version {report.version} report does not name its product; "
                "say which with exactly one --product"
            )
        product = products[0]
    chip_id = report.chip_id[:8] if product == "turin" else report.chip_id
    return CollateralKey.of(
        "amd-vcek", product=product, chip_id=chip_id.hex(), tcb=report.reported_tcb.hex()
    )


def _trust(path: Path | None) -> ssl.SSLContext | bool:
    if path is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        raise click.BadParameter(
            f"{path}: cannot be loaded as PEM CA certificates ({exc})",
            param_hint="--ca-certificates",
        ) from exc


def _fetch_into(
    bundle: BundleSource, source: CollateralSource, keys: list[CollateralKey], now: datetime
) -> int:
    """Fetch each of ``keys`` into ``bundle``; print each written file; the number that failed."""
    failed = 0
    for key in keys:
        try:
            data = source.collateral(key, now)
            window = document_window(key, data)
            bundle.write(key, data)
        except (EvidenceError, ValueError) as exc:
            failed += 1
            message = exc.message if isinstance(exc, EvidenceError) else str(exc)
            click.echo(f"casctl: error: {key}: {message}", err=True)
            continue
        except OSError as exc:
            raise ClientError(f"{bundle.root}: cannot write {bundle_path(key)}: {exc}") from exc
        until = window.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
        click.echo(f"{bundle_path(key)}\tcurrent until {until}")
    return failed


@click.group("collateral")
def collateral_group() -> None:
    """Collateral bundles for sites without network access."""


@collateral_group.command("fetch")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The bundle directory (created; documents already in it are replaced).",
)
@click.option("--pccs", callback=_https, help=f"PCCS or PCS base URL (default: {INTEL_PCS_URL}).")
@click.option(
    "--fmspc", multiple=True, callback=_fmspcs, help="Fetch DCAP collateral for this FMSPC."
)
@click.option(
    "--tee",
    "tees",
    multiple=True,
    type=click.Choice(DCAP_TEES),
    help="For SGX or TDX platforms (repeat for both; default: sgx).",
)
@click.option(
    "--ca",
    "cas",
    multiple=True,
    type=click.Choice(DCAP_CAS),
    help="The PCK CA of the platforms (default: both).",
)
@click.option(
    "--subscription-key-env",
    metavar="NAME",
    help="Send the PCS subscription key held in this environment variable.",
)
@click.option("--amd-kds", is_flag=True, help="Fetch the AMD certificate chains (VCEK and VLEK).")
@click.option(
    "--product",
    "products",
    multiple=True,
    type=click.Choice(PRODUCTS),
    help="AMD products for --amd-kds (default: all) and for version 2 reports of --vcek-for.",
)
@click.option(
    "--vcek-for",
    "reports",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Fetch the VCEK that signed this SEV-SNP report (binary, hex or base64).",
)
@click.option("--kds-url", callback=_https, default=AMD_KDS_URL, show_default=True)
@click.option(
    "--ca-certificates",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM CA certificates that authenticate the PCCS and KDS (default: the system's).",
)
@click.option("--timeout", type=click.FloatRange(0, 300, min_open=True), default=DEFAULT_TIMEOUT)
@reports_errors
def collateral_fetch(
    output: Path,
    pccs: str | None,
    fmspc: tuple[str, ...],
    tees: tuple[str, ...],
    cas: tuple[str, ...],
    subscription_key_env: str | None,
    amd_kds: bool,
    products: tuple[str, ...],
    reports: tuple[Path, ...],
    kds_url: str,
    ca_certificates: Path | None,
    timeout: float,
) -> None:
    """Fetch DCAP collateral, AMD chains and VCEKs into the bundle directory OUTPUT."""
    if not (fmspc or amd_kds or reports):
        raise click.UsageError("nothing to fetch: give --fmspc, --amd-kds or --vcek-for")
    subscription_key = None
    if subscription_key_env is not None:
        subscription_key = os.environ.get(subscription_key_env)
        if not subscription_key:
            raise click.BadParameter(
                f"the environment variable {subscription_key_env} is not set",
                param_hint="--subscription-key-env",
            )
    vceks = [vcek_key_for(report, products) for report in reports]
    dcap = [
        CollateralKey.of("dcap", tee=tee, fmspc=platform, ca=ca)
        for platform in fmspc
        for tee in tees or ("sgx",)
        for ca in cas or DCAP_CAS
    ]
    chains = [
        CollateralKey.of("amd-chain", product=product, signer=signer)
        for product in (products or PRODUCTS if amd_kds else ())
        for signer in AMD_SIGNERS
    ]
    bundle = BundleSource(output)
    now = datetime.now(UTC)
    with HttpFetcher(verify=_trust(ca_certificates), timeout=timeout) as fetcher:
        pcs = PcsSource(pccs or INTEL_PCS_URL, fetcher, subscription_key=subscription_key)
        kds = KdsSource(fetcher, kds_url)
        failed = _fetch_into(bundle, pcs, dcap, now) + _fetch_into(bundle, kds, chains + vceks, now)
    if failed:
        click.echo(f"casctl: error: {failed} document(s) could not be fetched", err=True)
        sys.exit(EXIT_ERROR)
