"""deploy/gramine/: the manifest template and the availability config the enclave runs with.

Gramine itself is not here, so the template is read as TOML with its Jinja parts blanked out;
what is checked is what the security of the deployment rests on.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from opencas.config.availability import load_availability_config

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "gramine"


def manifest() -> dict[str, Any]:
    text = (DEPLOY / "cas.manifest.template").read_text(encoding="utf-8")
    text = re.sub(r"\{%.*?%\}", "", text)
    text = re.sub(r"= \{\{.*?\}\}$", "= false", text, flags=re.MULTILINE)
    return tomllib.loads(re.sub(r"\{\{.*?\}\}", "JINJA", text))


def test_the_enclave_config_is_gramine_sgx_with_its_database_outside() -> None:
    config = load_availability_config(DEPLOY / "cas.toml")

    assert config.platform_kind == "gramine-sgx"
    assert config.platform.gramine_attestation_dir == Path("/dev/attestation")
    assert config.database_path == Path("/var/lib/cas/cas.db")


def test_the_manifest_runs_cas_serve_from_a_measured_config() -> None:
    loaded = manifest()

    assert loaded["loader"]["argv"] == [
        "python3",
        "-m",
        "opencas.cli.cas",
        "-c",
        "/etc/opencas/cas.toml",
        "serve",
    ]
    mounts = {mount["path"]: mount for mount in loaded["fs"]["mounts"]}
    assert mounts["/etc/opencas/cas.toml"]["uri"] == "file:cas.toml"
    assert "file:cas.toml" in loaded["sgx"]["trusted_files"]
    # The host's environment and command line do not reach the CAS.
    assert "insecure__use_host_env" not in loaded["loader"]
    assert "insecure__use_cmdline_argv" not in loaded["loader"]


def test_the_manifest_is_a_production_enclave_with_dcap_quotes() -> None:
    sgx = manifest()["sgx"]

    assert sgx["debug"] is False
    assert sgx["remote_attestation"] == "dcap"


def test_only_the_database_directory_is_untrusted() -> None:
    loaded = manifest()
    database = load_availability_config(DEPLOY / "cas.toml").database_path

    assert loaded["sgx"]["allowed_files"] == [f"file:{database.parent}/"]
    assert not any(str(database.parent) in entry for entry in loaded["sgx"]["trusted_files"])
    # No encrypted mount: the CAS's sealing key comes from _sgx_mrenclave, which Gramine asks
    # not to share with one.
    assert all(mount.get("type") != "encrypted" for mount in loaded["fs"]["mounts"])
