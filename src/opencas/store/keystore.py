"""The sealed database-key store: ``<database>.key-store``.

It holds the database master key (DMK) and whether that key was injected by an operator. The
platform seals it (only this CAS on this platform can unseal it); this module only serialises,
writes atomically and validates. The plaintext is canonical JSON::

    {"db_key_injected": false, "dmk": "<base64>", "format": "opencas-key-store/v1"}

While a key rollover runs it also holds the key being replaced, in format v2 (which a CAS that
knows nothing of rollovers refuses to read, so it cannot write under the old key alone)::

    {"db_key_injected": false, "dmk": "<base64>", "format": "opencas-key-store/v2",
     "previous_dmk": "<base64>"}
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from opencas.crypto.canonical import canonical_json, strict_json_object
from opencas.crypto.encoding import b64_decode, b64_encode
from opencas.durable_files import fsync_directory
from opencas.errors import KeyStoreError

KEY_STORE_FORMAT = "opencas-key-store/v1"
ROLLOVER_KEY_STORE_FORMAT = "opencas-key-store/v2"
DMK_SIZE = 32


@dataclass(frozen=True)
class KeyStoreContents:
    """What the key store keeps: the DMK and whether an operator injected it (debug only)."""

    dmk: bytes = field(repr=False)
    db_key_injected: bool
    previous_dmk: bytes | None = field(default=None, repr=False)
    """The key a running rollover moves records away from; ``None`` when none runs."""


def key_store_path(database: Path) -> Path:
    """The key store that belongs to ``database``: ``<database>.key-store``."""
    return database.with_name(database.name + ".key-store")


def pending_key_store_path(database: Path) -> Path:
    """The key store a new build keeps beside the serving build's until it took the CAS over
    (an upgrade in place, where it cannot unseal the serving build's):
    ``<database>.key-store.next``."""
    return database.with_name(database.name + ".key-store.next")


def promote_key_store(pending: Path, path: Path) -> None:
    """Put the key store ``pending`` in place of ``path``, atomically and durably: after a
    crash ``path`` is the old key store or the new one. Raises :class:`KeyStoreError`."""
    try:
        os.replace(pending, path)
        fsync_directory(path.parent)
    except OSError as exc:
        raise KeyStoreError(
            f"cannot put the key store {pending} in place of {path}: {exc.strerror or exc}"
        ) from exc


def save_key_store(path: Path, contents: KeyStoreContents, seal: Callable[[bytes], bytes]) -> None:
    """Seal ``contents`` with ``seal`` and write them to ``path`` atomically, mode 0600.

    After a crash, ``path`` holds either its previous contents or the new ones, never a mix; once
    this returns, the new contents are durable. Raises ``ValueError`` unless the DMK is 32 bytes,
    :class:`KeyStoreError` when the file cannot be written; exceptions from ``seal`` propagate.
    """
    for key in (contents.dmk, contents.previous_dmk or bytes(DMK_SIZE)):
        if len(key) != DMK_SIZE:
            raise ValueError(f"database master key must be {DMK_SIZE} bytes, got {len(key)}")
    document: dict[str, object] = {
        "format": KEY_STORE_FORMAT,
        "dmk": b64_encode(contents.dmk),
        "db_key_injected": contents.db_key_injected,
    }
    if contents.previous_dmk is not None:
        document |= {
            "format": ROLLOVER_KEY_STORE_FORMAT,
            "previous_dmk": b64_encode(contents.previous_dmk),
        }
    plaintext = canonical_json(document)
    sealed = seal(plaintext)
    temporary = path.with_name(f"{path.name}.tmp-{secrets.token_hex(8)}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, sealed)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
        fsync_directory(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise KeyStoreError(
            f"cannot write the database key store {path}: {exc.strerror or exc}"
        ) from exc


def load_key_store(path: Path, unseal: Callable[[bytes], bytes]) -> KeyStoreContents:
    """Read ``path``, unseal it with ``unseal`` and return what it holds.

    Raises :class:`KeyStoreError`, with a message naming ``path``, when the file is missing or
    unreadable, when ``unseal`` raises (any exception), when the plaintext is not a key store of
    the known format, or when the DMK is not 32 bytes.
    """
    try:
        sealed = path.read_bytes()
    except FileNotFoundError:
        raise KeyStoreError(f"the database key store {path} does not exist") from None
    except OSError as exc:
        raise KeyStoreError(
            f"cannot read the database key store {path}: {exc.strerror or exc}"
        ) from exc
    try:
        plaintext = unseal(sealed)
    except Exception as exc:
        # Unsealing is platform code (TEE sealing, simulated sealing, ...): any failure there
        # means the same thing to the operator, so it is reported as one error.
        raise KeyStoreError(
            f"the database key store {path} cannot be unsealed on this platform: {exc}"
        ) from exc
    return _parse(path, plaintext)


def _parse(path: Path, plaintext: bytes) -> KeyStoreContents:
    try:
        document = strict_json_object(plaintext, "key store")
    except ValueError as exc:
        raise KeyStoreError(f"the database key store {path} is corrupt: {exc}") from None
    marker = document.get("format")
    expected = {"format", "dmk", "db_key_injected"}
    if marker == ROLLOVER_KEY_STORE_FORMAT:
        expected.add("previous_dmk")
    elif marker != KEY_STORE_FORMAT:
        raise KeyStoreError(
            f"the database key store {path} has format {marker!r}, expected {KEY_STORE_FORMAT!r}"
        )
    if set(document) != expected:
        raise KeyStoreError(
            f"the database key store {path} is corrupt: fields {sorted(document)}, "
            f"expected {sorted(expected)}"
        )
    injected = document["db_key_injected"]
    if not isinstance(injected, bool):
        raise KeyStoreError(
            f"the database key store {path} is corrupt: db_key_injected is not a boolean"
        )
    previous = document.get("previous_dmk")
    return KeyStoreContents(
        dmk=_key(path, "dmk", document["dmk"]),
        db_key_injected=injected,
        previous_dmk=None if previous is None else _key(path, "previous_dmk", previous),
    )


def _key(path: Path, name: str, encoded: object) -> bytes:
    if not isinstance(encoded, str):
        raise KeyStoreError(f"the database key store {path} is corrupt: {name} is not a string")
    try:
        dmk = b64_decode(encoded)
    except ValueError:
        raise KeyStoreError(
            f"the database key store {path} is corrupt: {name} is not base64"
        ) from None
    if len(dmk) != DMK_SIZE:
        raise KeyStoreError(
            f"the database key store {path} holds a {len(dmk)}-byte database key, "
            f"expected {DMK_SIZE}"
        )
    return dmk


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
