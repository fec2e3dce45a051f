"""What both command-line programs share: logging set-up and error reporting."""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

import click


def setup_logging(level: str = "info") -> None:
    """Log to stderr as ``time level message`` at ``level``."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )


def fail(program: str, message: str, exit_code: int) -> NoReturn:
    """Print one clear line on stderr and exit with ``exit_code``."""
    click.echo(f"{program}: error: {message}", err=True)
    sys.exit(exit_code)


def describe_os_error(exc: OSError) -> str:
    """``path: reason`` for an operating-system error, without a traceback."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"
