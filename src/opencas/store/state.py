"""The authenticated commit state of a store: what every backend keeps beside its records.

Pure code over bytes, shared by every backend (SQLite now, PostgreSQL later):

- A record is stored under its *record id*, ``HMAC(id_key, [table, key])``, so no session or
  secret name is written in clear; the real key is kept in the record's *index entry*, sealed.
- The index entry of a record holds its key, version and the SHA-256 of its stored envelope.
- The *commit state* holds a commit counter, one more for every commit that changed a record, and
  a digest: the XOR of every record's *tag*, ``HMAC(tag_key, [table, key, version, sha256])``.
  A put or delete changes the digest by XOR-ing the old tag out and the new one in, so the cost
  of a commit does not grow with the store. Tags are never stored: the digest proves that the
  set of index entries is the committed one, and the index entries prove each record.
- The report carries the counter and a commitment to the digest, never the digest itself.

Every key is derived from the database master key (DMK), one per purpose.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import TypeGuard

from opencas.content_cache import ContentCache
from opencas.crypto.canonical import canonical_json, strict_json_object
from opencas.crypto.encoding import b64_decode, b64_encode
from opencas.crypto.envelope import derive_key, open_envelope, seal
from opencas.errors import RecordDamagedError

DIGEST_SIZE = 32
#: The XOR of no tags: the digest of an empty store.
EMPTY_DIGEST = bytes(DIGEST_SIZE)
#: Table name under which damage to the commit state itself is reported.
STATE_TABLE = "_state"
STATE_KEY = "commit"
# Versions stay within the integers that canonical JSON represents exactly.
MAX_VERSION = 2**53 - 1


@dataclass(frozen=True)
class IndexEntry:
    """What the store committed for one record: its real key, version and envelope hash."""

    key: str
    version: int
    sha256: bytes


@dataclass(frozen=True)
class CommitState:
    """The commit counter and the XOR of the tags of every record (kept secret)."""

    counter: int
    digest: bytes

    def advanced(self, delta: bytes) -> CommitState:
        """The state after one more commit whose changes XOR the digest by ``delta``."""
        return CommitState(self.counter + 1, xor(self.digest, delta))


INITIAL_STATE = CommitState(0, EMPTY_DIGEST)


def xor(left: bytes, right: bytes) -> bytes:
    """The byte-wise XOR of two digests."""
    return (int.from_bytes(left, "big") ^ int.from_bytes(right, "big")).to_bytes(DIGEST_SIZE, "big")


def envelope_sha256(envelope: bytes) -> bytes:
    """The hash by which an index entry names the stored envelope of its record."""
    return hashlib.sha256(envelope).digest()


class StateKeys:
    """The keys of record ids, index entries, tags and the commit state, from one DMK."""

    def __init__(self, dmk: bytes) -> None:
        self._id_key = derive_key(dmk, "store/record-id")
        self._index_key = derive_key(dmk, "store/record-index")
        self._tag_key = derive_key(dmk, "store/record-tag")
        self._state_key = derive_key(dmk, "store/commit-state")
        self._commitment_key = derive_key(dmk, "store/state-commitment")
        # Both are functions of their keys under these keys alone, and every read needs them
        # (an index entry's id is checked at every read): an attestation read two records.
        self._record_ids: ContentCache[tuple[str, str], bytes] = ContentCache()
        self._entries: ContentCache[tuple[str, bytes, bytes], IndexEntry] = ContentCache()

    def __repr__(self) -> str:
        return "<StateKeys>"

    def record_id(self, table: str, key: str) -> bytes:
        """The id under which ``table``/``key`` is stored.

        The store's own tables (``_``) keep their key in clear: their names are not secret, and
        the key-check record must be found before the key is known to be right.
        """
        if table.startswith("_"):
            return key.encode("utf-8")
        return self._record_ids.get_or_make(
            (table, key),
            lambda: hmac.digest(
                self._id_key, canonical_json(["opencas-record-id/v1", table, key]), "sha256"
            ),
        )

    def tag(self, table: str, entry: IndexEntry) -> bytes:
        """The secret tag of a record, XOR-ed into the commit digest."""
        message = canonical_json(
            ["opencas-record-tag/v1", table, entry.key, entry.version, entry.sha256.hex()]
        )
        return hmac.digest(self._tag_key, message, "sha256")

    def seal_entry(self, table: str, record_id: bytes, entry: IndexEntry) -> bytes:
        """The stored index entry of ``record_id``, bound to its table and id."""
        plaintext = canonical_json(
            {"key": entry.key, "version": entry.version, "sha256": entry.sha256.hex()}
        )
        return seal(self._index_key, plaintext, _entry_aad(table, record_id))

    def open_entry(self, table: str, record_id: bytes, sealed: object) -> IndexEntry:
        """The index entry stored for ``record_id``; :class:`RecordDamagedError` when it is not
        one this store sealed for that table and id, or names a key with another id."""
        if not isinstance(sealed, bytes):
            raise RecordDamagedError(table, record_id.hex(), "its index entry is not a blob")
        # The sealed bytes name what they open to; a failure is not cached.
        return self._entries.get_or_make(
            (table, record_id, sealed), lambda: self._open_entry(table, record_id, sealed)
        )

    def _open_entry(self, table: str, record_id: bytes, sealed: bytes) -> IndexEntry:
        shown = record_id.hex()
        try:
            document = strict_json_object(
                open_envelope(self._index_key, sealed, _entry_aad(table, record_id)), "index entry"
            )
            key, version, digest = document["key"], document["version"], document["sha256"]
            if not isinstance(key, str) or not isinstance(digest, str):
                raise ValueError("wrong member types")
            entry = IndexEntry(key, _valid_version(version), bytes.fromhex(digest))
        except (ValueError, KeyError):
            raise RecordDamagedError(table, shown, "its index entry does not open") from None
        if self.record_id(table, entry.key) != record_id:
            raise RecordDamagedError(table, entry.key, "its index entry was moved to another id")
        return entry

    def seal_state(self, state: CommitState) -> bytes:
        """The stored commit state."""
        plaintext = canonical_json({"counter": state.counter, "digest": b64_encode(state.digest)})
        return seal(self._state_key, plaintext, canonical_json(["opencas-commit-state/v1"]))

    def open_state(self, sealed: object) -> CommitState:
        """The stored commit state; :class:`RecordDamagedError` naming ``_state/commit``."""
        if not isinstance(sealed, bytes):
            raise RecordDamagedError(STATE_TABLE, STATE_KEY, "it is not a blob")
        try:
            document = strict_json_object(
                open_envelope(self._state_key, sealed, canonical_json(["opencas-commit-state/v1"])),
                "commit state",
            )
            counter, digest = document["counter"], document["digest"]
            if type(counter) is not int or counter < 0 or not isinstance(digest, str):
                raise ValueError("wrong member types")
            decoded = b64_decode(digest)
            if len(decoded) != DIGEST_SIZE:
                raise ValueError("wrong digest size")
        except (ValueError, KeyError):
            raise RecordDamagedError(STATE_TABLE, STATE_KEY, "it does not open") from None
        return CommitState(counter, decoded)

    def commitment(self, state: CommitState) -> str:
        """The digest as the attestation report shows it: a keyed hash of counter and digest,
        which tells nothing about the tags it was made of."""
        message = canonical_json(["opencas-state/v1", state.counter, state.digest.hex()])
        return hmac.digest(self._commitment_key, message, "sha256").hex()


def check_record(
    table: str, key: str, entry: IndexEntry | None, version: object, envelope: object
) -> IndexEntry:
    """``entry``, once the stored row (``version``, ``envelope``; ``None`` for both when there is
    no row) is shown to be exactly what it says was committed; else :class:`RecordDamagedError`."""
    if entry is None:
        raise RecordDamagedError(
            table, key, "it is not in the store's index (it was not committed)"
        )
    if envelope is None and version is None:
        raise RecordDamagedError(table, key, "the record was deleted behind the store's back")
    if not is_valid_version(version):
        raise RecordDamagedError(table, key, f"its version is not an integer in 1..{MAX_VERSION}")
    if not isinstance(envelope, bytes):
        raise RecordDamagedError(table, key, "its value is not a blob")
    if version != entry.version:
        older = " (an older copy)" if version < entry.version else ""
        raise RecordDamagedError(
            table,
            key,
            f"it is version {version}, not the version {entry.version} the store committed{older}",
        )
    if not hmac.compare_digest(envelope_sha256(envelope), entry.sha256):
        raise RecordDamagedError(table, key, "its value is not the one the store committed")
    return entry


def is_valid_version(version: object) -> TypeGuard[int]:
    """Whether ``version`` is a record version: an integer in 1..2^53-1."""
    return type(version) is int and 1 <= version <= MAX_VERSION


def _valid_version(version: object) -> int:
    if not is_valid_version(version):
        raise ValueError("not a version")
    return version


def _entry_aad(table: str, record_id: bytes) -> bytes:
    return canonical_json(["opencas-record-index/v1", table, record_id.hex()])
