"""The OpenCAS pytest plugin: a transient, self-provisioned CAS for your tests.

Installing OpenCAS registers this plugin with pytest (entry point ``opencas``). Its fixture
``opencas_cas`` starts a real ``cas`` process on free ports in a temporary directory,
self-provisioned with a fresh owner identity and a small owner config, attests it, and yields a
:class:`SelfProvisionedCas`::

    def test_something(opencas_cas: SelfProvisionedCas) -> None:
        assert opencas_cas.client.whoami() == opencas_cas.owner.key_hash

The CAS runs on the simulated platform, in debug mode: for tests only. It is stopped when the
test ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from opencas.attestation.report import CasExpectations, VerifiedCas
from opencas.client.cas_client import CasClient, new_nonce
from opencas.client.identity import CERTIFICATE_FILE, ClientIdentity
from opencas.config.owner import load_owner_config, owner_config_sha256
from opencas.testing import CasProcess, create_owner_identity, write_owner_config

__all__ = [
    "SelfProvisionedCas",
    "attest_as_owner",
    "opencas_cas",
    "start_self_provisioned_cas",
]


@dataclass
class SelfProvisionedCas:
    """A running, self-provisioned CAS and a client that attested it and signs as its owner."""

    process: CasProcess
    """The ``cas`` process (its log: ``process.log()``)."""
    owner: ClientIdentity
    """The owner's identity; its certificate is ``owner_directory / "identity-cert.pem"``."""
    owner_directory: Path
    """Where the owner identity is kept, as casctl keeps it: use it as ``CASCTL_HOME``."""
    owner_config_path: Path
    """The owner config the CAS was provisioned with."""
    verified: VerifiedCas
    """What the attestation verified: the report, the evidence and the CAS certificates."""
    client: CasClient
    """Pinned to the CAS's CA certificate; signs its requests as the owner."""

    @property
    def url(self) -> str:
        """The client API's URL."""
        return self.process.url

    @property
    def owner_certificate_path(self) -> Path:
        """The owner identity file the CAS was provisioned with."""
        return self.owner_directory / CERTIFICATE_FILE

    def stop(self) -> int:
        """Close the client and stop the CAS (SIGTERM); returns the process's exit code."""
        self.client.close()
        return self.process.stop()


def attest_as_owner(
    url: str, owner: ClientIdentity, owner_config_path: Path
) -> tuple[CasClient, VerifiedCas]:
    """Attest the CAS at ``url`` as provisioned with ``owner`` and this owner config.

    Accepts debug mode (the simulated platform). Returns a client pinned to the attested CAS
    that signs as ``owner``, and what was verified. Raises :class:`AttestationRefused` if the
    CAS has another owner or owner config.
    """
    expectations = CasExpectations(
        nonce=new_nonce(),
        allow_debug=True,
        owner_identity_hash=owner.key_hash,
        owner_config_sha256=owner_config_sha256(load_owner_config(owner_config_path).config),
    )
    with CasClient(url) as bootstrap:
        verified = bootstrap.attest(expectations)
    return CasClient.pinned_to(url, verified, owner), verified


def start_self_provisioned_cas(
    directory: Path, owner_config_text: str | None = None
) -> SelfProvisionedCas:
    """Start a CAS in ``directory``, self-provisioned, and attest it as its owner.

    ``directory`` receives ``owner/`` (the owner identity), ``owner-config.toml`` (the
    development owner config unless ``owner_config_text`` is given) and ``cas/`` (the CAS's
    config, database and log). Stop it with :meth:`SelfProvisionedCas.stop`.
    """
    owner_directory = directory / "owner"
    owner = create_owner_identity(owner_directory)
    config_path = directory / "owner-config.toml"
    if owner_config_text is None:
        write_owner_config(config_path)
    else:
        write_owner_config(config_path, owner_config_text)
    process = CasProcess(directory / "cas")
    try:
        process.self_provision(config_path, owner_directory / CERTIFICATE_FILE)
        client, verified = attest_as_owner(process.url, owner, config_path)
    except BaseException:
        process.stop()
        raise
    return SelfProvisionedCas(process, owner, owner_directory, config_path, verified, client)


@pytest.fixture
def opencas_cas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SelfProvisionedCas]:
    """A running CAS, self-provisioned for this test, attested, with a client signing as owner."""
    cas = start_self_provisioned_cas(tmp_path_factory.mktemp("opencas"))
    try:
        yield cas
    finally:
        cas.stop()
