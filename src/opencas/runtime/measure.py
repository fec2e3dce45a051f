"""The simulated measurement of a workload program.

A real TEE measures the code it loads; a simulated platform has nothing that does, so ``casctl``
computes a stand-in from the files that make up the program. It depends on file contents (and
base names) only, never on where the files are, so a program copied elsewhere keeps its
measurement and any changed byte changes it.

The measurement is the lowercase hex SHA-256 over the concatenation of *items*, in this order:

1. ``executable``: the program, looked up on ``PATH`` when its name has no ``/``, with every
   symbolic link resolved;
2. ``script``: when the executable is an interpreter (its base name, as invoked or resolved, is
   ``python``, ``python3``, ``python3.X``, ``node``, ``ruby``, ``perl``, ``bash`` or ``sh``) and
   the first argument that does not start with ``-`` names an existing file: that file,
   symbolic links resolved;
3. ``measure``: each ``--measure PATH`` in the order given; a file is one item, a directory
   contributes each regular file below it, ordered by the bytes of its relative POSIX path.

Each item contributes::

    role NUL name NUL length NUL content

where ``role`` is ``executable``, ``script`` or ``measure``; ``name`` is the file's base name
(executable, script, a single ``--measure`` file) or its POSIX path relative to the ``--measure``
directory (a directory member), encoded in the file-system encoding (UTF-8 on Linux); ``length``
is the content's size in bytes in decimal ASCII digits without leading zeros; ``content`` is the
file's bytes; NUL is one zero byte. Names cannot contain NUL and the length says where the
content ends, so different item lists never produce the same byte stream.

Inside a ``--measure`` directory, symbolic links and special files are refused rather than
skipped: the program could load code through them that the measurement would not cover.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from opencas.errors import ClientError

Role = Literal["executable", "script", "measure"]

_INTERPRETER = re.compile(r"python(?:3(?:\.[0-9]+)?)?|node|ruby|perl|bash|sh")
_CHUNK = 1024 * 1024


def is_interpreter(name: str) -> bool:
    """True when the base name ``name`` is one of the interpreters the measurement knows."""
    return _INTERPRETER.fullmatch(name) is not None


def script_argument(arguments: Sequence[str]) -> str | None:
    """The argument an interpreter would run as its script: the first not starting with ``-``."""
    for argument in arguments:
        if not argument.startswith("-"):
            return argument
    return None


@dataclass(frozen=True)
class ResolvedProgram:
    """The files a command line runs.

    ``executable`` is the program with symbolic links resolved (what is measured and executed);
    ``script`` the interpreter's script file (resolved), or None; ``invoked`` the absolute path
    under which the program was found, before symbolic links were resolved (an interpreter in a
    virtual environment finds its environment from this name), or None when it is
    ``executable`` itself.
    """

    executable: Path
    script: Path | None
    invoked: Path | None = None

    @property
    def invoked_path(self) -> Path:
        """The path to run the program as (its ``argv[0]``)."""
        return self.invoked or self.executable

    @property
    def interpreter(self) -> bool:
        """True when the program is an interpreter, by its invoked or its resolved base name."""
        return is_interpreter(self.invoked_path.name) or is_interpreter(self.executable.name)


def find_executable(program: str, search_path: str | None = None) -> Path:
    """The absolute, not symlink-resolved path of ``program``.

    A name without ``/`` is looked up on ``search_path`` (default: ``$PATH``); a path is taken
    relative to the current directory. Raises :class:`ClientError` when there is no such
    executable regular file.
    """
    if not program:
        raise ClientError("the program name is empty")
    if "/" in program:
        candidate = Path(os.path.abspath(program))
        if not candidate.is_file() or not os.access(candidate, os.X_OK):
            raise ClientError(f"{program} is not an executable file")
        return candidate
    found = shutil.which(program, path=search_path)
    if found is None:
        raise ClientError(f"{program}: no such program on PATH")
    return Path(os.path.abspath(found))


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # inline code is no file name: too long, for instance
        return False


def resolve_program(argv: Sequence[str]) -> ResolvedProgram:
    """The executable (and, for an interpreter, the script) that ``argv`` would run.

    ``argv[0]`` is found as :func:`find_executable` says and its symbolic links are resolved.
    For an interpreter, the first argument that does not start with ``-`` is the script when it
    names an existing regular file (relative to the current directory). Raises
    :class:`ClientError` when ``argv`` is empty or the program is not found.
    """
    if not argv:
        raise ClientError("no program given")
    invoked = find_executable(argv[0])
    executable = invoked.resolve(strict=True)
    program = ResolvedProgram(executable, None, None if invoked == executable else invoked)
    if not program.interpreter:
        return program
    candidate = script_argument(argv[1:])
    if candidate is None or not _is_file(Path(candidate)):
        return program
    return ResolvedProgram(executable, Path(candidate).resolve(strict=True), program.invoked)


@dataclass(frozen=True)
class MeasuredItem:
    """One file that went into a measurement, as ``casctl measure --json`` lists it."""

    role: Role
    name: str
    path: Path
    length: int
    sha256: str

    def to_json(self) -> dict[str, str | int]:
        """``{"role", "name", "path", "length", "sha256"}`` (``sha256`` of the content alone)."""
        return {
            "role": self.role,
            "name": self.name,
            "path": str(self.path),
            "length": self.length,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class Measurement:
    """A program's simulated measurement (lowercase hex) and the items it covers, in order."""

    value: str
    items: tuple[MeasuredItem, ...]


