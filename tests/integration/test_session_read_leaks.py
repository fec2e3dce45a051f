"""A read does not tell who may not read a session that its name exists (docs/security.md).

Against a real CAS: an anonymous caller, and a signed caller without a ``read`` right, probe an
existing session and a missing name of the same length; the answers are the same, byte for byte
but for the name.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from opencas.client import ApiError, CasClient, ClientIdentity
from opencas.testing import SelfProvisionedCas

SAMPLES = Path(__file__).parent.parent / "data" / "sessions"
EXISTING = "simulated-dev"
MISSING = "simulated-xyz"


def _anonymous_answer(cas: SelfProvisionedCas, name: str) -> tuple[int, dict[str, str], str]:
    context = ssl.create_default_context(cadata=cas.verified.ca_certificate_pem.decode())
    # The CAS's TLS certificate names the CAS, not 127.0.0.1; the pinned CA is what is checked.
    context.check_hostname = False
    with httpx.Client(base_url=cas.url, verify=context) as client:
        answer = client.get(f"/v1/sessions/{name}")
    headers = {key: value for key, value in answer.headers.items() if key != "date"}
    return answer.status_code, headers, answer.text.replace(name, "NAME")


def _signed_answer(client: CasClient, name: str) -> tuple[int, str, str]:
    with pytest.raises(ApiError) as refused:
        client.read_session(name)
    error = refused.value
    return error.status, error.code, error.message.replace(name, "NAME")


def test_unreadable_and_missing_sessions_answer_alike(opencas_cas: SelfProvisionedCas) -> None:
    opencas_cas.client.create_session((SAMPLES / "simulated.yaml").read_text())
    assert opencas_cas.client.read_session(EXISTING).name == EXISTING

    existing = _anonymous_answer(opencas_cas, EXISTING)
    missing = _anonymous_answer(opencas_cas, MISSING)
    assert existing == missing
    assert existing[0] == 404

    stranger = CasClient(
        opencas_cas.url,
        ca_certificate_pem=opencas_cas.verified.ca_certificate_pem,
        cas_key_hash=opencas_cas.verified.report.cas_key_hash,
        identity=ClientIdentity.generate(),
    )
    with stranger:
        assert _signed_answer(stranger, EXISTING) == _signed_answer(stranger, MISSING)
        assert _signed_answer(stranger, EXISTING)[:2] == (404, "not-found")
