"""The SDK's HTTP stack does no work per request that it could do once."""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

import httpx

_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class _Searches(importlib.abc.MetaPathFinder):
    """Counts the imports that reach the path search (failed ones included: Python keeps no
    note of a module it did not find)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        self.names.append(fullname)
        return None


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(_ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionResetError):
        pass
    writer.close()


async def _requests_searching(count: int) -> list[str]:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    searches = _Searches()
    try:
        async with httpx.AsyncClient() as client:
            assert (await client.get(url)).text == "ok"  # lazy imports happen here, once
            sys.meta_path.insert(0, searches)
            try:
                for _ in range(count):
                    assert (await client.get(url)).text == "ok"
            finally:
                sys.meta_path.remove(searches)
    finally:
        server.close()
        await server.wait_closed()
    return searches.names


def test_async_requests_import_nothing() -> None:
    # httpcore asks sniffio which event loop runs at every lock and timeout; were sniffio not
    # installed (anyio no longer brings it), every request would search the path for it.
    assert asyncio.run(_requests_searching(20)) == []
