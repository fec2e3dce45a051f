"""The file-system protection file (fspf): which files of a program's tree are authenticated or
encrypted, and their hashes. Pure: no file I/O.

A protection file lists *regions* (absolute directory paths, each ``authenticated``,
``encrypted`` or ``not-protected``; a file belongs to the region with the longest path that
contains it) and *files* (absolute path, size, mode, SHA-256 of the plaintext, and for an
encrypted file the id of the object that holds its ciphertext). An encrypted file's content is
sealed as one object of :mod:`opencas.crypto.volume_format` under the protection file's content
key, bound to the file's path, so a file moved, cut short or swapped fails to open.

While it is being built, the protection file is the canonical JSON of its document (it holds the
content key: keep it private). *Sealing* encrypts the document with AES-256-GCM under a fresh
random key: the result is :data:`SEALED_MAGIC`, a 12-byte nonce, the ciphertext and the 16-byte
GCM tag. The key (64 hex) and the tag (32 hex) go into the session (``fspf_key``,
``fspf_tag``): whoever holds both knows the exact protection file, so the tag also refuses an
older protection file sealed under the same key. ``docs/formats.md`` describes the bytes.
"""

from __future__ import annotations

import hmac
import itertools
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from opencas.crypto.canonical import canonical_json, member_mismatch, strict_json_object
from opencas.crypto.volume_format import (
    MAX_FILE_SIZE,
    MAX_PATH_BYTES,
    MAX_SEGMENT_BYTES,
    ObjectCipher,
    new_object_id,
)

FORMAT = "opencas-fspf/v1"
SEALED_MAGIC = b"opencas-fspf-sealed/v1\n"
KEY_SIZE = 32
NONCE_SIZE = 12
GCM_TAG_SIZE = 16
#: Limits of one protection file (docs/formats.md).
MAX_FILES = 100_000
MAX_REGIONS = 1_000
MAX_PROTECTION_FILE_BYTES = 64 * 1024 * 1024
_AAD = f"{FORMAT} protection file".encode()
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_DOCUMENT_MEMBERS = frozenset({"format", "content_key", "regions", "files"})
_REGION_MEMBERS = frozenset({"path", "protection"})
_FILE_MEMBERS = frozenset({"path", "size", "mode", "sha256", "object"})

Protection = Literal["authenticated", "encrypted", "not-protected"]
PROTECTIONS: tuple[Protection, ...] = ("authenticated", "encrypted", "not-protected")


class FspfFormatError(ValueError):
    """A protection file is not what its key and tag promise, or is malformed."""


def check_fspf_path(path: str) -> str:
    """``path`` if it is a path a protection file may name: absolute, ``/``-separated, no empty
    (except ``/`` itself), ``.`` or ``..`` segment, no NUL, at most 4096 bytes with segments of
    at most 255. ``ValueError`` otherwise."""
    segments = path[1:].split("/")
    if path == "/":
        return path
    if (
        not path.startswith("/")
        or "\0" in path
        or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES
        or any(segment in {"", ".", ".."} for segment in segments)
        or any(
            len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES
            for segment in segments
        )
    ):
        raise ValueError(
            f"the path {path!r} must be absolute, without empty, '.' or '..' segments or NUL, at "
            f"most {MAX_PATH_BYTES} bytes with segments of at most {MAX_SEGMENT_BYTES}"
        )
    return path


def is_within(path: str, region: str) -> bool:
    """Whether ``path`` is ``region`` or below it (``/app`` holds ``/app/x``, not ``/apple``)."""
    return region in ("/", path) or path.startswith(region + "/")


def content_cipher(content_key: bytes, path: str, object_id: str) -> ObjectCipher:
    """The cipher of the encrypted file at ``path`` (absolute), whose ciphertext is
    ``object_id``: a volume object bound to the path without its leading ``/``."""
    return ObjectCipher(content_key, path[1:], object_id)


@dataclass(frozen=True)
class Region:
    """A directory ``path`` whose files (those of no longer region) have this ``protection``."""

    path: str
    protection: Protection


@dataclass(frozen=True)
class ProtectedFile:
    """One file: its ``path``, plaintext ``size``, ``mode``, plaintext ``sha256`` (hex), and the
    ``object_id`` holding its ciphertext when it is encrypted (None when authenticated)."""

    path: str
    size: int
    mode: int
    sha256: str
    object_id: str | None


