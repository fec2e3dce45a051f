"""`casctl attest` and friends against a real CAS process."""

from __future__ import annotations

import json
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from opencas.testing import CasProcess

Casctl = Callable[..., subprocess.CompletedProcess[str]]


def identification(cas: CasProcess) -> dict[str, object]:
    shown = cas.run("show-identification", "--json")
    assert shown.returncode == 0, shown.stderr
    facts: dict[str, object] = json.loads(shown.stdout)
    return facts


def test_attest_debug_cas_succeeds_and_pins(
    cas: CasProcess, casctl: Casctl, casctl_home: Path
) -> None:
    result = casctl(
        "attest", cas.url, "--only-for-testing-debug", "--allow-unprovisioned", "--json"
    )
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["mode"] == "debug"
    assert facts["platform"] == "simulated"
    assert facts["default"] is True
    assert facts["provisioned"] is False
    assert facts["db_key_injected"] is False

    listed = casctl("cas", "list")
    assert listed.returncode == 0
    assert cas.url in listed.stdout
    assert facts["cas_key_hash"] in listed.stdout
    shown = json.loads(casctl("cas", "show", "--json").stdout)
    assert shown["cas_key_hash"] == facts["cas_key_hash"]
    assert "BEGIN CERTIFICATE" in shown["ca_certificate_pem"]
    assert stat.S_IMODE((casctl_home / "state.json").stat().st_mode) == 0o600

    # The pinned channel now carries signed requests.
    me = json.loads(casctl("self", "show-identity", "--json").stdout)
    whoami = casctl("whoami")
    assert whoami.returncode == 0, whoami.stderr
    assert whoami.stdout.strip() == me["key_hash"]
    assert casctl("whoami", "--anonymous").stdout.strip() == "anonymous"
    for name in ("identity-key.pem", "identity-cert.pem"):
        assert stat.S_IMODE((casctl_home / name).stat().st_mode) == 0o600


def test_attest_refuses_debug_cas_without_flag(cas: CasProcess, casctl: Casctl) -> None:
    result = casctl("attest", cas.url, "--allow-unprovisioned")
    assert result.returncode == 4
    assert "debug mode" in result.stderr
    assert "--only-for-testing-debug" in result.stderr
    assert casctl("cas", "list").stdout.startswith("no CAS attested")


def test_attest_checks_measurement(cas: CasProcess, casctl: Casctl) -> None:
    wrong = casctl(
        "attest",
        cas.url,
        "--only-for-testing-debug",
        "--allow-unprovisioned",
        "--mrenclave",
        "ab" * 32,
    )
    assert wrong.returncode == 4
    assert "measurement" in wrong.stderr
    measurement = str(identification(cas)["software_measurement"])
    right = casctl(
        "attest",
        cas.url,
        "--only-for-testing-debug",
        "--allow-unprovisioned",
        "--mrenclave",
        "ab" * 32,
        "--mrenclave",
        measurement,
    )
    assert right.returncode == 0, right.stderr
    assert measurement in right.stdout


def test_attest_checks_cas_key_hash(cas: CasProcess, casctl: Casctl) -> None:
    wrong = casctl(
        "attest", cas.url, "--only-for-testing-debug", "--allow-unprovisioned", "-c", "00" * 32
    )
    assert wrong.returncode == 4
    assert "key hash" in wrong.stderr
    key_hash = str(identification_of_running(cas, casctl))
    right = casctl(
        "attest",
        cas.url,
        "--only-for-testing-debug",
        "--allow-unprovisioned",
        "-c",
        key_hash,
        "--alias",
        "x",
    )
    assert right.returncode == 0, right.stderr


def identification_of_running(cas: CasProcess, casctl: Casctl) -> str:
    facts = json.loads(
        casctl(
            "attest", cas.url, "--only-for-testing-debug", "--allow-unprovisioned", "--json"
        ).stdout
    )
    return str(facts["cas_key_hash"])


