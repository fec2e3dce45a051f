"""docs/attestation.md says what the code does: its TCB table is TCB_TOLERATIONS."""

from __future__ import annotations

import re
from pathlib import Path

from opencas.attestation.dcap import COLLATERAL_CACHE_SIZE, PLATFORM_CACHE_SIZE
from opencas.attestation.dcap_collateral import MAX_COLLATERAL_BYTES
from opencas.attestation.evidence import MAX_EVIDENCE_BYTES
from opencas.attestation.workload_policy import TCB_TOLERATIONS
from opencas.policy.model import TOLERABLE

DOC = Path(__file__).resolve().parents[3] / "docs" / "attestation.md"
ROW = re.compile(r"^\| `(?P<status>[A-Za-z]+)` \| [^|]+ \| (?P<needs>[^|]+) \|$")


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def test_the_tcb_table_is_tcb_tolerations() -> None:
    accepted: dict[str, tuple[str, ...]] = {}
    never: set[str] = set()
    for line in _section("TCB status and tolerations").splitlines():
        match = ROW.match(line)
        if match is None:
            continue
        needs = match["needs"].strip()
        if needs == "never":
            never.add(match["status"])
        elif needs == "nothing":
            accepted[match["status"]] = ()
        else:
            accepted[match["status"]] = tuple(re.findall(r"`([a-z-]+)`", needs))
    assert accepted == TCB_TOLERATIONS
    assert never == {"Revoked"}
    assert {item for needs in accepted.values() for item in needs} <= set(TOLERABLE)


def test_every_toleration_of_the_session_language_is_explained() -> None:
    section = _section("TCB status and tolerations")
    for item in TOLERABLE:
        assert f"`{item}`" in section, item


def test_the_dcap_limits_are_the_documented_ones() -> None:
    section = _section("Intel DCAP (SGX, TDX)")
    assert f"`MAX_EVIDENCE_BYTES` ({MAX_EVIDENCE_BYTES // 1024} KiB)" in section
    assert f"`MAX_COLLATERAL_BYTES` ({MAX_COLLATERAL_BYTES // (1024 * 1024)} MiB)" in section
    assert f"({PLATFORM_CACHE_SIZE} entries)" in section
    assert f"({COLLATERAL_CACHE_SIZE} entries)" in section
