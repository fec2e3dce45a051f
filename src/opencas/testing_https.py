"""A local HTTPS server with fixed answers, for tests of network clients (collateral sources,
the audit log's network sink).

:class:`FixedAnswersServer` listens on a free port of 127.0.0.1 with a certificate of its own CA
(:attr:`~FixedAnswersServer.ca_pem`, for the client to trust), answers each configured path and
query with its status, headers and body, 404 otherwise, and records what it was asked (and the
body of each POST it answered with 2xx, :attr:`~FixedAnswersServer.accepted`). The socket
listens before :meth:`~FixedAnswersServer.start` returns, so no test waits for it. This module
needs only OpenCAS itself (no pytest).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from opencas.crypto.pem import certificate_pem, private_key_pem
from opencas.crypto.x509 import create_ca_certificate, issue_tls_certificate


@dataclass(frozen=True)
class Answer:
    """What the server answers one request with."""

    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    status: int = 200


class FixedAnswersServer:
    """Answers ``answers[path_and_query]``; a context manager that starts and stops it."""

    def __init__(self, answers: Mapping[str, Answer] | None = None) -> None:
        self.answers: dict[str, Answer] = dict(answers or {})
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.accepted: list[bytes] = []
        self._connections: set[socket.socket] = set()
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = create_ca_certificate(ca_key, "collateral test CA")
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = issue_tls_certificate(ca_key, ca, key.public_key(), ["127.0.0.1"])
        self.ca_pem = certificate_pem(ca)
        self._directory = tempfile.TemporaryDirectory(prefix="opencas-https-")
        chain = Path(self._directory.name) / "server.pem"
        chain.write_bytes(private_key_pem(key) + certificate_pem(certificate))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT``."""
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts this server."""
        return ssl.create_default_context(cadata=self.ca_pem.decode("ascii"))

    def paths(self) -> list[str]:
        """The paths (with queries) requested so far, in order."""
        return [path for path, _ in self.requests]

    def start(self) -> FixedAnswersServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, close the connections clients keep open, and remove the key: from
        now on the server is down for every client."""
        self._server.shutdown()
        self._server.server_close()
        for connection in list(self._connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._directory.cleanup()

    def __enter__(self) -> FixedAnswersServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes; without this, Nagle's algorithm and
            # the client's delayed ACK add 40 ms to every answer.
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                server._connections.add(self.connection)

            def finish(self) -> None:
                server._connections.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:
                server.requests.append((self.path, dict(self.headers.items())))
                self._answer(self._chosen())

            def do_POST(self) -> None:
                server.requests.append((self.path, dict(self.headers.items())))
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                answer = self._chosen()
                if 200 <= answer.status < 300:
                    server.accepted.append(body)  # before answering: the client goes on then
                self._answer(answer)

            def _chosen(self) -> Answer:
                return server.answers.get(self.path, Answer(b"not found", status=404))

            def _answer(self, answer: Answer) -> None:
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, *_: object) -> None:
                pass  # quiet: tests read server.requests instead

        return Handler
