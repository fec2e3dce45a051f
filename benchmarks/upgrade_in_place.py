"""Benchmark what the upgrade in place on SQLite costs the running instance, in-process.

The running instance looks for an upgrade request once a second
(:class:`opencas.service.upgrade_in_place.UpgradeAnswerer`); this measures, one call at a time
on simulated platforms that seal to the measurement:

1. **Idle look**: one ``step()`` with no request waiting (a failed rename): what every second of
   serving costs.
2. **One handover**: the new build's request (an X25519 key and its evidence), the running
   instance's ``step()`` (verifying the evidence, the admission rule against a registered
   upgrade, sealing the key, its evidence, writing the answer file) and the new build opening
   the answer (checking the answering build is its predecessor). The audit entry is left out:
   its cost is the audit log's (docs/performance.md, the audit log on and off).

It prints each figure next to its bound. The verdicts are information: the exit code is 0
whatever they say, 1 when the benchmark cannot measure, 130 when interrupted. Run it with the
package installed::

    python benchmarks/upgrade_in_place.py [--micro-seconds 3]
"""

from __future__ import annotations

import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path

from common import BenchmarkError, arguments, machine_line, main, met, rate, us

from opencas.attestation.peer_admission import RegisteredUpgrade
from opencas.attestation.verifier import NO_COLLATERAL
from opencas.platform.simulated import SimulatedPlatform
from opencas.service.cluster import KeyGiver
from opencas.service.key_handover import (
    HandoverAnswer,
    HandoverSecret,
    document_text,
    make_request,
    open_handover,
    own_identity,
)
from opencas.service.upgrade_in_place import (
    UpgradeAnswerer,
    parse_answer_file,
    upgrade_answer_path,
    upgrade_request_path,
)

#: The idle look runs once a second: above this it would cost more than 0.01% of a core.
IDLE_BOUND_SECONDS = 100e-6
#: One handover happens once per upgrade; the new build polls for the answer every 0.2 s.
HANDOVER_BOUND_SECONDS = 0.1
OLD, NEW = "5e" * 32, "6f" * 32


def _benchmark(directory: Path, seconds: float) -> None:
    print(machine_line("upgrade in place (in-process)"))
    now = datetime.now(UTC)
    key_file = directory / "platform.key"
    old = SimulatedPlatform.load_or_create(key_file, OLD, sealing="measurement")
    new = SimulatedPlatform(key_file, NEW, sealing="measurement")
    database = directory / "cas.db"
    secret = HandoverSecret(secrets.token_bytes(32), False, "ab" * 32, "cluster")
    giver = KeyGiver(
        old,
        NO_COLLATERAL,
        lambda: now,
        lambda: [RegisteredUpgrade(measurement=NEW)],
        lambda: None,
        None,
        lambda: secret,
    )
    answerer = UpgradeAnswerer(database, giver, "instance")
    own = own_identity(new, at=now)

    def handover() -> None:
        key, request = make_request(new, "upgrade")
        upgrade_request_path(database).write_text(document_text(request), encoding="utf-8")
        if not answerer.step():
            raise BenchmarkError("the request file was not answered")
        answer = parse_answer_file(upgrade_answer_path(database).read_bytes())
        if not isinstance(answer, HandoverAnswer):
            raise BenchmarkError(f"the request was refused: {answer.reason}")
        opened = open_handover(answer, request, key, own, at=now, predecessors=(OLD,))
        if opened.dmk != secret.dmk:
            raise BenchmarkError("the key handed over is not the key given")

    idle = 1 / rate(answerer.step, seconds)
    one = 1 / rate(handover, seconds)
    print(f"  idle look:    {us(idle)} us (bound <= {us(IDLE_BOUND_SECONDS)} us: ", end="")
    print(f"{met(idle <= IDLE_BOUND_SECONDS)})")
    print(f"  one handover: {us(one)} us (bound <= {us(HANDOVER_BOUND_SECONDS)} us: ", end="")
    print(f"{met(one <= HANDOVER_BOUND_SECONDS)})")


if __name__ == "__main__":
    options = arguments(__doc__ or "", seconds=3.0, micro_seconds=3.0, timeout=60.0).parse_args()
    sys.exit(main(lambda directory: _benchmark(directory, options.micro_seconds)))
