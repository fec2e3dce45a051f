"""Volumes on the CAS: the state it keeps across updates, what a workload receives, and the
tag reports it accepts (compare-and-swap, proven by the attestation) or refuses."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opencas.attestation.simulated import create_simulated_evidence
from opencas.attestation.workload_binding import ConfigId, workload_report_data
from opencas.client import ApiError
from opencas.client.enclave import VolumeGrant, parse_workload_config
from opencas.crypto.hpke_seal import open_workload_config
from opencas.policy.caller import Caller
from opencas.service.sessions import create_session, update_session
from opencas.service.volume_states import load_volume_states
from opencas.service.volumes import REFUSALS_PER_SERVICE
from opencas.testing import InProcessCas

AUTHOR = Caller("a1" * 32)
MEASUREMENT = "11" * 32
PLATFORM_KEY = Ed25519PrivateKey.generate()
KEY = "5f" * 32
SESSION = """\
name: vault
version: "0.3"
services:
  - name: app
    image_name: img
    attestation:
      simulated_measurement: "{measurement}"
images:
  - name: img
    volumes:
      - name: data
        path: /srv/data
volumes:
  - name: data
{extra}security:
  attestation:
    tolerate: [simulated]
"""
TAG_A, TAG_B, TAG_C = "aa" * 32, "bb" * 32, "cc" * 32


def text(extra: str = "", predecessor: str | None = None) -> str:
    head = f'predecessor: "{predecessor}"\n' if predecessor else ""
    return head + SESSION.format(measurement=MEASUREMENT, extra=extra)


def grant(api: InProcessCas, config_id: str = "vault/app") -> VolumeGrant:
    """Attest as the service and return its one volume grant."""
    client = api.enclave_client()
    key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    nonce = client.nonce()
    data = workload_report_data(ConfigId.parse(config_id), nonce, public)
    evidence = create_simulated_evidence(PLATFORM_KEY, MEASUREMENT, data)
    answer = client.attest(ConfigId.parse(config_id), nonce, public, evidence)
    plaintext = open_workload_config(key, answer.sealed, config_id, nonce)
    (volume,) = parse_workload_config(plaintext, ConfigId.parse(config_id)).volumes
    return volume


def refusal(api: InProcessCas, volume: VolumeGrant, previous: str | None, tag: str) -> ApiError:
    with pytest.raises(ApiError) as raised:
        api.enclave_client().report_volume_tag(volume, previous, tag)
    return raised.value


def test_a_workload_receives_the_key_and_current_tag(api: InProcessCas) -> None:
    create_session(api.cas, text(), AUTHOR)
    first = grant(api)
    assert (first.name, first.path, first.tag) == ("data", "/srv/data", None)
    (state,) = load_volume_states(api.cas.store, "vault").values()
    assert first.key == bytes.fromhex(state.key)

    api.enclave_client().report_volume_tag(first, None, TAG_A)

    assert grant(api).tag == TAG_A
    assert load_volume_states(api.cas.store, "vault")["data"].tag == TAG_A


def test_the_second_writer_from_the_same_tag_is_refused(api: InProcessCas) -> None:
    create_session(api.cas, text(), AUTHOR)
    one, two = grant(api), grant(api)
    api.enclave_client().report_volume_tag(one, None, TAG_A)

    lost = refusal(api, two, None, TAG_B)

    assert (lost.status, lost.code) == (409, "stale-volume-tag")
    assert lost.details["current_tag"] == TAG_A
    assert "writes are not kept" in lost.message
    assert load_volume_states(api.cas.store, "vault")["data"].tag == TAG_A


@pytest.mark.parametrize(
    "forge",
    [
        lambda g: VolumeGrant(g.name, g.path, g.key, g.tag, g.ticket, b"\0" * 32),
        lambda g: VolumeGrant(
            g.name, g.path, g.key, g.tag, g.ticket[:-4] + "AAAA", g.report_secret
        ),
    ],
)
def test_a_report_not_proven_by_the_attestation_is_refused(api: InProcessCas, forge: Any) -> None:
    create_session(api.cas, text(), AUTHOR)
    forged = forge(grant(api))

    refused = refusal(api, forged, None, TAG_A)

    assert refused.status in (400, 403)
    assert refused.code in ("invalid-request", "volume-report-refused")
    assert load_volume_states(api.cas.store, "vault")["data"].tag is None


def test_a_report_after_a_session_update_is_refused(api: InProcessCas) -> None:
    record = create_session(api.cas, text(), AUTHOR)
    before = grant(api)
    update_session(api.cas, "vault", text(predecessor=record.hash), AUTHOR)

    refused = refusal(api, before, None, TAG_A)

    assert (refused.status, refused.code) == (409, "session-changed")


def test_an_update_keeps_the_key_and_tag_unless_the_given_key_changes(api: InProcessCas) -> None:
    record = create_session(api.cas, text(), AUTHOR)
    api.enclave_client().report_volume_tag(grant(api), None, TAG_A)
    kept = load_volume_states(api.cas.store, "vault")["data"]

    record = update_session(api.cas, "vault", text(predecessor=record.hash), AUTHOR)
    assert load_volume_states(api.cas.store, "vault")["data"] == kept

    given = f"    fspf_key: '{KEY}'\n    fspf_tag: '{TAG_C}'\n"
    update_session(api.cas, "vault", text(given, predecessor=record.hash), AUTHOR)
    renewed = load_volume_states(api.cas.store, "vault")["data"]
    assert (renewed.key, renewed.tag, renewed.given_key) == (KEY, TAG_C, True)
    assert grant(api).tag == TAG_C


def test_refused_reports_are_rate_limited_per_service(api: InProcessCas) -> None:
    create_session(api.cas, text(), AUTHOR)
    volume = grant(api)
    forged = VolumeGrant(volume.name, volume.path, volume.key, None, volume.ticket, b"\1" * 32)
    for _ in range(REFUSALS_PER_SERVICE):
        assert refusal(api, forged, None, TAG_A).code == "volume-report-refused"

    limited = refusal(api, volume, None, TAG_A)

    assert (limited.status, limited.code) == (429, "volume-report-rate-limited")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"ticket": "x", "previous_tag": None, "tag": "AB" * 32, "proof": "00" * 32},
        {"ticket": "e30", "previous_tag": None, "tag": TAG_A, "proof": "00" * 32},
        {"ticket": "!!", "previous_tag": None, "tag": TAG_A, "proof": "00" * 32},
        {"ticket": "A" * 5000, "previous_tag": None, "tag": TAG_A, "proof": "00" * 32},
        {"ticket": "W1tbW1tbW1tbW10", "previous_tag": 1, "tag": TAG_A, "proof": "00" * 32},
    ],
)
def test_malformed_reports_are_400(api: InProcessCas, body: dict[str, Any]) -> None:
    response = api.enclave_client()._client._http.post(
        "/v1/enclave/volume-tag", content=json.dumps(body)
    )

    assert response.status_code == 400
