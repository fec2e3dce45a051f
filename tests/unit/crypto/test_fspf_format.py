"""The protection file's document and seal: what opens, and what is refused."""

from __future__ import annotations

import pytest

from opencas.crypto.fspf_format import (
    SEALED_MAGIC,
    FspfFormatError,
    ProtectedFile,
    ProtectionDocument,
    Region,
    open_sealed,
    parse_document,
    seal_document,
)

DIGEST = "ab" * 32


def sample() -> ProtectionDocument:
    return ProtectionDocument.build(
        bytes(32),
        [Region("/app", "authenticated"), Region("/app/data", "encrypted")],
        [
            ProtectedFile("/app/main.py", 3, 0o644, DIGEST, None),
            ProtectedFile("/app/data/a.bin", 5, 0o600, DIGEST, "0f" * 16),
        ],
    )


def test_a_sealed_protection_file_opens_with_its_key_and_tag() -> None:
    sealed, key, tag = seal_document(sample())

    assert sealed.startswith(SEALED_MAGIC)
    assert len(key) == 64
    assert len(tag) == 32
    assert open_sealed(sealed, key, tag) == sample()
    assert b"main.py" not in sealed


def test_another_tag_key_or_byte_is_refused() -> None:
    sealed, key, tag = seal_document(sample())
    other_sealed, other_key, other_tag = seal_document(sample())
    flipped = sealed[:40] + bytes([sealed[40] ^ 1]) + sealed[41:]

    with pytest.raises(FspfFormatError, match="tag is not the session's fspf_tag"):
        open_sealed(sealed, key, other_tag)
    with pytest.raises(FspfFormatError, match="does not open with the session's fspf_key"):
        open_sealed(sealed, other_key, tag)
    with pytest.raises(FspfFormatError, match="does not open"):
        open_sealed(flipped, key, tag)
    with pytest.raises(FspfFormatError, match="is not sealed"):
        open_sealed(sample().to_bytes(), key, tag)
    assert open_sealed(other_sealed, other_key, other_tag) == sample()


def test_an_unsealed_protection_file_round_trips_and_a_sealed_one_is_not_edited() -> None:
    assert parse_document(sample().to_bytes()) == sample()
    with pytest.raises(FspfFormatError, match="sealed already"):
        parse_document(seal_document(sample())[0])


def test_a_file_belongs_to_its_longest_region() -> None:
    document = sample()

    assert document.protection_of("/app/main.py") == "authenticated"
    assert document.protection_of("/app/data/a.bin") == "encrypted"
    assert document.protection_of("/apple/x") == "not-protected"
    assert document.protection_of("/etc/passwd") == "not-protected"


@pytest.mark.parametrize(
    ("regions", "file", "fragment"),
    [
        ([], ProtectedFile("/app/x", 1, 0o644, DIGEST, None), "in no authenticated or encrypted"),
        (
            [Region("/app", "authenticated")],
            ProtectedFile("/app/x", 1, 0o644, DIGEST, "0f" * 16),
            "only an encrypted file has an object",
        ),
        (
            [Region("/app", "encrypted")],
            ProtectedFile("/app/x", 1, 0o644, DIGEST, None),
            "only an encrypted file has an object",
        ),
        (
            [Region("/app", "authenticated")],
            ProtectedFile("/app/../x", 1, 0o644, DIGEST, None),
            "must be absolute, without empty",
        ),
        (
            [Region("/app", "authenticated")],
            ProtectedFile("/app/x", 1, 0o4755, DIGEST, None),
            "mode must be within",
        ),
        (
            [Region("/app", "authenticated")],
            ProtectedFile("/app/x", 1, 0o644, "AB" * 32, None),
            "sha256 is not 64 lowercase",
        ),
    ],
)
def test_malformed_entries_are_refused_by_name(
    regions: list[Region], file: ProtectedFile, fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        ProtectionDocument.build(bytes(32), regions, [file])


def test_a_repeated_region_is_refused() -> None:
    with pytest.raises(ValueError, match="region /app is listed twice"):
        ProtectionDocument.build(
            bytes(32), [Region("/app", "authenticated"), Region("/app", "encrypted")], []
        )


def test_a_document_out_of_its_normal_order_is_refused() -> None:
    # /app/a.py sorts before /app/data/a.bin, but stays second.
    text = sample().to_bytes().replace(b"/app/main.py", b"/app/a.py")

    with pytest.raises(FspfFormatError, match="not in its normal order"):
        parse_document(text)
