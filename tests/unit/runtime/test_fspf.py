"""Protection files on disk: building a tree's protection file, and checking the tree before a
program starts (every refusal names the file)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from opencas.crypto.fspf_format import open_sealed
from opencas.crypto.volume_format import CHUNK_SIZE
from opencas.errors import ClientError
from opencas.runtime.fspf import (
    ProtectedFileRefused,
    add_region,
    create_protection_file,
    open_protected_tree,
    seal_protection_file,
)

BIG = os.urandom(2 * CHUNK_SIZE + 17)


class Tree:
    """An application tree: ``app/`` authenticated, ``app/logs`` not protected, ``data/``
    encrypted from a clear copy; its protection file sealed."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.app = base / "app"
        self.data = base / "data"
        (self.app / "lib").mkdir(parents=True)
        (self.app / "logs").mkdir()
        (self.app / "main.py").write_text("print('main')\n")
        (self.app / "lib" / "util.py").write_text("VALUE = 1\n")
        clear = base / "clear"
        clear.mkdir()
        (clear / "big.bin").write_bytes(BIG)
        (clear / "small.txt").write_text("secret words\n")
        (clear / "twin.txt").write_text("secret WORDS\n")
        (clear / "empty").write_bytes(b"")
        self.fspf = base / "fspf"
        create_protection_file(self.fspf)
        assert add_region(self.fspf, str(self.app), "authenticated", self.app) == 2
        add_region(self.fspf, str(self.app / "logs"), "not-protected")
        assert add_region(self.fspf, str(self.data), "encrypted", clear, self.data) == 4
        self.key, self.tag = seal_protection_file(self.fspf)
        self.private = base / "private"

    def check(self) -> list[str]:
        """Check the tree into a fresh private directory, as ``casctl run`` does."""
        if self.private.exists():
            shutil.rmtree(self.private)
        self.private.mkdir()
        return list(
            open_protected_tree(str(self.fspf), self.key, self.tag, self.private).decrypted_files
        )


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


def test_a_tree_as_recorded_passes_and_encrypted_files_are_decrypted(tree: Tree) -> None:
    (tree.app / "logs" / "today.log").write_text("not checked\n")

    decrypted = tree.check()

    assert decrypted == [
        str(tree.data / name) for name in ("big.bin", "empty", "small.txt", "twin.txt")
    ]
    private = tree.private / str(tree.data).lstrip("/")
    assert (private / "big.bin").read_bytes() == BIG
    assert (private / "small.txt").read_text() == "secret words\n"
    assert (private / "empty").read_bytes() == b""
    assert b"secret words" not in (tree.data / "small.txt").read_bytes()
    assert BIG[:64] not in (tree.data / "big.bin").read_bytes()


def test_a_changed_authenticated_file_is_refused_by_name(tree: Tree) -> None:
    (tree.app / "lib" / "util.py").write_text("VALUE = 2\n")

    with pytest.raises(ProtectedFileRefused, match=f"{tree.app}/lib/util.py was changed"):
        tree.check()


def test_swapped_authenticated_files_are_refused(tree: Tree) -> None:
    main, util = tree.app / "main.py", tree.app / "lib" / "util.py"
    first, second = main.read_bytes(), util.read_bytes()
    main.write_bytes(second)
    util.write_bytes(first)

    with pytest.raises(ProtectedFileRefused, match="was changed"):
        tree.check()


def test_swapped_encrypted_files_of_the_same_size_are_refused(tree: Tree) -> None:
    small, twin = tree.data / "small.txt", tree.data / "twin.txt"
    first, second = small.read_bytes(), twin.read_bytes()
    assert len(first) == len(second)
    small.write_bytes(second)
    twin.write_bytes(first)

    with pytest.raises(ProtectedFileRefused, match=f"encrypted file {small} was changed"):
        tree.check()


def test_an_encrypted_file_from_another_protection_file_is_refused(tree: Tree) -> None:
    small = tree.data / "small.txt"
    other = Tree(tree.base / "other")
    small.write_bytes((other.data / "small.txt").read_bytes())

    with pytest.raises(ProtectedFileRefused, match=f"encrypted file {small} was changed"):
        tree.check()


