"""The rules of the house that a reader relies on: checked over the source, not remembered."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "opencas"
# Only the SDK and the HTTP layer know the API's paths; everything else calls the SDK.
PATHS_ALLOWED_IN = (PACKAGE / "client", PACKAGE / "api")
API_PATH = re.compile(r"""["']/v1/""")


def _python_files(*roots: Path) -> list[Path]:
    return sorted(
        path for root in roots for path in ([root] if root.is_file() else root.rglob("*.py"))
    )


def test_no_api_path_outside_the_sdk_and_the_http_layer() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _python_files(PACKAGE, ROOT / "benchmarks")
        if not any(path.is_relative_to(allowed) for allowed in PATHS_ALLOWED_IN)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if API_PATH.search(line)
    ]
    assert offenders == []


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for path in _python_files(PACKAGE, ROOT / "benchmarks"):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("opencas"):
                offenders += [
                    f"{path.relative_to(ROOT)}:{node.lineno}: {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert offenders == []


def test_the_pure_core_does_not_import_the_outer_layers() -> None:
    outer = ("opencas.api", "opencas.cli", "opencas.store", "opencas.service", "opencas.client")
    core = [PACKAGE / name for name in ("crypto", "policy", "sources", "attestation")]
    # The audit log's chain logic is pure; its writer, sinks and verifier do the I/O.
    core.append(PACKAGE / "audit" / "chain.py")
    offenders = []
    for path in _python_files(*core):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(outer):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}")
    assert offenders == []
