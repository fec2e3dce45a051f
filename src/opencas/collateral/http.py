"""The HTTP client every network collateral source shares: one connection pool, bounded reads.

Each request has a timeout and each answer a size limit, and every failure is an
:class:`~opencas.errors.EvidenceError` (``check="collateral"``) that names the URL and, when the
server answered, its status. Request headers (which may carry a subscription key) never appear in
a message.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from opencas import __version__
from opencas.collateral.bundle import MAX_DOCUMENT_BYTES
from opencas.errors import EvidenceError

DEFAULT_TIMEOUT = 10.0
"""Seconds to connect, and between two reads of an answer."""
MAX_REDIRECTS = 3


@dataclass(frozen=True)
class Fetched:
    """A successful answer: where it came from, its headers and its body."""

    url: str
    headers: httpx.Headers
    body: bytes


class HttpFetcher:
    """GETs documents over one reusable ``httpx.Client`` (connection reuse across sources).

    ``verify`` is how servers are authenticated: True for the system's trusted CAs, or an
    ``ssl.SSLContext`` (for a PCCS with its own CA). ``transport`` replaces the network, for
    tests. Safe to use from several threads.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int = MAX_DOCUMENT_BYTES,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            verify=verify,
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            headers={"User-Agent": f"opencas/{__version__}"},
            transport=transport,
        )

    def get(self, url: str, headers: Mapping[str, str] | None = None) -> Fetched:
        """The body of ``url`` (status 200), at most ``max_bytes`` long.

        Raises :class:`EvidenceError` (``check="collateral"``) naming ``url`` when the server
        cannot be reached, does not answer in time, answers another status (named, with the
        start of its body) or a longer body.
        """
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                body = self._read(url, response)
                if response.status_code != httpx.codes.OK:
                    raise EvidenceError(
                        f"{url}: the server answered {response.status_code} "
                        f"{response.reason_phrase}{_excerpt(body)}",
                        check="collateral",
                    )
                return Fetched(str(response.url), response.headers, body)
        except httpx.TimeoutException as exc:
            raise EvidenceError(
                f"{url}: no answer within {self.timeout:g} s ({type(exc).__name__})",
                check="collateral",
            ) from exc
        except httpx.HTTPError as exc:
            raise EvidenceError(
                f"{url}: cannot be fetched ({type(exc).__name__}: {exc})", check="collateral"
            ) from exc

    def _read(self, url: str, response: httpx.Response) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise EvidenceError(
                f"{url}: the answer is {declared} bytes, more than the limit of "
                f"{self.max_bytes} bytes for a collateral document",
                check="collateral",
            )
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self.max_bytes:
                raise EvidenceError(
                    f"{url}: the answer is longer than the limit of {self.max_bytes} bytes for "
                    "a collateral document",
                    check="collateral",
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()

    def __enter__(self) -> HttpFetcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _excerpt(body: bytes) -> str:
    """The start of an error answer's body, printable, for the message; empty when none."""
    text = body[:200].decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return f": {text}" if text else ""