def test_a_cut_or_missing_file_is_refused_by_name(tree: Tree) -> None:
    big = tree.data / "big.bin"
    big.write_bytes(big.read_bytes()[:-1])
    with pytest.raises(ProtectedFileRefused, match=f"encrypted file {big} was changed"):
        tree.check()

    (tree.app / "main.py").unlink()
    with pytest.raises(ProtectedFileRefused, match=f"protected file {tree.app}/main.py is missing"):
        tree.check()


def test_an_added_file_or_link_in_a_protected_region_is_refused(tree: Tree) -> None:
    (tree.app / "lib" / "evil.py").write_text("import os\n")
    with pytest.raises(ProtectedFileRefused, match=r"evil\.py is in a protected region but not"):
        tree.check()

    (tree.app / "lib" / "evil.py").unlink()
    (tree.app / "lib" / "link.py").symlink_to(tree.app / "main.py")
    with pytest.raises(ProtectedFileRefused, match=r"link\.py in a protected region is a symbolic"):
        tree.check()


def test_an_authenticated_file_replaced_by_a_link_is_refused(tree: Tree) -> None:
    main = tree.app / "main.py"
    copy = tree.base / "main-copy.py"
    copy.write_bytes(main.read_bytes())
    main.unlink()
    main.symlink_to(copy)

    with pytest.raises(ProtectedFileRefused, match=f"protected file {main} cannot be opened"):
        tree.check()


def test_a_protection_file_with_another_key_or_tag_is_refused(tree: Tree) -> None:
    with pytest.raises(ProtectedFileRefused, match="tag is not the session's fspf_tag"):
        open_protected_tree(str(tree.fspf), tree.key, "00" * 16, tree.private)
    with pytest.raises(ProtectedFileRefused, match="does not open with the session's fspf_key"):
        open_protected_tree(str(tree.fspf), "00" * 32, tree.tag, tree.private)


def test_building_refuses_what_cannot_be_recorded(tmp_path: Path) -> None:
    fspf = tmp_path / "fspf"
    create_protection_file(fspf)
    with pytest.raises(ClientError, match="exists already"):
        create_protection_file(fspf)
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_text("a")
    with pytest.raises(ClientError, match="--to DST_DIR is needed for an encrypted region"):
        add_region(fspf, "/enc", "encrypted", source)
    with pytest.raises(ClientError, match="--to DST_DIR is needed"):
        add_region(fspf, "/auth", "authenticated", source, tmp_path / "out")
    with pytest.raises(ClientError, match="region: the path 'relative'"):
        add_region(fspf, "relative", "authenticated")
    add_region(fspf, "/auth", "authenticated")
    with pytest.raises(ClientError, match="region /auth is authenticated already"):
        add_region(fspf, "/auth", "encrypted")
    (source / "link").symlink_to(source / "a")
    with pytest.raises(ClientError, match="link is a symbolic link"):
        add_region(fspf, "/auth", "authenticated", source)


def test_a_file_of_a_nested_region_is_not_added_to_the_outer_one(tmp_path: Path) -> None:
    fspf = tmp_path / "fspf"
    create_protection_file(fspf)
    add_region(fspf, "/app/secret", "encrypted")
    source = tmp_path / "src"
    (source / "secret").mkdir(parents=True)
    (source / "secret" / "key").write_text("k")

    with pytest.raises(ClientError, match="belongs to region /app/secret"):
        add_region(fspf, "/app", "authenticated", source)


def test_the_recorded_hash_is_the_content_sha256(tree: Tree) -> None:
    document = open_sealed(tree.fspf.read_bytes(), tree.key, tree.tag)
    recorded = {item.path: item.sha256 for item in document.files}

    assert recorded[str(tree.data / "big.bin")] == hashlib.sha256(BIG).hexdigest()
    assert recorded[str(tree.app / "main.py")] == hashlib.sha256(b"print('main')\n").hexdigest()
