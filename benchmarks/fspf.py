"""Benchmark checking a protected tree before a program starts, next to raw SHA-256 and AES-GCM.

A tree of ``--files`` files of ``--kib`` KiB each is built in a temporary directory: one
authenticated region, and an encrypted region holding ``--encrypted-percent`` of the files,
recorded and sealed with ``casctl fspf``'s functions. Then :func:`open_protected_tree` (what
``casctl run`` does: open the sealed protection file, hash every authenticated file, walk the
regions for unlisted files, check and decrypt every encrypted file into a private directory)
runs ``--rounds`` times, and the best round counts. The bounds, measured in the same run, are
raw SHA-256 and raw AES-256-GCM decryption in memory over the same bytes in buffers of the
file size; the goal bounds what the check costs per file beyond hashing its bytes. Everything
runs in this process; no CAS is started.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

from common import arguments, machine_line, main, met, number_option, rate, ratio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from opencas.runtime.fspf import (
    add_region,
    create_protection_file,
    open_protected_tree,
    seal_protection_file,
)

#: Beyond hashing its bytes at raw SHA-256 speed, checking costs at most this per file (opening,
#: reading, walking, writing the plaintext), so 10 000 files add at most 2 s to a start.
PER_FILE_GOAL = 200e-6
KIB = 1024
MIB = 1024 * KIB


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = arguments(
        "Benchmark checking a protected tree against raw SHA-256 and AES-256-GCM.",
        seconds=1.0,
        micro_seconds=2.0,
        timeout=10.0,
    )
    number_option(parser, "--files", int, 100_000, 10_000, "files in the protected tree")
    number_option(parser, "--kib", int, 1024 * 1024, 8, "KiB per file")
    number_option(parser, "--encrypted-percent", int, 100, 10, "percent of the files encrypted")
    number_option(parser, "--rounds", int, 20, 3, "rounds of the check")
    return parser.parse_args(argv)


def raw_rates(seconds: float, size: int, count: int) -> tuple[float, float]:
    """Raw SHA-256 and AES-256-GCM decryption in memory, in MiB/s, over ``count`` buffers of
    ``size`` bytes (at most 64 MiB in all)."""
    count = max(1, min(count, 64 * MIB // max(size, 1)))
    buffers = [os.urandom(size) for _ in range(count)]
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    nonce, aad = os.urandom(12), b"a" * 64
    sealed = [aead.encrypt(nonce, item, aad) for item in buffers]
    per_call = count * size / MIB

    def hash_all() -> None:
        for item in buffers:
            hashlib.sha256(item).digest()

    def decrypt_all() -> None:
        for item in sealed:
            aead.decrypt(nonce, item, aad)

    return rate(hash_all, seconds) * per_call, rate(decrypt_all, seconds) * per_call


def build_tree(workdir: Path, args: argparse.Namespace) -> tuple[Path, str, str]:
    """The tree, its sealed protection file, and the file's key and tag."""
    size = args.kib * KIB
    encrypted = args.files * args.encrypted_percent // 100
    app, clear = workdir / "tree" / "app", workdir / "clear"
    for index in range(args.files):
        base = clear if index < encrypted else app
        # 100 files per directory, as a real tree spreads them.
        path = base / f"d{index // 100:04d}" / f"f{index:06d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    fspf = workdir / "fspf"
    create_protection_file(fspf)
    app.mkdir(parents=True, exist_ok=True)
    add_region(fspf, str(app), "authenticated", app)
    if encrypted:
        region = workdir / "tree" / "data"
        add_region(fspf, str(region), "encrypted", clear, region)
    key, tag = seal_protection_file(fspf)
    return fspf, key, tag


def check_seconds(workdir: Path, fspf: Path, key: str, tag: str, rounds: int) -> float:
    """The best time of ``rounds`` checks, each into a fresh private directory."""
    best = float("inf")
    for round_number in range(rounds):
        private = workdir / f"private-{round_number}"
        private.mkdir()
        started = time.perf_counter()
        open_protected_tree(str(fspf), key, tag, private)
        best = min(best, time.perf_counter() - started)
        shutil.rmtree(private)
    return best


def benchmark(args: argparse.Namespace, workdir: Path) -> None:
    """Measure and print the figures and verdicts."""
    size = args.kib * KIB
    total = args.files * size / MIB
    print(
        machine_line(
            f"OpenCAS fspf benchmark: {args.files} files of {args.kib} KiB ({total:,.0f} MiB), "
            f"{args.encrypted_percent}% encrypted"
        )
    )
    sha256, decrypt = raw_rates(args.micro_seconds, size, args.files)
    fspf, key, tag = build_tree(workdir, args)
    seconds = check_seconds(workdir, fspf, key, tag, args.rounds)
    checked = total / seconds
    print(f"\nIn {workdir} (the tree and the private directory on the same file system):")
    print(f"  {'raw SHA-256':<34} {sha256:>10,.0f} MiB/s")
    print(f"  {'raw AES-256-GCM decrypt':<34} {decrypt:>10,.0f} MiB/s")
    print(
        f"  {'check the tree (casctl run)':<34} {checked:>10,.0f} MiB/s  "
        f"{ratio(checked, sha256)} of raw SHA-256; {seconds:.2f} s, "
        f"{args.files / seconds:,.0f} files/s"
    )
    per_file = max(0.0, seconds - total / sha256) / args.files
    print(f"  {'cost per file beyond raw SHA-256':<34} {per_file * 1e6:>10,.0f} us")
    print("\nVerdicts:")
    goal = f"<= {PER_FILE_GOAL * 1e6:.0f} us per file beyond raw SHA-256"
    print(f"  check {goal}: {met(per_file <= PER_FILE_GOAL)}")


if __name__ == "__main__":
    arguments_given = parse_arguments(sys.argv[1:])
    sys.exit(main(lambda workdir: benchmark(arguments_given, workdir)))
