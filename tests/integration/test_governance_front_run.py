"""An approved child of a signer-governed namespace cannot be taken over by whoever submits it.

The attack: the namespace ``gov`` lets a session be created under it only with a signer's
detached signature, and exports its secret to its namespace. The signer approves the child
``gov/app`` for its intended creator; a third party submits the approved text first, so becomes
its creator, updates it alone to a service of its own measurement, and attests to get the
namespace's secret. Each step now fails: a signature that binds the creator is accepted from no
one else; with a signature that binds none, the third party's creation succeeds but gives it no
update right; and its workload's measurement is not the approved one.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

KEYS = Path(__file__).parent.parent / "data" / "sessions" / "keys"
SIGNER = textwrap.indent((KEYS / "signer-1.crt.pem").read_text(), " " * 10)
NAMESPACE = f"""\
name: gov
version: "0.3"
secrets:
  - name: root
    kind: ascii
    export:
      - namespace: gov
access_policy:
  create_sessions:
    - signer: |
{SIGNER}"""
CHILD = """\
name: gov/app
version: "0.3"
services:
  - name: app
    environment:
      SHARED: "$$CAS::root$$"
    attestation:
      simulated_measurement: "{measurement}"
secrets:
  - name: root
    import:
      session: gov
      secret: root
security:
  attestation:
    tolerate: [simulated]
"""

Casctl = Callable[..., subprocess.CompletedProcess[str]]


def key_hash_of(casctl: Casctl) -> str:
    shown = casctl("self", "show-identity", "--json")
    assert shown.returncode == 0, shown.stderr
    return str(json.loads(shown.stdout)["key_hash"])


def approve(casctl: Casctl, path: Path, tmp_path: Path, creator: str | None = None) -> Path:
    """The signer's detached signature over ``path`` (binding ``creator``, if given)."""
    out = tmp_path / f"{path.stem}-{creator or 'anyone'}.sig.json"
    bind = ["--creator", creator] if creator else []
    signed = casctl(
        "session", "sign", str(path), "--key", str(KEYS / "signer-1.key.pem"), *bind, "-o", str(out)
    )
    assert signed.returncode == 0, signed.stderr
    return out


def setup(
    attested_casctl: Callable[[Path], Casctl], program: Path, tmp_path: Path
) -> tuple[Casctl, Casctl, Path, str]:
    """The namespace, its intended child creator, a third party, the child text, a measurement."""
    owner = attested_casctl(tmp_path / "owner")
    namespace = tmp_path / "gov.yaml"
    namespace.write_text(NAMESPACE)
    created = owner("session", "create", str(namespace))
    assert created.returncode == 0, created.stderr
    intended, third = attested_casctl(tmp_path / "intended"), attested_casctl(tmp_path / "third")
    measured = third("measure", "--", sys.executable, str(program))
    assert measured.returncode == 0, measured.stderr
    child = tmp_path / "app.yaml"
    child.write_text(CHILD.format(measurement=hashlib.sha256(b"approved").hexdigest()))
    return intended, third, child, measured.stdout.strip()


def test_a_signature_bound_to_its_creator_cannot_be_front_run(
    attested_casctl: Callable[[Path], Casctl], program: Path, tmp_path: Path
) -> None:
    intended, third, child, own_measurement = setup(attested_casctl, program, tmp_path)
    signature = approve(intended, child, tmp_path, key_hash_of(intended))

    front_run = third("session", "create", str(child), "--signature", str(signature))
    assert front_run.returncode == 1
    assert "authorises only the identity" in front_run.stderr
    created = intended("session", "create", str(child), "--signature", str(signature))
    assert created.returncode == 0, created.stderr

    # The approved creator updates with the same approval, not alone.
    changed = tmp_path / "changed.yaml"
    changed.write_text(CHILD.format(measurement=own_measurement))
    alone = intended("session", "update", str(changed))
    assert alone.returncode == 1
    assert "does not allow" in alone.stderr
    signed_text = tmp_path / "signed.yaml"
    fetched = intended("session", "read", "gov/app", "-o", str(signed_text))
    assert fetched.returncode == 0, fetched.stderr
    predecessor = signed_text.read_text().splitlines()[0].removeprefix("# hash: ")
    changed.write_text(f'predecessor: "{predecessor}"\n' + changed.read_text())
    update_signature = approve(intended, changed, tmp_path)
    approved = intended("session", "update", str(changed), "--signature", str(update_signature))
    assert approved.returncode == 0, approved.stderr
    ran = intended("run", "--config-id", "gov/app/app", "--", sys.executable, str(program))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("shared-sha256 ")


def test_an_unbound_approval_gives_its_first_submitter_no_update_right(
    attested_casctl: Callable[[Path], Casctl], program: Path, tmp_path: Path
) -> None:
    _, third, child, own_measurement = setup(attested_casctl, program, tmp_path)
    signature = approve(third, child, tmp_path)  # a signature in the old form, binding no one

    front_run = third("session", "create", str(child), "--signature", str(signature))
    assert front_run.returncode == 0, front_run.stderr
    created_hash = front_run.stdout.split()[-1]

    # Its creator may not even read it: CREATOR rules hold for no one it did not bind.
    assert third("session", "read", "gov/app").returncode == 1
    takeover = tmp_path / "takeover.yaml"
    takeover.write_text(
        f'predecessor: "{created_hash}"\n' + CHILD.format(measurement=own_measurement)
    )
    updated = third("session", "update", str(takeover))
    assert updated.returncode == 1
    assert "the update policy of gov/app does not allow this update" in updated.stderr

    ran = third("run", "--config-id", "gov/app/app", "--", sys.executable, str(program))
    assert ran.returncode == 4
    assert "(measurement)" in ran.stderr
    assert "shared-sha256" not in ran.stdout