@dataclass(frozen=True)
class ProtectionDocument:
    """A protection file's content: the content key, regions and files, each sorted by path."""

    content_key: bytes
    regions: tuple[Region, ...] = ()
    files: tuple[ProtectedFile, ...] = ()

    @classmethod
    def new(cls) -> ProtectionDocument:
        """An empty protection file with a fresh content key."""
        return cls(os.urandom(KEY_SIZE))

    @classmethod
    def build(
        cls, content_key: bytes, regions: Iterable[Region], files: Iterable[ProtectedFile]
    ) -> ProtectionDocument:
        """The document of these regions and files, checked and sorted; ``ValueError`` names
        what is wrong (a bad or repeated path, too many entries, a file whose region does not
        protect it, an encrypted file without an object or an authenticated one with one)."""
        if len(content_key) != KEY_SIZE:
            raise ValueError(f"the content key must be {KEY_SIZE} bytes")
        ordered_regions = tuple(sorted(regions, key=lambda item: item.path))
        ordered_files = tuple(sorted(files, key=lambda item: item.path))
        if len(ordered_regions) > MAX_REGIONS:
            raise ValueError(f"a protection file holds at most {MAX_REGIONS} regions")
        if len(ordered_files) > MAX_FILES:
            raise ValueError(f"a protection file holds at most {MAX_FILES} files")
        _refuse_repeats([region.path for region in ordered_regions], "region")
        _refuse_repeats([item.path for item in ordered_files], "file")
        document = cls(content_key, ordered_regions, ordered_files)
        for region in ordered_regions:
            check_fspf_path(region.path)
            if region.protection not in PROTECTIONS:
                raise ValueError(f"region {region.path}: unknown protection {region.protection!r}")
        for item in ordered_files:
            _check_file(document, item)
        return document

    def region_of(self, path: str) -> Region | None:
        """The region ``path`` belongs to: the longest one that holds it, or None."""
        found = None
        for region in self.regions:
            if is_within(path, region.path) and (
                found is None or len(region.path) > len(found.path)
            ):
                found = region
        return found

    def protection_of(self, path: str) -> Protection:
        """How ``path`` is protected (``not-protected`` when no region holds it)."""
        region = self.region_of(path)
        return "not-protected" if region is None else region.protection

    def to_json(self) -> dict[str, object]:
        """The document that is sealed."""
        return {
            "format": FORMAT,
            "content_key": self.content_key.hex(),
            "regions": [{"path": r.path, "protection": r.protection} for r in self.regions],
            "files": [
                {
                    "path": item.path,
                    "size": item.size,
                    "mode": item.mode,
                    "sha256": item.sha256,
                    "object": item.object_id,
                }
                for item in self.files
            ],
        }

    def to_bytes(self) -> bytes:
        """The unsealed protection file."""
        return canonical_json(self.to_json())


def _refuse_repeats(paths: list[str], what: str) -> None:
    for first, second in itertools.pairwise(paths):
        if first == second:
            raise ValueError(f"the {what} {first} is listed twice")


def _check_file(document: ProtectionDocument, item: ProtectedFile) -> None:
    check_fspf_path(item.path)
    protection = document.protection_of(item.path)
    if protection == "not-protected":
        raise ValueError(f"file {item.path} is in no authenticated or encrypted region")
    if not 0 <= item.size <= MAX_FILE_SIZE:
        raise ValueError(f"file {item.path}: a file holds at most {MAX_FILE_SIZE} bytes")
    if not 0 <= item.mode <= 0o777:
        raise ValueError(f"file {item.path}: the mode must be within 0o777")
    if not _HEX64.fullmatch(item.sha256):
        raise ValueError(f"file {item.path}: sha256 is not 64 lowercase hex digits")
    if (protection == "encrypted") != (item.object_id is not None):
        raise ValueError(f"file {item.path}: only an encrypted file has an object")
    if item.object_id is not None and not _HEX32.fullmatch(item.object_id):
        raise ValueError(f"file {item.path}: the object id is not 32 lowercase hex digits")


def new_file_object() -> str:
    """A fresh object id for an encrypted file's ciphertext."""
    return new_object_id()


def parse_document(data: bytes) -> ProtectionDocument:
    """The document of an unsealed protection file; :class:`FspfFormatError` if malformed."""
    if data.startswith(SEALED_MAGIC):
        raise FspfFormatError(
            "the protection file is sealed already; create a new one to change it"
        )
    try:
        document = strict_json_object(data, "protection file")
    except ValueError as exc:
        raise FspfFormatError(str(exc)) from None
    return _document_from_json(document)