def _measure_members(root: Path) -> Iterator[tuple[str, Path]]:
    """The regular files below ``root`` as (relative POSIX name, path), in byte order of name."""
    members: list[tuple[bytes, str, Path]] = []

    def raise_walk_error(error: OSError) -> None:
        raise error

    for directory, dirnames, filenames in os.walk(root, onerror=raise_walk_error):
        for name in [*dirnames, *filenames]:
            path = Path(directory) / name
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode):
                continue
            relative = path.relative_to(root).as_posix()
            if not stat.S_ISREG(mode):
                kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
                raise ClientError(
                    f"cannot measure {root}: {relative} is {kind}; measure what it points to "
                    "with its own --measure, or remove it"
                )
            members.append((os.fsencode(relative), relative, path))
    members.sort(key=lambda member: member[0])
    for _, relative, path in members:
        yield relative, path


def _items(
    program: ResolvedProgram, measure_paths: Sequence[Path]
) -> Iterator[tuple[Role, str, Path]]:
    yield "executable", program.executable.name, program.executable
    if program.script is not None:
        yield "script", program.script.name, program.script
    for given in measure_paths:
        try:
            resolved = given.resolve(strict=True)
        except OSError as exc:
            raise ClientError(f"cannot measure {given}: {exc.strerror or exc}") from exc
        if resolved.is_dir():
            for relative, path in _measure_members(resolved):
                yield "measure", relative, path
        elif resolved.is_file():
            yield "measure", resolved.name, resolved
        else:
            raise ClientError(f"cannot measure {given}: it is neither a file nor a directory")


def _hash_item(digest: hashlib._Hash, role: Role, name: str, path: Path) -> MeasuredItem:
    content_digest = hashlib.sha256()
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        digest.update(
            role.encode("ascii") + b"\0" + os.fsencode(name) + b"\0" + str(size).encode() + b"\0"
        )
        read = 0
        while chunk := handle.read(_CHUNK):
            read += len(chunk)
            digest.update(chunk)
            content_digest.update(chunk)
    if read != size:
        raise ClientError(f"cannot measure {path}: it changed while it was read")
    return MeasuredItem(role, name, path, size, content_digest.hexdigest())


def measure_program(program: ResolvedProgram, measure_paths: Sequence[Path] = ()) -> Measurement:
    """The simulated measurement of ``program`` and ``measure_paths``, as the module describes.

    Raises :class:`ClientError` naming the file when one cannot be read, changes while it is
    read, or a ``--measure`` directory holds a symbolic link or special file.
    """
    digest = hashlib.sha256()
    items: list[MeasuredItem] = []
    try:
        for role, name, path in _items(program, measure_paths):
            items.append(_hash_item(digest, role, name, path))
    except OSError as exc:
        where = exc.filename or "a file"
        raise ClientError(f"cannot measure {where}: {exc.strerror or exc}") from exc
    return Measurement(digest.hexdigest(), tuple(items))
