"""``casctl run`` and ``casctl measure``: the workload runtime on the command line.

``casctl run`` measures the program, attests it to the CAS's enclave API with evidence that
binds a fresh HPKE key, opens the configuration the CAS seals to that key, and starts the
program with it. Exit codes: the program's own once it started; before that 1 (error), 2 (usage),
3 (the CAS cannot be reached), 4 (the CAS refused the attestation).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from opencas.attestation.workload_binding import CONFIG_ID_SHAPE, ConfigId
from opencas.cli.casctl_common import reports_errors
from opencas.client.enclave import EnclaveClient
from opencas.client.pinning import enclave_target
from opencas.client.state import casctl_home, load_state
from opencas.errors import AttestationRefused
from opencas.platform.choice import PLATFORM_KINDS, PlatformSettings, open_platform
from opencas.platform.gramine import DEFAULT_ATTESTATION_DIR
from opencas.platform.tsm import DEFAULT_REPORT_DIR, MAX_PRIVLEVEL
from opencas.policy.model import check_environment_name
from opencas.runtime.exchange import fetch_configuration
from opencas.runtime.launcher import launch
from opencas.runtime.measure import Measurement, measure_program, resolve_program
from opencas.runtime.passed_environment import check_passable
from opencas.runtime.volumes import parse_volume_stores

PLATFORM_KEY_FILE = "simulated-platform.key"
# casctl seals nothing, but the settings name a tsm key file; it is never created.
TSM_KEY_FILE = "tsm-platform.key"
#: How long ``casctl run`` keeps trying to reach the CAS by default (``--connect-retry``), and
#: the most it may be told to.
DEFAULT_CONNECT_RETRY_SECONDS = 60.0
MAX_CONNECT_RETRY_SECONDS = 3600.0


def _config_id_option(_: click.Context, __: click.Parameter, value: str | None) -> ConfigId | None:
    if value is None:
        return None
    try:
        return ConfigId.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _pass_env_option(
    _: click.Context, __: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    for value in values:
        try:
            check_environment_name(value)
            check_passable(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
    return values


_measure_option = click.option(
    "--measure",
    "measure_paths",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Also measure this file or directory (repeatable; order matters).",
)
_program_argument = click.argument(
    "argv", nargs=-1, required=True, type=click.UNPROCESSED, metavar="PROGRAM [ARGS]..."
)
# Options end at the program's name, so its own options need no "--" in front of them.
_COMMAND_SETTINGS = {"allow_interspersed_args": False}


def _measure(argv: Sequence[str], measure_paths: Sequence[Path]) -> Measurement:
    return measure_program(resolve_program(argv), measure_paths)


@click.command("run", context_settings=_COMMAND_SETTINGS)
@click.option(
    "--config-id",
    envvar="CAS_CONFIG_ID",
    show_envvar=True,
    required=True,
    callback=_config_id_option,
    help=f"{CONFIG_ID_SHAPE} to attest as (default: $CAS_CONFIG_ID).",
)
@click.option(
    "--cas",
    envvar="CAS_ADDR",
    show_envvar=True,
    help="Attested CAS name, or its enclave API URL (default: $CAS_ADDR, else the default CAS).",
)
@click.option(
    "--platform",
    type=click.Choice(PLATFORM_KINDS),
    default="simulated",
    show_default=True,
    help="The TEE to produce evidence with; auto finds Gramine-SGX or configfs-tsm.",
)
@click.option(
    "--gramine-attestation-dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_ATTESTATION_DIR,
    show_default=True,
    help="Gramine's attestation pseudo file system (gramine-sgx).",
)
@click.option(
    "--tsm-report-dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_REPORT_DIR,
    show_default=True,
    help="configfs-tsm's report directory (tsm).",
)
@click.option(
    "--tsm-privlevel",
    type=click.IntRange(0, MAX_PRIVLEVEL),
    help="The SEV-SNP VMPL to ask reports for (tsm; default: the kernel's).",
)
@_measure_option
@click.option(
    "--pass-env",
    multiple=True,
    callback=_pass_env_option,
    help="Also pass this variable of casctl's environment to the program (repeatable).",
)
@click.option(
    "--volume-store",
    "volume_stores",
    multiple=True,
    metavar="NAME=DIR",
    help="Keep volume NAME's encrypted store in DIR instead of at its session path (repeatable).",
)
@click.option(
    "--otp",
    metavar="CODE",
    help="The one-time password, for a service whose session asks for one (default: asked for "
    "at a prompt when stdin is a terminal and the CAS wants one).",
)
@click.option(
    "--connect-retry",
    "connect_retry",
    envvar="CAS_CONNECT_RETRY",
    show_envvar=True,
    type=click.FloatRange(0, MAX_CONNECT_RETRY_SECONDS),
    default=DEFAULT_CONNECT_RETRY_SECONDS,
    show_default=True,
    metavar="SECONDS",
    help="Keep trying this long while the CAS cannot be reached (it is starting, or it turned "
    "the connection away over its limits), waiting 0.1 s doubling to 2 s between tries; 0: "
    "one try.",
)
@_program_argument
@click.pass_context
@reports_errors
def run_command(
    ctx: click.Context,
    config_id: ConfigId,
    cas: str | None,
    platform: str,
    gramine_attestation_dir: Path,
    tsm_report_dir: Path,
    tsm_privlevel: int | None,
    measure_paths: tuple[Path, ...],
    pass_env: tuple[str, ...],
    otp: str | None,
    volume_stores: tuple[str, ...],
    connect_retry: float,
    argv: tuple[str, ...],
) -> None:
    """Attest PROGRAM to the CAS as SESSION/SERVICE and run it with the configuration it sends.

    Use as `casctl run --config-id S/SVC -- PROGRAM [ARGS]...`. When the session sets the
    service's command, that command replaces ARGS. The program's exit code is casctl's; before
    it starts, 3 means the CAS cannot be reached and 4 that it refused; 6 that the program
    succeeded but a volume's writes were not kept (another writer was first).
    """
    stores = parse_volume_stores(volume_stores)
    home = casctl_home()
    url, ca_pem = enclave_target(cas, load_state(home))
    program = resolve_program(argv)
    settings = PlatformSettings(
        kind=platform,
        simulated_key_file=home / PLATFORM_KEY_FILE,
        tsm_key_file=home / TSM_KEY_FILE,
        gramine_attestation_dir=gramine_attestation_dir,
        tsm_report_dir=tsm_report_dir,
        tsm_privlevel=tsm_privlevel,
    )
    provider = open_platform(
        settings,
        # On a TEE the hardware measures what runs; the files are measured only when simulated.
        lambda: measure_program(program, measure_paths).value,
        lambda message: click.echo(f"casctl: warning: {message}", err=True),
    )
    sleep = _saying_it_waits(url, connect_retry)
    with EnclaveClient(url, ca_pem) as client:
        try:
            attested = fetch_configuration(
                client, config_id, provider, otp, retry_for=connect_retry, sleep=sleep
            )
        except AttestationRefused as refused:
            if refused.check != "otp" or otp is not None or not sys.stdin.isatty():
                raise
            # Asked only now: most services need no code, and the CAS says which do.
            code = click.prompt(f"one-time password for {config_id}", hide_input=True, err=True)
            attested = fetch_configuration(
                client, config_id, provider, code.strip(), retry_for=connect_retry, sleep=sleep
            )
    # The attestation's connection is closed before the program starts: a running workload
    # holds no place among the CAS's connections (max_connections_per_source) while it runs.
    # Volume tags, reported after it exits, go over a connection of their own.
    with EnclaveClient(url, ca_pem) as reporter:
        status = launch(
            attested.config,
            program,
            argv,
            pass_env=pass_env,
            workload_key=attested.key,
            volume_stores=stores,
            report_tag=reporter.report_volume_tag,
        )
    ctx.exit(status)


def _saying_it_waits(url: str, retry_for: float) -> Callable[[float], None]:
    """``time.sleep`` that says on stderr, before the first wait, why ``casctl run`` waits."""
    said = False

    def sleep(seconds: float) -> None:
        nonlocal said
        if not said:
            click.echo(
                f"casctl: the CAS at {url} cannot be reached yet; trying again for up to "
                f"{retry_for:g} s (--connect-retry)",
                err=True,
            )
            said = True
        time.sleep(seconds)

    return sleep


@click.command("measure", context_settings=_COMMAND_SETTINGS)
@_measure_option
@click.option("--json", "as_json", is_flag=True, help="Also list what went into the measurement.")
@_program_argument
@reports_errors
def measure_command(measure_paths: tuple[Path, ...], as_json: bool, argv: tuple[str, ...]) -> None:
    """Print the simulated measurement `casctl run` would report for PROGRAM [ARGS]...

    Put it into the service's `simulated_measurement` to let the program attest.
    """
    measurement = _measure(argv, measure_paths)
    if not as_json:
        click.echo(measurement.value)
        return
    document = {
        "measurement": measurement.value,
        "items": [item.to_json() for item in measurement.items],
    }
    click.echo(json.dumps(document, indent=2))


def register_run_commands(cli: click.Group) -> None:
    """Add ``run`` and ``measure`` to the ``casctl`` group."""
    cli.add_command(run_command)
    cli.add_command(measure_command)
