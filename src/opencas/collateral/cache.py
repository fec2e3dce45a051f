"""A cache of collateral documents, in memory and on disk, reused while they are current.

A document is reused while the verification time is before the end of its window
(:func:`~opencas.collateral.validity.document_window`: for DCAP collateral the earliest
``nextUpdate`` of its parts, for certificates their ``notAfter``); after that the upstream source
is asked again. The disk cache is a bundle directory (:mod:`opencas.collateral.bundle`), so it
survives restarts and can be copied to another site as a bundle.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from opencas.attestation.verifier import CollateralKey, CollateralSource
from opencas.collateral.bundle import bundle_path, read_document, write_document
from opencas.collateral.validity import Window, document_window
from opencas.errors import EvidenceError

log = logging.getLogger("opencas")

MAX_CACHED_DOCUMENTS = 1024
"""Documents kept in memory; the least recently used is dropped first."""


@dataclass(frozen=True)
class _Entry:
    data: bytes
    window: Window


class CachedSource:
    """Caches what ``upstream`` gives, in memory and (when ``directory`` is set) on disk."""

    def __init__(
        self,
        upstream: CollateralSource,
        directory: Path | None = None,
        *,
        max_documents: int = MAX_CACHED_DOCUMENTS,
    ) -> None:
        self.upstream = upstream
        self.directory = directory
        self._max = max_documents
        self._lock = threading.Lock()
        self._memory: OrderedDict[CollateralKey, _Entry] = OrderedDict()
        self.hits = 0
        self.fetches = 0

    def __str__(self) -> str:
        where = f", cached in {self.directory}" if self.directory else ""
        return f"{self.upstream}{where}"

    def collateral(self, key: CollateralKey, at: datetime) -> bytes:
        """The cached document of ``key`` if it is current at ``at``, else the upstream's.

        A document from upstream is cached only when it is current at ``at``. A document that
        is not of its kind (no window can be read from it) is refused with
        :class:`EvidenceError` (``check="collateral"``) naming where it came from.
        """
        with self._lock:
            entry = self._memory.get(key)
            if entry is not None and at < entry.window.not_after:
                self._memory.move_to_end(key)
                self.hits += 1
                return entry.data
        path = bundle_path(key)  # checks the key: only checked keys are ever remembered
        entry = self._from_disk(key, path, at)
        if entry is None:
            data = self.upstream.collateral(key, at)
            with self._lock:
                self.fetches += 1
            try:
                entry = _Entry(data, document_window(key, data))
            except ValueError as exc:
                raise EvidenceError(
                    f"{key} from {self.upstream}: {exc}", check="collateral"
                ) from exc
            if at >= entry.window.not_after:
                return data  # already outdated upstream; the verifier will say so
            self._to_disk(path, data)
        with self._lock:
            self._memory[key] = entry
            self._memory.move_to_end(key)
            while len(self._memory) > self._max:
                self._memory.popitem(last=False)
        return entry.data

    def _from_disk(self, key: CollateralKey, path: PurePosixPath, at: datetime) -> _Entry | None:
        if self.directory is None:
            return None
        file = self.directory / str(path)
        data = read_document(file)
        if data is None:
            return None
        try:
            window = document_window(key, data)
        except ValueError as exc:
            log.warning("collateral cache: ignoring %s: %s", file, exc)
            return None
        if at >= window.not_after:
            return None
        with self._lock:
            self.hits += 1
        return _Entry(data, window)

    def _to_disk(self, path: PurePosixPath, data: bytes) -> None:
        if self.directory is None:
            return
        file = self.directory / str(path)
        try:
            write_document(file, data)
        except OSError as exc:
            # The document is still good for this verification; the cache only saves a fetch.
            log.warning("collateral cache: cannot write %s: %s", file, exc.strerror or exc)
