"""Benchmark encrypted volumes: read and write throughput next to raw AES-256-GCM.

A volume of ``--mib`` MiB in ``--files`` files is written (:func:`seal_volume`: encrypt, write,
flush to disk, rename) and read back (:func:`open_volume`: check, decrypt, write the plaintext)
in a temporary directory, ``--rounds`` times each, and the best round counts. The bound is raw
AES-256-GCM in memory on chunks of the volume's chunk size, measured in the same run: the goal is
that a volume reads and writes at least half as fast. Beside it, the same run measures what the
file system alone takes to move the same bytes the way a volume does (write in chunks and
flush each file, for the write; read one file and write another, for the read): a volume
cannot be faster than its file system, so that second bound says how much the format and its
code cost beyond the disk. Everything runs in this process; no CAS is started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common import arguments, machine_line, main, met, number_option, rate, ratio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from opencas.crypto.volume_format import CHUNK_SIZE, new_volume_key
from opencas.runtime.volume_store import open_volume, seal_volume

#: A volume should read and write at least this share of raw AES-256-GCM's throughput.
VOLUME_RATIO_GOAL = 0.50
MIB = 1024 * 1024


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = arguments(
        "Benchmark encrypted volumes against raw AES-256-GCM on this machine.",
        seconds=1.0,
        micro_seconds=2.0,
        timeout=10.0,
    )
    number_option(parser, "--mib", int, 4096, 128, "MiB of plaintext in the volume")
    number_option(parser, "--files", int, 10_000, 16, "files the volume holds")
    number_option(parser, "--rounds", int, 20, 3, "rounds of each of write and read")
    return parser.parse_args(argv)


def raw_gcm(seconds: float, mib: int) -> tuple[float, float]:
    """Raw AES-256-GCM encryption and decryption in memory, in MiB/s: ``mib`` MiB (at most 256)
    in chunks of the volume's chunk size, each chunk a separate buffer as in a volume's files."""
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

    return rate(encrypt_all, seconds) * per_call, rate(decrypt_all, seconds) * per_call


def file_system_bounds(workdir: Path, args: argparse.Namespace) -> tuple[float, float]:
    """The file system's own throughput, in MiB/s, for the I/O a volume write and read do, best
    of ``args.rounds``: write ``args.files`` files in chunks and flush each (write); read each
    file and write its copy without flushing (read)."""
    size = args.mib * MIB // args.files
    content = os.urandom(size)
    source = workdir / "bound-source"
    source.mkdir()

    def write(round_number: int) -> None:
        target = workdir / f"bound-write-{round_number}"
        target.mkdir()
        for index in range(args.files):
            descriptor = os.open(target / f"file-{index}", os.O_WRONLY | os.O_CREAT, 0o600)
            for start in range(0, size, CHUNK_SIZE):
                os.write(descriptor, content[start : start + CHUNK_SIZE])
            os.fsync(descriptor)
            os.close(descriptor)
        shutil.rmtree(target)

    for index in range(args.files):
        (source / f"file-{index}").write_bytes(content)

    def read(round_number: int) -> None:
        target = workdir / f"bound-read-{round_number}"
        target.mkdir()
        for index in range(args.files):
            (target / f"file-{index}").write_bytes((source / f"file-{index}").read_bytes())
        shutil.rmtree(target)

    total = size * args.files / MIB
    return total / _best(args.rounds, write), total / _best(args.rounds, read)


def _best(rounds: int, operation: Callable[[int], None]) -> float:
    best = float("inf")
    for round_number in range(rounds):
        started = time.perf_counter()
        operation(round_number)
        best = min(best, time.perf_counter() - started)
    return best


def volume_throughput(workdir: Path, args: argparse.Namespace) -> tuple[float, float]:
    """Volume write and read throughput, in MiB/s, best of ``args.rounds`` rounds each."""
    key = new_volume_key()
    size = args.mib * MIB // args.files
    content = os.urandom(size)
    store = workdir / "store"
    tags: list[str] = []

    def write(round_number: int) -> None:
        opened = open_volume("bench", store, key, None, workdir / f"write-{round_number}")
        for index in range(args.files):
            (opened.plain / f"file-{index}").write_bytes(content)
        started = time.perf_counter()
        sealed = seal_volume(opened)
        writes.append(time.perf_counter() - started)
        if sealed is None:
            raise RuntimeError("the volume did not change")
        tags.append(sealed[1])
        shutil.rmtree(opened.plain)

    def read(round_number: int) -> None:
        opened = open_volume("bench", store, key, tags[-1], workdir / f"read-{round_number}")
        shutil.rmtree(opened.plain)

    writes: list[float] = []
    _best(args.rounds, write)
    read_seconds = _best(args.rounds, read)
    total = size * args.files / MIB
    return total / min(writes), total / read_seconds


def benchmark(args: argparse.Namespace, workdir: Path) -> None:
    """Measure and print the figures and verdicts."""
    print(machine_line(f"OpenCAS volume benchmark: {args.mib} MiB in {args.files} files"))
    encrypt, decrypt = raw_gcm(args.micro_seconds, args.mib)
    write, read = volume_throughput(workdir, args)
    disk_write, disk_read = file_system_bounds(workdir, args)
    print(f"\nIn {workdir} (the plaintext directory and the store on the same file system):")
    print(f"  {'raw AES-256-GCM encrypt':<34} {encrypt:>10,.0f} MiB/s")
    print(f"  {'raw AES-256-GCM decrypt':<34} {decrypt:>10,.0f} MiB/s")
    print(f"  {'file system: write, fsync':<34} {disk_write:>10,.0f} MiB/s")
    print(f"  {'file system: read, write a copy':<34} {disk_read:>10,.0f} MiB/s")
    for label, figure, bound, disk in (
        ("volume write (seal, fsync)", write, encrypt, disk_write),
        ("volume read (check, decrypt)", read, decrypt, disk_read),
    ):
        print(
            f"  {label:<34} {figure:>10,.0f} MiB/s  {ratio(figure, bound)} of raw, "
            f"{ratio(figure, disk)} of the file system"
        )
    print("\nVerdicts:")
    goal = f">= {VOLUME_RATIO_GOAL:.0%} of raw AES-256-GCM"
    print(f"  volume write {goal}: {met(write >= VOLUME_RATIO_GOAL * encrypt)}")
    print(f"  volume read {goal}: {met(read >= VOLUME_RATIO_GOAL * decrypt)}")
    bound = f">= {VOLUME_RATIO_GOAL:.0%} of min(raw AES-256-GCM, the file system)"
    print(f"  volume write {bound}: {met(write >= VOLUME_RATIO_GOAL * min(encrypt, disk_write))}")
    print(f"  volume read {bound}: {met(read >= VOLUME_RATIO_GOAL * min(decrypt, disk_read))}")


if __name__ == "__main__":
    arguments_given = parse_arguments(sys.argv[1:])
    sys.exit(main(lambda workdir: benchmark(arguments_given, workdir)))
