"""``casctl volume``: an operator encrypts a directory into a volume outside the CAS, adds files,
checks it, and gives its key and tag to a session; ``casctl run`` then opens it."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from opencas.testing import run_casctl

Casctl = Callable[..., subprocess.CompletedProcess[str]]

PROGRAM = """\
import os
from pathlib import Path
seeded = Path(os.environ["SEEDED_DIR"])
for path in sorted(p for p in seeded.rglob("*") if p.is_file()):
    print(path.relative_to(seeded), path.read_text())
"""

SESSION = """\
name: prepared-volume
version: "0.3"
services:
  - name: reader
    image_name: reader-image
    environment:
      SEEDED_DIR: /srv/seeded
images:
  - name: reader-image
    volumes:
      - name: seeded
        path: /srv/seeded
volumes:
  - name: seeded
    {key_line}
    {tag_line}
security:
  attestation:
    mode: none
    tolerate: [simulated, debug-mode]
"""


def lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    return dict(re.findall(r'^(fspf_key|fspf_tag): "([0-9a-f]{64})"$', result.stdout, re.M))


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("alpha")
    (source / "sub" / "b.txt").write_text("beta")
    store, key_file = tmp_path / "store", tmp_path / "volume.key"
    made = lines(
        run_casctl(
            tmp_path / "home",
            ["volume", "create", str(store), "--from", str(source), "--key-file", str(key_file)],
        )
    )
    assert key_file.read_text().strip() == made["fspf_key"]
    assert b"alpha" not in b"".join(p.read_bytes() for p in (store / "objects").iterdir())
    return store, key_file, made


def test_a_prepared_volume_is_checked_extended_and_opened_by_a_workload(
    attested_casctl: Callable[[Path], Casctl],
    prepared: tuple[Path, Path, dict[str, str]],
    tmp_path: Path,
) -> None:
    store, key_file, made = prepared
    casctl = attested_casctl(tmp_path / "home")
    key = ["--key-file", str(key_file)]
    checked = casctl("volume", "check", str(store), *key, "--tag", made["fspf_tag"])
    assert checked.returncode == 0, checked.stderr
    assert "2 files, 9 bytes, all authentic" in checked.stdout

    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "c.txt").write_text("gamma")
    added = lines(
        casctl(
            "volume",
            "add",
            str(store),
            *key,
            "--tag",
            made["fspf_tag"],
            "--from",
            str(extra),
            "--at",
            "more",
        )
    )
    assert added["fspf_tag"] != made["fspf_tag"]
    # The old content still opens: nothing in the store was overwritten.
    assert casctl("volume", "check", str(store), *key, "--tag", made["fspf_tag"]).returncode == 0

    session = tmp_path / "session.yaml"
    session.write_text(
        SESSION.format(
            key_line=f'fspf_key: "{made["fspf_key"]}"', tag_line=f'fspf_tag: "{added["fspf_tag"]}"'
        )
    )
    assert casctl("session", "create", str(session)).returncode == 0
    program = tmp_path / "reader.py"
    program.write_text(PROGRAM)
    ran = casctl(
        "run",
        "--config-id",
        "prepared-volume/reader",
        "--volume-store",
        f"seeded={store}",
        "--",
        sys.executable,
        str(program),
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["a.txt alpha", "more/c.txt gamma", "sub/b.txt beta"]


def test_a_changed_store_or_another_key_is_refused_by_check(
    prepared: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    store, key_file, made = prepared
    home = tmp_path / "home"
    tag = ["--tag", made["fspf_tag"]]
    other_key = tmp_path / "other.key"
    other_key.write_text("ab" * 32 + "\n")
    wrong = run_casctl(home, ["volume", "check", str(store), "--key-file", str(other_key), *tag])
    assert wrong.returncode != 0
    assert "ab" * 32 not in wrong.stderr

    victim = max((store / "objects").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    damaged = run_casctl(home, ["volume", "check", str(store), "--key-file", str(key_file), *tag])
    assert damaged.returncode != 0
    assert "damaged or was swapped" in damaged.stderr or "fails authentication" in damaged.stderr


def test_create_refuses_a_store_that_is_not_empty_and_a_bad_key_file(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "x").write_text("x")
    store = tmp_path / "store"
    (store / "manifests").mkdir(parents=True)
    (store / "manifests" / "old").write_text("")
    home = tmp_path / "home"
    busy = run_casctl(home, ["volume", "create", str(store), "--from", str(source)])
    assert busy.returncode != 0
    assert "is not empty" in busy.stderr

    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not hex\n")
    fresh = tmp_path / "fresh"
    refused = run_casctl(
        home, ["volume", "create", str(fresh), "--from", str(source), "--key-file", str(bad_key)]
    )
    assert refused.returncode != 0
    assert "does not hold a volume key" in refused.stderr

    # SCONE's shell form of the two lines.
    shell = run_casctl(
        home, ["volume", "create", str(fresh), "--from", str(source), "--envar-output"]
    )
    assert shell.returncode == 0, shell.stderr
    assert [line.split("=")[0] for line in shell.stdout.splitlines()] == [
        "export VOLUME_KEY",
        "export VOLUME_TAG",
    ]
