"""Pinning: the enclave API target of a pinned CAS, and the state it is kept in."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from opencas.client.pinning import enclave_target
from opencas.client.state import CasctlState, PinnedCas, load_state, save_state
from opencas.errors import ClientError

Pin = Callable[..., PinnedCas]


@pytest.fixture
def state(pinned_cas: Pin) -> CasctlState:
    return CasctlState(
        default="main",
        cas={
            "main": pinned_cas(url="https://cas.example:8443", ca_certificate_pem="CA-MAIN"),
            "other": pinned_cas(
                url="https://other.example:8443", ca_certificate_pem="CA-OTHER", enclave_port=None
            ),
            "v6": pinned_cas(
                url="https://[::1]:8443", ca_certificate_pem="CA-V6", enclave_port=9000
            ),
        },
    )


def test_target_by_name(state: CasctlState) -> None:
    assert enclave_target("main", state) == ("https://cas.example:18765", b"CA-MAIN")
    assert enclave_target(None, state) == ("https://cas.example:18765", b"CA-MAIN")
    assert enclave_target("v6", state) == ("https://[::1]:9000", b"CA-V6")


def test_target_without_enclave_port(state: CasctlState) -> None:
    with pytest.raises(ClientError, match="attest it again"):
        enclave_target("other", state)


def test_target_url_trusts_the_pinned_cas_with_that_host(state: CasctlState) -> None:
    assert enclave_target("https://other.example:9999", state) == (
        "https://other.example:9999",
        b"CA-OTHER",
    )
    # A host casctl never attested: only the default CAS's CA is trusted.
    assert enclave_target("https://unknown.example:1", state) == (
        "https://unknown.example:1",
        b"CA-MAIN",
    )


def test_target_url_must_be_https(state: CasctlState) -> None:
    with pytest.raises(ClientError, match="must be https"):
        enclave_target("http://cas.example:18765", state)
    with pytest.raises(ClientError, match="must be https"):
        enclave_target("https://cas.example:18765/v1", state)


def test_nothing_pinned() -> None:
    with pytest.raises(ClientError, match="no CAS attested"):
        enclave_target("https://cas.example:18765", CasctlState())


def test_state_without_enclave_port_still_loads(tmp_path: Path, pinned_cas: Pin) -> None:
    save_state(
        tmp_path,
        CasctlState(
            default="main", cas={"main": pinned_cas(url="https://a:1", ca_certificate_pem="CA")}
        ),
    )
    data = json.loads((tmp_path / "state.json").read_text())
    del data["cas"]["main"]["enclave_port"]
    (tmp_path / "state.json").write_text(json.dumps(data))
    assert load_state(tmp_path).cas["main"].enclave_port is None
