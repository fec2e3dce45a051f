"""What every ``casctl`` command shares: exit codes, error reporting, the identity option."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from opencas.cli.common import describe_os_error, fail
from opencas.client.channel import CasUnreachable
from opencas.client.freshness import FreshnessError
from opencas.client.identity import ClientIdentity
from opencas.client.state import casctl_home
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
        except OSError as exc:
            fail("casctl", describe_os_error(exc), EXIT_ERROR)

    return wrapper  # type: ignore[return-value]


def identity_from(path: Path | None) -> ClientIdentity:
    """The identity ``--identity`` names, else casctl's own (created on first use)."""
    return ClientIdentity.from_path(path) if path else ClientIdentity.load_or_create(casctl_home())


identity_option = click.option(
    "--identity",
    "identity_path",
    type=click.Path(exists=True, path_type=Path),
    help="Sign as this identity: a PEM file with key and certificate, or a directory "
    "(default: casctl's own identity).",
)
