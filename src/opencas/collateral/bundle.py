"""The collateral bundle: a directory that holds collateral documents, one file each.

A bundle is what an air-gapped site carries in (``casctl collateral fetch`` writes one) and what
the on-disk cache keeps. Each :class:`~opencas.attestation.verifier.CollateralKey` has one path
in it (:func:`bundle_path`, layout in ``docs/formats.md``):

- ``dcap/{tee}/{fmspc}-{ca}.json`` — DCAP collateral JSON of one platform;
- ``amd/{product}/vcek/{chip_id}-{tcb}.der`` — one chip's VCEK at one reported TCB;
- ``amd/{product}/vlek/{tcb}.der`` — the cloud provider's VLEK of a product at one TCB;
- ``amd/{product}/{signer}-chain.pem`` — the AMD chain (ASK or ASVK, then ARK) of a product;
- ``simulated/collateral.json`` — the simulated collateral (development and tests).

Key parameters come from evidence that is not verified yet, so every one is checked against a
strict shape (:func:`check_key`) before it names a file or goes into a URL.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from datetime import datetime
from pathlib import Path, PurePosixPath

from opencas.attestation.verifier import CollateralKey
from opencas.errors import EvidenceError

MAX_DOCUMENT_BYTES = 1024 * 1024
"""The largest collateral document read from a bundle or accepted from a server."""

DCAP_TEES = ("sgx", "tdx")
DCAP_CAS = ("processor", "platform")
AMD_PRODUCTS = ("milan", "genoa", "turin")
AMD_SIGNERS = ("vcek", "vlek")

_HEX = re.compile(r"(?:[0-9a-f]{2})+")
# Each parameter is either one of a few words or lowercase hex of a length range (in digits).
_PARAM_SHAPES: dict[str, dict[str, tuple[str, ...] | range]] = {
    "dcap": {"tee": DCAP_TEES, "fmspc": range(12, 13), "ca": DCAP_CAS},
    "amd-vcek": {"product": AMD_PRODUCTS, "chip_id": range(16, 129), "tcb": range(16, 17)},
    "amd-vlek": {"product": AMD_PRODUCTS, "tcb": range(16, 17)},
    "amd-chain": {"product": AMD_PRODUCTS, "signer": AMD_SIGNERS},
    "simulated": {},
}
KINDS = tuple(_PARAM_SHAPES)


def check_key(key: CollateralKey) -> None:
    """Refuse a key whose kind is unknown or whose parameters are missing, extra or misshapen.

    Hex parameters must be lowercase hex of the documented length (in digits); the others one
    of their listed values. Raises :class:`EvidenceError` (``check="collateral"``) naming the
    parameter; the message never echoes more than a short prefix of a bad value.
    """
    shapes = _PARAM_SHAPES.get(key.kind)
    if shapes is None:
        raise EvidenceError(
            f"unknown collateral kind {key.kind[:32]!r} (known: {', '.join(KINDS)})",
            check="collateral",
        )
    names = sorted(name for name, _ in key.params)
    if names != sorted(shapes):
        raise EvidenceError(
            f"collateral key {key.kind} needs the parameters {', '.join(sorted(shapes))}, "
            f"not {', '.join(name[:32] for name in names) or 'none'}",
            check="collateral",
        )
    for name, value in key.params:
        problem = _shape_problem(value, shapes[name])
        if problem is not None:
            raise EvidenceError(
                f"collateral key {key.kind}: parameter {name} {value[:40]!r} is not {problem}",
                check="collateral",
            )


def _shape_problem(value: str, shape: tuple[str, ...] | range) -> str | None:
    if isinstance(shape, range):
        if len(value) in shape and _HEX.fullmatch(value):
            return None
        low, high = shape.start, shape.stop - 1
        digits = str(low) if low == high else f"{low} to {high}"
        return f"{digits} lowercase hex digits"
    return None if value in shape else "one of " + ", ".join(shape)


def bundle_path(key: CollateralKey) -> PurePosixPath:
    """The path of ``key``'s document inside a bundle (after :func:`check_key`)."""
    check_key(key)
    p = key.param
    if key.kind == "dcap":
        return PurePosixPath("dcap", p("tee"), f"{p('fmspc')}-{p('ca')}.json")
    if key.kind == "amd-vcek":
        return PurePosixPath("amd", p("product"), "vcek", f"{p('chip_id')}-{p('tcb')}.der")
    if key.kind == "amd-vlek":
        return PurePosixPath("amd", p("product"), "vlek", f"{p('tcb')}.der")
    if key.kind == "simulated":
        return PurePosixPath("simulated", "collateral.json")
    return PurePosixPath("amd", p("product"), f"{p('signer')}-chain.pem")


class BundleSource:
    """A :class:`~opencas.attestation.verifier.CollateralSource` that reads a bundle directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __str__(self) -> str:
        return f"the collateral bundle {self.root}"

    def collateral(self, key: CollateralKey, at: datetime) -> bytes:
        """The document of ``key`` from the bundle, whatever its validity at ``at``.

        Raises :class:`EvidenceError` (``check="collateral"``) naming the file when it is
        missing, unreadable or larger than :data:`MAX_DOCUMENT_BYTES`.
        """
        path = self.root / bundle_path(key)
        data = read_document(path)
        if data is None:
            raise EvidenceError(f"{key}: {path} does not exist", check="collateral")
        return data

    def write(self, key: CollateralKey, data: bytes) -> Path:
        """Store ``data`` as the document of ``key``, atomically; return its path."""
        path = self.root / bundle_path(key)
        write_document(path, data)
        return path


def read_document(path: Path) -> bytes | None:
    """The bytes of ``path``, or None when it does not exist.

    Raises :class:`EvidenceError` (``check="collateral"``) naming ``path`` when it cannot be
    read or is larger than :data:`MAX_DOCUMENT_BYTES`.
    """
    try:
        with path.open("rb") as file:
            data = file.read(MAX_DOCUMENT_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EvidenceError(
            f"{path}: cannot be read ({exc.strerror or exc})", check="collateral"
        ) from exc
    if len(data) > MAX_DOCUMENT_BYTES:
        raise EvidenceError(
            f"{path}: larger than the limit of {MAX_DOCUMENT_BYTES} bytes for a collateral "
            "document",
            check="collateral",
        )
    return data


def write_document(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a reader sees the old file or the new, whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # collateral is public; readable by whoever verifies
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
