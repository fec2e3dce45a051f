"""Volumes in a directory: rollback refused, damage named, writes atomic, old objects removed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from opencas.crypto.volume_format import CHUNK_SIZE, new_volume_key
from opencas.runtime import volume_store
from opencas.runtime.volume_store import (
    MANIFESTS,
    OBJECTS,
    OpenedVolume,
    VolumeRefused,
    add_directory,
    check_volume,
    discard_replaced,
    open_volume,
    seal_directory,
    seal_volume,
)

#: Long enough that random ciphertext does not contain it by chance (three bytes did, about
#: once in a hundred runs).
FIRST_TEXT = "first plaintext of small.txt"


def _open(store: Path, key: bytes, tag: str | None, tmp_path: Path, label: str) -> OpenedVolume:
    return open_volume("data", store, key, tag, tmp_path / f"plain-{label}")


def _first_write(tmp_path: Path) -> tuple[Path, bytes, str]:
    store, key = tmp_path / "store", new_volume_key()
    opened = _open(store, key, None, tmp_path, "0")
    (opened.plain / "dir").mkdir()
    (opened.plain / "dir" / "big.bin").write_bytes(os.urandom(2 * CHUNK_SIZE + 5))
    (opened.plain / "small.txt").write_text(FIRST_TEXT)
    (opened.plain / "empty").mkdir()
    (opened.plain / "zero").write_bytes(b"")
    sealed = seal_volume(opened)
    assert sealed is not None
    return store, key, sealed[1]


def test_a_volume_round_trips(tmp_path: Path) -> None:
    store, key, tag = _first_write(tmp_path)
    opened = _open(store, key, tag, tmp_path, "1")
    assert (opened.plain / "small.txt").read_text() == FIRST_TEXT
    assert len((opened.plain / "dir" / "big.bin").read_bytes()) == 2 * CHUNK_SIZE + 5
    assert (opened.plain / "empty").is_dir()
    assert (opened.plain / "zero").read_bytes() == b""
    assert opened.plain.stat().st_mode & 0o777 == 0o700
    assert seal_volume(opened) is None  # nothing changed, no new tag


def test_nothing_in_the_store_is_readable_without_the_key(tmp_path: Path) -> None:
    store, _, _ = _first_write(tmp_path)
    for path in store.rglob("*"):
        if path.is_file():
            assert FIRST_TEXT.encode() not in path.read_bytes()
            assert b"small.txt" not in path.read_bytes()


def test_a_volume_rolled_back_to_an_older_copy_is_refused(tmp_path: Path) -> None:
    store, key, tag = _first_write(tmp_path)
    shutil.copytree(store, tmp_path / "copy")
    opened = _open(store, key, tag, tmp_path, "1")
    (opened.plain / "small.txt").write_text("two")
    manifest, new_tag = seal_volume(opened) or pytest.fail("changed")
    discard_replaced(store, tag, opened.manifest, manifest)
    shutil.rmtree(store)
    shutil.copytree(tmp_path / "copy", store)
    with pytest.raises(VolumeRefused, match="older copy"):
        _open(store, key, new_tag, tmp_path, "2")


def test_a_damaged_file_is_named(tmp_path: Path) -> None:
    store, key, tag = _first_write(tmp_path)
    opened = _open(store, key, tag, tmp_path, "1")
    target = next(item for item in opened.manifest.files if item.path == "dir/big.bin")
    path = store / OBJECTS / target.object_id
    data = bytearray(path.read_bytes())
    data[CHUNK_SIZE + 100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(VolumeRefused, match=r"'dir/big.bin' is damaged or was swapped: chunk 1"):
        _open(store, key, tag, tmp_path, "2")


def test_a_swapped_file_is_named(tmp_path: Path) -> None:
    store, key, tag = _first_write(tmp_path)
    opened = _open(store, key, tag, tmp_path, "1")
    by_path = {item.path: item.object_id for item in opened.manifest.files}
    shutil.copy(store / OBJECTS / by_path["small.txt"], store / OBJECTS / by_path["zero"])
    with pytest.raises(VolumeRefused, match="'zero' is damaged or was swapped"):
        _open(store, key, tag, tmp_path, "2")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    store, key, tag = _first_write(tmp_path)
    opened = _open(store, key, tag, tmp_path, "1")
    by_path = {item.path: item.object_id for item in opened.manifest.files}
    (store / OBJECTS / by_path["small.txt"]).unlink()
    with pytest.raises(VolumeRefused, match=r"'small\.txt' is missing"):
        _open(store, key, tag, tmp_path, "2")


def test_an_unreported_write_leaves_the_current_tag_intact(tmp_path: Path) -> None:
    store, key, tag = _first_write(tmp_path)
    opened = _open(store, key, tag, tmp_path, "1")
    (opened.plain / "small.txt").write_text("never reported")
    assert seal_volume(opened) is not None
    again = _open(store, key, tag, tmp_path, "2")
    assert (again.plain / "small.txt").read_text() == FIRST_TEXT


def test_replaced_objects_are_removed_and_shared_ones_kept(tmp_path: Path) -> None:
    store, key, tag = _first_write(tmp_path)
    opened = _open(store, key, tag, tmp_path, "1")
    (opened.plain / "small.txt").write_text("two")
    (opened.plain / "zero").unlink()
    manifest, new_tag = seal_volume(opened) or pytest.fail("changed")
    discard_replaced(store, tag, opened.manifest, manifest)
    assert sorted(os.listdir(store / MANIFESTS)) == [new_tag]
    assert sorted(os.listdir(store / OBJECTS)) == sorted(item.object_id for item in manifest.files)
    reopened = _open(store, key, new_tag, tmp_path, "2")
    assert (reopened.plain / "small.txt").read_text() == "two"
    assert not (reopened.plain / "zero").exists()
    assert (reopened.plain / "dir" / "big.bin").stat().st_size == 2 * CHUNK_SIZE + 5


def test_a_symlink_cannot_be_sealed(tmp_path: Path) -> None:
    store, key = tmp_path / "store", new_volume_key()
    opened = _open(store, key, None, tmp_path, "0")
    (opened.plain / "link").symlink_to("/etc/passwd")
    with pytest.raises(VolumeRefused, match="link is not a regular file"):
        seal_volume(opened)


def test_the_wrong_key_is_refused(tmp_path: Path) -> None:
    store, _, tag = _first_write(tmp_path)
    with pytest.raises(VolumeRefused, match="does not open"):
        _open(store, new_volume_key(), tag, tmp_path, "1")


# --- preparing a volume outside the CAS ---------------------------------------------------------


def test_seal_directory_encrypts_in_place_and_opens_as_a_written_volume(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    content = os.urandom(CHUNK_SIZE + 7)
    (source / "sub" / "data.bin").write_bytes(content)
    (source / "note.txt").write_text("hello")
    store, key = tmp_path / "store", new_volume_key()

    manifest, tag = seal_directory(store, key, source)

    assert sorted(item.path for item in manifest.files) == ["note.txt", "sub/data.bin"]
    # The source is left as it was, and the volume opens at the tag with its content.
    assert (source / "note.txt").read_text() == "hello"
    opened = _open(store, key, tag, tmp_path, "check")
    assert (opened.plain / "sub" / "data.bin").read_bytes() == content
    work = tmp_path / "work"
    work.mkdir()
    assert check_volume(store, key, tag, work).files == manifest.files
    assert not (work / "volume").exists()


def test_seal_directory_refuses_an_empty_directory_and_links(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    with pytest.raises(VolumeRefused, match="holds nothing to encrypt"):
        seal_directory(tmp_path / "store", new_volume_key(), source)
    (source / "link").symlink_to("/etc/passwd")
    with pytest.raises(VolumeRefused, match="not a regular file or directory"):
        seal_directory(tmp_path / "store2", new_volume_key(), source)


def test_add_directory_adds_at_a_path_and_keeps_the_old_manifest(tmp_path: Path) -> None:
    store, key, tag = _first_write(tmp_path)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "small.txt").write_text("replaced")
    (extra / "new.txt").write_text("new")
    work = tmp_path / "work"
    work.mkdir()

    added = add_directory(store, key, tag, extra, "", work)

    assert added is not None
    opened = _open(store, key, added[1], tmp_path, "added")
    assert (opened.plain / "small.txt").read_text() == "replaced"
    assert (opened.plain / "new.txt").read_text() == "new"
    assert (opened.plain / "dir" / "big.bin").stat().st_size == 2 * CHUNK_SIZE + 5
    assert check_volume(store, key, tag, work).files != added[0].files  # the old tag opens
    with pytest.raises(VolumeRefused, match="not a path inside the volume"):
        add_directory(store, key, tag, extra, "../outside", work)
    assert not (tmp_path / "outside").exists()


# --- files moved in parts, by several threads ---------------------------------------------------


def test_a_file_cut_into_parts_round_trips_and_a_damaged_part_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Parts of two chunks: a file of five chunks and a bit is moved in three parts, by any thread.
    monkeypatch.setattr(volume_store, "_PART_CHUNKS", 2)
    content = os.urandom(5 * CHUNK_SIZE + 3)
    store, key = tmp_path / "store", new_volume_key()
    opened = _open(store, key, None, tmp_path, "0")
    (opened.plain / "big.bin").write_bytes(content)
    (opened.plain / "small.txt").write_text(FIRST_TEXT)
    _, tag = seal_volume(opened) or pytest.fail("changed")

    again = _open(store, key, tag, tmp_path, "1")
    assert (again.plain / "big.bin").read_bytes() == content
    assert (again.plain / "small.txt").read_text() == FIRST_TEXT

    big = next(item for item in again.manifest.files if item.path == "big.bin")
    path = store / OBJECTS / big.object_id
    data = bytearray(path.read_bytes())
    data[4 * (CHUNK_SIZE + 16) + 7] ^= 1  # chunk 4, in the third part
    path.write_bytes(bytes(data))
    with pytest.raises(VolumeRefused, match=r"'big.bin' is damaged or was swapped: chunk 4 "):
        _open(store, key, tag, tmp_path, "2")


def test_many_small_files_round_trip_and_the_first_damaged_one_is_named(tmp_path: Path) -> None:
    # More files than one job holds, so that several jobs run at once in the threads.
    store, key = tmp_path / "store", new_volume_key()
    opened = _open(store, key, None, tmp_path, "0")
    contents = {f"d{index % 7}/f{index:04d}": os.urandom(index * 37) for index in range(400)}
    for path, content in contents.items():
        (opened.plain / path).parent.mkdir(exist_ok=True)
        (opened.plain / path).write_bytes(content)
    manifest, tag = seal_volume(opened) or pytest.fail("changed")
    assert not [name for name in os.listdir(store / OBJECTS) if name.startswith(".tmp-")]

    again = _open(store, key, tag, tmp_path, "1")
    for path, content in contents.items():
        assert (again.plain / path).read_bytes() == content
    assert seal_volume(again) is None  # every file's state was recorded

    # Two damaged files: the error names the one the manifest lists first.
    by_path = {item.path: item.object_id for item in manifest.files}
    for path in ("d6/f0391", "d1/f0001"):
        (store / OBJECTS / by_path[path]).write_bytes(os.urandom(len(contents[path]) + 16))
    with pytest.raises(VolumeRefused, match=r"'d1/f0001' is damaged or was swapped"):
        _open(store, key, tag, tmp_path, "2")


def test_a_file_that_changes_while_sealed_is_refused_and_leaves_no_temporary_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, key, tag = _first_write(tmp_path)
    opened = _open(store, key, tag, tmp_path, "1")
    (opened.plain / "small.txt").write_text("changed by the program")
    (opened.plain / "new.bin").write_bytes(os.urandom(3 * CHUNK_SIZE))
    open_file = volume_store._EncryptTask.open

    def open_then_grow(task: volume_store._EncryptTask) -> None:
        open_file(task)  # the temporary object exists now
        if task.size == 3 * CHUNK_SIZE:
            with (opened.plain / "new.bin").open("ab") as handle:
                handle.write(b"late")

    monkeypatch.setattr(volume_store._EncryptTask, "open", open_then_grow)
    with pytest.raises(VolumeRefused, match=r"'new.bin' changed while it was being sealed"):
        seal_volume(opened)
    objects = os.listdir(store / OBJECTS)
    assert not [name for name in objects if name.startswith(".tmp-")]
    assert sorted(os.listdir(store / MANIFESTS)) == [tag]
    assert (_open(store, key, tag, tmp_path, "2").plain / "small.txt").read_text() == FIRST_TEXT
