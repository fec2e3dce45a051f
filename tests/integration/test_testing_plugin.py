"""The pytest plugin's ``opencas_cas`` fixture, used as a downstream project would use it."""

from __future__ import annotations

from pathlib import Path

import pytest

from opencas.client import ApiError, CasClient
from opencas.client.identity import ClientIdentity
from opencas.config.owner import load_owner_config, owner_config_sha256
from opencas.testing import SelfProvisionedCas, start_self_provisioned_cas

SECRET = "0123456789abcdef0123456789abcdef"


def test_fixture_gives_an_attested_owner_client(opencas_cas: SelfProvisionedCas) -> None:
    client = opencas_cas.client
    assert client.whoami() == opencas_cas.owner.key_hash

    report = opencas_cas.verified.report
    assert report.provisioned is True
    assert report.self_provisioned is True
    assert report.mode == "debug"
    assert report.owner_identity_hash == opencas_cas.owner.key_hash
    assert report.owner_config_sha256 == owner_config_sha256(
        load_owner_config(opencas_cas.owner_config_path).config
    )
    assert opencas_cas.url == opencas_cas.process.url
    assert opencas_cas.owner_certificate_path.is_file()

    shown = client.owner_config()
    assert shown.owner_config["api_identity"]["common_name"] == "localhost"
    assert shown.owner_config_sha256 == report.owner_config_sha256


def test_fixture_cas_refuses_a_stranger_as_owner(opencas_cas: SelfProvisionedCas) -> None:
    stranger = ClientIdentity.generate()
    with CasClient(
        opencas_cas.url,
        ca_certificate_pem=opencas_cas.verified.ca_certificate_pem,
        cas_key_hash=opencas_cas.verified.report.cas_key_hash,
        identity=stranger,
    ) as client:
        assert client.whoami() == stranger.key_hash
        with pytest.raises(ApiError) as refused:
            client.owner_config()
    assert refused.value.code == "not-owner"


def test_owner_reads_own_config_with_secrets_redacted(tmp_path: Path) -> None:
    config = f'[dcap]\npccs_url = "https://pccs.example.test/"\nsubscription_key = "{SECRET}"\n'
    cas = start_self_provisioned_cas(tmp_path, owner_config_text=config)
    try:
        shown = cas.client.owner_config()
    finally:
        assert cas.stop() == 0
    assert shown.owner_config["dcap"] == {
        "pccs_url": "https://pccs.example.test/",
        "subscription_key": "<redacted>",
    }
    assert SECRET not in str(shown)
    assert SECRET not in cas.process.log()
