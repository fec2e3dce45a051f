"""A secret exported without a pin cannot be taken by whoever claims the importer's name first.

The attack: an exporter stores a session that exports a secret to the session ``importer``
without a ``session_hash`` pin, before anyone created ``importer``. An attacker with a self-made
key creates ``importer``, importing the secret into a service with its own measurement, and
attests. The CAS now refuses the exporter's session, so there is nothing to take; the two safe
flows (the importer created first, or the export pinned to the importer's hash) still deliver.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# Line 7 of the text is the export's item: the CAS's refusal points there.
EXPORTER = """\
name: {name}
version: "0.3"
secrets:
  - name: shared
    kind: ascii
    export:
      - session: {importer}{pin}
services:
  - name: own
    environment:
      SHARED: "$$CAS::shared$$"
    attestation:
      simulated_measurement: "{measurement}"
security:
  attestation:
    tolerate: [simulated]
"""
EXPORT_LINE = 7

IMPORTER = """\
name: {name}
version: "0.3"
services:
  - name: app
    environment:
      SHARED: "{value}"
    attestation:
      simulated_measurement: "{measurement}"
{secrets}security:
  attestation:
    tolerate: [simulated]
"""
IMPORT = """\
secrets:
  - name: shared
    import:
      session: {exporter}
      secret: shared
"""

Casctl = Callable[..., subprocess.CompletedProcess[str]]


def measurement_of(casctl: Casctl, program: Path) -> str:
    measured = casctl("measure", "--", sys.executable, str(program))
    assert measured.returncode == 0, measured.stderr
    return measured.stdout.strip()


def importer_text(name: str, exporter: str | None, measurement: str) -> str:
    """An importer of ``exporter``'s secret, or (``None``) the same session without the import."""
    value = "$$CAS::shared$$" if exporter else "not yet"
    secrets = IMPORT.format(exporter=exporter) if exporter else ""
    return IMPORTER.format(name=name, value=value, measurement=measurement, secrets=secrets)


def exporter_text(name: str, importer: str, measurement: str, pin: str | None = None) -> str:
    pinned = f"\n        session_hash: {pin}" if pin else ""
    return EXPORTER.format(name=name, importer=importer, pin=pinned, measurement=measurement)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def shared_digest(casctl: Casctl, config_id: str, program: Path) -> str:
    """What the workload ``config_id`` received as its shared secret (its SHA-256)."""
    ran = casctl("run", "--config-id", config_id, "--", sys.executable, str(program))
    assert ran.returncode == 0, ran.stderr
    label, digest = ran.stdout.split()
    assert label == "shared-sha256"
    return digest


def test_an_unpinned_export_to_a_free_name_cannot_be_claimed(
    attested_casctl: Callable[[Path], Casctl], program: Path, tmp_path: Path
) -> None:
    owner_of_secret = attested_casctl(tmp_path / "exporter")
    attacker = attested_casctl(tmp_path / "attacker")
    measurement = measurement_of(attacker, program)

    # The exporter's store step is refused, naming the export's line and both fixes.
    exporter = write(tmp_path, "exporter", exporter_text("exporter", "importer", measurement))
    refused = owner_of_secret("session", "create", str(exporter))
    assert refused.returncode == 1
    assert f"session:{EXPORT_LINE}:" in refused.stderr
    assert "secrets[0].export[0]" in refused.stderr
    assert "there is no session 'importer' yet" in refused.stderr
    assert "Create the session 'importer' first" in refused.stderr
    assert "session_hash" in refused.stderr

    # So the attacker's claim of the name imports nothing, and its workload gets nothing.
    claim = write(tmp_path, "importer", importer_text("importer", "exporter", measurement))
    claimed = attacker("session", "create", str(claim))
    assert claimed.returncode == 1
    assert "that session does not exist" in claimed.stderr
    ran = attacker("run", "--config-id", "importer/app", "--", sys.executable, str(program))
    assert ran.returncode != 0
    assert "shared-sha256" not in ran.stdout


def test_importer_first_or_pinned_exports_still_deliver(
    attested_casctl: Callable[[Path], Casctl], program: Path, tmp_path: Path
) -> None:
    owner_of_secret = attested_casctl(tmp_path / "exporter")
    importer = attested_casctl(tmp_path / "importer")
    attacker = attested_casctl(tmp_path / "attacker")
    measurement = measurement_of(importer, program)

    # The importer first: it claims its name, then the exporter exports to it without a pin,
    # then the importer adds the import.
    first = write(tmp_path, "first", importer_text("first", None, measurement))
    assert importer("session", "create", str(first)).returncode == 0
    unpinned = write(tmp_path, "unpinned", exporter_text("unpinned", "first", measurement))
    stored = owner_of_secret("session", "create", str(unpinned))
    assert stored.returncode == 0, stored.stderr
    first.write_text(importer_text("first", "unpinned", measurement))
    updated = importer("session", "update", str(first))
    assert updated.returncode == 0, updated.stderr
    assert shared_digest(importer, "first/app", program) == shared_digest(
        owner_of_secret, "unpinned/own", program
    )

    # Pinned: the exporter names the importer's hash before the importer exists; only a
    # session with that hash can import, whoever creates it.
    wanted = importer_text("pinned-importer", "pinned", measurement)
    wanted_path = write(tmp_path, "pinned-importer", wanted)
    hashed = importer("session", "hash", str(wanted_path))
    assert hashed.returncode == 0, hashed.stderr
    pin = hashed.stdout.strip()
    pinned = write(tmp_path, "pinned", exporter_text("pinned", "pinned-importer", measurement, pin))
    stored = owner_of_secret("session", "create", str(pinned))
    assert stored.returncode == 0, stored.stderr
    other = wanted.replace(measurement, hashlib.sha256(b"attacker").hexdigest())
    hijack = attacker("session", "create", str(write(tmp_path, "hijack", other)))
    assert hijack.returncode == 1
    assert "only at session hash" in hijack.stderr
    assert importer("session", "create", str(wanted_path)).returncode == 0
    assert shared_digest(importer, "pinned-importer/app", program) == shared_digest(
        owner_of_secret, "pinned/own", program
    )
