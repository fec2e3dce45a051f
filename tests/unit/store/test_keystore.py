"""The sealed database-key store: round trip, atomic 0600 writes, clear errors for every failure."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from opencas.crypto.encoding import b64_encode
from opencas.errors import KeyStoreError
from opencas.store import KeyStoreContents, key_store_path, load_key_store, save_key_store
from opencas.store.keystore import pending_key_store_path, promote_key_store

DMK = bytes(range(32))
_MASK = 0x5A


def xor_seal(data: bytes) -> bytes:
    """A stand-in for platform sealing: reversible and visibly not the plaintext."""
    return b"SEALED" + bytes(b ^ _MASK for b in data)


def xor_unseal(data: bytes) -> bytes:
    if not data.startswith(b"SEALED"):
        raise ValueError("not sealed by this platform")
    return bytes(b ^ _MASK for b in data[len(b"SEALED") :])


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return key_store_path(tmp_path / "cas.db")


def _write_plaintext(path: Path, plaintext: bytes) -> None:
    path.write_bytes(xor_seal(plaintext))


def _document(**changes: object) -> bytes:
    document: dict[str, object] = {
        "format": "opencas-key-store/v1",
        "dmk": b64_encode(DMK),
        "db_key_injected": False,
    }
    document.update(changes)
    return json.dumps({k: v for k, v in document.items() if v is not None}).encode()


def test_key_store_path(tmp_path: Path) -> None:
    assert key_store_path(tmp_path / "cas.db") == tmp_path / "cas.db.key-store"


def test_a_pending_key_store_takes_the_place_of_the_key_store(tmp_path: Path) -> None:
    database = tmp_path / "cas.db"
    pending = pending_key_store_path(database)
    assert pending == tmp_path / "cas.db.key-store.next"
    save_key_store(key_store_path(database), KeyStoreContents(bytes(32), False), xor_seal)
    save_key_store(pending, KeyStoreContents(DMK, False), xor_seal)
    promote_key_store(pending, key_store_path(database))
    assert load_key_store(key_store_path(database), xor_unseal).dmk == DMK
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cas.db.key-store"]
    with pytest.raises(KeyStoreError, match=r"cannot put the key store .*key-store.next in place"):
        promote_key_store(pending, key_store_path(database))


@pytest.mark.parametrize("injected", [False, True])
def test_round_trip(path: Path, injected: bool) -> None:
    contents = KeyStoreContents(dmk=DMK, db_key_injected=injected)
    save_key_store(path, contents, xor_seal)
    assert load_key_store(path, xor_unseal) == contents


def test_file_is_sealed_private_and_alone(path: Path) -> None:
    save_key_store(path, KeyStoreContents(dmk=DMK, db_key_injected=False), xor_seal)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert DMK not in path.read_bytes()
    assert b64_encode(DMK).encode() not in path.read_bytes()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_save_replaces_previous_contents(path: Path) -> None:
    save_key_store(path, KeyStoreContents(dmk=DMK, db_key_injected=False), xor_seal)
    other = KeyStoreContents(dmk=bytes(32), db_key_injected=True)
    save_key_store(path, other, xor_seal)
    assert load_key_store(path, xor_unseal) == other
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_repr_does_not_show_the_key() -> None:
    text = repr(KeyStoreContents(dmk=DMK, db_key_injected=False))
    assert DMK.hex() not in text
    assert repr(DMK) not in text
    assert "dmk" not in text


def test_save_refuses_a_short_key(path: Path) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        save_key_store(path, KeyStoreContents(dmk=b"short", db_key_injected=False), xor_seal)
    assert not path.exists()


def test_save_failure_is_a_key_store_error_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "cas.db.key-store"
    with pytest.raises(KeyStoreError, match="cannot write") as caught:
        save_key_store(path, KeyStoreContents(dmk=DMK, db_key_injected=False), xor_seal)
    assert str(path) in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_file(path: Path) -> None:
    with pytest.raises(KeyStoreError, match="does not exist") as caught:
        load_key_store(path, xor_unseal)
    assert str(path) in str(caught.value)


def test_unsealing_failure_is_wrapped(path: Path) -> None:
    path.write_bytes(b"sealed elsewhere")
    with pytest.raises(KeyStoreError, match="cannot be unsealed") as caught:
        load_key_store(path, xor_unseal)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value.__cause__, ValueError)


@pytest.mark.parametrize(
    ("plaintext", "why"),
    [
        (b"\xff\xfe not utf-8", "not valid UTF-8 JSON"),
        (b"{not json", "not valid UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (_document(format="something-else/v1"), "format"),
        (_document(format=None), "format"),
        (_document(extra="field"), "fields"),
        (_document(dmk=None), "fields"),
        (_document(db_key_injected="no"), "boolean"),
        (_document(db_key_injected=0), "boolean"),
        (_document(dmk=42), "not a string"),
        (_document(dmk="not base64!"), "not base64"),
        (_document(dmk=b64_encode(bytes(16))), "16-byte"),
        (_document(dmk=b64_encode(bytes(33))), "33-byte"),
        (
            b'{"format": "opencas-key-store/v1", "format": "opencas-key-store/v1", '
            b'"dmk": "", "db_key_injected": false}',
            "duplicate member",
        ),
    ],
)
def test_corrupt_contents(path: Path, plaintext: bytes, why: str) -> None:
    _write_plaintext(path, plaintext)
    with pytest.raises(KeyStoreError, match=why) as caught:
        load_key_store(path, xor_unseal)
    assert str(path) in str(caught.value)
    assert b64_encode(DMK) not in str(caught.value)


def test_unreadable_path_is_a_key_store_error(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError) as caught:
        load_key_store(tmp_path, xor_unseal)
    assert str(tmp_path) in str(caught.value)


def test_valid_document_loads(path: Path) -> None:
    _write_plaintext(path, _document(db_key_injected=True))
    loaded = load_key_store(path, xor_unseal)
    assert loaded.dmk == DMK
    assert loaded.db_key_injected is True
    assert os.access(path, os.R_OK)


def test_a_rollover_key_store_keeps_both_keys_and_says_format_v2(tmp_path: Path) -> None:
    path = tmp_path / "cas.db.key-store"
    contents = KeyStoreContents(bytes(range(32)), False, bytes(32))
    save_key_store(path, contents, lambda data: data)
    assert b'"format":"opencas-key-store/v2"' in path.read_bytes()
    assert load_key_store(path, lambda data: data) == contents
    save_key_store(path, KeyStoreContents(bytes(range(32)), False), lambda data: data)
    assert b'"format":"opencas-key-store/v1"' in path.read_bytes()
    assert load_key_store(path, lambda data: data).previous_dmk is None
