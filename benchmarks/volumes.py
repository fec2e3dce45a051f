"""Benchmark encrypted volumes: read and write throughput next to raw AES-256-GCM, and the cost of
checking a volume of many small files.

For each directory given (by default ``/dev/shm``, a RAM-backed file system, and the system's
temporary directory, on the disk), in a temporary directory below it:

- **raw AES-256-GCM** in memory, one thread, on chunks of the volume's chunk size (the bound of
  the goal), measured again right before each directory's figures, since the machine's load
  moves;
- **the file system alone** moving the same bytes in the same files the way a volume does, in as
  many threads: write each file in chunks and fsync it (a write), read each file chunk by chunk
  and write a copy (a read);
- **the volume**: :func:`seal_volume` of ``--mib`` MiB in ``--files`` files (encrypt, write,
  fsync each object, rename) and :func:`open_volume` of it (check and decrypt every chunk, write
  the plaintext), best of ``--rounds``; with the CPU time the process used per MiB and what the
  volume costs beyond the file system's own time;
- **a tree of ``--tree-files`` files** of ``--tree-kib`` KiB (100 per directory) sealed as a
  volume and checked as ``casctl volume check`` and ``casctl run`` do (open every file, check
  and decrypt it into a private directory), against the file system copying the same files.

The goal (at least half of raw AES-256-GCM) is judged on the RAM-backed run, where the figures
are the volume's own cost; on the disk they are bound by the disk, and the run shows by how much.
Everything runs in this process; no CAS is started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from common import (
    BenchmarkError,
    arguments,
    machine_busy_seconds,
    machine_line,
    main,
    met,
    number_option,
    own_cpu_seconds,
    rate,
    ratio,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from opencas.crypto.volume_format import CHUNK_SIZE, Manifest, new_volume_key
from opencas.runtime.volume_store import (
    VOLUME_THREADS,
    check_volume,
    open_volume,
    seal_directory,
    seal_volume,
)

#: A volume should read and write at least this share of raw AES-256-GCM's throughput.
VOLUME_RATIO_GOAL = 0.50
#: Checking a volume of small files costs at most this per file beyond what the file system
#: takes to copy them, so 10 000 files add at most 2 s to a start.
PER_FILE_GOAL = 200e-6
MIB = 1024 * 1024
KIB = 1024
RAM_BACKED = Path("/dev/shm")


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = arguments(
        "Benchmark encrypted volumes against raw AES-256-GCM on this machine.",
        seconds=1.0,
        micro_seconds=1.0,
        timeout=10.0,
    )
    number_option(parser, "--mib", int, 4096, 128, "MiB of plaintext in the volume")
    number_option(parser, "--files", int, 10_000, 16, "files the volume holds")
    number_option(parser, "--rounds", int, 20, 3, "rounds of each of write and read")
    number_option(parser, "--tree-files", int, 100_000, 10_000, "files of the checked tree")
    number_option(parser, "--tree-kib", int, 1024, 8, "KiB per file of the checked tree")
    parser.add_argument(
        "--directory",
        action="append",
        type=Path,
        help=(
            "a directory to measure in (repeatable; default: /dev/shm, RAM-backed, and the "
            f"system's temporary directory, {tempfile.gettempdir()})"
        ),
    )
    return parser.parse_args(argv)


@dataclass
class Load:
    """What the rest of the machine did while a phase ran."""

    started: float
    busy: float | None
    own: float

    @classmethod
    def mark(cls) -> Load:
        """Start watching."""
        return cls(time.perf_counter(), machine_busy_seconds(), own_cpu_seconds())

    def others(self) -> str:
        """The CPU the other processes used since :meth:`mark`, in cores."""
        busy = machine_busy_seconds()
        if busy is None or self.busy is None:
            return "other processes' CPU unknown (no /proc/stat)"
        wall = time.perf_counter() - self.started
        other = max(0.0, (busy - self.busy) - (own_cpu_seconds() - self.own)) / wall
        return f"other processes used {other:.0%} of a core, load average {os.getloadavg()[0]:.2f}"


@dataclass
class Timed:
    """The best round of an operation: wall time and this process's CPU time, in seconds."""

    seconds: float
    cpu: float