def _document_from_json(document: dict[str, object]) -> ProtectionDocument:
    problem = member_mismatch(document, _DOCUMENT_MEMBERS)
    if problem is not None or document.get("format") != FORMAT:
        raise FspfFormatError(f"the protection file is not {FORMAT} ({problem or 'format'})")
    key, regions, files = document["content_key"], document["regions"], document["files"]
    if not isinstance(key, str) or not _HEX64.fullmatch(key):
        raise FspfFormatError("the protection file's content key is not 64 lowercase hex digits")
    if not isinstance(regions, list) or not isinstance(files, list):
        raise FspfFormatError("the protection file's regions and files must be lists")
    try:
        built = ProtectionDocument.build(
            bytes.fromhex(key),
            [_region(index, entry) for index, entry in enumerate(regions)],
            [_file(index, entry) for index, entry in enumerate(files)],
        )
    except ValueError as exc:
        raise FspfFormatError(f"the protection file: {exc}") from None
    if built.to_json() != document:
        raise FspfFormatError("the protection file is not in its normal order")
    return built


def _region(index: int, entry: object) -> Region:
    if not isinstance(entry, dict) or member_mismatch(entry, _REGION_MEMBERS) is not None:
        raise FspfFormatError(f"the protection file's regions[{index}] is malformed")
    path, protection = entry["path"], entry["protection"]
    if not isinstance(path, str) or protection not in PROTECTIONS:
        raise FspfFormatError(f"the protection file's regions[{index}] is malformed")
    return Region(path, protection)


def _file(index: int, entry: object) -> ProtectedFile:
    if not isinstance(entry, dict) or member_mismatch(entry, _FILE_MEMBERS) is not None:
        raise FspfFormatError(f"the protection file's files[{index}] is malformed")
    path, size, mode, digest, object_id = (
        entry["path"],
        entry["size"],
        entry["mode"],
        entry["sha256"],
        entry["object"],
    )
    if not (
        isinstance(path, str)
        and type(size) is int
        and type(mode) is int
        and isinstance(digest, str)
        and (object_id is None or isinstance(object_id, str))
    ):
        raise FspfFormatError(f"the protection file's files[{index}] is malformed")
    return ProtectedFile(path, size, mode, digest, object_id)


def seal_document(document: ProtectionDocument) -> tuple[bytes, str, str]:
    """The sealed protection file, its key (64 hex) and its tag (32 hex), under a fresh key."""
    key = AESGCM.generate_key(bit_length=KEY_SIZE * 8)
    nonce = os.urandom(NONCE_SIZE)
    sealed = AESGCM(key).encrypt(nonce, document.to_bytes(), _AAD)
    data = SEALED_MAGIC + nonce + sealed
    if len(data) > MAX_PROTECTION_FILE_BYTES:
        raise ValueError(f"the sealed protection file exceeds {MAX_PROTECTION_FILE_BYTES} bytes")
    return data, key.hex(), sealed[-GCM_TAG_SIZE:].hex()


def open_sealed(data: bytes, key_hex: str, tag_hex: str) -> ProtectionDocument:
    """The document of a sealed protection file whose key and tag the session gives.

    :class:`FspfFormatError` when the file is not sealed, its tag is not ``tag_hex`` (another
    or an older protection file), it does not open under the key, or its document is malformed.
    Messages never quote the key.
    """
    if len(data) > MAX_PROTECTION_FILE_BYTES:
        raise FspfFormatError(f"the protection file exceeds {MAX_PROTECTION_FILE_BYTES} bytes")
    minimum = len(SEALED_MAGIC) + NONCE_SIZE + GCM_TAG_SIZE
    if not data.startswith(SEALED_MAGIC) or len(data) < minimum:
        raise FspfFormatError("the protection file is not sealed (run `casctl fspf encrypt`)")
    if not hmac.compare_digest(data[-GCM_TAG_SIZE:].hex(), tag_hex):
        raise FspfFormatError(
            "the protection file's tag is not the session's fspf_tag: it was changed or replaced"
        )
    nonce = data[len(SEALED_MAGIC) : len(SEALED_MAGIC) + NONCE_SIZE]
    try:
        plaintext = AESGCM(bytes.fromhex(key_hex)).decrypt(
            nonce, data[len(SEALED_MAGIC) + NONCE_SIZE :], _AAD
        )
    except (InvalidTag, ValueError):
        raise FspfFormatError(
            "the protection file does not open with the session's fspf_key"
        ) from None
    return _document_from_json(_strict(plaintext))


def _strict(plaintext: bytes) -> dict[str, object]:
    try:
        return strict_json_object(plaintext, "protection file")
    except ValueError as exc:
        raise FspfFormatError(str(exc)) from None
