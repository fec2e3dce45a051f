"""The snapshot file format: what it names in clear, and that nothing in it can be changed,
reordered, cut or opened under another key."""

from __future__ import annotations

import pytest

from opencas.crypto import snapshot_format
from opencas.crypto.snapshot_format import (
    SnapshotFormatError,
    SnapshotHeader,
    decode_snapshot,
    encode_snapshot,
    read_header,
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
