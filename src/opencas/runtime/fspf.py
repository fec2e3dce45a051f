"""Protection files on disk: build one (``casctl fspf``), and check a program's tree against it
before the program starts (``casctl run``).

Building: :func:`create_protection_file` writes an empty one, :func:`add_region` declares a
region and, given a source directory, records the files in it (hashing them; for an encrypted
region also writing their ciphertext into a target directory), and
:func:`seal_protection_file` seals it and returns the key and tag for the session.

Checking: :func:`open_protected_tree` opens the sealed protection file with the key and tag the
CAS sent, then checks every listed file where it lies (its size and SHA-256), refuses a file
that is missing, changed, swapped, a symbolic link, or present in a protected region but not
listed, and decrypts each encrypted file into the private directory. Every refusal names the
file. The bytes are those of :mod:`opencas.crypto.fspf_format`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from opencas.crypto.fspf_format import (
    MAX_PROTECTION_FILE_BYTES,
    FspfFormatError,
    ProtectedFile,
    Protection,
    ProtectionDocument,
    Region,
    check_fspf_path,
    content_cipher,
    is_within,
    new_file_object,
    open_sealed,
    parse_document,
    seal_document,
)
from opencas.crypto.volume_format import CHUNK_SIZE, TAG_SIZE, chunk_count, object_size
from opencas.errors import ClientError

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMPORARY_SUFFIX = ".tmp"


class ProtectedFileRefused(ClientError, code="protected-file-refused"):
    """A protected file of the program's tree is not what the protection file says."""


@dataclass(frozen=True)
class ProtectedTree:
    """The outcome of a check: the encrypted files and regions now decrypted below the private
    root (as absolute paths of the program's tree), and how many files were checked."""

    decrypted_files: tuple[str, ...]
    encrypted_regions: tuple[str, ...]
    checked: int


# --- building -------------------------------------------------------------------------------------


def create_protection_file(target: Path) -> None:
    """Write a new, empty protection file at ``target`` (mode 0600; it holds the content key).

    ``ClientError`` when ``target`` exists.
    """
    try:
        descriptor = os.open(target, _CREATE_FLAGS, 0o600)
    except FileExistsError:
        raise ClientError(f"{target} exists already") from None
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(ProtectionDocument.new().to_bytes())
        handle.flush()
        os.fsync(handle.fileno())


def _load(target: Path) -> ProtectionDocument:
    try:
        data = target.read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {target}: {exc.strerror or exc}") from None
    try:
        return parse_document(data)
    except FspfFormatError as exc:
        raise ClientError(f"{target}: {exc}") from None


