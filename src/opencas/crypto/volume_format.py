"""The encrypted volume format: keys, chunk framing, the manifest and the tag. Pure: no file I/O.

A volume is a set of files encrypted under one 32-byte volume key. Each file's content is one
*object*: its plaintext cut into chunks of :data:`CHUNK_SIZE` bytes, each sealed with
AES-256-GCM under a key of that object alone (HKDF of the volume key with the object id as salt),
the nonce being the chunk index. Each chunk's associated data binds the volume id, the file's
path, the chunk index and whether it is the last chunk, so a chunk moved to another place, file
or volume, a file cut short and a file swapped for another all fail to open. The *manifest*
lists every file (path, object id, size, mode) and directory; it is sealed under the manifest
key, and the SHA-256 of the sealed manifest is the volume's *tag*: whoever holds the tag knows
the exact content of the whole volume. ``docs/formats.md`` describes the bytes;
:mod:`opencas.runtime.volume_store` keeps volumes in a directory.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from opencas.crypto.canonical import canonical_json, member_mismatch, strict_json_object
from opencas.crypto.envelope import EnvelopeError, open_envelope, seal

FORMAT = "opencas-volume/v1"
KEY_SIZE = 32
#: Plaintext bytes per chunk (the last chunk of a file may be shorter, or empty for an empty file).
CHUNK_SIZE = 256 * 1024
TAG_SIZE = 16
OBJECT_ID_BYTES = 16
#: Limits of one volume (docs/formats.md): files, bytes of one path, bytes of one file, sealed
#: manifest bytes.
MAX_FILES = 100_000
MAX_PATH_BYTES = 4096
MAX_SEGMENT_BYTES = 255
MAX_FILE_SIZE = 1 << 40
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_OBJECT_ID = re.compile(r"[0-9a-f]{32}")
_TAG = re.compile(r"[0-9a-f]{64}")
_OBJECT_INFO = f"{FORMAT} object".encode()
_FILE_MEMBERS = frozenset({"path", "object", "size", "mode"})
_MANIFEST_MEMBERS = frozenset({"format", "volume_id", "chunk_size", "directories", "files"})


class VolumeFormatError(ValueError):
    """A volume's bytes are not what its key and tag promise; the message names the file."""


def _hkdf(key: bytes, salt: bytes | None, info: bytes) -> bytes:
    if len(key) != KEY_SIZE:
        raise ValueError(f"a volume key must be {KEY_SIZE} bytes, got {len(key)}")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=info).derive(key)


def new_volume_key() -> bytes:
    """A fresh random volume key."""
    return os.urandom(KEY_SIZE)


def volume_id(key: bytes) -> str:
    """The volume's id (32 hex), derived from its key: a volume is known by its key alone."""
    return _hkdf(key, None, f"{FORMAT} volume-id".encode())[:16].hex()


def new_object_id() -> str:
    """A fresh random object id (32 hex): every write of a file makes a new object."""
    return os.urandom(OBJECT_ID_BYTES).hex()


def check_tag(tag: str) -> str:
    """``tag`` if it is 64 lowercase hex digits; ``ValueError`` otherwise."""
    if not _TAG.fullmatch(tag):
        raise ValueError("a volume tag is 64 lowercase hex digits")
    return tag


def check_volume_path(path: str) -> str:
    """``path`` if it is a file path a volume may hold: relative, ``/``-separated, no empty,
    ``.`` or ``..`` segment, no NUL, UTF-8, at most 4096 bytes with segments of at most 255.
    ``ValueError`` otherwise."""
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"the path {path!r} is not UTF-8") from None
    segments = path.split("/")
    if (
        not path
        or "\0" in path
        or len(encoded) > MAX_PATH_BYTES
        or any(segment in {"", ".", ".."} for segment in segments)
        or any(len(segment.encode()) > MAX_SEGMENT_BYTES for segment in segments)
    ):
        raise ValueError(
            f"the path {path!r} must be relative, without empty, '.' or '..' segments or NUL, at "
            f"most {MAX_PATH_BYTES} bytes with segments of at most {MAX_SEGMENT_BYTES}"
        )
    return path


