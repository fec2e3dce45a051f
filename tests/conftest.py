"""Fixtures every test directory shares: a fresh PostgreSQL database per test, and a proxy to
it that a test can cut."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

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
    with _new_database() as url:
        yield url


@pytest.fixture
def second_postgres_url() -> Iterator[str]:
    """Another new, empty PostgreSQL database of this test's own (a second machine's)."""
    with _new_database() as url:
        yield url


@contextlib.contextmanager
def _new_database() -> Iterator[str]:
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


class TcpProxy:
    """A TCP proxy to PostgreSQL that a test can cut and restore, like a network that fails.

    Cutting closes every connection through it and refuses new ones until :meth:`restore`;
    the server itself (which other tests share) never stops.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                cut = self._cut
            if cut:
                client.close()
                continue
            try:
                server = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._open.update((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()
        with self._lock:
            self._open.difference_update((source, sink))

    def cut(self) -> None:
        """Close every connection through the proxy and refuse new ones."""
        with self._lock:
            self._cut = True
            ends = list(self._open)
        for end in ends:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        """Accept connections again."""
        with self._lock:
            self._cut = False

    def close(self) -> None:
        """Stop the proxy and close every connection through it."""
        self.cut()
        self._listener.close()


@pytest.fixture
def postgres_proxy(postgres_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy in front of the PostgreSQL server, and the URL of this test's database through
    it: cutting the proxy is the database going away for this test only."""
    parts = urlsplit(postgres_url)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    try:
        yield proxy, urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    finally:
        proxy.close()
