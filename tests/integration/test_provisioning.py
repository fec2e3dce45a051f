"""Attested provisioning, self-provisioning and the owner's operations, against real processes."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from opencas.client import ApiError, CasClient, ClientIdentity
from opencas.client.channel import ProofAuth, pinned_ssl_context
from opencas.config.owner import OwnerConfig
from opencas.crypto.keys import generate_private_key
from opencas.crypto.pem import certificate_pem
from opencas.crypto.x509 import create_identity_certificate
from opencas.testing import CasProcess, run_casctl

Casctl = Callable[..., subprocess.CompletedProcess[str]]

OWNER_CONFIG = """\
[api_identity]
common_name = "cas.example.test"
alt_names = ["cas.example.test"]
country_name = "DE"
org_name = "Example Org"

[dcap]
pccs_url = "https://pccs.example.test/sgx/certification/v4/"
subscription_key = "0123456789abcdef0123456789abcdef"
"""


def token_of(cas: CasProcess) -> str:
    match = re.search(r"one-time provisioning token: (\S+)", cas.log())
    assert match, cas.log()
    return match.group(1)


def report_of(cas: CasProcess) -> dict[str, object]:
    body = httpx.get(f"{cas.url}/v1/attest", params={"nonce": "00" * 16}, verify=False).json()
    report: dict[str, object] = body["report"]
    return report


def casctl_provision(
    home: Path, url: str, token: str, config: Path, *flags: str
) -> subprocess.CompletedProcess[str]:
    """``casctl provision`` of a simulated CAS, as the identity kept in ``home``."""
    return run_casctl(
        home,
        [
            "provision",
            url,
            "--token",
            token,
            "--config-file",
            str(config),
            "--only-for-testing-debug",
            *flags,
        ],
    )


@pytest.fixture
def owner_config(tmp_path: Path) -> Path:
    path = tmp_path / "owner-config.toml"
    path.write_text(OWNER_CONFIG)
    return path


@pytest.fixture
def owner_home(tmp_path: Path) -> Path:
    """casctl state of the owner; its identity is the owner identity."""
    return tmp_path / "owner"


def owner_certificate(home: Path) -> Path:
    result = run_casctl(home, ["self", "show-identity"])
    assert result.returncode == 0, result.stderr
    return home / "identity-cert.pem"


def test_attested_provisioning(cas: CasProcess, owner_config: Path, owner_home: Path) -> None:
    result = casctl_provision(owner_home, cas.url, token_of(cas), owner_config, "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    me = json.loads(run_casctl(owner_home, ["self", "show-identity", "--json"]).stdout)
    assert facts["provisioned"] is True
    assert facts["self_provisioned"] is False
    assert facts["owner_identity_hash"] == me["key_hash"]
    assert facts["owner_identity_checked"] is True
    assert facts["owner_config_checked"] is True

    # The owner reads the config back, secrets redacted.
    shown = run_casctl(owner_home, ["show-config", "--json"])
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["owner_config"]["dcap"]["subscription_key"] == "<redacted>"
    assert "0123456789abcdef0123456789abcdef" not in shown.stdout
    assert "0123456789abcdef0123456789abcdef" not in cas.log()
    assert body["owner_config_sha256"] == facts["owner_config_sha256"]

    # Attesting with the expected owner and config works, from a fresh client too.
    other = cas.directory.parent / "other"
    check = run_casctl(
        other,
        [
            "attest",
            cas.url,
            "--only-for-testing-debug",
            "--expect-owner-identity",
            str(owner_home / "identity-cert.pem"),
            "--expect-owner-config",
            str(owner_config),
        ],
    )
    assert check.returncode == 0, check.stderr

    # A second provisioning is refused.
    again = casctl_provision(other, cas.url, token_of(cas), owner_config)
    assert again.returncode == 1
    assert "already provisioned" in again.stderr


def test_tls_certificate_follows_api_identity(
    cas: CasProcess, owner_config: Path, owner_home: Path
) -> None:
    before = report_of(cas)["tls_key_hash"]
    result = casctl_provision(owner_home, cas.url, token_of(cas), owner_config)
    assert result.returncode == 0, result.stderr
    body = httpx.get(f"{cas.url}/v1/attest", params={"nonce": "00" * 16}, verify=False).json()
    certificate = x509.load_pem_x509_certificate(body["certificate_chain"][0].encode())
    assert certificate.subject.rfc4514_string().count("O=Example Org") == 1
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "cas.example.test" in names.get_values_for_type(x509.DNSName)
    assert body["report"]["tls_key_hash"] == before  # same key, new certificate
    # The pinned channel still works after the reissue.
    assert run_casctl(owner_home, ["whoami"]).returncode == 0


def test_wrong_token_is_refused(cas: CasProcess, owner_config: Path, owner_home: Path) -> None:
    result = casctl_provision(owner_home, cas.url, "wrong", owner_config)
    assert result.returncode == 1
    assert "wrong provisioning token" in result.stderr
    assert report_of(cas)["provisioned"] is False


def pinned_owner_client(cas: CasProcess, identity: ClientIdentity) -> CasClient:
    verified = cas.attest()
    return CasClient(
        cas.url,
        ca_certificate_pem=verified.ca_certificate_pem,
        cas_key_hash=verified.report.cas_key_hash,
        identity=identity,
    )


def test_token_back_off(cas: CasProcess) -> None:
    identity = ClientIdentity.generate()
    config = OwnerConfig()
    with pinned_owner_client(cas, identity) as client:
        for _ in range(10):
            with pytest.raises(ApiError) as refused:
                client.provision("wrong", config)
            assert refused.value.code == "wrong-token"
        with pytest.raises(ApiError) as eleventh:
            client.provision("wrong", config)
        assert eleventh.value.code == "wrong-token"
        with pytest.raises(ApiError) as closed:
            client.provision(token_of(cas), config)
        assert closed.value.status == 429
        assert closed.value.code == "provisioning-backoff"
    assert "wrong provisioning tokens; provisioning is closed" in cas.log()


def test_anonymous_provisioning_is_refused(cas: CasProcess) -> None:
    response = httpx.post(
        f"{cas.url}/v1/provision",
        json={"token": token_of(cas), "owner_config": {}},
        verify=False,
    )
    assert response.status_code == 401
    assert response.json()["error"] == "signature-required"


def test_invalid_owner_config_in_request_is_refused(cas: CasProcess) -> None:
    # The SDK sends only valid owner configs: this request is written by hand.
    verified = cas.attest()
    signer = ProofAuth(ClientIdentity.generate(), verified.report.cas_key_hash)
    with httpx.Client(verify=pinned_ssl_context(verified.ca_certificate_pem)) as http:
        refused = http.post(
            f"{cas.url}/v1/provision",
            json={"token": token_of(cas), "owner_config": {"bogus": 1}},
            auth=signer,
        )
    assert refused.status_code == 400
    assert "bogus" in refused.json()["message"]
    assert report_of(cas)["provisioned"] is False


def test_concurrent_provisioning_exactly_one_wins(
    cas: CasProcess, owner_config: Path, tmp_path: Path
) -> None:
    token = token_of(cas)

    def provision(index: int) -> subprocess.CompletedProcess[str]:
        return casctl_provision(tmp_path / f"owner-{index}", cas.url, token, owner_config)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(provision, range(4)))
    assert sorted(r.returncode for r in results) == [0, 1, 1, 1], [r.stderr for r in results]
    for loser in (r for r in results if r.returncode):
        assert "already provisioned" in loser.stderr
    winner = next(i for i, r in enumerate(results) if r.returncode == 0)
    me = json.loads(
        run_casctl(tmp_path / f"owner-{winner}", ["self", "show-identity", "--json"]).stdout
    )
    assert report_of(cas)["owner_identity_hash"] == me["key_hash"]


def test_update_config_owner_only_and_report_follows(
    cas: CasProcess, owner_config: Path, owner_home: Path, tmp_path: Path
) -> None:
    assert casctl_provision(owner_home, cas.url, token_of(cas), owner_config).returncode == 0
    before = report_of(cas)["owner_config_sha256"]
    changed = tmp_path / "changed.toml"
    changed.write_text(OWNER_CONFIG.replace("Example Org", "Other Org"))

    stranger = tmp_path / "stranger"
    assert run_casctl(stranger, ["attest", cas.url, "--only-for-testing-debug"]).returncode == 0
    refused = run_casctl(stranger, ["update-config", "--config-file", str(changed)])
    assert refused.returncode == 1
    assert "only the CAS owner" in refused.stderr
    assert run_casctl(stranger, ["show-config"]).returncode == 1
    assert report_of(cas)["owner_config_sha256"] == before

    updated = run_casctl(owner_home, ["update-config", "--config-file", str(changed)])
    assert updated.returncode == 0, updated.stderr
    after = report_of(cas)["owner_config_sha256"]
    assert after != before
    assert after in updated.stdout
    stale = run_casctl(
        stranger,
        ["attest", cas.url, "--only-for-testing-debug", "--expect-owner-config", str(owner_config)],
    )
    assert stale.returncode == 4
    assert "owner config" in stale.stderr


# --- self-provisioning -------------------------------------------------------------------------


def self_provision(cas: CasProcess, config: Path, identity: Path, *flags: str) -> list[str]:
    return cas.command(
        "provision", "--owner-config", str(config), "--owner-identity", str(identity), *flags
    )


def test_self_provisioning_twice_with_flag_skips(
    cas_process: CasProcess, owner_config: Path, owner_home: Path
) -> None:
    certificate = owner_certificate(owner_home)
    cas_process.self_provision(owner_config, certificate)
    first = report_of(cas_process)
    assert first["provisioned"] is True
    assert first["self_provisioned"] is True
    assert cas_process.stop() == 0
    cas_process.self_provision(owner_config, certificate)
    second = report_of(cas_process)
    assert second["owner_identity_hash"] == first["owner_identity_hash"]
    assert second["provisioned_at"] == first["provisioned_at"]
    assert "given owner identity and config match" in cas_process.log()


def test_self_provisioning_without_flag_exits_2_untouched(
    cas_process: CasProcess, owner_config: Path, owner_home: Path
) -> None:
    certificate = owner_certificate(owner_home)
    done = subprocess.run(
        self_provision(cas_process, owner_config, certificate, "--no-serve"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    database = cas_process.database.read_bytes()
    again = subprocess.run(
        self_provision(cas_process, owner_config, certificate, "--no-serve"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 2
    assert "already provisioned" in again.stderr
    assert again.stderr.count("\n") == 1
    assert cas_process.database.read_bytes() == database


def test_changed_files_warn_and_expect_refuses(
    cas_process: CasProcess, owner_config: Path, owner_home: Path, tmp_path: Path
) -> None:
    certificate = owner_certificate(owner_home)
    cas_process.self_provision(owner_config, certificate)
    cas_process.stop()
    changed = tmp_path / "changed.toml"
    changed.write_text(OWNER_CONFIG.replace("DE", "FR"))
    cas_process.self_provision(changed, certificate)
    assert "do NOT match" in cas_process.log()
    assert "owner config (provisioned" in cas_process.log()
    refused = run_casctl(
        tmp_path / "client",
        [
            "attest",
            cas_process.url,
            "--only-for-testing-debug",
            "--expect-owner-config",
            str(changed),
        ],
    )
    assert refused.returncode == 4
    assert "owner config" in refused.stderr
    accepted = run_casctl(
        tmp_path / "client",
        [
            "attest",
            cas_process.url,
            "--only-for-testing-debug",
            "--expect-owner-config",
            str(owner_config),
            "--expect-owner-identity",
            str(certificate),
        ],
    )
    assert accepted.returncode == 0, accepted.stderr


@pytest.mark.parametrize(
    ("config_text", "certificate_text", "message"),
    [
        ("[bogus]\nx = 1\n", None, "bogus"),
        ("[api_identity\n", None, "invalid TOML"),
        (None, "not a certificate\n", "not a PEM certificate"),
    ],
)
def test_invalid_files_leave_cas_unprovisioned(
    cas_process: CasProcess,
    owner_config: Path,
    owner_home: Path,
    tmp_path: Path,
    config_text: str | None,
    certificate_text: str | None,
    message: str,
) -> None:
    certificate = owner_certificate(owner_home)
    if config_text is not None:
        owner_config.write_text(config_text)
    if certificate_text is not None:
        certificate = tmp_path / "bad.pem"
        certificate.write_text(certificate_text)
    result = subprocess.run(
        self_provision(cas_process, owner_config, certificate, "--no-serve"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    facts = json.loads(cas_process.run("show-identification", "--json").stdout)
    assert facts["provisioned"] is False


def test_expired_owner_certificate_is_refused(
    cas_process: CasProcess, owner_config: Path, tmp_path: Path
) -> None:
    key = generate_private_key("P-256")
    expired = create_identity_certificate(
        key, "old owner", valid_for=timedelta(days=1), now=datetime.now(UTC) - timedelta(days=10)
    )
    path = tmp_path / "expired.pem"
    path.write_bytes(certificate_pem(expired))
    result = subprocess.run(
        self_provision(cas_process, owner_config, path, "--no-serve"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "expired" in result.stderr


def test_expired_owner_certificate_still_starts_a_provisioned_cas(
    cas_process: CasProcess, owner_config: Path, tmp_path: Path
) -> None:
    key = generate_private_key("P-256")
    valid = create_identity_certificate(key, "owner", valid_for=timedelta(days=1))
    path = tmp_path / "owner.pem"
    path.write_bytes(certificate_pem(valid))
    done = subprocess.run(
        self_provision(cas_process, owner_config, path, "--no-serve"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # Same key, certificate expired since: the owner is its key, so the CAS still starts.
    expired = create_identity_certificate(
        key, "owner", valid_for=timedelta(days=1), now=datetime.now(UTC) - timedelta(days=10)
    )
    path.write_bytes(certificate_pem(expired))
    again = subprocess.run(
        self_provision(
            cas_process, owner_config, path, "--no-serve", "--skip-if-already-provisioned"
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert "given owner identity and config match" in again.stderr
