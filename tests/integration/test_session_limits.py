"""One request cannot stall the CAS (docs/security.md#availability).

Against a real ``cas``: the biggest session its default ``[limits]`` allow is uploaded and then
attested, while another process measures ``/healthz`` and ``/v1/version``, whose p99 stays under
100 ms; a session over a limit is refused naming it; a key that uploads too fast gets 429.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opencas.attestation.simulated import create_simulated_evidence
from opencas.attestation.workload_binding import ConfigId, workload_report_data
from opencas.client import (
    ApiError,
    CasClient,
    ClientIdentity,
    VerifiedCas,
)
from opencas.config.availability import SessionLimits
from opencas.crypto.hpke_seal import open_workload_config
from opencas.testing import CasProcess

LIMITS = SessionLimits()
MEASUREMENT = "5b" * 32
FILLERS = LIMITS.max_secrets_per_session - 5
ATTESTATIONS = 3
P99_BOUND = 0.100

# Measures GET /healthz (enclave API) and GET /v1/version (client API), one request at a time
# each, until the file named by argv[3] exists; prints every latency in seconds as JSON.
PROBE = """
import json, pathlib, sys, threading, time
import httpx

def probe(url, stop, latencies):
    with httpx.Client(verify=False, timeout=30.0) as client:
        while not stop.exists():
            started = time.perf_counter()
            client.get(url).raise_for_status()
            latencies.append(time.perf_counter() - started)
            time.sleep(0.005)

stop = pathlib.Path(sys.argv[3])
results = {url: [] for url in sys.argv[1:3]}
threads = [threading.Thread(target=probe, args=(url, stop, results[url])) for url in results]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(results))
"""


def biggest_session() -> str:
    """A session at every default limit: its size, placeholders, secrets and RSA keys, and a
    configuration that renders to nearly ``max_rendered_config_bytes``."""
    fillers = [f"filler{index}" for index in range(FILLERS)]
    # 4096-byte ascii secrets and RSA-3072 certificates: about 3.7 MB of the 4 MiB allowed.
    references = [f"$$CAS::{fillers[index % FILLERS]}$$" for index in range(850)]
    references += ["$$CAS::web.crt$$"] * (LIMITS.max_placeholders_per_session - 850)
    lines = "".join(f"    {reference}\n" for reference in references)
    secrets = "".join(f"  - name: {name}\n    kind: ascii\n    size: 4096\n" for name in fillers)
    text = f"""\
name: biggest
version: "0.3"
services:
  - name: app
    image_name: img
    attestation:
      simulated_measurement: "{MEASUREMENT}"
images:
  - name: img
    injection_files:
      - path: /etc/app.conf
        content: |
{lines.replace("    ", "          ")}PADDING
secrets:
  - name: ca
    kind: x509-ca
    key_type: RSA-3072
  - name: web
    kind: x509
    key_type: RSA-3072
    issuer: ca
  - name: key1
    kind: private-key
    key_type: RSA-3072
  - name: key2
    kind: private-key
    key_type: RSA-2048
  - name: big
    kind: ascii
    size: 4096
{secrets}security:
  attestation:
    tolerate: [simulated]
"""
    room = LIMITS.max_session_bytes - len(text.encode()) + len("PADDING")
    padding = "".join(f"          {'#' * 89}\n" for _ in range(room // 100))
    return text.replace("PADDING", padding)


@pytest.fixture
def cas(tmp_path: Path) -> Iterator[CasProcess]:
    process = CasProcess(tmp_path / "cas")
    try:
        yield process.start()
    finally:
        process.stop()


def signing_client(cas: CasProcess, verified: VerifiedCas) -> CasClient:
    return CasClient.pinned_to(cas.url, verified, ClientIdentity.generate())


def attest_workload(enclave: httpx.Client, platform_key: Ed25519PrivateKey) -> dict[str, object]:
    key = ec.generate_private_key(ec.SECP256R1())
    public_key = base64.b64encode(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    nonce = enclave.post("/v1/enclave/nonce").json()["nonce"]
    config_id = ConfigId("biggest", "app")
    evidence = create_simulated_evidence(
        platform_key, MEASUREMENT, workload_report_data(config_id, nonce, public_key)
    )
    answer = enclave.post(
        "/v1/enclave/attest",
        json={
            "config_id": str(config_id),
            "nonce": nonce,
            "public_key": public_key,
            "evidence": evidence.to_json(),
        },
    )
    answer.raise_for_status()
    config: dict[str, object] = json.loads(
        open_workload_config(key, answer.json()["sealed"], str(config_id), nonce)
    )
    return config


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def test_the_biggest_session_allowed_does_not_stall_other_requests(
    cas: CasProcess, tmp_path: Path
) -> None:
    text = biggest_session()
    assert LIMITS.max_session_bytes - 100 < len(text.encode()) <= LIMITS.max_session_bytes
    verified = cas.attest()
    enclave_url = f"https://127.0.0.1:{cas.enclave_port}"
    stop = tmp_path / "stop-probe"
    probe = subprocess.Popen(
        [sys.executable, "-c", PROBE, f"{enclave_url}/healthz", f"{cas.url}/v1/version", stop],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # the probe's own start is not what is measured
        with signing_client(cas, verified) as author:
            author.create_session(text)
        with httpx.Client(base_url=enclave_url, verify=False, timeout=120.0) as enclave:
            platform_key = Ed25519PrivateKey.generate()
            configs = [attest_workload(enclave, platform_key) for _ in range(ATTESTATIONS)]
    finally:
        stop.touch()
        output, _ = probe.communicate(timeout=60)
    files = configs[0]["injection_files"]
    assert isinstance(files, list)
    rendered = base64.b64decode(files[0]["content"])
    assert len(rendered) > 0.85 * LIMITS.max_rendered_config_bytes
    for url, latencies in json.loads(output).items():
        assert len(latencies) > 20, url
        assert p99(latencies) < P99_BOUND, (url, p99(latencies), max(latencies))


def test_a_session_over_a_limit_is_refused_naming_it(cas: CasProcess) -> None:
    padding = f"          {'#' * 89}\n"
    too_many = biggest_session().replace(padding, "          $$CAS::big$$\n", 1)
    with signing_client(cas, cas.attest()) as author, pytest.raises(ApiError) as refused:
        author.create_session(too_many)
    assert refused.value.status == 413
    assert refused.value.code == "limit-exceeded"
    assert refused.value.details["limit"] == "max_placeholders_per_session"
    assert "[limits] max_placeholders_per_session" in str(refused.value)


def small_session(name: str) -> str:
    return f"""\
name: {name}
version: "0.3"
services:
  - name: app
    command: ["true"]
"""


def test_a_key_that_uploads_too_fast_is_refused_and_only_that_key(tmp_path: Path) -> None:
    process = CasProcess(
        tmp_path / "cas", limits={"session_uploads_per_minute": 2, "session_upload_burst": 2}
    )
    process.start()
    try:
        verified = process.attest()
        with signing_client(process, verified) as fast, signing_client(process, verified) as calm:
            fast.create_session(small_session("fast-1"))
            fast.create_session(small_session("fast-2"))
            with pytest.raises(ApiError) as refused:
                fast.create_session(small_session("fast-3"))
            # The key that did not upload yet is not held back by the one that did.
            calm.create_session(small_session("calm-1"))
    finally:
        process.stop()
    assert refused.value.status == 429
    assert refused.value.code == "rate-limited"
    assert "[limits] session_uploads_per_minute" in str(refused.value)
