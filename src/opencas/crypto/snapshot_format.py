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
A chunk is the canonical JSON list of ``[table, key, version, base64 value]`` records. Records
of the table :data:`AUDIT_LOG_TABLE` are not the store's: they are the lines of the writing
instance's audit log up to the audit head of the header (key: the line's number from 1, in
decimal; version 1; value: the line without its newline), so a CAS restored from the snapshot
continues that chain.

A snapshot of a CAS with registered backups names, in its header, the instance that wrote it
(``instance_id``) and carries for each backup the database key sealed to that backup's attested
key (``backups``: ``{name, key_hash, answer}``, ``answer`` a key handover answer); both members
are left out when there is nothing to say, so a snapshot without backups reads as before.

Pure: no I/O of its own (the caller writes the bytes, and gives the reading functions the bytes or
a binary stream it opened). :func:`read_header_from` and :func:`stream_records` read a snapshot
one frame at a time, so a reader holds one frame, never the whole file.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from opencas.crypto.canonical import canonical_json, strict_json_object
from opencas.crypto.encoding import b64_decode, b64_encode
from opencas.crypto.envelope import derive_key, open_envelope, seal

MAGIC = b"OPENCAS-SNAPSHOT/1\n"
SNAPSHOT_FORMAT = "opencas-snapshot/v1"
#: Records per frame: big enough that framing costs nothing, small enough to stream.
CHUNK_RECORDS = 512
#: A header holds up to :data:`MAX_BACKUPS` sealed keys, each with its evidence (an SGX quote
#: or a TDX/SNP report with certificates: a few KiB).
MAX_HEADER_BYTES = 1024 * 1024
MAX_BACKUPS = 16
#: The reserved table of the audit log's lines (a store's own tables start with ``_`` and are
#: never written to a snapshot, so it cannot clash with one).
AUDIT_LOG_TABLE = "_audit_log"
MAX_FRAME_BYTES = 256 * 1024 * 1024

Record = tuple[str, str, int, bytes]


class SnapshotFormatError(ValueError):
    """The bytes are not a snapshot this key opens (damaged, cut short, or another CAS's)."""


@dataclass(frozen=True)
class WrappedKey:
    """The database key sealed for one registered backup: its name, the key hash of its
    attested key, and the key handover answer (JSON) that carries the sealed key."""

    name: str
    key_hash: str
    answer: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The member of the header's ``backups``."""
        return {"name": self.name, "key_hash": self.key_hash, "answer": self.answer}


