"""A small bounded, thread-safe cache for values derived from content.

Keys must name the content they were derived from (a session hash, a digest of a record's or a
document's bytes), so an entry can never be stale: changed content has another key. It does no
I/O and reads no clock, so the pure core may use it.
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
        self.misses = 0
        """How many values were made (a count of the work the cache did not save)."""

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        """The cached value for ``key``, made with ``make()`` on a miss.

        ``make`` runs outside the lock (two threads may both make a value; either is right).
        An exception from ``make`` is not cached: the next call makes the value again.
        """
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            self.misses += 1
        value = make()
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return value
