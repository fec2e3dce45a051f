"""Serving the API: TLS from the CAS's stored key, both listeners, clean shutdown on signals."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import resource
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from opencas.api.connections import Listening
from opencas.config.availability import ConnectionLimits, ListenAddress
from opencas.crypto.pem import private_key_pem
from opencas.errors import CasError
from opencas.service.identity import CasIdentity

log = logging.getLogger("opencas")
MAINTENANCE_INTERVAL = 3600.0
FILE_DESCRIPTOR_HEADROOM = 256
"""File descriptors kept beyond one per allowed connection: the database, logs, worker threads."""


class ListenError(CasError, code="listen-error"):
    """A listener cannot be opened (address taken, not local, no permission)."""


@dataclass(frozen=True)
class Listener:
    """One HTTPS listener: where it listens, which config key named it, and what it serves."""

    name: str
    config_key: str
    address: ListenAddress
    app: ASGIApp


def bind(listener: Listener) -> socket.socket:
    """Bind and listen on ``listener.address``; raise :class:`ListenError` saying why not."""
    address = listener.address
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ListenError(
            f"cannot listen on {address} ({listener.config_key}): cannot resolve {address.host}"
        ) from exc
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ListenError(f"cannot listen on {address} ({listener.config_key}): {reason}") from exc
    sock.setblocking(False)
    return sock


def tls_context(identity: CasIdentity) -> ssl.SSLContext:
    """A TLS 1.2+ server context presenting the CAS TLS certificate and its CA certificate.

    ``ssl`` only loads keys from files; the key goes through an anonymous in-memory file so it is
    never written to disk in the clear.
    """
    context = server_context()
    present_identity(context, identity)
    return context


def present_identity(context: ssl.SSLContext, identity: CasIdentity) -> None:
    """Make ``context`` present ``identity``'s TLS certificate from the next handshake on."""
    present_certificate(
        context, identity.tls_certificate_pem + identity.ca_certificate_pem, identity.tls_key
    )


def present_certificate(
    context: ssl.SSLContext, chain_pem: bytes, key: ec.EllipticCurvePrivateKey
) -> None:
    """Make ``context`` present the certificate chain ``chain_pem`` (leaf first) of ``key``."""
    with _memory_file(chain_pem) as cert_path, _memory_file(private_key_pem(key)) as key_path:
        context.load_cert_chain(cert_path, key_path)


def server_context() -> ssl.SSLContext:
    """A TLS 1.2+ server context presenting nothing yet (see :func:`present_certificate`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    fd = os.memfd_create("opencas-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


class _Server(uvicorn.Server):
    """One listener's HTTP server. It accepts its connections itself, through :class:`Listening`.

    uvicorn runs the HTTP protocol, the ``Date`` header and the graceful shutdown; it is given
    no socket, because a server made by ``loop.create_server`` could neither count connections
    before their TLS handshake nor bound that handshake's duration.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        sock: socket.socket,
        context: ssl.SSLContext,
        limits: ConnectionLimits,
    ) -> None:
        super().__init__(config)
        self.sock = sock
        self.listening = Listening(limits, context, self._http_protocol)
        self._accepting: asyncio.Task[None] | None = None

    # Two servers share one process: signals are handled once, by `serve_forever`.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start uvicorn without a socket of its own, then accept on this listener's socket."""
        await super().startup(sockets=[])
        self._accepting = asyncio.create_task(self.listening.accept_forever(self.sock))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, drop connections still in their handshake, then close the others."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        self.listening.abort_handshakes()
        await super().shutdown(sockets)

    def _http_protocol(self) -> asyncio.Protocol:
        # What uvicorn's own server would make for a connection; the lifespan is off, so the
        # application state it would share is empty.
        return HttpToolsProtocol(config=self.config, server_state=self.server_state, app_state={})