def _replace(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` through a flushed temporary file and a rename."""
    temporary = target.with_name(target.name + _TEMPORARY_SUFFIX)
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    descriptor = os.open(temporary, _CREATE_FLAGS, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)


def add_region(
    target: Path,
    region: str,
    protection: Protection,
    source: Path | None = None,
    destination: Path | None = None,
) -> int:
    """Declare ``region`` with ``protection`` in the protection file ``target`` and, given
    ``source``, record every file below it as the file ``region/<relative path>``; return how
    many files were recorded.

    An encrypted region's files are encrypted into ``destination`` (required with ``source``)
    under the same relative paths; deploy that directory at ``region``. An authenticated
    region's files are hashed in ``source`` (deploy it at ``region``; ``destination`` is
    refused). A file already recorded is recorded anew. ``ClientError`` names what is wrong.
    """
    try:
        check_fspf_path(region)
    except ValueError as exc:
        raise ClientError(f"region: {exc}") from None
    document = _load(target)
    regions = {item.path: item for item in document.regions}
    present = regions.get(region)
    if present is not None and present.protection != protection:
        raise ClientError(f"region {region} is {present.protection} already")
    regions[region] = Region(region, protection)
    document = _rebuilt(document, regions.values(), document.files)
    files = {item.path: item for item in document.files}
    added = 0
    if source is not None:
        if protection == "not-protected":
            raise ClientError("files are added to an authenticated or encrypted region only")
        if (protection == "encrypted") != (destination is not None):
            raise ClientError(
                "--to DST_DIR is needed for an encrypted region, and only there: it receives "
                "the encrypted files"
            )
        for relative, path in _source_files(source):
            name = f"{region.rstrip('/')}/{relative}"
            owner = document.region_of(name)
            if owner is None or owner.path != region:
                where = owner.path if owner else "-"
                raise ClientError(f"{path} would be {name}, which belongs to region {where}")
            files[name] = _record(document, name, path, destination, relative)
            added += 1
    _replace(target, _rebuilt(document, regions.values(), files.values()).to_bytes())
    return added


def _rebuilt(document: ProtectionDocument, regions: object, files: object) -> ProtectionDocument:
    try:
        return ProtectionDocument.build(document.content_key, regions, files)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ClientError(str(exc)) from None


def _source_files(source: Path) -> Iterator[tuple[str, Path]]:
    """Each regular file below ``source`` (sorted), as its relative path and its path; symbolic
    links and special files are refused: a protection file vouches for contents only."""
    if not source.is_dir():
        raise ClientError(f"--from {source} is not a directory")
    for directory, dirnames, filenames in os.walk(source):
        dirnames.sort()
        for name in [*dirnames, *filenames]:
            path = Path(directory) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise ClientError(f"{path} is a symbolic link or special file; copy its target")
        for name in sorted(filenames):
            path = Path(directory) / name
            yield path.relative_to(source).as_posix(), path


def _record(
    document: ProtectionDocument,
    name: str,
    path: Path,
    destination: Path | None,
    relative: str,
) -> ProtectedFile:
    mode = stat.S_IMODE(path.stat().st_mode)
    if destination is None:
        size, digest = _hash_file(path)
        return ProtectedFile(name, size, mode, digest, None)
    object_id = new_file_object()
    cipher = content_cipher(document.content_key, name, object_id)
    output = destination / relative
    output.parent.mkdir(parents=True, exist_ok=True)
    hasher = hashlib.sha256()
    size = 0
    with path.open("rb") as plain, output.open("wb") as sealed:
        chunk = plain.read(CHUNK_SIZE)
        index = 0
        while True:
            following = plain.read(CHUNK_SIZE)
            final = not following
            hasher.update(chunk)
            size += len(chunk)
            sealed.write(cipher.seal_chunk(index, final, chunk))
            if final:
                break
            chunk, index = following, index + 1
    os.chmod(output, mode)
    return ProtectedFile(name, size, mode, hasher.hexdigest(), object_id)


def _hash_file(path: Path) -> tuple[int, str]:
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
        return os.fstat(handle.fileno()).st_size, digest


def seal_protection_file(target: Path) -> tuple[str, str]:
    """Seal the protection file ``target`` in place; return its key and tag (hex)."""
    document = _load(target)
    try:
        sealed, key, tag = seal_document(document)
    except ValueError as exc:
        raise ClientError(str(exc)) from None
    _replace(target, sealed)
    return key, tag


# --- checking -------------------------------------------------------------------------------------


def read_sealed(fspf_path: str, key: str, tag: str) -> ProtectionDocument:
    """The document of the protection file at ``fspf_path``, opened with the session's key and
    tag; :class:`ProtectedFileRefused` naming the file otherwise."""
    try:
        descriptor = os.open(fspf_path, _READ_FLAGS)
    except OSError as exc:
        raise ProtectedFileRefused(f"protection file {fspf_path}: {exc.strerror or exc}") from None
    with os.fdopen(descriptor, "rb") as handle:
        data = handle.read(MAX_PROTECTION_FILE_BYTES + 1)
    try:
        return open_sealed(data, key, tag)
    except FspfFormatError as exc:
        raise ProtectedFileRefused(f"protection file {fspf_path}: {exc}") from None


def open_protected_tree(fspf_path: str, key: str, tag: str, private_root: Path) -> ProtectedTree:
    """Check the program's tree against the protection file, as the module docstring says, and
    decrypt the encrypted files to ``private_root/<path>``.

    :class:`ProtectedFileRefused` naming the first file that is not as recorded.
    """
    document = read_sealed(fspf_path, key, tag)
    # Everything in clear is checked before any plaintext is written.
    for item in document.files:
        if item.object_id is None:
            _check_authenticated(item)
    _refuse_unlisted(document)
    decrypted: list[str] = []
    for item in document.files:
        if item.object_id is not None:
            _decrypt(document, item, private_root)
            decrypted.append(item.path)
    # "/" would stand for every path: the root keeps meaning the real root.
    encrypted = tuple(
        r.path for r in document.regions if r.protection == "encrypted" and r.path != "/"
    )
    for region in encrypted:
        _make_private_parents(private_root, private_root / region.lstrip("/"))
    return ProtectedTree(tuple(decrypted), encrypted, len(document.files))


def _open_regular(item: ProtectedFile) -> int:
    try:
        descriptor = os.open(item.path, _READ_FLAGS)
    except FileNotFoundError:
        raise ProtectedFileRefused(f"protected file {item.path} is missing") from None
    except OSError as exc:
        # ELOOP: the final component is a symbolic link.
        raise ProtectedFileRefused(
            f"protected file {item.path} cannot be opened: {exc.strerror or exc}"
        ) from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise ProtectedFileRefused(f"protected file {item.path} is not a regular file")
    return descriptor


def _check_authenticated(item: ProtectedFile) -> None:
    descriptor = _open_regular(item)
    with os.fdopen(descriptor, "rb") as handle:
        if os.fstat(descriptor).st_size != item.size:
            raise ProtectedFileRefused(f"protected file {item.path} was changed (its size)")
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    if digest != item.sha256:
        raise ProtectedFileRefused(f"protected file {item.path} was changed (its SHA-256)")


def _decrypt(document: ProtectionDocument, item: ProtectedFile, private_root: Path) -> None:
    assert item.object_id is not None
    cipher = content_cipher(document.content_key, item.path, item.object_id)
    descriptor = _open_regular(item)
    output = private_root / item.path.lstrip("/")
    _make_private_parents(private_root, output.parent)
    with os.fdopen(descriptor, "rb") as sealed:
        if os.fstat(descriptor).st_size != object_size(item.size):
            raise ProtectedFileRefused(f"encrypted file {item.path} was changed (its size)")
        hasher = hashlib.sha256()
        out = os.open(output, _CREATE_FLAGS, 0o600)
        with os.fdopen(out, "wb") as plain:
            count = chunk_count(item.size)
            for index in range(count):
                chunk = sealed.read(CHUNK_SIZE + TAG_SIZE)
                try:
                    opened = cipher.open_chunk(index, index == count - 1, chunk)
                except ValueError:
                    raise ProtectedFileRefused(
                        f"encrypted file {item.path} was changed or swapped"
                    ) from None
                hasher.update(opened)
                plain.write(opened)
            os.fchmod(out, item.mode)
    if hasher.hexdigest() != item.sha256:
        raise ProtectedFileRefused(f"encrypted file {item.path} was changed or swapped")


def _make_private_parents(root: Path, directory: Path) -> None:
    current = root
    for part in directory.relative_to(root).parts:
        current = current / part
        with contextlib.suppress(FileExistsError):
            current.mkdir(mode=0o700)


def _refuse_unlisted(document: ProtectionDocument) -> None:
    """Refuse anything in a protected region that the protection file does not list: an added
    module would run unchecked otherwise."""
    listed = {item.path for item in document.files}
    protected = [r.path for r in document.regions if r.protection != "not-protected"]
    tops = [p for p in protected if not any(o != p and is_within(p, o) for o in protected)]
    for top in tops:
        for directory, dirnames, filenames in os.walk(top):
            for name in [*dirnames, *filenames]:
                path = os.path.join(directory, name)
                if document.protection_of(path) == "not-protected":
                    continue
                mode = os.lstat(path).st_mode
                if stat.S_ISDIR(mode):
                    continue
                if not stat.S_ISREG(mode):
                    raise ProtectedFileRefused(
                        f"{path} in a protected region is a symbolic link or special file"
                    )
                if path not in listed:
                    raise ProtectedFileRefused(
                        f"{path} is in a protected region but not in the protection file"
                    )
