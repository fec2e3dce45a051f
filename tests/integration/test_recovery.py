"""Recovery without a backup: a CAS whose database was copied to another simulated machine is
brought back there with threshold shares of its recovery keys, and clients see that it was.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from opencas.attestation.report import CasExpectations
from opencas.client import CasClient
from opencas.client.cas_client import new_nonce
from opencas.errors import AttestationRefused
from opencas.testing import (
    DEVELOPMENT_OWNER_CONFIG,
    CasProcess,
    SelfProvisionedCas,
    run_casctl,
    start_self_provisioned_cas,
)

SESSION = (
    'name: kept-Across-Machines\nversion: "0.3"\n'
    "secrets:\n  - name: ca\n    kind: x509-ca\n    export_public: true\n"
)
HOLDERS = 3
THRESHOLD = 2


def _keygen(home: Path, key: Path) -> str:
    made = run_casctl(home, ["recovery", "keygen", "-o", str(key)])
    assert made.returncode == 0, made.stderr
    return made.stdout.splitlines()[-1]


@pytest.fixture
def holders(tmp_path: Path) -> list[tuple[Path, str]]:
    """Each recovery-key holder's private key file and public key, each with a casctl home."""
    keys = []
    for number in range(1, HOLDERS + 1):
        home = tmp_path / f"holder-{number}"
        key = home / "recovery.pem"
        keys.append((key, _keygen(home, key)))
    return keys


@pytest.fixture
def primary(tmp_path: Path, holders: list[tuple[Path, str]]) -> SelfProvisionedCas:
    keys = ", ".join(f'"{public}"' for _, public in holders)
    text = DEVELOPMENT_OWNER_CONFIG + f"\n[recovery]\nkeys = [{keys}]\nthreshold = {THRESHOLD}\n"
    return start_self_provisioned_cas(tmp_path / "primary", text)


def _fetch_shares(primary: SelfProvisionedCas, out: Path) -> list[Path]:
    owner_home = primary.owner_directory
    attested = run_casctl(owner_home, ["attest", primary.url, "--only-for-testing-debug"])
    assert attested.returncode == 0, attested.stderr
    assert "any 2 of 3 keys" in attested.stdout
    fetched = run_casctl(owner_home, ["recovery", "shares", "-o", str(out)])
    assert fetched.returncode == 0, fetched.stderr
    return sorted(out.glob("share-*.json"))


def _move_to_new_machine(primary: SelfProvisionedCas, directory: Path) -> CasProcess:
    """A CAS on another simulated machine (its own platform key) holding the old database."""
    new = CasProcess(directory)
    for name in ("cas.db", "cas.db.key-store", "audit.log"):
        shutil.copy2(primary.process.directory / name, new.directory / name)
    return new


def _open_share(
    holder: tuple[Path, str], share: Path, request: Path, out: Path, *flags: str
) -> tuple[int, str]:
    key, _ = holder
    args = ["recovery", "open-share", str(share), "--key", str(key), "--request", str(request)]
    done = run_casctl(key.parent, [*args, "-o", str(out), *flags])
    return done.returncode, done.stdout + done.stderr


def test_threshold_shares_recover_the_cas_on_another_machine(
    tmp_path: Path, primary: SelfProvisionedCas, holders: list[tuple[Path, str]]
) -> None:
    try:
        written = primary.client.create_session(SESSION)
        ca_before = primary.client.session_values("kept-Across-Machines").values["ca"]
        cas_key_hash = primary.verified.report.cas_key_hash
        shares = _fetch_shares(primary, tmp_path / "shares")
    finally:
        primary.stop()
    assert len(shares) == HOLDERS
    new = _move_to_new_machine(primary, tmp_path / "new")
    try:
        locked_out = new.run("show-identification")
        assert locked_out.returncode == 1
        assert "sealed on simulated machine" in locked_out.stderr

        request = tmp_path / "request.json"
        asked = new.run("recovery-request", "-o", str(request))
        assert asked.returncode == 0, asked.stderr
        transfers = [tmp_path / f"transfer-{n}.json" for n in (1, 2)]
        for holder, share, transfer in zip(holders, shares, transfers, strict=False):
            code, said = _open_share(holder, share, request, transfer, "--only-for-testing-debug")
            assert code == 0, said
            assert "machine_id" in said

        too_few = new.run("recover", "--share", str(transfers[0]), "--no-serve")
        assert too_few.returncode == 1
        assert "1 of the 2 shares needed were given; 1 more are needed" in too_few.stderr

        new.start("recover", "--share", str(transfers[0]), "--share", str(transfers[1]))
        strict = CasExpectations(nonce=new_nonce(), allow_debug=True)
        with CasClient(new.url) as bootstrap, pytest.raises(AttestationRefused) as caught:
            bootstrap.attest(strict)
        assert caught.value.check == "recovered"
        accepting = CasExpectations(nonce=new_nonce(), allow_debug=True, allow_recovered=True)
        with CasClient(new.url) as bootstrap:
            verified = bootstrap.attest(accepting)
        client = CasClient.pinned_to(new.url, verified, primary.owner)
        with client:
            assert client.read_session("kept-Across-Machines").hash == written.hash
            assert client.session_values("kept-Across-Machines").values["ca"] == ca_before
        assert verified.report.cas_key_hash == cas_key_hash
        assert verified.report.recovered is True
        assert verified.report.recovery.threshold == THRESHOLD
        assert verified.evidence.platform_id != primary.verified.evidence.platform_id
        audit = (new.directory / "audit.log").read_text().splitlines()
        assert any(json.loads(line)["event"] == "recovered" for line in audit)
    finally:
        new.stop()


def test_casctl_refuses_a_recovered_cas_without_the_flag(
    tmp_path: Path, primary: SelfProvisionedCas, holders: list[tuple[Path, str]]
) -> None:
    try:
        shares = _fetch_shares(primary, tmp_path / "shares")
    finally:
        primary.stop()
    new = _move_to_new_machine(primary, tmp_path / "new")
    request = tmp_path / "request.json"
    assert new.run("recovery-request", "-o", str(request)).returncode == 0
    undebugged, said = _open_share(holders[0], shares[0], request, tmp_path / "t0.json")
    assert undebugged == 4
    assert "debug mode" in said
    wrong_key, said = _open_share(
        holders[1], shares[0], request, tmp_path / "t1.json", "--only-for-testing-debug"
    )
    assert wrong_key == 1
    assert "not to this key" in said
    transfers = []
    for number in range(HOLDERS):
        transfer = tmp_path / f"transfer-{number}.json"
        code, said = _open_share(
            holders[number], shares[number], request, transfer, "--only-for-testing-debug"
        )
        assert code == 0, said
        transfers.append(transfer)
    new.start("recover", *(arg for t in transfers[1:] for arg in ("--share", str(t))))
    try:
        home = tmp_path / "client"
        refused = run_casctl(home, ["attest", new.url, "--only-for-testing-debug"])
        assert refused.returncode == 4
        assert "attestation refused (recovered)" in refused.stderr
        assert "--allow-recovered" in refused.stderr
        accepted = run_casctl(
            home, ["attest", new.url, "--only-for-testing-debug", "--allow-recovered"]
        )
        assert accepted.returncode == 0, accepted.stderr
        assert "WAS RECOVERED" in accepted.stdout
    finally:
        new.stop()