@dataclass(frozen=True)
class SnapshotHeader:
    """What a snapshot says of itself, in clear: the CAS, the commit and the audit head, the
    instance that wrote it, and the database key sealed for each registered backup."""

    snapshot_id: str
    cluster_id: str
    cas_key_hash: str
    key_id: str
    state_counter: int
    audit_seq: int
    audit_head: str
    taken_at: str
    instance_id: str | None = None
    backups: tuple[WrappedKey, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The header's JSON members."""
        document: dict[str, Any] = {
            "format": SNAPSHOT_FORMAT,
            "snapshot_id": self.snapshot_id,
            "cluster_id": self.cluster_id,
            "cas_key_hash": self.cas_key_hash,
            "key_id": self.key_id,
            "state": {"counter": self.state_counter},
            "audit": {"seq": self.audit_seq, "head": self.audit_head},
            "taken_at": self.taken_at,
        }
        if self.instance_id is not None:
            document["instance_id"] = self.instance_id
        if self.backups:
            document["backups"] = [wrapped.to_json() for wrapped in self.backups]
        return document

    def wrapped_for(self, key_hash: str) -> WrappedKey | None:
        """The database key sealed for the backup whose attested key has ``key_hash``."""
        return next((each for each in self.backups if each.key_hash == key_hash), None)


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
        raise SnapshotFormatError("its header line is missing or longer than 1 MiB")
    return _parse_header(data[len(MAGIC) : end]), end + 1


def read_header_from(stream: BinaryIO) -> tuple[SnapshotHeader, str]:
    """The header of the snapshot ``stream`` is at the start of, *not* authenticated (the
    frames authenticate it), and its SHA-256 that :func:`stream_records` needs; ``stream`` is
    left at the first frame. :class:`SnapshotFormatError` unless it reads."""
    if stream.read(len(MAGIC)) != MAGIC:
        raise SnapshotFormatError("it is not an OpenCAS snapshot (no OPENCAS-SNAPSHOT/1 line)")
    line = stream.readline(MAX_HEADER_BYTES + 1)
    if not line.endswith(b"\n"):
        raise SnapshotFormatError("its header line is missing or longer than 1 MiB")
    line = line[:-1]
    return _parse_header(line), hashlib.sha256(line).hexdigest()


def _parse_header(line: bytes) -> SnapshotHeader:
    try:
        document = strict_json_object(line, "snapshot header")
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
            instance_id=None if "instance_id" not in document else _text(document["instance_id"]),
            backups=_wrapped_keys(document.get("backups", [])),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotFormatError(f"its header is malformed: {exc}") from None
    if canonical_json(header.to_json()) != line:
        raise SnapshotFormatError("its header is not in its canonical form (it was edited)")
    return header


def decode_snapshot(data: bytes, dmk: bytes) -> tuple[SnapshotHeader, list[Record]]:
    """The header and every record of the snapshot ``data``, authenticated under ``dmk``;
    :class:`SnapshotFormatError` naming what is wrong otherwise."""
    stream = io.BytesIO(data)
    header, digest = read_header_from(stream)
    return header, list(stream_records(stream, digest, dmk))


def stream_records(stream: BinaryIO, header_sha256: str, dmk: bytes) -> Iterator[Record]:
    """The records of the frames ``stream`` holds from where it is (after its header, whose
    SHA-256 is ``header_sha256``), each frame authenticated under ``dmk`` before any of its
    records is yielded, read one frame at a time.

    Raises :class:`SnapshotFormatError` at the frame that is missing, cut short, too large,
    out of order or changed; since the last frame is known only at the end of the stream, a
    caller must not act on what it received until the iteration has finished without one.
    """
    key = _key(dmk)
    index = 0
    prefix = stream.read(4)
    while True:
        if len(prefix) < 4:
            raise SnapshotFormatError(f"it is cut short before frame {index}")
        size = int.from_bytes(prefix, "big")
        if size > MAX_FRAME_BYTES:
            raise SnapshotFormatError(f"frame {index} is cut short or too large")
        envelope = stream.read(size)
        if len(envelope) != size:
            raise SnapshotFormatError(f"frame {index} is cut short or too large")
        # The frame that ends the stream must say it is the last: read ahead to know.
        prefix = stream.read(4)
        last = prefix == b""
        try:
            plaintext = open_envelope(key, envelope, _aad(header_sha256, index, last))
        except ValueError:
            raise SnapshotFormatError(
                f"frame {index} does not open: the file was changed, cut short, or it is "
                "another database key's snapshot"
            ) from None
        del envelope
        yield from _records(plaintext)
        if last:
            return
        index += 1


def _records(plaintext: bytes) -> Iterator[Record]:
    for item in json.loads(plaintext):
        table, key, version, value = item
        yield str(table), str(key), int(version), b64_decode(value)


def _wrapped_keys(value: object) -> tuple[WrappedKey, ...]:
    if not isinstance(value, list) or len(value) > MAX_BACKUPS:
        raise ValueError(f"backups is not a list of at most {MAX_BACKUPS}")
    wrapped = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"name", "key_hash", "answer"}:
            raise ValueError("a backup is not {name, key_hash, answer}")
        if not isinstance(item["answer"], dict):
            raise ValueError("a backup's answer is not an object")
        wrapped.append(WrappedKey(_text(item["name"]), _text(item["key_hash"]), item["answer"]))
    return tuple(wrapped)


def split_audit_log(records: list[Record]) -> tuple[list[Record], list[bytes]]:
    """``records`` of a decoded snapshot split into the store's records and the audit log's
    lines, in order; :class:`SnapshotFormatError` when the lines are not numbered 1, 2, ...."""
    store: list[Record] = []
    lines: list[bytes] = []
    for record in records:
        if record[0] != AUDIT_LOG_TABLE:
            store.append(record)
            continue
        check_audit_line(record, len(lines))
        lines.append(record[3])
    return store, lines


def check_audit_line(record: Record, before: int) -> None:
    """:class:`SnapshotFormatError` unless ``record`` (of :data:`AUDIT_LOG_TABLE`) is the
    audit log's line that follows ``before`` lines: lines are numbered 1, 2, ... in order."""
    if record[1] != str(before + 1):
        raise SnapshotFormatError(
            f"its audit log line {record[1]!r} is out of order (expected {before + 1})"
        )


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("a member is not a string")
    return value


def _count(value: object) -> int:
    if type(value) is not int or value < 0:
        raise ValueError("a counter is not a whole number")
    return value
