"""What every ``casctl`` command shares: exit codes, error reporting, identities, pinned clients."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from opencas.cli.common import describe_os_error, fail
from opencas.client.cas_client import CasClient
from opencas.client.channel import CasUnreachable
from opencas.client.freshness import FreshnessError
from opencas.client.identity import ClientIdentity
from opencas.client.state import casctl_home, load_state
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


def pinned_client(name: str | None, identity: ClientIdentity | None = None) -> CasClient:
    """A client for the attested CAS ``name`` (or the default), signing as ``identity``
    (default: casctl's own)."""
    home = casctl_home()
    _, pinned = load_state(home).resolve(name)
    return CasClient(
        pinned.url,
        ca_certificate_pem=pinned.ca_certificate_pem.encode("ascii"),
        cas_key_hash=pinned.cas_key_hash,
        identity=identity or ClientIdentity.load_or_create(home),
    )


def identity_from(path: Path | None) -> ClientIdentity:
    return ClientIdentity.from_path(path) if path else ClientIdentity.load_or_create(casctl_home())


identity_option = click.option(
    "--identity",
    "identity_path",
    type=click.Path(exists=True, path_type=Path),
    help="Sign as this identity: a PEM file with key and certificate, or a directory "
    "(default: casctl's own identity).",
)
