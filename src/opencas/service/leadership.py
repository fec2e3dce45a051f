"""Singleton work under a lease: what must run on one instance of a CAS at a time.

On PostgreSQL several instances serve one CAS. Work that must not run on two of them at once
(the periodic snapshots, the batches of a key rollover) takes a named lease of
``cluster_leases`` (:mod:`opencas.store.cluster`) for :data:`LEASE_SECONDS`, renews it before
each step, and makes every commit under it through :meth:`Leadership.transaction`: a
transaction *fenced* by the lease's token, whose commit the database refuses once the lease
ran out or another instance took it (:class:`opencas.errors.LeaseLost`). A leader that was
paused, cut off or slow past its lease therefore cannot commit after its successor began,
whatever it believes.

On SQLite the instance is alone: it always leads, and its transactions are plain ones.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from opencas.errors import LeaseLost
from opencas.service.cas import Cas
from opencas.store import PostgresStore
from opencas.store.base import Transaction
from opencas.store.cluster import Lease

log = logging.getLogger("opencas")

#: How long a lease runs unless renewed. A leader renews it before each step, so this bounds
#: how long the work stands still after its leader died, before another instance takes over.
LEASE_SECONDS: Final = 30.0


@dataclass
class Leadership:
    """This instance's claim to lead the singleton work ``name`` (see the module docstring)."""

    cas: Cas
    name: str
    seconds: float = LEASE_SECONDS
    lease: Lease | None = None

    @property
    def holder(self) -> str:
        """Who holds the lease when this instance does: its instance id."""
        return self.cas.identity.instance_id

    def take(self) -> bool:
        """Take the lease, or renew it while this instance holds it; whether it leads now.

        ``False`` while another instance's lease runs. Raises what the database raises when it
        cannot be reached (the lease is then taken to be lost).
        """
        store = self.cas.store
        if not isinstance(store, PostgresStore):
            return True
        try:
            lease = store.cluster.acquire_lease(self.name, self.holder, self.seconds)
        except BaseException:
            self.lease = None
            raise
        if lease is not None and (self.lease is None or lease.token != self.lease.token):
            log.info("this instance leads %s now (lease token %d)", self.name, lease.token)
        self.lease = lease
        return lease is not None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A write transaction fenced by the lease: :class:`LeaseLost` (nothing committed) when
        the lease is not held, ran out, or was taken over before the commit."""
        store = self.cas.store
        if not isinstance(store, PostgresStore):
            with store.transaction() as txn:
                yield txn
            return
        if self.lease is None:
            raise LeaseLost(f"this instance does not hold the lease {self.name!r}")
        try:
            with store.transaction(fence=self.lease) as txn:
                yield txn
        except LeaseLost:
            self.lease = None
            raise

    def release(self) -> None:
        """Give the lease up now, so another instance need not wait for it to run out."""
        store = self.cas.store
        lease, self.lease = self.lease, None
        if lease is not None and isinstance(store, PostgresStore):
            store.cluster.release_lease(lease)
