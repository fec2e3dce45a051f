"""The snapshot file format: what it names in clear, and that nothing in it can be changed,
reordered, cut or opened under another key."""

from __future__ import annotations

from dataclasses import replace

import pytest

from opencas.crypto import snapshot_format
from opencas.crypto.canonical import canonical_json
from opencas.crypto.snapshot_format import (
    SnapshotFormatError,
    SnapshotHeader,
    decode_snapshot,
    encode_snapshot,
    read_header,
    split_audit_log,
)

DMK = bytes(range(32))
HEADER = SnapshotHeader(
    snapshot_id="0123456789abcdef",
    cluster_id="c" * 32,
    cas_key_hash="a" * 64,
    key_id="k" * 32,
    state_counter=41,
    audit_seq=17,
    audit_head="b" * 64,
    taken_at="2026-12-01T19:00:00Z",
)


def _records(count: int) -> list[tuple[str, str, int, bytes]]:
    return [("sessions", f"s{n}", n + 1, f"value {n}".encode()) for n in range(count)]


def _file(count: int) -> bytes:
    return b"".join(encode_snapshot(HEADER, _records(count), DMK))


@pytest.mark.parametrize("count", [0, 1, snapshot_format.CHUNK_RECORDS, 1500])
def test_records_come_back_as_they_went_in(count: int) -> None:
    header, records = decode_snapshot(_file(count), DMK)
    assert header == HEADER
    assert records == _records(count)


def test_the_header_is_readable_without_the_key() -> None:
    header, _ = read_header(_file(3))
    assert header.cluster_id == "c" * 32
    assert header.state_counter == 41
    assert header.audit_head == "b" * 64


def test_another_key_opens_nothing() -> None:
    with pytest.raises(SnapshotFormatError, match="another database key"):
        decode_snapshot(_file(3), bytes(32))


def test_a_changed_byte_an_edited_header_or_a_cut_file_is_refused() -> None:
    data = _file(1500)
    changed = bytearray(data)
    changed[-20] ^= 1
    with pytest.raises(SnapshotFormatError, match="does not open"):
        decode_snapshot(bytes(changed), DMK)
    edited = data.replace(b'"counter":41', b'"counter":42', 1)
    with pytest.raises(SnapshotFormatError, match="does not open"):
        decode_snapshot(edited, DMK)
    _, start = read_header(data)
    first_frame = 4 + int.from_bytes(data[start : start + 4], "big")
    with pytest.raises(SnapshotFormatError):
        decode_snapshot(data[: start + first_frame], DMK)
    with pytest.raises(SnapshotFormatError, match="not an OpenCAS snapshot"):
        decode_snapshot(b"SQLite format 3\x00", DMK)


def test_a_header_names_its_writer_and_the_keys_sealed_for_backups() -> None:
    wrapped = snapshot_format.WrappedKey("standby", "e" * 64, {"format": "x", "sealed": "AAAA"})
    header = replace(HEADER, instance_id="i-1", backups=(wrapped,))
    data = b"".join(encode_snapshot(header, _records(3), DMK))
    read, records = decode_snapshot(data, DMK)
    assert read == header
    assert read.wrapped_for("e" * 64) == wrapped
    assert read.wrapped_for("f" * 64) is None
    assert records == _records(3)
    # A header without them reads as it was written before they existed.
    assert b"backups" not in _file(1).split(b"\n")[1]
    # Adding a key for another backup to the clear header breaks every frame's binding.
    forged = replace(header, backups=(wrapped, snapshot_format.WrappedKey("x", "f" * 64, {})))
    line = canonical_json(forged.to_json())
    start = len(snapshot_format.MAGIC)
    end = data.index(b"\n", start)
    with pytest.raises(SnapshotFormatError, match="frame 0 does not open"):
        decode_snapshot(data[:start] + line + data[end:], DMK)


def test_the_audit_log_lines_are_split_from_the_records_in_order() -> None:
    table = snapshot_format.AUDIT_LOG_TABLE
    records = [*_records(2), (table, "1", 1, b"first"), (table, "2", 1, b"second")]
    store, lines = split_audit_log(records)
    assert store == _records(2)
    assert lines == [b"first", b"second"]
    with pytest.raises(SnapshotFormatError, match="out of order"):
        split_audit_log([(table, "2", 1, b"second")])
