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
import os
import shutil
import stat
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar, cast

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
#: Threads that move a volume's chunks: each reads a chunk, seals or opens it and writes it at
#: its place, with the buffers it keeps; AES-GCM and the file system calls run outside the GIL,
#: so the threads share the cores, and the calling thread only hands out the work.
VOLUME_THREADS = max(2, min(4, os.cpu_count() or 1))
#: Chunks one part of a file moves at most: a large file is cut into parts, so that every thread
#: works on it.
_PART_CHUNKS = 32
#: Jobs handed out and not yet finished, at most.
_IN_FLIGHT = 2 * VOLUME_THREADS
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_Result = TypeVar("_Result")


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
    descriptor = os.open(temporary, _CREATE_FLAGS, 0o600)
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


def _pwrite_all(descriptor: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(descriptor, data, offset)
        data, offset = data[written:], offset + written


def _pread_exactly(descriptor: int, buffer: memoryview, offset: int) -> int:
    """Fill ``buffer`` from ``offset``; the bytes read (fewer only at the end of the file)."""
    done = 0
    while done < len(buffer):
        count = os.preadv(descriptor, [buffer[done:]], offset + done)
        if not count:
            break
        done += count
    return done


class _Buffers(threading.local):
    """One thread's two chunk buffers, plaintext and sealed, reused for every chunk it moves.
    They grow (doubling, up to a chunk) only when a file needs more, since zeroing full-size
    buffers costs a volume of small files more than its encryption."""

    def __init__(self) -> None:
        self.plain = memoryview(bytearray(0))
        self.sealed = memoryview(bytearray(TAG_SIZE))

    def ensure(self, length: int) -> None:
        if len(self.plain) < length:
            size = min(CHUNK_SIZE, max(length, 2 * len(self.plain)))
            self.plain = memoryview(bytearray(size))
            self.sealed = memoryview(bytearray(len(self.plain) + TAG_SIZE))


class _Stopped(Exception):
    """Another file failed first: this part was not run."""


class _FileTask(ABC, Generic[_Result]):
    """One file moved chunk by chunk, in parts that run in any thread and in any order: the
    first part to run opens it, the last to end finishes it (or aborts it after an error)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.count = chunk_count(size)
        self.parts = [
            range(first, min(first + _PART_CHUNKS, self.count))
            for first in range(0, self.count, _PART_CHUNKS)
        ]
        self.result: _Result | None = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._started = False
        self._parts_left = len(self.parts)

    @abstractmethod
    def open(self) -> None:
        """Open the file's descriptors (called once, before any chunk moves)."""

    @abstractmethod
    def move(self, index: int, buffers: _Buffers) -> None:
        """Read chunk ``index``, seal or open it, write it at its place."""

    @abstractmethod
    def finish(self) -> _Result:
        """Complete the file once every chunk moved; its :attr:`result`."""

    @abstractmethod
    def abort(self) -> None:
        """Close and remove what :meth:`open` made, after an error."""

    def run_part(self, chunks: range, stop: threading.Event, buffers: _Buffers) -> None:
        """Move ``chunks`` (in a worker thread); the last part to end finishes or aborts the
        file. Never raises: an error is kept in :attr:`error`."""
        try:
            with self._lock:
                if self.error is not None or stop.is_set():
                    raise _Stopped
                if not self._started:
                    self._started = True
                    self.open()
            buffers.ensure(min(CHUNK_SIZE, self.size))
            for index in chunks:
                self.move(index, buffers)
        except BaseException as exc:  # handed to the calling thread through ``error``
            with self._lock:
                if self.error is None:
                    self.error = exc
        with self._lock:
            self._parts_left -= 1
            if self._parts_left:
                return
        if self.error is None:
            try:
                self.result = self.finish()
                return
            except BaseException as exc:
                self.error = exc
        if self._started:
            with contextlib.suppress(OSError):
                self.abort()


#: What a file costs to move beside its bytes (opening, creating, flushing, renaming), in
#: bytes of chunk work, when many small files are handed to the threads together.
_FILE_WEIGHT = 64 * 1024
#: The work handed to a thread at once: parts of files weighing up to this many bytes.
_JOB_WEIGHT = _PART_CHUNKS * CHUNK_SIZE


def _run_job(
    job: list[tuple[_FileTask[_Result], range]], stop: threading.Event, buffers: _Buffers
) -> None:
    for task, chunks in job:
        task.run_part(chunks, stop, buffers)


def _move_files(tasks: Iterable[_FileTask[_Result]]) -> list[_Result]:
    """Run every part of ``tasks`` in :data:`VOLUME_THREADS` threads, a few jobs at a time
    (a job: one part of a large file, or many small files); the results in the order of
    ``tasks``.

    The first file in that order that fails stops the parts not yet started, and its error is
    raised here once every part that did start has ended.
    """
    stop = threading.Event()
    buffers = _Buffers()
    results: list[_Result] = []
    # Jobs handed out, oldest first, each with the tasks whose last part it holds.
    window: deque[tuple[Future[None], list[_FileTask[_Result]]]] = deque()
    job: list[tuple[_FileTask[_Result], range]] = []
    ending: list[_FileTask[_Result]] = []
    weight = 0

    def collect(limit: int) -> None:
        while len(window) > limit:
            future, ended = window.popleft()
            future.result()
            for task in ended:
                if task.error is not None:
                    raise task.error
                results.append(cast(_Result, task.result))

    with ThreadPoolExecutor(VOLUME_THREADS, thread_name_prefix="volume") as pool:
        try:
            for task in tasks:
                for number, chunks in enumerate(task.parts, 1):
                    job.append((task, chunks))
                    weight += min(len(chunks) * CHUNK_SIZE, task.size - chunks.start * CHUNK_SIZE)
                    if number == len(task.parts):
                        weight += _FILE_WEIGHT
                        ending.append(task)
                    if weight >= _JOB_WEIGHT:
                        window.append((pool.submit(_run_job, job, stop, buffers), ending))
                        job, ending, weight = [], [], 0
                        collect(_IN_FLIGHT)
            if job:
                window.append((pool.submit(_run_job, job, stop, buffers), ending))
            collect(0)
        except BaseException:
            stop.set()
            raise
    return results


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
        place = _Place(key, manifest.volume_id, str(store / OBJECTS), str(plain))
        place.directories.update(manifest.directories)
        states = _move_files(_DecryptTask(place, item) for item in manifest.files)
        opened.states.update(zip((item.path for item in manifest.files), states, strict=True))
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


@dataclass
class _Place:
    """Where the files of one open or seal go, as strings for the system calls of each file."""

    key: bytes = field(repr=False)
    volume: str
    objects: str
    plain: str
    #: Directories below ``plain`` known to exist.
    directories: set[str] = field(default_factory=set)


class _DecryptTask(_FileTask[FileState]):
    """One file of a volume checked and decrypted from its object into the plaintext tree."""

    def __init__(self, place: _Place, item: ManifestFile) -> None:
        super().__init__(item.size)
        self._place, self._item = place, item
        self._sealed_size = object_size(item.size)
        self._source = self._target = -1

    def open(self) -> None:
        place, item = self._place, self._item
        self._cipher = ObjectCipher(place.key, item.path, item.object_id, place.volume)
        try:
            self._source = os.open(f"{place.objects}/{item.object_id}", _OPEN_FLAGS)
        except FileNotFoundError:
            raise VolumeFormatError(f"file {item.path!r} is missing from the store") from None
        if os.fstat(self._source).st_size != self._sealed_size:
            raise VolumeFormatError(f"file {item.path!r} is damaged or was swapped: wrong size")
        parent, _, _ = item.path.rpartition("/")
        if parent and parent not in place.directories:
            Path(place.plain, parent).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._target = os.open(f"{place.plain}/{item.path}", _CREATE_FLAGS, 0o600)

    def move(self, index: int, buffers: _Buffers) -> None:
        start = index * (CHUNK_SIZE + TAG_SIZE)
        sealed = buffers.sealed[: min(CHUNK_SIZE + TAG_SIZE, self._sealed_size - start)]
        if _pread_exactly(self._source, sealed, start) != len(sealed):
            raise VolumeFormatError(f"file {self._item.path!r} is damaged: it was cut short")
        plaintext = self._cipher.open_chunk_into(
            index, index == self.count - 1, sealed, buffers.plain
        )
        _pwrite_all(self._target, plaintext, index * CHUNK_SIZE)

    def finish(self) -> FileState:
        try:
            os.fchmod(self._target, self._item.mode)
            status = os.fstat(self._target)
        finally:
            self._close()
        return FileState(status.st_ino, status.st_size, status.st_mtime_ns, self._item.mode)

    def abort(self) -> None:
        # What was written is plaintext of chunks that were checked; the caller removes it.
        self._close()

    def _close(self) -> None:
        for descriptor in (self._source, self._target):
            if descriptor >= 0:
                os.close(descriptor)
        self._source = self._target = -1


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
        place = _Place(
            opened.key, opened.manifest.volume_id, str(opened.store / OBJECTS), str(opened.plain)
        )
        kept: list[ManifestFile] = []
        changed: list[_EncryptTask] = []
        for path, status in files:
            before, state = old.get(path), opened.states.get(path)
            mode = stat.S_IMODE(status.st_mode) & 0o777
            if before is not None and state == FileState(
                status.st_ino, status.st_size, status.st_mtime_ns, mode
            ):
                kept.append(before)
            else:
                changed.append(_EncryptTask(place, path, mode, status.st_size))
        written = _move_files(changed)
        # One flush of the object directory for all new objects, before the manifest names them.
        fsync_directory(opened.store / OBJECTS)
        manifest = Manifest.build(opened.manifest.volume_id, kept + written, directories)
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


class _EncryptTask(_FileTask[ManifestFile]):
    """One new or changed file encrypted into a new object: written to a temporary name,
    flushed to disk and renamed into place."""

    def __init__(self, place: _Place, path: str, mode: int, size: int) -> None:
        super().__init__(size)
        self._place, self._path, self._mode = place, path, mode
        self._object_id = new_object_id()
        self._source = self._target = -1

    def open(self) -> None:
        place = self._place
        self._cipher = ObjectCipher(place.key, self._path, self._object_id, place.volume)
        self._source = os.open(f"{place.plain}/{self._path}", _OPEN_FLAGS)
        # The program has exited: the file's size is final, and a file that changes now is an
        # error rather than a torn object.
        if os.fstat(self._source).st_size != self.size:
            raise self._changed()
        self._target = os.open(self._temporary(), _CREATE_FLAGS, 0o600)

    def move(self, index: int, buffers: _Buffers) -> None:
        start = index * CHUNK_SIZE
        chunk = buffers.plain[: min(CHUNK_SIZE, self.size - start)]
        if _pread_exactly(self._source, chunk, start) != len(chunk):
            raise self._changed()
        sealed = self._cipher.seal_chunk_into(index, index == self.count - 1, chunk, buffers.sealed)
        _pwrite_all(self._target, sealed, index * (CHUNK_SIZE + TAG_SIZE))

    def finish(self) -> ManifestFile:
        if os.pread(self._source, 1, self.size):
            raise self._changed()
        os.fsync(self._target)
        self._close()
        os.rename(self._temporary(), f"{self._place.objects}/{self._object_id}")
        return ManifestFile(self._path, self._object_id, self.size, self._mode)

    def abort(self) -> None:
        self._close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temporary())

    def _temporary(self) -> str:
        return f"{self._place.objects}/{_TEMPORARY_PREFIX}{self._object_id}"

    def _changed(self) -> VolumeRefused:
        return VolumeRefused(f"file {self._path!r} changed while it was being sealed")

    def _close(self) -> None:
        for descriptor in (self._source, self._target):
            if descriptor >= 0:
                os.close(descriptor)
        self._source = self._target = -1


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
