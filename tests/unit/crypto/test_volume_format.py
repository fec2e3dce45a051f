"""The volume format: chunks bound to their place, the manifest bound to its tag."""

from __future__ import annotations

import pytest

from opencas.crypto.volume_format import (
    CHUNK_SIZE,
    Manifest,
    ManifestFile,
    ObjectCipher,
    VolumeFormatError,
    check_volume_path,
    chunk_count,
    new_object_id,
    new_volume_key,
    object_size,
    open_manifest,
    seal_manifest,
    volume_id,
)

KEY = bytes(range(32))


def test_volume_id_is_derived_from_the_key() -> None:
    assert volume_id(KEY) == volume_id(bytes(KEY))
    assert volume_id(KEY) != volume_id(new_volume_key())
    assert len(volume_id(KEY)) == 32


def test_chunk_counts_and_object_sizes() -> None:
    assert chunk_count(0) == 1
    assert chunk_count(CHUNK_SIZE) == 1
    assert chunk_count(CHUNK_SIZE + 1) == 2
    assert object_size(0) == 16
    assert object_size(CHUNK_SIZE + 1) == CHUNK_SIZE + 1 + 32


def test_a_chunk_opens_only_where_it_was_sealed() -> None:
    object_id = new_object_id()
    cipher = ObjectCipher(KEY, "a/b.txt", object_id)
    sealed = cipher.seal_chunk(0, True, b"hello")
    assert cipher.open_chunk(0, True, sealed) == b"hello"
    with pytest.raises(VolumeFormatError, match=r"'a/b.txt'.*chunk 0"):
        cipher.open_chunk(0, False, sealed)  # the file was cut after this chunk
    with pytest.raises(VolumeFormatError, match="chunk 1"):
        cipher.open_chunk(1, True, sealed)
    with pytest.raises(VolumeFormatError, match=r"'a/c\.txt'"):
        ObjectCipher(KEY, "a/c.txt", object_id).open_chunk(0, True, sealed)
    with pytest.raises(VolumeFormatError):
        ObjectCipher(new_volume_key(), "a/b.txt", object_id).open_chunk(0, True, sealed)
    with pytest.raises(VolumeFormatError):
        ObjectCipher(KEY, "a/b.txt", new_object_id()).open_chunk(0, True, sealed)


@pytest.mark.parametrize("path", ["", "/abs", "a//b", "a/../b", "./a", "a\0b", "x" * 256])
def test_bad_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="path"):
        check_volume_path(path)


def _manifest() -> Manifest:
    files = [
        ManifestFile("z.txt", new_object_id(), 3, 0o600),
        ManifestFile("a/b", "0" * 32, 0, 0o644),
    ]
    return Manifest.build(volume_id(KEY), files, ["a", "empty"])


def test_the_manifest_round_trips_and_its_tag_is_its_hash() -> None:
    manifest = _manifest()
    sealed, tag = seal_manifest(KEY, manifest)
    assert open_manifest(KEY, sealed, tag) == manifest
    assert [item.path for item in manifest.files] == ["a/b", "z.txt"]
    _, other_tag = seal_manifest(KEY, manifest)
    assert other_tag != tag  # a fresh nonce: no two writes share a tag


def test_an_older_or_changed_manifest_is_refused() -> None:
    sealed, tag = seal_manifest(KEY, _manifest())
    older, _ = seal_manifest(KEY, Manifest.build(volume_id(KEY), [], []))
    with pytest.raises(VolumeFormatError, match="older copy"):
        open_manifest(KEY, older, tag)
    changed = bytes([sealed[0]]) + bytes([sealed[1] ^ 1]) + sealed[2:]
    with pytest.raises(VolumeFormatError, match="older copy"):
        open_manifest(KEY, changed, tag)
    other = new_volume_key()
    with pytest.raises(VolumeFormatError, match="does not open"):
        open_manifest(other, sealed, tag)


@pytest.mark.parametrize(
    ("files", "directories", "message"),
    [
        ([ManifestFile("a", "0" * 32, 0, 0o600)] * 2, [], "same path"),
        (
            [ManifestFile("a", "0" * 32, 0, 0o600), ManifestFile("a/b", "1" * 32, 0, 0o600)],
            [],
            "below",
        ),
        ([ManifestFile("a", "0" * 32, 0, 0o600)], ["a"], "both"),
        ([ManifestFile("a", "xyz", 0, 0o600)], [], "object id"),
        ([ManifestFile("a", "0" * 32, -1, 0o600)], [], "at most"),
        ([ManifestFile("a", "0" * 32, 0, 0o4755)], [], "mode"),
    ],
)
def test_inconsistent_manifests_cannot_be_built(
    files: list[ManifestFile], directories: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Manifest.build(volume_id(KEY), files, directories)
