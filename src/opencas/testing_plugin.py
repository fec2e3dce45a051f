"""The OpenCAS pytest plugin: a transient, self-provisioned CAS for your tests.

Installing OpenCAS registers this plugin with pytest (entry point ``opencas``). Its fixture
``opencas_cas`` starts a real ``cas`` process on free ports in a temporary directory,
self-provisioned with a fresh owner identity and a small owner config, attests it, and yields a
:class:`~opencas.testing.SelfProvisionedCas`::

    from opencas.testing import SelfProvisionedCas

    def test_something(opencas_cas: SelfProvisionedCas) -> None:
        assert opencas_cas.client.whoami() == opencas_cas.owner.key_hash

The CAS runs on the simulated platform, in debug mode: for tests only. It is stopped when the
test ends. Without pytest, :func:`opencas.testing.start_self_provisioned_cas` does the same.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from opencas.testing import SelfProvisionedCas, start_self_provisioned_cas

__all__ = ["opencas_cas"]


@pytest.fixture
def opencas_cas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SelfProvisionedCas]:
    """A running CAS, self-provisioned for this test, attested, with a client signing as owner."""
    cas = start_self_provisioned_cas(tmp_path_factory.mktemp("opencas"))
    try:
        yield cas
    finally:
        cas.stop()
