"""An acknowledged write survives kill -9: sessions and provisioning are on disk when answered."""

from __future__ import annotations

from pathlib import Path

from opencas.testing import attest_as_owner, start_self_provisioned_cas

SESSION = """\
name: durable
version: "0.3"
secrets:
  - name: token
    kind: ascii
"""


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    cas = start_self_provisioned_cas(tmp_path)
    try:
        created = cas.client.create_session(SESSION)
        updated = cas.client.update_session(
            "durable",
            f'predecessor: "{created.hash}"\n' + SESSION + "  - name: more\n    kind: binary\n",
        )
        # No clean shutdown: the process dies right after the answers were received.
        cas.client.close()
        cas.process.kill()
        cas.process.start()
        client, _ = attest_as_owner(cas.url, cas.owner, cas.owner_config_path)
        with client:
            read = client.read_session("durable")
        assert read.hash == updated.hash
        assert read.revision == 2
    finally:
        cas.process.stop()
