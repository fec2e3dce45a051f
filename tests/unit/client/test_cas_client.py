"""CasClient's typed methods against the in-process CAS, and answers of the wrong shape."""

from __future__ import annotations

import httpx
import pytest

from opencas.client import ApiError, CasClient, ClientError, ClientIdentity, MalformedAnswer
from opencas.config.owner import owner_config_sha256, parse_owner_config
from opencas.service.cas_records import read_provisioning_token
from opencas.testing import InProcessCas

OWNER = ClientIdentity.generate()
SECRET = "0123456789abcdef0123456789abcdef"
CONFIG = parse_owner_config(
    f'[dcap]\npccs_url = "https://pccs.example.test/"\nsubscription_key = "{SECRET}"\n',
    "owner.toml",
    "toml",
).config


def test_provisioning_makes_the_signer_the_owner(api: InProcessCas) -> None:
    token = read_provisioning_token(api.cas.store)
    assert token is not None
    provisioned = api.client(OWNER).provision(token, CONFIG)
    assert provisioned.provisioned is True
    assert provisioned.owner_identity_hash == OWNER.key_hash
    assert provisioned.owner_config_sha256 == owner_config_sha256(CONFIG)
    assert provisioned.provisioned_at is not None
    with pytest.raises(ApiError) as again:
        api.client(ClientIdentity.generate()).provision(token, CONFIG)
    assert (again.value.status, again.value.code) == (409, "already-provisioned")


def test_the_owner_reads_and_replaces_the_owner_config(api: InProcessCas) -> None:
    api.provision(OWNER, CONFIG)
    owner = api.client(OWNER)
    shown = owner.owner_config()
    assert shown.owner_config_sha256 == owner_config_sha256(CONFIG)
    assert shown.owner_config["dcap"]["subscription_key"] == "<redacted>"
    assert SECRET not in str(shown)
    replacement = parse_owner_config('[api_identity]\ncommon_name = "cas.test"\n', "o", "toml")
    assert owner.update_owner_config(replacement.config) == owner_config_sha256(replacement.config)
    assert owner.owner_config().owner_config["api_identity"]["common_name"] == "cas.test"
    with pytest.raises(ApiError) as stranger:
        api.client(ClientIdentity.generate()).owner_config()
    assert (stranger.value.status, stranger.value.code) == (403, "not-owner")


def test_version_names_the_enclave_port(api: InProcessCas) -> None:
    assert api.client().version().enclave_port == api.cas.config.enclave_listen.port


def test_a_signed_request_needs_an_identity(api: InProcessCas) -> None:
    with pytest.raises(ClientError, match="needs a client identity"):
        api.client().create_session('name: x\nversion: "0.3"\n')


@pytest.mark.parametrize(
    "body",
    [b'{"identity": 7}', b"[]", b"not json", b'{"identities": "abc"}'],
)
def test_an_answer_of_the_wrong_shape_is_malformed(body: bytes) -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(200, content=body))
    with (
        CasClient("https://cas.test", transport=transport) as client,
        pytest.raises(MalformedAnswer, match="GET /v1/whoami"),
    ):
        client.whoami(signed=False)


def test_an_error_answer_keeps_its_extra_members() -> None:
    error = {"error": "stale-predecessor", "message": "changed", "current_hash": "ab" * 32}
    transport = httpx.MockTransport(lambda _: httpx.Response(409, json=error))
    with (
        CasClient("https://cas.test", transport=transport) as client,
        pytest.raises(ApiError) as stale,
    ):
        client.version()
    assert (stale.value.status, stale.value.code, stale.value.message) == (
        409,
        "stale-predecessor",
        "changed",
    )
    assert stale.value.details == {"current_hash": "ab" * 32}
