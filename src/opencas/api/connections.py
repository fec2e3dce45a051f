"""Connection limits of a listener: how many connections, from whom, and how long they may stall.

:class:`Listening` accepts each listener's TCP connections itself, before HTTP sees them:

- each is counted against the listener's ``max_connections`` and, by source address, against
  ``max_connections_per_source``; over either limit it is reset at once, before any TLS work;
- the TLS handshake (``loop.connect_accepted_socket``) must finish within
  ``tls_handshake_timeout``, so a client that connects and sends nothing, or stalls half-way
  through the handshake, is closed;
- the headers of each request must be complete within ``request_header_timeout`` of the
  connection being ready (for the first request) or of the request's first byte (for the next
  ones), so a client that sends part of its headers and stalls is closed. Idle time between
  requests is bounded by the HTTP server's keep-alive timeout.

Then :class:`GuardedConnection` stands between the TLS transport and the HTTP protocol. It observes
request boundaries with a parser of its own (``httptools``, the parser the HTTP server uses too),
so nothing here depends on the HTTP server's internals: the HTTP protocol sees a TLS transport
as if the event loop's server had made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httptools

from opencas.config.availability import ConnectionLimits

log = logging.getLogger("opencas")
ACCEPT_RETRY_SECONDS = 0.1
"""How long to wait before accepting again after ``accept`` failed (no file descriptor left)."""
TLS_SHUTDOWN_SECONDS = 2.0
"""How long a closing connection waits for the peer's TLS close_notify: a silent peer would
otherwise keep its connection counted, and delay the server's stop, for the loop's 30 s."""
IPV6_SOURCE_PREFIX = 64
"""IPv6 sources are counted by /64 network: one host usually holds a whole /64."""


def source_of(peername: object) -> str:
    """The source a connection is counted under: its IPv4 address, or its IPv6 /64 network.

    An IPv4-mapped IPv6 address counts as the IPv4 address. A peer without an IP address (a test
    transport, a Unix socket) counts as ``"unknown"``.
    """
    if not isinstance(peername, tuple) or not peername or not isinstance(peername[0], str):
        return "unknown"
    try:
        address = ipaddress.ip_address(peername[0].partition("%")[0])
    except ValueError:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_SOURCE_PREFIX), strict=False))
    return str(address)


@dataclass
class ConnectionCounter:
    """The open connections of one listener, in total and by source; no I/O."""

    limits: ConnectionLimits
    total: int = 0
    by_source: Counter[str] = field(default_factory=Counter)

    def admit(self, source: str) -> bool:
        """Count a new connection from ``source``; ``False`` (nothing counted) over a limit."""
        if self.total >= self.limits.max_connections:
            return False
        if self.by_source[source] >= self.limits.max_connections_per_source:
            return False
        self.total += 1
        self.by_source[source] += 1
        return True

    def release(self, source: str) -> None:
        """Forget one connection from ``source`` that :meth:`admit` counted."""
        self.total -= 1
        self.by_source[source] -= 1
        if self.by_source[source] <= 0:
            del self.by_source[source]


@dataclass
class Listening:
    """One listener's connections: it accepts them, counts them and does their TLS handshake.

    ``http`` makes the HTTP protocol of a connection once its handshake is done.
    """

    limits: ConnectionLimits
    context: ssl.SSLContext
    http: Callable[[], asyncio.Protocol]
    counter: ConnectionCounter = field(init=False)
    handshakes: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.counter = ConnectionCounter(self.limits)

    async def accept_forever(self, sock: socket.socket) -> None:
        """Accept connections on the listening ``sock`` until cancelled.

        A connection over a limit is reset at once; the others get a TLS handshake of their
        own, bounded by ``tls_handshake_timeout``, before HTTP sees them.
        """
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, address = await loop.sock_accept(sock)
            except OSError as exc:
                # Out of file descriptors or a connection reset while queued: keep listening.
                log.warning("cannot accept a connection: %s", exc)
                await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            source = source_of(address)
            if not self.counter.admit(source):
                _reset(connection)
                continue
            task = loop.create_task(self._handshake(connection, source))
            self.handshakes.add(task)
            task.add_done_callback(self.handshakes.discard)

    def abort_handshakes(self) -> None:
        """Close every connection still in its TLS handshake (the server is stopping)."""
        for task in list(self.handshakes):
            task.cancel()

    async def _handshake(self, connection: socket.socket, source: str) -> None:
        limits = self.limits
        guarded = GuardedConnection(self, source)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: guarded,
                connection,
                ssl=self.context,
                ssl_handshake_timeout=limits.tls_handshake_timeout,
                ssl_shutdown_timeout=TLS_SHUTDOWN_SECONDS,
            )
        except (OSError, asyncio.CancelledError):
            # A failed, timed-out or interrupted handshake; the loop closed the connection.
            guarded.release()


class GuardedConnection(asyncio.Protocol):
    """One connection after its TLS handshake: HTTP behind a request-header deadline.

    Every protocol callback is forwarded to the HTTP protocol; the connection stops being counted
    when it is lost.
    """

    def __init__(self, listening: Listening, source: str) -> None:
        self._listening = listening
        self._source: str | None = source
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._headers = _HeaderDeadline(self, listening.limits.request_header_timeout)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The handshake is done: hand the TLS transport to HTTP and await the first request."""
        # A stream server makes stream transports (uvloop's do not subclass asyncio's).
        self._transport = cast(asyncio.Transport, transport)
        self._inner = self._listening.http()
        self._inner.connection_made(transport)
        self._headers.expect_request()

    def abort(self) -> None:
        """Close the connection at once."""
        if self._transport is not None:
            with contextlib.suppress(RuntimeError, OSError):  # already closed
                self._transport.abort()

    def data_received(self, data: bytes) -> None:
        """Watch for the end of request headers, then pass the bytes on to HTTP."""
        self._headers.feed(data)
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        """Let HTTP decide whether to keep the connection half-open."""
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        """Forwarded to HTTP: the peer reads slower than HTTP writes."""
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        """Forwarded to HTTP: the peer caught up."""
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the deadline, tell HTTP and stop counting this connection."""
        self._headers.stop()
        inner, self._inner = self._inner, None
        try:
            if inner is not None:
                inner.connection_lost(exc)
        finally:
            self.release()

    def release(self) -> None:
        """Stop counting this connection; only the first call counts."""
        if self._source is not None:
            self._listening.counter.release(self._source)
            self._source = None


class _HeaderDeadline:
    """Closes the connection when a request's headers do not arrive in time.

    It parses the request stream only to see where each request starts and where its headers
    end; the HTTP protocol parses it again for real and answers malformed requests itself.
    """

    def __init__(self, connection: GuardedConnection, timeout: float) -> None:
        self._connection = connection
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self._parser: Any = httptools.HttpRequestParser(self)

    def expect_request(self) -> None:
        """Start the clock for the next request's headers, unless it runs already."""
        if self._timer is None and self._parser is not None:
            self._timer = asyncio.get_running_loop().call_later(
                self._timeout, self._connection.abort
            )

    def feed(self, data: bytes) -> None:
        """Observe ``data``; stop observing a stream the parser cannot follow."""
        if self._parser is None:
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.stop()

    def stop(self) -> None:
        """No more deadlines for this connection."""
        self._parser = None
        self._cancel()

    # httptools callbacks
    def on_message_begin(self) -> None:
        """A request starts: its headers are due within the timeout."""
        self.expect_request()

    def on_headers_complete(self) -> None:
        """The request's headers are complete: no deadline until the next request starts."""
        self._cancel()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _reset(connection: socket.socket) -> None:
    """Close ``connection`` with a reset, so the refusal costs no lingering state."""
    with contextlib.suppress(OSError):
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()