class _SaidOncePerProcess(logging.Filter):
    """Drops what uvicorn logs for each of its servers, which the CAS says once per process
    ("serving the ... API" for each listener at the start, "stopped" at the end)."""

    _PER_SERVER = frozenset(
        {"Started server process [%d]", "Finished server process [%d]", "Shutting down"}
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self._PER_SERVER


_SAID_ONCE = _SaidOncePerProcess()


def _server(
    listener: Listener, sock: socket.socket, context: ssl.SSLContext, limits: ConnectionLimits
) -> _Server:
    config = uvicorn.Config(
        listener.app,
        http="httptools",
        log_config=None,
        access_log=False,
        server_header=False,
        # No proxy is trusted to say who the client is or which scheme it used: by default
        # uvicorn believes X-Forwarded-For and X-Forwarded-Proto from 127.0.0.1, so any local
        # process could change the scheme a request proof is checked against.
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        # Longer than clients keep idle connections (httpx: 5 s), so a client never reuses a
        # connection the server is closing at that very moment.
        timeout_keep_alive=limits.keep_alive_timeout,
        lifespan="off",
    )
    config.load()
    # uvicorn's own logger; adding the same filter again changes nothing.
    logging.getLogger("uvicorn.error").addFilter(_SAID_ONCE)
    return _Server(config, sock, context, limits)


def allow_file_descriptors(needed: int) -> None:
    """Raise this process's soft limit on open files to ``needed`` if the hard limit allows.

    Without it, a default soft limit of 1024 would fail ``accept`` before the connection limits
    are reached; a hard limit too low for them is logged, since the limits then cannot hold.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        if wanted < needed:
            log.warning(
                "open-file limit %d is below the %d the connection limits need; lower "
                "[limits] max_connections or raise the limit (ulimit -n)",
                wanted,
                needed,
            )


async def serve_forever(
    listeners: list[Listener],
    context: ssl.SSLContext,
    limits: ConnectionLimits,
    maintenance: Callable[[], object] | None = None,
    maintenance_interval: float = MAINTENANCE_INTERVAL,
) -> None:
    """Serve every listener until SIGTERM or SIGINT, then shut down gracefully.

    All sockets are bound before anything is served, so a taken port fails the start as a whole.
    Each listener applies ``limits`` to its own connections. ``maintenance``, when given, runs in
    a worker thread every ``maintenance_interval`` seconds while serving (the CAS renews its TLS
    certificate there); its errors are logged, not fatal.
    """
    sockets: list[socket.socket] = []
    try:
        for listener in listeners:
            sockets.append(bind(listener))
    except ListenError:
        for sock in sockets:
            sock.close()
        raise
    allow_file_descriptors(len(listeners) * limits.max_connections + FILE_DESCRIPTOR_HEADROOM)
    servers = [
        _server(listener, sock, context, limits)
        for listener, sock in zip(listeners, sockets, strict=True)
    ]
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    for listener in listeners:
        log.info(
            "serving the %s API (%s) on https://%s",
            listener.name,
            listener.config_key,
            listener.address,
        )
    chores = (
        asyncio.create_task(run_periodically(maintenance, maintenance_interval))
        if maintenance
        else None
    )
    try:
        await asyncio.gather(*(server.serve() for server in servers))
    finally:
        if chores is not None:
            chores.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await chores
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        for sock in sockets:
            sock.close()


async def run_periodically(maintenance: Callable[[], object], interval: float) -> None:
    """Run ``maintenance`` in a worker thread every ``interval`` seconds until cancelled.

    A failure is logged and the next run happens as planned: upkeep must not stop the CAS.
    """
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(maintenance)
        except Exception:
            log.exception("periodic maintenance failed; the CAS keeps serving")


# How long a thread may hold the GIL while another waits for it. CPU-bound work (an upload, an
# attestation) runs in worker threads; at Python's default of 5 ms, the event loop, which needs
# the GIL again after every wait for I/O, would wait up to that long each time, and a request it
# serves meanwhile would take tens of milliseconds.
GIL_SWITCH_INTERVAL = 0.0005


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` to completion on uvloop (libuv), or on asyncio's own loop without it.

    Sets the interpreter's GIL switch interval to :data:`GIL_SWITCH_INTERVAL` first, and moves
    every object that exists by then out of the garbage collector's generations.
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    # What exists now (modules, the app, the CAS's caches) lives as long as the process: frozen,
    # it is out of the collector's generations, so a full collection while serving walks only
    # what serving allocated, not the hundred thousand objects of the imports.
    gc.freeze()
    try:
        import uvloop  # noqa: PLC0415 - optional: a faster loop where it is installed
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)
