"""A bounded schemathesis run against the OpenAPI documents a real CAS serves (docs/security.md).

Both listeners, requests valid by their schema and requests that break it, anonymous and signed
with a fresh identity's request proof: no answer is a 5xx, none takes longer than its timeout,
and the CAS's log holds no traceback afterwards. The number of examples is bounded so that the
run takes well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import Case, GenerationMode

from opencas.client import ClientIdentity
from opencas.crypto.request_proof import create_request_proof
from opencas.testing import SelfProvisionedCas, start_self_provisioned_cas

EXAMPLES = 80
CALL_TIMEOUT = 10.0
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


class ProofSigner(requests.auth.AuthBase):
    """Signs each request with a request proof of ``identity`` addressed to the CAS."""

    def __init__(self, identity: ClientIdentity, audience: str) -> None:
        self.identity = identity
        self.audience = audience

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        proof = create_request_proof(
            self.identity.key,
            self.identity.certificate,
            method=str(request.method),
            url=str(request.url),
            body=body.encode() if isinstance(body, str) else body,
            audience=self.audience,
        )
        request.headers["Authorization"] = f"CAS-Proof {proof}"
        return request


@pytest.fixture(scope="module")
def fuzzed_cas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SelfProvisionedCas]:
    cas = start_self_provisioned_cas(tmp_path_factory.mktemp("fuzzed-cas"))
    try:
        yield cas
    finally:
        cas.stop()


@pytest.fixture(scope="module")
def ca_file(fuzzed_cas: SelfProvisionedCas, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz-ca") / "ca.pem"
    path.write_bytes(fuzzed_cas.verified.ca_certificate_pem)
    return path


def _listener_url(cas: SelfProvisionedCas, listener: str) -> str:
    if listener == "client":
        return cas.url
    return f"https://127.0.0.1:{cas.process.enclave_port}"


def _fuzz(url: str, ca_file: Path, session: requests.Session, mode: GenerationMode) -> set[int]:
    """Send the bounded run of ``mode`` cases to ``url``; returns the statuses answered."""
    document = requests.get(f"{url}/openapi.json", verify=str(ca_file), timeout=CALL_TIMEOUT)
    document.raise_for_status()
    schema = schemathesis.openapi.from_dict(document.json())
    statuses: set[int] = set()

    @FUZZ_SETTINGS
    @given(case=schema.as_strategy(generation_mode=mode))
    def one_request(case: Case) -> None:
        # A hang shows as requests' timeout error, a server fault as a 5xx.
        response = case.call(
            base_url=url, session=session, timeout=CALL_TIMEOUT, verify=str(ca_file)
        )
        assert response.status_code < 500, (case.method, case.formatted_path, response.text)
        statuses.add(response.status_code)

    one_request()
    return statuses


@pytest.mark.parametrize("listener", ["client", "enclave"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("signed", [False, True], ids=["anonymous", "signed"])
def test_no_request_makes_the_cas_fail(
    fuzzed_cas: SelfProvisionedCas,
    ca_file: Path,
    listener: str,
    mode: GenerationMode,
    signed: bool,
) -> None:
    with requests.Session() as session:
        if signed:
            session.auth = ProofSigner(
                ClientIdentity.generate(), fuzzed_cas.verified.report.cas_key_hash
            )
        statuses = _fuzz(_listener_url(fuzzed_cas, listener), ca_file, session, mode)
    if signed and listener == "client":
        # Every proof holds, so the requests reach the endpoints behind the proof check.
        assert 401 not in statuses, statuses
    log = fuzzed_cas.process.log()
    assert "Traceback" not in log, log[-4000:]
