"""Encrypted volumes in a directory: open one into plaintext, seal the plaintext back.

A volume's *store* is a directory with ``manifests/<tag>`` (sealed manifests, named by their
tag) and ``objects/<object id>`` (one file's chunks each); the bytes are those of
:mod:`opencas.crypto.volume_format`. A store may hold manifests other than the current one (a
write that was never reported, a writer that lost a race): only the tag the CAS holds counts, so
a store restored from an older copy has no manifest for the current tag, or objects that fail to
open, and is refused.

Nothing is ever overwritten: every write makes new objects and a new manifest, each written to a
temporary name, flushed to disk and renamed into place, then the directory flushed. A program
that dies mid-write leaves the volume at its last reported tag. Only after the CAS accepted the
new tag does :func:`discard_replaced` remove what the old manifest alone used.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

from opencas.crypto.volume_format import (
    CHUNK_SIZE,
    MAX_MANIFEST_BYTES,
    TAG_SIZE,
    Manifest,
    ManifestFile,
    ObjectCipher,
    VolumeFormatError,
    check_tag,
    chunk_count,
    new_object_id,
    object_size,
    open_manifest,
    seal_manifest,
    volume_id,
)
from opencas.durable_files import fsync_directory
from opencas.errors import ClientError

MANIFESTS = "manifests"
OBJECTS = "objects"
_TEMPORARY_PREFIX = ".tmp-"
#: Threads that seal and open chunks while the calling thread reads and writes files: AES-GCM
#: runs outside the GIL, so the cipher and the file I/O overlap.
CIPHER_THREADS = 2
#: Chunks in flight per file at most (each up to 256 KiB, in and out).
_IN_FLIGHT = 2 * CIPHER_THREADS + 2
_Chunk = TypeVar("_Chunk", bytes, memoryview)


class VolumeRefused(ClientError, code="volume-refused"):
    """A volume cannot be opened as the CAS describes it (rollback, damage) or sealed back."""


@dataclass(frozen=True)
class FileState:
    """What a file looked like after it was decrypted, to tell whether the program changed it."""

    inode: int
    size: int
    mtime_ns: int
    mode: int


@dataclass
class OpenedVolume:
    """A volume decrypted into ``plain``: the manifest it came from and each file's state."""

    name: str
    store: Path
    plain: Path
    key: bytes = field(repr=False)
    tag: str | None
    manifest: Manifest
    states: dict[str, FileState] = field(default_factory=dict)


