"""200 simulated workloads attest at once against a real CAS, and every one gets its config."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opencas.attestation.simulated import create_simulated_evidence
from opencas.attestation.workload_binding import ConfigId, workload_report_data
from opencas.crypto.hpke_seal import open_workload_config
from opencas.testing import SelfProvisionedCas

MEASUREMENT = "5a" * 32
SESSION = f"""\
name: load
version: "0.3"
services:
  - name: app
    command: ["app"]
    environment:
      TOKEN: "$$CAS::token$$"
    attestation:
      simulated_measurement: "{MEASUREMENT}"
secrets:
  - name: token
    kind: ascii
security:
  attestation:
    tolerate: [simulated]
"""
WORKLOADS = 200


async def one_workload(client: httpx.AsyncClient, platform_key: Ed25519PrivateKey) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    public_key = base64.b64encode(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    nonce = (await client.post("/v1/enclave/nonce")).json()["nonce"]
    evidence = create_simulated_evidence(
        platform_key, MEASUREMENT, workload_report_data(ConfigId("load", "app"), nonce, public_key)
    )
    response = await client.post(
        "/v1/enclave/attest",
        json={
            "config_id": "load/app",
            "nonce": nonce,
            "public_key": public_key,
            "evidence": evidence.to_json(),
        },
    )
    response.raise_for_status()
    config = json.loads(open_workload_config(key, response.json()["sealed"], "load/app", nonce))
    token: str = config["environment"]["TOKEN"]
    return token


async def attest_all(url: str) -> list[str | BaseException]:
    platform_key = Ed25519PrivateKey.generate()
    limits = httpx.Limits(max_connections=WORKLOADS)
    async with httpx.AsyncClient(base_url=url, verify=False, timeout=60.0, limits=limits) as client:
        return await asyncio.gather(
            *(one_workload(client, platform_key) for _ in range(WORKLOADS)),
            return_exceptions=True,
        )


def test_200_concurrent_attestations_all_succeed(opencas_cas: SelfProvisionedCas) -> None:
    opencas_cas.client.create_session(SESSION)
    enclave_url = f"https://127.0.0.1:{opencas_cas.process.enclave_port}"
    results = asyncio.run(attest_all(enclave_url))
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    assert len(set(results)) == 1  # every workload got the same session secret
