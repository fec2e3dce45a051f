"""Idle, half-handshaked and half-sent connections cannot lock clients out (docs/security.md).

A CAS with a small per-source limit and short timeouts. Another loopback address (127.0.0.2)
stands in for the attacker's host: it holds more connections than its limit allows, of every
stalled kind, while a normal client on 127.0.0.1 gets all its answers; then each stalled
connection is closed by the CAS after its timeout.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from opencas.testing import POLL_INTERVAL, CasProcess

ATTACKER = "127.0.0.2"
PER_SOURCE = 4
HANDSHAKE_TIMEOUT = 3.0
HEADER_TIMEOUT = 2.0
KEEP_ALIVE = 1
CLOSE_WITHIN = 15.0
"""An upper bound on how long the CAS may take to close a stalled connection, under load."""


@pytest.fixture
def guarded_cas(tmp_path: Path) -> Iterator[CasProcess]:
    process = CasProcess(
        tmp_path / "cas",
        limits={
            "max_connections": 50,
            "max_connections_per_source": PER_SOURCE,
            "tls_handshake_timeout": HANDSHAKE_TIMEOUT,
            "request_header_timeout": HEADER_TIMEOUT,
            "keep_alive_timeout": KEEP_ALIVE,
        },
    )
    try:
        yield process.start()
    finally:
        process.stop()


def _connect(port: int, source: str = ATTACKER) -> socket.socket:
    sock = socket.create_connection(
        ("127.0.0.1", port), timeout=CLOSE_WITHIN, source_address=(source, 0)
    )
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _tls(port: int, source: str = ATTACKER) -> ssl.SSLSocket:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the connection's fate is tested, not the CAS's identity
    return context.wrap_socket(_connect(port, source), server_hostname="localhost")


def _closed_at(sock: socket.socket) -> float:
    """When the CAS closed ``sock`` (a read returns nothing or the connection resets)."""
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, ssl.SSLError):
        pass
    except TimeoutError:
        pytest.fail(f"the CAS kept a stalled connection open for more than {CLOSE_WITHIN} s")
    finally:
        sock.close()
    return time.monotonic()


def _refused_at(port: int) -> float:
    """When the CAS reset a new connection from the attacker (during or after ``connect``)."""
    try:
        sock = _connect(port)
    except ConnectionResetError:
        return time.monotonic()
    return _closed_at(sock)


def _answered_once_released(port: int, source: str) -> bool:
    """Whether ``source`` gets an answer again, polling while the CAS forgets its connections."""
    deadline = time.monotonic() + CLOSE_WITHIN
    while time.monotonic() < deadline:
        try:
            return _answers(port, 1, source) == [200]
        except httpx.TransportError:
            time.sleep(POLL_INTERVAL)
    return False


def _answers(port: int, count: int, source: str = "127.0.0.1") -> list[int]:
    transport = httpx.HTTPTransport(verify=False, local_address=source)
    with httpx.Client(transport=transport, timeout=CLOSE_WITHIN) as client:
        return [client.get(f"https://127.0.0.1:{port}/healthz").status_code for _ in range(count)]


@pytest.mark.parametrize("listener", ["api", "enclave"])
def test_stalled_connections_are_limited_per_source_and_closed(
    guarded_cas: CasProcess, listener: str
) -> None:
    port = guarded_cas.api_port if listener == "api" else guarded_cas.enclave_port
    # Each connection's clock starts before it is opened: the CAS's timers cannot start earlier.
    started = time.monotonic()
    half_sent = _tls(port)
    half_sent.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nUser-Agent: slo")
    held = [("half-sent request", half_sent, HEADER_TIMEOUT, started)]
    started = time.monotonic()
    held.append(("idle TLS", _tls(port), HEADER_TIMEOUT, started))
    started = time.monotonic()
    half_handshake = _connect(port)
    half_handshake.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's start
    held.append(("half handshake", half_handshake, HANDSHAKE_TIMEOUT, started))
    started = time.monotonic()
    held.append(("idle TCP", _connect(port), HANDSHAKE_TIMEOUT, started))
    for _ in range(3):  # over the limit: refused at once, not held until a timeout
        opened = time.monotonic()
        assert _refused_at(port) - opened < HEADER_TIMEOUT

    assert _answers(port, 20) == [200] * 20  # a normal client, while the attacker holds its limit

    for name, sock, timeout, opened in held:
        held_for = _closed_at(sock) - opened
        assert held_for > timeout - 0.1, f"{name} was closed after {held_for:.2f} s"
    assert _answered_once_released(port, ATTACKER)


def test_an_idle_keep_alive_connection_is_closed(guarded_cas: CasProcess) -> None:
    sock = _tls(guarded_cas.api_port, source="127.0.0.1")
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    answered = time.monotonic()
    assert _closed_at(sock) - answered > KEEP_ALIVE - 0.1


def test_stopping_does_not_wait_for_silent_connections(guarded_cas: CasProcess) -> None:
    port = guarded_cas.api_port
    silent = [_connect(port), _tls(port), _tls(port)]
    silent[2].sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
    assert _answers(port, 1) == [200]
    stopping = time.monotonic()
    assert guarded_cas.stop() == 0
    assert time.monotonic() - stopping < 8.0  # the graceful shutdown gives up after 10 s
    for sock in silent:
        sock.close()
