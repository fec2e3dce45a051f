"""Stand-ins for a TEE's files, for tests: Gramine's ``/dev/attestation`` and configfs-tsm.

They serve evidence someone else's real hardware made (the vectors under ``tests/data/``) from
plain directories, so the real platform code (:mod:`opencas.platform.gramine`,
:mod:`opencas.platform.tsm`) runs unchanged against them. They do not compute anything a TEE
would: the quote served is the one given, whatever report data was written, which is what a test
of the other side's refusal needs.
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path


def fake_gramine(
    directory: Path,
    quote: bytes,
    *,
    sealing_key: bytes = bytes(range(16)),
    attestation_type: str = "dcap",
) -> Path:
    """Lay out ``directory`` like Gramine's ``/dev/attestation`` serving ``quote``; return it.

    ``user_report_data`` is an ordinary writable file (what is written stays there, for the test
    to read), ``quote`` always holds ``quote``, ``keys/_sgx_mrenclave`` holds ``sealing_key``.
    """
    (directory / "keys").mkdir(parents=True, exist_ok=True)
    (directory / "attestation_type").write_text(attestation_type, encoding="ascii")
    (directory / "user_report_data").write_bytes(bytes(64))
    (directory / "quote").write_bytes(quote)
    (directory / "keys" / "_sgx_mrenclave").write_bytes(sealing_key)
    return directory


@dataclass
class FakeConfigfsTsm:
    """Makes configfs-tsm report entries in a plain directory, as the kernel would on ``mkdir``.

    Each entry gets ``provider``, an empty ``inblob``, ``outblob`` holding ``outblob``,
    ``auxblob`` when given, and ``generation`` saying ``generation`` (what the kernel would say
    after the platform's writes: 1, or 2 when it also writes ``privlevel``). With
    ``concurrent_writer``, ``outblob`` is a pipe whose writer bumps ``generation`` before it
    gives the outblob, as another process writing to the entry meanwhile would. ``entries``
    lists every entry made; ``inblobs`` what was written to each, read back when it is removed.
    """

    provider: str
    outblob: bytes
    auxblob: bytes | None = None
    generation: int = 1
    concurrent_writer: bool = False

    def __post_init__(self) -> None:
        """Start with no entries seen."""
        self.entries: list[Path] = []
        self.inblobs: list[bytes] = []
        self._writers: list[threading.Thread] = []

    def create(self, entry: Path) -> None:
        """Make ``entry`` with its attributes."""
        entry.mkdir(mode=0o700)
        self.entries.append(entry)
        (entry / "provider").write_text(self.provider + "\n", encoding="ascii")
        (entry / "generation").write_text(f"{self.generation}\n", encoding="ascii")
        (entry / "inblob").write_bytes(b"")
        (entry / "privlevel").write_bytes(b"")
        if self.auxblob is not None:
            (entry / "auxblob").write_bytes(self.auxblob)
        if not self.concurrent_writer:
            (entry / "outblob").write_bytes(self.outblob)
            return
        os.mkfifo(entry / "outblob")
        writer = threading.Thread(target=self._write_late, args=(entry,), daemon=True)
        writer.start()
        self._writers.append(writer)

    def _write_late(self, entry: Path) -> None:
        # Opening a pipe for writing waits for its reader, so the generation changes after the
        # platform read it once and before it can read the outblob to its end.
        with (entry / "outblob").open("wb") as pipe:
            (entry / "generation").write_text(f"{self.generation + 1}\n", encoding="ascii")
            pipe.write(self.outblob)

    def remove(self, entry: Path) -> None:
        """Remove ``entry`` and what is in it, keeping what was written to its inblob."""
        self.inblobs.append((entry / "inblob").read_bytes())
        shutil.rmtree(entry)
