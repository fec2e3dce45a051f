"""Read transactions on PostgreSQL, shared by the store and the cluster's audit log."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg


@contextlib.contextmanager
def repeatable_read(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """A REPEATABLE READ, read-only transaction on ``conn`` (in autocommit mode), its level in
    its ``BEGIN``: a ``SET TRANSACTION`` after the ``BEGIN`` would cost every read a round
    trip more."""
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        yield
    except BaseException:
        # A connection that cannot roll back here (it broke) is rolled back or dropped by
        # the pool when it comes back.
        with contextlib.suppress(psycopg.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
