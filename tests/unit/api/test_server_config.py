"""How the CAS configures uvicorn for its listeners."""

from __future__ import annotations

import socket
import ssl

from starlette.types import Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from opencas.api.server import Listener, _server
from opencas.config.availability import ConnectionLimits, ListenAddress


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    return None


def test_no_proxy_is_trusted_for_the_clients_address_or_scheme() -> None:
    # uvicorn would wrap the app in ProxyHeadersMiddleware, believing X-Forwarded-For and
    # X-Forwarded-Proto from 127.0.0.1; the CAS's apps see the connection's own.
    listener = Listener("client", "[api] api_listen", ListenAddress("127.0.0.1", 0), _app)
    with socket.socket() as sock:
        server = _server(listener, sock, ssl.create_default_context(), ConnectionLimits())
    assert not isinstance(server.config.loaded_app, ProxyHeadersMiddleware)
    assert server.config.loaded_app is _app