def chunk_count(size: int) -> int:
    """How many chunks a file of ``size`` bytes has (an empty file has one, empty)."""
    return max(1, -(-size // CHUNK_SIZE))


def object_size(size: int) -> int:
    """The size of the object that holds a file of ``size`` plaintext bytes."""
    return size + TAG_SIZE * chunk_count(size)


class ObjectCipher:
    """Seals and opens the chunks of one object: one file's content, at one path of one volume."""

    def __init__(self, key: bytes, path: str, object_id: str, volume: str | None = None) -> None:
        """``volume`` is :func:`volume_id` of ``key`` when the caller has it already (one
        derivation per volume instead of one per file)."""
        if not _OBJECT_ID.fullmatch(object_id):
            raise ValueError("an object id is 32 lowercase hex digits")
        self.path = check_volume_path(path)
        self._aead = AESGCM(_hkdf(key, bytes.fromhex(object_id), _OBJECT_INFO))
        self._aad_prefix = canonical_json(
            [FORMAT, "chunk", volume_id(key) if volume is None else volume, path]
        )

    def _aad(self, index: int, final: bool) -> bytes:
        return self._aad_prefix + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")

    def seal_chunk(self, index: int, final: bool, plaintext: bytes) -> bytes:
        """Chunk ``index`` (the last one when ``final``) sealed: ciphertext then 16-byte tag."""
        return self._aead.encrypt(index.to_bytes(12, "big"), plaintext, self._aad(index, final))

    def seal_chunk_into(
        self, index: int, final: bool, plaintext: memoryview, sealed: memoryview
    ) -> memoryview:
        """:meth:`seal_chunk` into the buffer ``sealed`` (at least ``len(plaintext) + 16``
        bytes); returns the part of it that holds the sealed chunk."""
        size = len(plaintext) + TAG_SIZE
        self._aead.encrypt_into(
            index.to_bytes(12, "big"), plaintext, self._aad(index, final), sealed[:size]
        )
        return sealed[:size]

    def open_chunk_into(
        self, index: int, final: bool, sealed: memoryview, plaintext: memoryview
    ) -> memoryview:
        """:meth:`open_chunk` into the buffer ``plaintext`` (at least ``len(sealed) - 16``
        bytes); returns the part of it that holds the chunk's plaintext."""
        if len(sealed) < TAG_SIZE:
            raise VolumeFormatError(f"file {self.path!r} is damaged: chunk {index} is cut short")
        size = len(sealed) - TAG_SIZE
        try:
            self._aead.decrypt_into(
                index.to_bytes(12, "big"), sealed, self._aad(index, final), plaintext[:size]
            )
        except InvalidTag:
            raise VolumeFormatError(
                f"file {self.path!r} is damaged or was swapped: chunk {index} fails authentication"
            ) from None
        return plaintext[:size]

    def open_chunk(self, index: int, final: bool, sealed: bytes) -> bytes:
        """The plaintext of chunk ``index``; :class:`VolumeFormatError` naming the file if the
        chunk is not the one sealed there (changed, moved, swapped, or the file was cut)."""
        try:
            return self._aead.decrypt(index.to_bytes(12, "big"), sealed, self._aad(index, final))
        except InvalidTag:
            raise VolumeFormatError(
                f"file {self.path!r} is damaged or was swapped: chunk {index} fails authentication"
            ) from None


@dataclass(frozen=True)
class ManifestFile:
    """One file of a volume: its ``path``, the object holding it, its ``size`` and ``mode``."""

    path: str
    object_id: str
    size: int
    mode: int

    def to_json(self) -> dict[str, object]:
        """The manifest entry."""
        return {"path": self.path, "object": self.object_id, "size": self.size, "mode": self.mode}


@dataclass(frozen=True)
class Manifest:
    """A volume's content: its files (sorted by path) and its directories (sorted)."""

    volume_id: str
    files: tuple[ManifestFile, ...] = ()
    directories: tuple[str, ...] = ()

    @classmethod
    def build(
        cls, volume: str, files: Iterable[ManifestFile], directories: Iterable[str]
    ) -> Manifest:
        """The manifest of these files and directories, checked and in its one order.

        ``ValueError`` for a bad path, a repeated path, a file below a file, or too many files.
        """
        ordered = tuple(sorted(files, key=lambda item: item.path))
        folders = tuple(sorted(set(directories)))
        if len(ordered) > MAX_FILES:
            raise ValueError(f"a volume holds at most {MAX_FILES} files, not {len(ordered)}")
        paths = {check_volume_path(item.path) for item in ordered}
        if len(paths) != len(ordered):
            raise ValueError("two files of the volume have the same path")
        for folder in folders:
            check_volume_path(folder)
            if folder in paths:
                raise ValueError(f"{folder!r} is both a file and a directory")
        for item in ordered:
            if not _OBJECT_ID.fullmatch(item.object_id):
                raise ValueError(f"file {item.path!r}: the object id is not 32 hex digits")
            if not 0 <= item.size <= MAX_FILE_SIZE:
                raise ValueError(f"file {item.path!r}: a file holds at most {MAX_FILE_SIZE} bytes")
            if not 0 <= item.mode <= 0o777:
                raise ValueError(f"file {item.path!r}: the mode must be within 0o777")
            parts = item.path.split("/")
            for depth in range(1, len(parts)):
                if "/".join(parts[:depth]) in paths:
                    raise ValueError(f"file {item.path!r} is below another file")
        return cls(volume, ordered, folders)

    def to_json(self) -> dict[str, object]:
        """The manifest document that is sealed."""
        return {
            "format": FORMAT,
            "volume_id": self.volume_id,
            "chunk_size": CHUNK_SIZE,
            "directories": list(self.directories),
            "files": [item.to_json() for item in self.files],
        }


def _manifest_key(key: bytes) -> bytes:
    return _hkdf(key, None, f"{FORMAT} manifest".encode())


def _manifest_aad(volume: str) -> bytes:
    return canonical_json([FORMAT, "manifest", volume])


def seal_manifest(key: bytes, manifest: Manifest) -> tuple[bytes, str]:
    """The sealed manifest and its tag (hex SHA-256 of the sealed bytes)."""
    if manifest.volume_id != volume_id(key):
        raise ValueError("the manifest belongs to another volume")
    sealed = seal(
        _manifest_key(key), canonical_json(manifest.to_json()), _manifest_aad(manifest.volume_id)
    )
    if len(sealed) > MAX_MANIFEST_BYTES:
        raise ValueError(f"the sealed manifest exceeds {MAX_MANIFEST_BYTES} bytes")
    return sealed, hashlib.sha256(sealed).hexdigest()


def manifest_tag(sealed: bytes) -> str:
    """The tag of a sealed manifest."""
    return hashlib.sha256(sealed).hexdigest()


def open_manifest(key: bytes, sealed: bytes, expected_tag: str) -> Manifest:
    """The manifest in ``sealed`` if its tag is ``expected_tag`` and it opens under ``key``.

    :class:`VolumeFormatError` when the tag differs (an older or changed manifest: the volume
    is not the one the tag names), when it does not open, or when its document is malformed.
    """
    if len(sealed) > MAX_MANIFEST_BYTES:
        raise VolumeFormatError(f"the manifest exceeds {MAX_MANIFEST_BYTES} bytes")
    if not hmac.compare_digest(manifest_tag(sealed), expected_tag):
        raise VolumeFormatError(
            "the manifest's tag is not the current one: the volume was restored from an older "
            "copy or changed outside"
        )
    volume = volume_id(key)
    try:
        document = strict_json_object(
            open_envelope(_manifest_key(key), sealed, _manifest_aad(volume)), "manifest"
        )
    except EnvelopeError as exc:
        raise VolumeFormatError(
            f"the manifest does not open with this volume's key: {exc}"
        ) from None
    except ValueError as exc:
        raise VolumeFormatError(str(exc)) from None
    return _manifest_from_json(document, volume)


def _manifest_from_json(document: dict[str, object], volume: str) -> Manifest:
    problem = member_mismatch(document, _MANIFEST_MEMBERS)
    if problem is not None:
        raise VolumeFormatError(f"the manifest: {problem}")
    if document["format"] != FORMAT or document["chunk_size"] != CHUNK_SIZE:
        raise VolumeFormatError(f"the manifest is not {FORMAT} with chunks of {CHUNK_SIZE} bytes")
    if document["volume_id"] != volume:
        raise VolumeFormatError("the manifest belongs to another volume")
    directories, files = document["directories"], document["files"]
    if not isinstance(directories, list) or not all(isinstance(d, str) for d in directories):
        raise VolumeFormatError("the manifest's directories must be a list of paths")
    if not isinstance(files, list):
        raise VolumeFormatError("the manifest's files must be a list")
    entries = []
    for index, entry in enumerate(files):
        if not isinstance(entry, dict) or member_mismatch(entry, _FILE_MEMBERS) is not None:
            raise VolumeFormatError(f"the manifest's files[{index}] is malformed")
        path, object_id, size, mode = entry["path"], entry["object"], entry["size"], entry["mode"]
        if not (
            isinstance(path, str)
            and isinstance(object_id, str)
            and type(size) is int
            and type(mode) is int
        ):
            raise VolumeFormatError(f"the manifest's files[{index}] is malformed")
        entries.append(ManifestFile(path, object_id, size, mode))
    try:
        manifest = Manifest.build(volume, entries, directories)
    except ValueError as exc:
        raise VolumeFormatError(f"the manifest: {exc}") from None
    if [item.path for item in manifest.files] != [item.path for item in entries] or list(
        manifest.directories
    ) != directories:
        raise VolumeFormatError("the manifest is not in its normal order")
    return manifest


#: What a tag report's proof covers first, so the proof means nothing else.
REPORT_CONTEXT = "opencas-volume-tag/v1"


def report_proof(secret: bytes, ticket: str, previous_tag: str | None, tag: str) -> str:
    """The proof of one tag report: hex HMAC-SHA256, under the report secret the CAS gave with
    the volume, of the canonical JSON ``[REPORT_CONTEXT, ticket, previous_tag, tag]``."""
    message = canonical_json([REPORT_CONTEXT, ticket, previous_tag, tag])
    return hmac.new(secret, message, hashlib.sha256).hexdigest()