@contextlib.contextmanager
def _atomic_file(target: Path) -> Iterator[int]:
    """A descriptor for ``target``'s new content; flushed and renamed into place on success."""
    temporary = target.with_name(f"{_TEMPORARY_PREFIX}{new_object_id()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        yield descriptor
        os.fsync(descriptor)
    except BaseException:
        os.close(descriptor)
        temporary.unlink(missing_ok=True)
        raise
    os.close(descriptor)
    os.rename(temporary, target)


def _write_all(descriptor: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]


def _in_order(
    pool: ThreadPoolExecutor,
    jobs: Iterator[Callable[[], _Chunk]],
    sink: Callable[[_Chunk], None],
) -> None:
    """Run ``jobs`` in ``pool``, a few at a time, and give their results to ``sink`` in order.

    The first job that raises stops the rest (those not started never run) and its error is
    raised here.
    """
    pending: deque[Future[_Chunk]] = deque()
    try:
        for job in jobs:
            pending.append(pool.submit(job))
            if len(pending) >= _IN_FLIGHT:
                sink(pending.popleft().result())
        while pending:
            sink(pending.popleft().result())
    finally:
        for future in pending:
            future.cancel()


def _read_exactly(source: io.RawIOBase, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``source``; the bytes read (fewer only at the end of the file)."""
    done = 0
    while done < len(buffer):
        count = source.readinto(buffer[done:])
        if not count:
            break
        done += count
    return done


def _buffers(size: int, count: int, extra: int) -> list[memoryview]:
    """The reused buffers of one file of ``size`` bytes in ``count`` chunks: one per chunk in
    flight, each of a chunk's size (the file's, when smaller) plus ``extra``. Sized to the file,
    since zeroing full-size buffers costs a small file more than its encryption."""
    length = min(CHUNK_SIZE, size) + extra
    return [memoryview(bytearray(length)) for _ in range(min(_IN_FLIGHT, count))]


def _prepare_store(store: Path) -> None:
    for part in (store, store / MANIFESTS, store / OBJECTS):
        part.mkdir(mode=0o700, exist_ok=True)


def open_volume(name: str, store: Path, key: bytes, tag: str | None, plain: Path) -> OpenedVolume:
    """Decrypt the volume ``name`` at ``tag`` from ``store`` into the new directory ``plain``.

    ``tag`` None is a volume nothing was written to yet: ``plain`` starts empty. Refuses with
    :class:`VolumeRefused` when the store holds no manifest for ``tag`` or a manifest or file
    that is not the one the tag names (naming the file), leaving nothing readable in ``plain``
    beyond what was checked.
    """
    try:
        _prepare_store(store)
        plain.mkdir(mode=0o700, parents=False)
        if tag is None:
            return OpenedVolume(name, store, plain, key, None, Manifest(volume_id(key)))
        manifest = _read_manifest(name, store, key, check_tag(tag))
        opened = OpenedVolume(name, store, plain, key, tag, manifest)
        for directory in manifest.directories:
            (plain / directory).mkdir(mode=0o700, parents=True, exist_ok=True)
        with ThreadPoolExecutor(CIPHER_THREADS, thread_name_prefix="volume") as pool:
            for item in manifest.files:
                opened.states[item.path] = _decrypt_file(store, key, item, plain, pool)
        return opened
    except VolumeFormatError as exc:
        raise VolumeRefused(f"volume {name}: {exc}") from None
    except OSError as exc:
        raise VolumeRefused(f"volume {name}: cannot open {store}: {exc.strerror}") from None


def _read_manifest(name: str, store: Path, key: bytes, tag: str) -> Manifest:
    path = store / MANIFESTS / tag
    try:
        with path.open("rb") as handle:
            sealed = handle.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise VolumeRefused(
            f"volume {name}: {store} holds no manifest for the CAS's current tag {tag}: the "
            "volume was restored from an older copy, or changed outside"
        ) from None
    return open_manifest(key, sealed, tag)


def _decrypt_file(
    store: Path, key: bytes, item: ManifestFile, plain: Path, pool: ThreadPoolExecutor
) -> FileState:
    cipher = ObjectCipher(key, item.path, item.object_id)
    source = store / OBJECTS / item.object_id
    try:
        handle = source.open("rb")
    except FileNotFoundError:
        raise VolumeFormatError(f"file {item.path!r} is missing from the store") from None
    with handle:
        if os.fstat(handle.fileno()).st_size != object_size(item.size):
            raise VolumeFormatError(f"file {item.path!r} is damaged or was swapped: wrong size")
        target = plain / item.path
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        descriptor = os.open(target, flags, 0o600)
        try:
            count = chunk_count(item.size)
            # One pair of buffers per chunk in flight, reused: no allocation per chunk.
            plain_buffers = _buffers(item.size, count, 0)
            sealed_buffers = _buffers(item.size, count, TAG_SIZE)

            def jobs() -> Iterator[Callable[[], memoryview]]:
                for index in range(count):
                    slot = index % _IN_FLIGHT
                    length = handle.readinto(sealed_buffers[slot])
                    yield partial(
                        cipher.open_chunk_into,
                        index,
                        index == count - 1,
                        sealed_buffers[slot][:length],
                        plain_buffers[slot],
                    )

            _in_order(pool, jobs(), lambda plaintext: _write_all(descriptor, plaintext))
            os.fchmod(descriptor, item.mode)
            status = os.fstat(descriptor)
        finally:
            os.close(descriptor)
    return FileState(status.st_ino, status.st_size, status.st_mtime_ns, item.mode)


def _walk(plain: Path) -> tuple[list[tuple[str, os.stat_result]], list[str]]:
    """The regular files and directories below ``plain``, as relative paths; refuses others."""
    files: list[tuple[str, os.stat_result]] = []
    directories: list[str] = []
    pending = [plain]
    while pending:
        current = pending.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                relative = os.path.relpath(entry.path, plain).replace(os.sep, "/")
                status = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(status.st_mode):
                    directories.append(relative)
                    pending.append(Path(entry.path))
                elif stat.S_ISREG(status.st_mode):
                    files.append((relative, status))
                else:
                    raise VolumeRefused(
                        f"{relative} is not a regular file or directory: a volume holds only those"
                    )
    return files, directories


def seal_volume(opened: OpenedVolume) -> tuple[Manifest, str] | None:
    """Encrypt what the program left in ``opened.plain`` back into the store.

    Unchanged files keep their objects; a new or changed file becomes a new object. Returns the
    new manifest and tag once both are durably in the store, or None when nothing changed. The
    new tag is not current until the CAS accepts it.
    """
    try:
        files, directories = _walk(opened.plain)
        old = {item.path: item for item in opened.manifest.files}
        entries = []
        with ThreadPoolExecutor(CIPHER_THREADS, thread_name_prefix="volume") as pool:
            for path, status in files:
                before, state = old.get(path), opened.states.get(path)
                mode = stat.S_IMODE(status.st_mode) & 0o777
                if before is not None and state == FileState(
                    status.st_ino, status.st_size, status.st_mtime_ns, mode
                ):
                    entries.append(before)
                else:
                    entries.append(_encrypt_file(opened, path, mode, pool))
        # One flush of the object directory for all new objects, before the manifest names them.
        fsync_directory(opened.store / OBJECTS)
        manifest = Manifest.build(opened.manifest.volume_id, entries, directories)
    except ValueError as exc:
        raise VolumeRefused(f"volume {opened.name}: cannot seal it: {exc}") from None
    except OSError as exc:
        raise VolumeRefused(f"volume {opened.name}: cannot seal it: {exc}") from None
    if manifest == opened.manifest:
        return None
    sealed, tag = seal_manifest(opened.key, manifest)
    with _atomic_file(opened.store / MANIFESTS / tag) as descriptor:
        _write_all(descriptor, sealed)
    fsync_directory(opened.store / MANIFESTS)
    return manifest, tag


def _encrypt_file(
    opened: OpenedVolume, path: str, mode: int, pool: ThreadPoolExecutor
) -> ManifestFile:
    object_id = new_object_id()
    cipher = ObjectCipher(opened.key, path, object_id)
    with (
        (opened.plain / path).open("rb", buffering=0) as source,
        _atomic_file(opened.store / OBJECTS / object_id) as descriptor,
    ):
        # The program has exited: the file's size is final, and a file that changes now is an
        # error rather than a torn object.
        size = os.fstat(source.fileno()).st_size
        count = chunk_count(size)
        plain_buffers = _buffers(size, count, 0)
        sealed_buffers = _buffers(size, count, TAG_SIZE)

        def jobs() -> Iterator[Callable[[], memoryview]]:
            for index in range(count):
                slot = index % _IN_FLIGHT
                expected = min(CHUNK_SIZE, size - index * CHUNK_SIZE)
                chunk = plain_buffers[slot][:expected]
                if _read_exactly(source, chunk) != expected:
                    raise VolumeRefused(f"file {path!r} changed while it was being sealed")
                yield partial(
                    cipher.seal_chunk_into, index, index == count - 1, chunk, sealed_buffers[slot]
                )
            if source.read(1):
                raise VolumeRefused(f"file {path!r} changed while it was being sealed")

        _in_order(pool, jobs(), lambda sealed: _write_all(descriptor, sealed))
    return ManifestFile(path, object_id, size, mode)


def discard_replaced(store: Path, old_tag: str | None, old: Manifest, new: Manifest) -> None:
    """Remove the old manifest and the objects only it used, once the new tag is current.

    Only objects of ``old`` that ``new`` does not use go: every later manifest descends from
    ``new`` or makes objects of its own, so nothing any writer may still need is removed.
    """
    kept = {item.object_id for item in new.files}
    for item in old.files:
        if item.object_id not in kept:
            (store / OBJECTS / item.object_id).unlink(missing_ok=True)
    if old_tag is not None:
        (store / MANIFESTS / old_tag).unlink(missing_ok=True)


# --- preparing a volume outside the CAS ---------------------------------------------------------


def seal_directory(store: Path, key: bytes, source: Path) -> tuple[Manifest, str]:
    """Encrypt every file below ``source`` into ``store`` as a volume's first content under
    ``key``; returns the manifest and its tag once both are durably in the store.

    The files are read where they are: no plaintext copy is made. ``source`` may hold only
    regular files and directories. Refuses (:class:`VolumeRefused`) a ``source`` with nothing in
    it: a volume given without a tag starts empty already.
    """
    _prepare_store(store)
    opened = OpenedVolume(str(source), store, source, key, None, Manifest(volume_id(key)))
    sealed = seal_volume(opened)
    if sealed is None:
        raise VolumeRefused(
            f"{source} holds nothing to encrypt: a volume given fspf_key without fspf_tag "
            "starts empty already"
        )
    return sealed


def add_directory(
    store: Path, key: bytes, tag: str, source: Path, inside: str, workdir: Path
) -> tuple[Manifest, str] | None:
    """Add the files below ``source`` at ``inside`` (a relative path, ``""`` for the top) to the
    volume at ``tag`` in ``store``: a new manifest and tag (None when nothing changed).

    The volume is first opened and checked, into a private directory made under ``workdir`` and
    removed afterwards; a file already at a path is replaced. The old manifest stays in the
    store, so the volume at ``tag`` still opens.
    """
    plain = workdir / "volume"
    opened = open_volume(str(store), store, key, tag, plain)
    try:
        target = plain / inside if inside else plain
        if target.resolve() != plain.resolve() and plain.resolve() not in target.resolve().parents:
            raise VolumeRefused(f"{inside!r} is not a path inside the volume")
        try:
            shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
        except (OSError, shutil.Error) as exc:
            raise VolumeRefused(f"cannot copy {source} into the volume: {exc}") from None
        return seal_volume(opened)
    finally:
        shutil.rmtree(plain, ignore_errors=True)


def check_volume(store: Path, key: bytes, tag: str, workdir: Path) -> Manifest:
    """Open the volume at ``tag`` from ``store`` as a workload would, checking every file, and
    remove the plaintext again: its manifest. Refuses as :func:`open_volume` does."""
    plain = workdir / "volume"
    try:
        return open_volume(str(store), store, key, tag, plain).manifest
    finally:
        shutil.rmtree(plain, ignore_errors=True)
