"""The text of a source file, with problems that name the file."""

from __future__ import annotations

from pathlib import Path

from opencas.errors import ConfigError
from opencas.sources.problems import Problem


def read_text(path: Path) -> str:
    """The UTF-8 text of the configuration file at ``path``, without a byte-order mark.

    Raises :class:`ConfigError` naming the file when it is missing, a directory, unreadable or
    not UTF-8 (naming the line).
    """
    source = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(Problem(source, None, None, "configuration file not found")) from None
    except IsADirectoryError:
        what = "is a directory, not a configuration file"
        raise ConfigError(Problem(source, None, None, what)) from None
    except PermissionError:
        what = "cannot read configuration file: permission denied"
        raise ConfigError(Problem(source, None, None, what)) from None
    except OSError as error:
        what = f"cannot read configuration file: {error.strerror or error}"
        raise ConfigError(Problem(source, None, None, what)) from None
    try:
        # Accept a UTF-8 byte-order mark: some editors write one, and it carries no meaning.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise ConfigError(Problem(source, line, None, "not valid UTF-8 text")) from None