def _best(rounds: int, operation: Callable[[int], Timed]) -> Timed:
    results = [operation(number) for number in range(rounds)]
    return Timed(min(item.seconds for item in results), min(item.cpu for item in results))


def _timed(operation: Callable[[], object]) -> Timed:
    cpu, started = time.process_time(), time.perf_counter()
    operation()
    return Timed(time.perf_counter() - started, time.process_time() - cpu)


def raw_gcm(seconds: float, mib: int) -> tuple[float, float, float]:
    """Raw AES-256-GCM encryption and decryption in memory, one thread, in MiB/s, and the CPU
    time of one encrypted MiB: ``mib`` MiB (at most 256) in chunks of the volume's chunk size,
    each chunk a separate buffer as in a volume's files."""
    aead = AESGCM(new_volume_key())
    nonce, aad = os.urandom(12), b"a" * 64
    count = max(1, min(mib, 256) * MIB // CHUNK_SIZE)
    chunks = [os.urandom(CHUNK_SIZE) for _ in range(count)]
    sealed = [aead.encrypt(nonce, chunk, aad) for chunk in chunks]
    per_call = count * CHUNK_SIZE / MIB

    def encrypt_all() -> None:
        for chunk in chunks:
            aead.encrypt(nonce, chunk, aad)

    def decrypt_all() -> None:
        for item in sealed:
            aead.decrypt(nonce, item, aad)

    cpu = _timed(encrypt_all).cpu / per_call
    return rate(encrypt_all, seconds) * per_call, rate(decrypt_all, seconds) * per_call, cpu


def _copy(source: Path, target: Path, buffer: memoryview) -> None:
    """Copy ``source`` to the new ``target`` chunk by chunk through ``buffer``, as a volume
    read moves a file."""
    with source.open("rb", buffering=0) as reader:
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            while count := reader.readinto(buffer):
                os.write(descriptor, buffer[:count])
        finally:
            os.close(descriptor)


def _copy_tree(source: Path, target: Path, paths: list[Path], size: int) -> Timed:
    """The time to copy the files ``paths`` (relative, of ``size`` bytes) from ``source`` into
    the new directory ``target`` in as many threads as a volume uses; ``target`` is removed
    afterwards."""

    def one(index: int) -> None:
        buffer = memoryview(bytearray(min(size, CHUNK_SIZE) or 1))
        _copy(source / paths[index], target / paths[index], buffer)

    def run() -> None:
        for directory in {target / path.parent for path in paths}:
            directory.mkdir(parents=True, exist_ok=True)
        _in_threads(one, len(paths))

    timed = _timed(run)
    shutil.rmtree(target)
    return timed


def _in_threads(work: Callable[[int], None], count: int) -> None:
    """``work(index)`` for every index below ``count``, in as many threads as a volume uses."""
    with ThreadPoolExecutor(VOLUME_THREADS) as pool:
        for _ in pool.map(work, range(count)):
            pass


def file_system_bounds(workdir: Path, files: int, size: int, rounds: int) -> tuple[Timed, Timed]:
    """The file system's own best times for the I/O of a volume write and read of ``files``
    files of ``size`` bytes, in as many threads as a volume uses: write each file in chunks and
    fsync it; read each chunk by chunk into a buffer and write a copy."""
    content = memoryview(os.urandom(size))
    source = workdir / "bound-source"
    source.mkdir()
    for index in range(files):
        (source / f"file-{index}").write_bytes(content)

    def write(round_number: int) -> Timed:
        target = workdir / f"bound-write-{round_number}"
        target.mkdir()

        def one(index: int) -> None:
            descriptor = os.open(target / f"file-{index}", os.O_WRONLY | os.O_CREAT, 0o600)
            for start in range(0, size, CHUNK_SIZE):
                os.write(descriptor, content[start : start + CHUNK_SIZE])
            os.fsync(descriptor)
            os.close(descriptor)

        timed = _timed(lambda: _in_threads(one, files))
        shutil.rmtree(target)
        return timed

    paths = [Path(f"file-{index}") for index in range(files)]

    def read(round_number: int) -> Timed:
        return _copy_tree(source, workdir / f"bound-read-{round_number}", paths, size)

    try:
        return _best(rounds, write), _best(rounds, read)
    finally:
        shutil.rmtree(source)


def volume_times(workdir: Path, files: int, size: int, rounds: int) -> tuple[Timed, Timed]:
    """Best volume write (seal) and read (open) times of ``files`` files of ``size`` bytes."""
    key = new_volume_key()
    content = os.urandom(size)
    store = workdir / "store"
    tags: list[str] = []

    def write(round_number: int) -> Timed:
        opened = open_volume("bench", store, key, None, workdir / f"write-{round_number}")
        for index in range(files):
            (opened.plain / f"file-{index}").write_bytes(content)
        sealed: list[tuple[Manifest, str] | None] = []
        timed = _timed(lambda: sealed.append(seal_volume(opened)))
        if sealed[0] is None:
            raise BenchmarkError("the volume did not change")
        tags.append(sealed[0][1])
        shutil.rmtree(opened.plain)
        return timed

    def read(round_number: int) -> Timed:
        plain = workdir / f"read-{round_number}"
        timed = _timed(lambda: open_volume("bench", store, key, tags[-1], plain))
        shutil.rmtree(plain)
        return timed

    written = _best(rounds, write)
    try:
        return written, _best(rounds, read)
    finally:
        shutil.rmtree(store)


def tree_times(workdir: Path, files: int, size: int, rounds: int) -> tuple[Timed, Timed]:
    """Best times to check a volume of ``files`` files of ``size`` bytes (100 per directory),
    and for the file system to copy the same files (read each, create and write its copy)."""
    source = workdir / "tree"
    for index in range(files):
        path = source / f"d{index // 100:04d}" / f"f{index:06d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    key, store = new_volume_key(), workdir / "tree-store"
    _, tag = seal_directory(store, key, source)

    def check(round_number: int) -> Timed:
        work = workdir / f"tree-check-{round_number}"
        work.mkdir()
        timed = _timed(lambda: check_volume(store, key, tag, work))
        shutil.rmtree(work)
        return timed

    paths = sorted(path.relative_to(source) for path in source.glob("*/*"))

    def copy(round_number: int) -> Timed:
        return _copy_tree(source, workdir / f"tree-copy-{round_number}", paths, size)

    try:
        return _best(rounds, check), _best(rounds, copy)
    finally:
        shutil.rmtree(source)
        shutil.rmtree(store)


@dataclass
class DirectoryFigures:
    """One directory's figures, in MiB/s and seconds."""

    directory: Path
    encrypt: float
    decrypt: float
    write: float
    read: float
    tree_per_file: float


def measure(directory: Path, args: argparse.Namespace) -> DirectoryFigures:
    """Measure and print the figures of one directory."""
    size = args.mib * MIB // args.files
    total = size * args.files / MIB
    with tempfile.TemporaryDirectory(prefix="opencas-bench-", dir=directory) as temporary:
        workdir = Path(temporary)
        load = Load.mark()
        encrypt, decrypt, raw_cpu = raw_gcm(args.micro_seconds, args.mib)
        disk_write, disk_read = file_system_bounds(workdir, args.files, size, args.rounds)
        write, read = volume_times(workdir, args.files, size, args.rounds)
        tree_size = args.tree_kib * KIB
        check, copy = tree_times(workdir, args.tree_files, tree_size, args.rounds)
        others = load.others()
    print(f"\nIn {workdir} ({others}):")
    print(f"  {'raw AES-256-GCM encrypt, 1 thread':<40} {encrypt:>8,.0f} MiB/s  ", end="")
    print(f"{raw_cpu / 1e-6:,.0f} us CPU per MiB")
    print(f"  {'raw AES-256-GCM decrypt, 1 thread':<40} {decrypt:>8,.0f} MiB/s")
    for label, timed in (
        ("file system: write, fsync", disk_write),
        ("file system: read, write a copy", disk_read),
    ):
        print(f"  {label:<40} {total / timed.seconds:>8,.0f} MiB/s  ", end="")
        print(f"{timed.cpu / total / 1e-6:,.0f} us CPU per MiB")
    rows = (
        ("volume write (seal, fsync)", write, disk_write, encrypt),
        ("volume read (check, decrypt)", read, disk_read, decrypt),
    )
    for label, timed, bound, raw in rows:
        figure = total / timed.seconds
        print(
            f"  {label:<40} {figure:>8,.0f} MiB/s  {timed.cpu / total / 1e-6:,.0f} us CPU per "
            f"MiB; {ratio(figure, raw)} of raw AES, {ratio(figure, total / bound.seconds)} of the "
            "file system"
        )
        beyond = timed.seconds - bound.seconds
        own = f"{total / beyond:,.0f} MiB/s" if beyond > 0 else "none measurable"
        print(
            f"    {'beyond the file system':<38} {beyond / total / 1e-6:>8,.0f} us per MiB: {own}"
        )
    per_file = max(0.0, check.seconds - copy.seconds) / args.tree_files
    print(
        f"  check a volume of {args.tree_files:,} files of {args.tree_kib} KiB: "
        f"{check.seconds:.2f} s ({args.tree_files / check.seconds:,.0f} files/s, "
        f"{check.cpu / args.tree_files / 1e-6:,.0f} us CPU per file); the file system copies "
        f"them in {copy.seconds:.2f} s; {per_file / 1e-6:,.0f} us per file beyond"
    )
    return DirectoryFigures(
        directory,
        encrypt,
        decrypt,
        total / write.seconds,
        total / read.seconds,
        per_file,
    )


def benchmark(args: argparse.Namespace) -> None:
    """Measure and print the figures and verdicts."""
    directories = args.directory or [
        *([RAM_BACKED] if RAM_BACKED.is_dir() else []),
        Path(tempfile.gettempdir()),
    ]
    size = args.mib * MIB // args.files
    print(
        machine_line(
            f"OpenCAS volume benchmark: {args.mib} MiB in {args.files} files of {size:,} bytes, "
            f"{VOLUME_THREADS} volume threads"
        )
    )
    figures = [measure(directory, args) for directory in directories]
    print("\nVerdicts:")
    goal = f">= {VOLUME_RATIO_GOAL:.0%} of raw AES-256-GCM"
    tree_goal = f"<= {PER_FILE_GOAL / 1e-6:.0f} us per file beyond the file system"
    for item in figures:
        where = "RAM-backed, the goal" if item.directory == RAM_BACKED else "bound by its disk"
        print(f"  in {item.directory} ({where}):")
        for label, figure, raw in (
            ("write", item.write, item.encrypt),
            ("read", item.read, item.decrypt),
        ):
            print(f"    volume {label} {goal}: {met(figure >= VOLUME_RATIO_GOAL * raw)}")
        print(f"    check {args.tree_files:,} files {tree_goal}: ", end="")
        print(met(item.tree_per_file <= PER_FILE_GOAL))


if __name__ == "__main__":
    arguments_given = parse_arguments(sys.argv[1:])
    # Each measured directory gets a temporary directory of its own.
    sys.exit(main(lambda _: benchmark(arguments_given)))
