"""Fixtures every test directory shares: a fresh PostgreSQL database per test."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest

#: The server the PostgreSQL tests use (scripts/ensure-postgres starts it): trust auth on
#: localhost for the ``postgres`` user, as Debian's package sets it up.
POSTGRES_SERVER = os.environ.get("OPENCAS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database of this test's own, dropped afterwards.

    PostgreSQL not running fails the test (it is never skipped): CI starts it with
    scripts/ensure-postgres, and so does ``make test``.
    """
    try:
        admin = psycopg.connect(f"{POSTGRES_SERVER}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_SERVER} ({exc}); "
            "start it with scripts/ensure-postgres",
            pytrace=False,
        )
    name = "test_" + secrets.token_hex(8)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{POSTGRES_SERVER}/{name}"
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
