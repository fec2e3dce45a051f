"""Where audit entries go: the file sink (an append-only file, fsynced) and the network sink
(the same file, and every line also delivered to an HTTPS server).

A sink takes lines with :meth:`Sink.write` and makes every line written so far durable with
:meth:`Sink.sync`; the writer acknowledges an entry only after ``sync`` returned. Either raises
``OSError`` when it cannot, and the writer then fails the operation.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import httpx

from opencas.durable_files import fsync_directory

#: The log file is readable by its owner only, like the database beside it.
LOG_FILE_MODE = 0o600
_TAIL_BLOCK = 64 * 1024
#: One POST of the network sink carries at most this many bytes of whole lines (an entry is
#: less than 512 KiB, so one always fits).
MAX_POST_BYTES = 4 * 1024 * 1024
#: The most of a server's answer the network sink reads: it needs only the status.
MAX_ANSWER_BYTES = 64 * 1024
#: Seconds the network sink waits to connect to the server, and for each read and write.
NETWORK_TIMEOUT = 10.0
#: The media type of a POST: entry lines, each ending with a newline.
LINES_MEDIA_TYPE = "application/x-ndjson"
#: Beside the log file: how far the network sink's server has the file (byte offset, then URL).
SENT_SUFFIX = ".sent"


class Sink(Protocol):
    """An append-only destination of audit lines."""

    def write(self, line: bytes) -> None:
        """Append ``line`` (without its newline); it is durable only after :meth:`sync`."""
        ...

    def sync(self) -> None:
        """Make every line written so far durable."""
        ...

    def close(self) -> None:
        """Release the sink."""
        ...


class FileSink:
    """An append-only file: one entry per line, fsynced by :meth:`sync`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        created = not path.exists()
        self._fd = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_FILE_MODE
        )
        if created:
            os.fchmod(self._fd, LOG_FILE_MODE)
            os.fsync(self._fd)
            fsync_directory(path.parent)

    def write(self, line: bytes) -> None:
        """Append ``line`` and its newline to the file (not yet fsynced)."""
        data = memoryview(line + b"\n")
        while data:
            written = os.write(self._fd, data)
            data = data[written:]

    def sync(self) -> None:
        """fsync the file."""
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file."""
        with contextlib.suppress(OSError):
            os.close(self._fd)


class NetworkSink:
    """The log file, and every line of it also POSTed to an HTTPS server.

    :meth:`sync` fsyncs the file, then POSTs every line the server does not have yet, in order,
    at most :data:`MAX_POST_BYTES` a request, over one persistent connection; it returns only
    once the server answered each with 2xx. So one POST carries one group-commit batch, and
    after a failure or a restart the next one begins with what the server did not confirm
    (how far it got is kept beside the log, :data:`SENT_SUFFIX`; when that is lost, or names
    another URL, the whole file is sent from its start). A server may so receive a line twice
    (after a crash between its answer and that note); a line's ``seq`` and hash identify it.
    """

    def __init__(self, path: Path, url: str, ca_certificate_pem: str | None) -> None:
        self._file = FileSink(path)
        self._url = url
        context = ssl.create_default_context(cadata=ca_certificate_pem)
        self._client = httpx.Client(
            verify=context,
            timeout=NETWORK_TIMEOUT,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        self._reader = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._sent_path = path.with_name(path.name + SENT_SUFFIX)
        self._sent = min(self._read_sent(), os.fstat(self._reader).st_size)

    @property
    def path(self) -> Path:
        """The log file."""
        return self._file.path

    def write(self, line: bytes) -> None:
        """Append ``line`` to the file (neither fsynced nor sent yet)."""
        self._file.write(line)

    def sync(self) -> None:
        """fsync the file and deliver every whole line it holds; ``OSError`` when the server
        cannot be reached or does not answer 2xx.

        What to send is read from the file, so lines another sink wrote before this one took
        over are delivered too; a line still being written (no newline yet) waits.
        """
        self._deliver()

    def probe(self) -> None:
        """Deliver every whole line, as :meth:`sync` does; when there was none to send, POST
        an empty batch, so that a server that cannot take the log is found before it must."""
        if not self._deliver():
            self._post(b"")

    def _deliver(self) -> int:
        """fsync the file and POST the lines the server does not have; how many POSTs."""
        self._file.sync()
        end = os.fstat(self._reader).st_size
        posts = 0
        while self._sent < end:
            batch = os.pread(self._reader, min(MAX_POST_BYTES, end - self._sent), self._sent)
            whole = batch.rfind(b"\n") + 1
            if whole == 0:
                break
            self._post(batch[:whole])
            posts += 1
            self._sent += whole
            self._note_sent()
        return posts

    def _post(self, lines: bytes) -> None:
        try:
            with self._client.stream(
                "POST", self._url, content=lines, headers={"content-type": LINES_MEDIA_TYPE}
            ) as answer:
                status, reason = answer.status_code, answer.reason_phrase
                _drain(answer)
        except httpx.HTTPError as exc:
            raise OSError(f"the audit log server {self._url} cannot be reached: {exc}") from exc
        if not 200 <= status < 300:
            raise OSError(f"the audit log server {self._url} answered {status} {reason}, not 2xx")

    def _read_sent(self) -> int:
        try:
            offset, url = self._sent_path.read_text("ascii").split(" ", 1)
            return int(offset) if url == self._url + "\n" else 0
        except (OSError, ValueError):
            return 0

    def _note_sent(self) -> None:
        # Not fsynced: losing it only makes the next start send more than needed.
        temporary = self._sent_path.with_name(self._sent_path.name + ".tmp")
        temporary.write_text(f"{self._sent} {self._url}\n", "ascii")
        os.replace(temporary, self._sent_path)

    def close(self) -> None:
        """Close the file and the connection."""
        self._client.close()
        self._file.close()
        with contextlib.suppress(OSError):
            os.close(self._reader)


def _drain(answer: httpx.Response) -> None:
    """Read the body of ``answer`` so that its connection can be reused, but at most
    :data:`MAX_ANSWER_BYTES`: past that the connection is dropped instead."""
    read = 0
    for chunk in answer.iter_raw():
        read += len(chunk)
        if read > MAX_ANSWER_BYTES:
            return


def cut_partial_line(path: Path) -> int:
    """Remove a last line without its newline (a write a crash interrupted); bytes removed.

    Such a line was never acknowledged: the writer acknowledges an entry only once its whole
    line, newline included, is fsynced.
    """
    with path.open("r+b") as file:
        size = file.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - _TAIL_BLOCK)
            file.seek(start)
            block = file.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end == size:
            return 0
        file.truncate(end)
        file.flush()
        os.fsync(file.fileno())
        return size - end


def lines_backwards(path: Path) -> Iterator[bytes]:
    """The lines of ``path`` (without newlines), last first; reads only as far as asked."""
    with path.open("rb") as file:
        end = file.seek(0, os.SEEK_END)
        rest = b""
        while end > 0:
            start = max(0, end - _TAIL_BLOCK)
            file.seek(start)
            block = file.read(end - start) + rest
            end = start
            parts = block.split(b"\n")
            rest = parts[0]
            for part in reversed(parts[1:]):
                if part:
                    yield part
        if rest:
            yield rest
