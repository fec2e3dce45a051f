"""docs/api.md's Python SDK example runs as written against a real, self-provisioned CAS."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from opencas.testing import SelfProvisionedCas

DOC = Path(__file__).parents[2] / "docs" / "api.md"


def example() -> str:
    """The Python block that follows ``<!-- sdk-example -->`` in docs/api.md."""
    match = re.search(r"<!-- sdk-example -->\n```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert match is not None, f"no Python block after <!-- sdk-example --> in {DOC}"
    return match.group(1)


def test_python_sdk_example_runs(
    opencas_cas: SelfProvisionedCas, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = {"URL": opencas_cas.url, "OWNER_KEY_HASH": opencas_cas.owner.key_hash}
    exec(compile(example(), f"{DOC}#sdk-example", "exec"), namespace)

    me, created = namespace["me"], namespace["created"]
    assert capsys.readouterr().out.splitlines() == [
        f"attested the CAS with key hash {opencas_cas.verified.report.cas_key_hash}",
        f"the CAS sees me as {me.key_hash}",
        f"session sdk-example, revision 1, hash {created.hash}",
        f"stale-predecessor - the current hash is {created.hash}",
    ]
