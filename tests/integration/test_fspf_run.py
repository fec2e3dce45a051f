"""Protected files end to end: a tree built with ``casctl fspf``, a session naming its protection
file (the corpus's ``fspf-service.yaml``), and ``casctl run`` of a program that reads its
authenticated and encrypted files; a changed or added file refuses the start by name."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

Casctl = Callable[..., subprocess.CompletedProcess[str]]
CORPUS = Path(__file__).parent.parent / "data" / "sessions" / "scone"
WEIGHTS = b"model weights that must never be stored in clear\n" * 4000

MAIN = """\
import hashlib, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import helper
model = sys.argv[sys.argv.index("--model") + 1]
data = open(model, "rb").read()
print("helper", helper.GREETING)
print("model-sha256", hashlib.sha256(data).hexdigest())
print("model-private", model.startswith(os.environ["CAS_INJECTION_DIR"] + "/"))
print("cwd", os.getcwd())
"""


@pytest.fixture
def casctl(attested_casctl: Callable[[Path], Casctl], tmp_path: Path) -> Casctl:
    return attested_casctl(tmp_path / "home")


def build_tree(casctl: Casctl, shop: Path) -> tuple[str, str]:
    """The shop's tree: app/ authenticated in place, model/ encrypted from a clear copy."""
    (shop / "app").mkdir(parents=True)
    (shop / "app" / "main.py").write_text(MAIN)
    (shop / "app" / "helper.py").write_text('GREETING = "checked"\n')
    clear = shop.parent / "clear-model"
    clear.mkdir()
    (clear / "weights.bin").write_bytes(WEIGHTS)
    fspf = str(shop / "fspf")
    model = ("--encrypted", str(shop / "model"), "--from", str(clear), "--to", str(shop / "model"))
    steps = [
        ("fspf", "create", fspf),
        ("fspf", "add", fspf, "--authenticated", str(shop / "app"), "--from", str(shop / "app")),
        ("fspf", "add", fspf, *model),
        ("fspf", "encrypt", fspf),
    ]
    for step in steps:
        done = casctl(*step)
        assert done.returncode == 0, (step, done.stderr)
    printed = dict(line.split(": ") for line in done.stdout.splitlines())
    assert all(value.startswith('"') for value in printed.values()), "YAML would read digits"
    printed = {name: value.strip('"') for name, value in printed.items()}
    return printed["fspf_key"], printed["fspf_tag"]


def session_text(shop: Path, key: str, tag: str, measurement: str) -> str:
    text = (CORPUS / "fspf-service.yaml").read_text().replace("/opt/shop", str(shop))
    text = re.sub(r"fspf_key: \S+", f"fspf_key: {key}", text)
    text = re.sub(r"fspf_tag: \S+", f"fspf_tag: {tag}", text)
    text = re.sub(r"simulated_measurement: \S+", f"simulated_measurement: {measurement}", text)
    return text.replace("command: python3 ", f"command: {sys.executable} ")


def test_a_protected_tree_runs_and_a_changed_file_is_refused_by_name(
    casctl: Casctl, tmp_path: Path
) -> None:
    shop = tmp_path / "shop"
    key, tag = build_tree(casctl, shop)
    main = shop / "app" / "main.py"
    assert WEIGHTS[:40] not in (shop / "model" / "weights.bin").read_bytes()
    measured = casctl("measure", "--", sys.executable, str(main))
    assert measured.returncode == 0, measured.stderr
    session = tmp_path / "session.yaml"
    session.write_text(session_text(shop, key, tag, measured.stdout.strip()))
    assert casctl("session", "create", str(session)).returncode == 0
    run = ("run", "--config-id", "fspf-shop/recommender", "--", sys.executable, str(main))

    ran = casctl(*run)
    assert ran.returncode == 0, ran.stderr
    lines = dict(line.split(" ", 1) for line in ran.stdout.splitlines())
    assert lines["helper"] == "checked"
    assert lines["model-sha256"] == hashlib.sha256(WEIGHTS).hexdigest()
    assert lines["model-private"] == "True"
    assert lines["cwd"] == str(shop / "app")

    (shop / "app" / "helper.py").write_text('GREETING = "changed"\n')
    changed = casctl(*run)
    assert changed.returncode == 1
    assert f"protected file {shop / 'app' / 'helper.py'} was changed" in changed.stderr
    assert changed.stdout == ""

    (shop / "app" / "helper.py").write_text('GREETING = "checked"\n')
    (shop / "app" / "extra.py").write_text("import os\n")
    added = casctl(*run)
    assert added.returncode == 1
    assert f"{shop / 'app' / 'extra.py'} is in a protected region but not" in added.stderr
    assert added.stdout == ""


def test_a_protection_file_with_another_tag_is_refused(casctl: Casctl, tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    key, _ = build_tree(casctl, shop)
    main = shop / "app" / "main.py"
    measured = casctl("measure", "--", sys.executable, str(main)).stdout.strip()
    session = tmp_path / "session.yaml"
    session.write_text(session_text(shop, key, "ab" * 16, measured))
    assert casctl("session", "create", str(session)).returncode == 0

    refused = casctl("run", "--config-id", "fspf-shop/recommender", "--", sys.executable, str(main))

    assert refused.returncode == 1
    assert f"protection file {shop / 'fspf'}: " in refused.stderr
    assert "fspf_tag" in refused.stderr
    assert key not in refused.stderr
    assert refused.stdout == ""
