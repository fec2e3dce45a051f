"""The snapshot file: every record of a CAS's store as of one commit, encrypted and
authenticated under a key derived from the database key.

Layout::

    OPENCAS-SNAPSHOT/1\\n
    <header: canonical JSON, one line>\\n
    frame*        a frame: 4-byte big-endian length, then an AES-256-GCM envelope

The header is plaintext, so an operator can tell which CAS, commit and audit head a file holds
without the key; it is authenticated all the same, since every frame's associated data carries
its SHA-256. Frame ``i`` is ``seal(derive_key(dmk, "snapshot/v1"), chunk, aad)`` with ``aad`` =
canonical JSON of ``["opencas-snapshot-chunk/v1", header sha256 hex, i, last]``, so frames cannot
be reordered, dropped or taken from another snapshot, and a file cut short lacks its last frame.
A chunk is the canonical JSON list of ``[table, key, version, base64 value]`` records.

Pure: no I/O (the caller writes and reads the bytes).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from opencas.crypto.canonical import canonical_json, strict_json_object
from opencas.crypto.encoding import b64_decode, b64_encode
from opencas.crypto.envelope import derive_key, open_envelope, seal

MAGIC = b"OPENCAS-SNAPSHOT/1\n"
SNAPSHOT_FORMAT = "opencas-snapshot/v1"
#: Records per frame: big enough that framing costs nothing, small enough to stream.
CHUNK_RECORDS = 512
MAX_HEADER_BYTES = 64 * 1024
MAX_FRAME_BYTES = 256 * 1024 * 1024

Record = tuple[str, str, int, bytes]


class SnapshotFormatError(ValueError):
    """The bytes are not a snapshot this key opens (damaged, cut short, or another CAS's)."""


@dataclass(frozen=True)
class SnapshotHeader:
    """What a snapshot says of itself, in clear: the CAS, the commit and the audit head."""

    snapshot_id: str
    cluster_id: str
    cas_key_hash: str
    key_id: str
    state_counter: int
    audit_seq: int
    audit_head: str
    taken_at: str

    def to_json(self) -> dict[str, Any]:
        """The header's JSON members."""
        return {
            "format": SNAPSHOT_FORMAT,
            "snapshot_id": self.snapshot_id,
            "cluster_id": self.cluster_id,
            "cas_key_hash": self.cas_key_hash,
            "key_id": self.key_id,
            "state": {"counter": self.state_counter},
            "audit": {"seq": self.audit_seq, "head": self.audit_head},
            "taken_at": self.taken_at,
        }


def _key(dmk: bytes) -> bytes:
    return derive_key(dmk, "snapshot/v1")


def _aad(header_sha256: str, index: int, last: bool) -> bytes:
    return canonical_json(["opencas-snapshot-chunk/v1", header_sha256, index, last])


def _chunks(records: Iterable[Record]) -> Iterator[list[list[object]]]:
    chunk: list[list[object]] = []
    for table, key, version, value in records:
        chunk.append([table, key, version, b64_encode(value)])
        if len(chunk) == CHUNK_RECORDS:
            yield chunk
            chunk = []
    yield chunk


def encode_snapshot(
    header: SnapshotHeader, records: Iterable[Record], dmk: bytes
) -> Iterator[bytes]:
    """The snapshot file's bytes, in pieces, as ``records`` are read (one frame ahead)."""
    line = canonical_json(header.to_json())
    digest = hashlib.sha256(line).hexdigest()
    yield MAGIC + line + b"\n"
    key = _key(dmk)
    pending: list[list[object]] | None = None
    index = 0
    for chunk in _chunks(records):
        if pending is not None:
            yield _frame(key, pending, digest, index, last=False)
            index += 1
        pending = chunk
    assert pending is not None
    yield _frame(key, pending, digest, index, last=True)


def _frame(key: bytes, chunk: list[list[object]], digest: str, index: int, *, last: bool) -> bytes:
    envelope = seal(key, canonical_json(chunk), _aad(digest, index, last))
    return len(envelope).to_bytes(4, "big") + envelope


def read_header(data: bytes) -> tuple[SnapshotHeader, int]:
    """The header of the snapshot ``data`` and where its frames start, *not* authenticated
    (:func:`decode_snapshot` authenticates it); :class:`SnapshotFormatError` unless it reads."""
    if not data.startswith(MAGIC):
        raise SnapshotFormatError("it is not an OpenCAS snapshot (no OPENCAS-SNAPSHOT/1 line)")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER_BYTES)
    if end < 0:
        raise SnapshotFormatError("its header line is missing or longer than 64 KiB")
    try:
        document = strict_json_object(data[len(MAGIC) : end], "snapshot header")
        if document.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"format {document.get('format')!r}, expected {SNAPSHOT_FORMAT!r}")
        state, audit = document["state"], document["audit"]
        header = SnapshotHeader(
            snapshot_id=_text(document["snapshot_id"]),
            cluster_id=_text(document["cluster_id"]),
            cas_key_hash=_text(document["cas_key_hash"]),
            key_id=_text(document["key_id"]),
            state_counter=_count(state["counter"]),
            audit_seq=_count(audit["seq"]),
            audit_head=_text(audit["head"]),
            taken_at=_text(document["taken_at"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotFormatError(f"its header is malformed: {exc}") from None
    if canonical_json(header.to_json()) != data[len(MAGIC) : end]:
        raise SnapshotFormatError("its header is not in its canonical form (it was edited)")
    return header, end + 1


def decode_snapshot(data: bytes, dmk: bytes) -> tuple[SnapshotHeader, list[Record]]:
    """The header and every record of the snapshot ``data``, authenticated under ``dmk``;
    :class:`SnapshotFormatError` naming what is wrong otherwise."""
    header, offset = read_header(data)
    digest = hashlib.sha256(data[len(MAGIC) : offset - 1]).hexdigest()
    key = _key(dmk)
    records: list[Record] = []
    index = 0
    while True:
        if offset + 4 > len(data):
            raise SnapshotFormatError(f"it is cut short before frame {index}")
        size = int.from_bytes(data[offset : offset + 4], "big")
        if size > MAX_FRAME_BYTES or offset + 4 + size > len(data):
            raise SnapshotFormatError(f"frame {index} is cut short or too large")
        envelope = data[offset + 4 : offset + 4 + size]
        offset += 4 + size
        last = offset == len(data)
        try:
            plaintext = open_envelope(key, envelope, _aad(digest, index, last))
        except ValueError:
            raise SnapshotFormatError(
                f"frame {index} does not open: the file was changed, cut short, or it is "
                "another database key's snapshot"
            ) from None
        records.extend(_records(plaintext))
        if last:
            return header, records
        index += 1


def _records(plaintext: bytes) -> Iterator[Record]:
    for item in json.loads(plaintext):
        table, key, version, value = item
        yield str(table), str(key), int(version), b64_decode(value)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("a member is not a string")
    return value


def _count(value: object) -> int:
    if type(value) is not int or value < 0:
        raise ValueError("a counter is not a whole number")
    return value