def test_attest_unreachable_cas(casctl: Casctl, cas_process: CasProcess) -> None:
    result = casctl("attest", cas_process.url, "--only-for-testing-debug", "--allow-unprovisioned")
    assert result.returncode == 3
    assert "cannot reach" in result.stderr


def test_attest_rejects_plain_http_url(casctl: Casctl) -> None:
    result = casctl(
        "attest", "http://127.0.0.1:1", "--only-for-testing-debug", "--allow-unprovisioned"
    )
    assert result.returncode == 2
    assert "https://" in result.stderr


def test_replaced_cas_is_not_fresh(cas_process: CasProcess, casctl: Casctl) -> None:
    cas_process.start()
    assert (
        casctl(
            "attest", cas_process.url, "--only-for-testing-debug", "--allow-unprovisioned"
        ).returncode
        == 0
    )
    cas_process.stop()
    for leftover in cas_process.directory.glob("cas.db*"):
        leftover.unlink()
    cas_process.start()
    again = casctl("attest", cas_process.url, "--only-for-testing-debug", "--allow-unprovisioned")
    assert again.returncode == 5
    assert "not the one you attested before" in again.stderr
    accepted = casctl(
        "attest",
        cas_process.url,
        "--only-for-testing-debug",
        "--allow-unprovisioned",
        "--accept-new-instance",
    )
    assert accepted.returncode == 0, accepted.stderr


def test_pinned_channel_refuses_replaced_cas(cas_process: CasProcess, casctl: Casctl) -> None:
    cas_process.start()
    assert (
        casctl(
            "attest", cas_process.url, "--only-for-testing-debug", "--allow-unprovisioned"
        ).returncode
        == 0
    )
    cas_process.stop()
    for leftover in cas_process.directory.glob("cas.db*"):
        leftover.unlink()
    cas_process.start()
    result = casctl("whoami")
    assert result.returncode == 3
    assert "does not verify against the CAS key pinned" in result.stderr


def test_injected_database_key_is_reported_for_good(
    cas_process: CasProcess, casctl: Casctl, tmp_path: Path
) -> None:
    key_file = tmp_path / "dmk.hex"
    key_file.write_text("11" * 32 + "\n")
    cas_process.start("serve", "--database-key-file", str(key_file))
    refused = casctl("attest", cas_process.url, "--only-for-testing-debug", "--allow-unprovisioned")
    assert refused.returncode == 4
    assert "--allow-cas-owner-secret-access" in refused.stderr
    cas_process.stop()

    cas_process.start()  # without the key file: unsealed from the key store, still injected
    accepted = casctl(
        "attest",
        cas_process.url,
        "--only-for-testing-debug",
        "--allow-unprovisioned",
        "--allow-cas-owner-secret-access",
        "--json",
    )
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["db_key_injected"] is True


def test_attest_refuses_unprovisioned_cas_without_flag(cas: CasProcess, casctl: Casctl) -> None:
    result = casctl("attest", cas.url, "--only-for-testing-debug")
    assert result.returncode == 4
    assert "not provisioned" in result.stderr
    assert "--allow-unprovisioned" in result.stderr


def test_attest_takes_scones_sgx_flags(cas: CasProcess, casctl: Casctl) -> None:
    base = ("attest", cas.url, "--only-for-testing-debug", "--allow-unprovisioned")
    # A simulated CAS has no enclave signer, so expecting one refuses it, naming the check.
    signer = casctl(*base, "--mrsigner", "5a" * 32, "--isvprodid", "41", "--isvsvn", "2")
    assert signer.returncode == 4
    assert "MRSIGNER" in signer.stderr
    assert "'simulated', which has none" in signer.stderr
    # The TCB tolerations and a verification time are accepted where there is nothing to tolerate.
    tolerant = casctl(*base, "-C", "-G", "-S", "--verification-time", "2026-11-30T12:00:00Z")
    assert tolerant.returncode == 0, tolerant.stderr
    usage = casctl(*base, "--isvsvn", "2")
    assert usage.returncode == 2
    assert "--isvprodid and --isvsvn need --mrsigner" in usage.stderr
