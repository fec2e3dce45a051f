"""A small bounded, thread-safe cache for values derived from stored records.

Keys must name the content they were derived from (a session hash, a digest of the record's
bytes), so an entry can never be stale: a changed record has another key.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ContentCache(Generic[K, V]):
    """Least-recently-used cache of at most ``capacity`` entries keyed by content."""

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        """The cached value for ``key``, made with ``make()`` on a miss.

        ``make`` runs outside the lock (two threads may both make a value; either is right).
        """
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        value = make()
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return value
