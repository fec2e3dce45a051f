"""Verifying an audit log file: every signature, the chain, its CAS, on every core.

:func:`verify_log` reads the file in chunks cut at line ends. It first finds the ``cas_started``
entries (each names the audit key of the lines after it, certified by the CAS key), then checks
every line's form, signature and hash in worker processes, and feeds what each line says, in
file order, to the pure :class:`~opencas.audit.chain.ChainJudge`. A line's signature may be
any key a ``cas_started`` entry up to it named: the instances of a CAS on PostgreSQL write one
log, each signing with its own audit key (:class:`~opencas.audit.chain.KeyRing`).

The workers are a :class:`~concurrent.futures.ProcessPoolExecutor`, not a ``multiprocessing``
pool: a pool whose worker dies loses that worker's task and waits for it forever, where the
executor fails every task in flight with ``BrokenProcessPool``. The chunks it did not check are
then checked in this process, so a verification ends, slower, whatever happens to a worker.
Workers are forked only while this process runs no other thread (a thread may hold a lock at the
fork, which the child then waits for forever); otherwise they start from a fork server.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import threading
from array import array
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from opencas.audit.chain import (
    EVENTS,
    START_EVENT,
    ChainJudge,
    Expectations,
    KeyRing,
    LineFacts,
    StartClaims,
    Verdict,
    check_line,
    check_start,
    parse_entry,
)

#: A chunk holds about this many bytes of lines.
CHUNK_BYTES = 2 * 1024 * 1024
#: Chunks in flight per worker: enough to keep each busy, few enough that results waiting for
#: the judge stay small (a checked chunk is about as large as its lines).
IN_FLIGHT_PER_WORKER = 2
_START_MARK = b'"event":"cas_started"'

_EVENTS = tuple(sorted(EVENTS))
_EVENT_INDEX = {event: index for index, event in enumerate(_EVENTS)}
_PREV_FAILED, _SIGNED = 1, 2


@dataclass
class _Checked:
    """What a worker found in one chunk: for each intact line, in order, its seq, prev, hash,
    flags and event (by index), as arrays; each other line's offset and what is wrong with it.
    Arrays and byte strings pickle in one piece, where a million objects would not."""

    length: int
    first_line: int
    lines: int
    seqs: array[int] = field(default_factory=lambda: array("q"))
    prevs: bytearray = field(default_factory=bytearray)
    hashes: bytearray = field(default_factory=bytearray)
    flags: bytearray = field(default_factory=bytearray)
    events: bytearray = field(default_factory=bytearray)
    faults: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Chunk:
    path: str
    start: int
    end: int
    first_line: int
    keys: tuple[tuple[int, bytes], ...]  # (line number of a start entry, raw Ed25519 key)


@dataclass(frozen=True)
class _Start:
    line: int
    claims: StartClaims | None
    problem: str | None


def verify_log(
    path: Path,
    expectations: Expectations,
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Verdict:
    """The verdict on the log file at ``path`` against ``expectations``.

    ``workers`` processes check the lines (default: one per core); ``progress(done, total)``
    is told how many bytes were checked. When a worker process dies, the chunks not yet
    checked are checked in this process and ``warn`` is told why. Raises ``OSError`` when the
    file cannot be read.
    """
    size = path.stat().st_size
    judge = ChainJudge(expectations)
    if size == 0:
        return judge.verdict()
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        starts = _find_starts(data)
        for start in starts:
            if start.claims is not None:
                judge.start(start.line, start.claims)
            else:
                judge.foreign(start.line, f"the cas_started entry does not hold: {start.problem}")
        keys = tuple(
            (start.line, start.claims.audit_key.public_bytes(Encoding.Raw, PublicFormat.Raw))
            for start in starts
            if start.claims is not None
        )
        if not keys:
            judge.foreign(
                None,
                "no cas_started entry in the log names the audit key: its signatures cannot be "
                "checked, nor tied to a CAS (fetch it from a cas_started entry on)",
            )
        chunks = list(_chunks(data, str(path), keys))
    count = min(workers or os.cpu_count() or 1, len(chunks))
    if count == 1:
        return _judge(judge, map(_check_chunk, chunks), size, progress)
    return _judge(judge, _checked_in_workers(chunks, count, warn), size, progress)


def _checked_in_workers(
    chunks: Sequence[_Chunk], count: int, warn: Callable[[str], None] | None
) -> Iterator[_Checked]:
    """Each chunk checked, in order, by ``count`` worker processes; in this process those
    left when a worker died."""
    # Forking copies only the calling thread: a lock another thread held stays held in the
    # child. A fork server is started by fork and exec, so it has no such lock.
    method = "fork" if threading.active_count() == 1 else "forkserver"
    window = count * IN_FLIGHT_PER_WORKER
    done = 0
    try:
        with ProcessPoolExecutor(count, mp_context=multiprocessing.get_context(method)) as pool:
            pending: list[Future[_Checked]] = []
            for chunk in chunks:
                pending.append(pool.submit(_check_chunk, chunk))
                if len(pending) >= window:
                    yield pending.pop(0).result()
                    done += 1
            for future in pending:
                yield future.result()
                done += 1
    except BrokenProcessPool as exc:
        if warn is not None:
            warn(
                f"a verifying process ended abruptly ({exc}); checking the remaining "
                f"{len(chunks) - done} of {len(chunks)} chunks in this process"
            )
        yield from map(_check_chunk, chunks[done:])


def _judge(
    judge: ChainJudge,
    results: Iterator[_Checked],
    size: int,
    progress: Callable[[int, int], None] | None,
) -> Verdict:
    done = 0
    for checked in results:
        faults = dict(checked.faults)
        hashes = checked.hashes.hex()
        prevs = checked.prevs.hex()
        facts = 0
        for offset in range(checked.lines):
            line = checked.first_line + offset
            fault = faults.get(offset)
            if fault is not None:
                judge.fault(line, fault)
                continue
            at = facts * 64
            flags = checked.flags[facts]
            judge.entry(
                line,
                LineFacts(
                    checked.seqs[facts],
                    prevs[at : at + 64],
                    hashes[at : at + 64],
                    bool(flags & _PREV_FAILED),
                    _EVENTS[checked.events[facts]],
                    bool(flags & _SIGNED),
                ),
            )
            facts += 1
        done += checked.length
        if progress is not None:
            progress(done, size)
    return judge.verdict()


def _find_starts(data: mmap.mmap) -> list[_Start]:
    """Every ``cas_started`` entry, checked: its line number, and what it proves or why not."""
    starts: list[_Start] = []
    position = counted = 0
    line = 1  # the number of the line that begins at ``counted``
    while True:
        found = data.find(_START_MARK, position)
        if found < 0:
            return starts
        begin = data.rfind(b"\n", 0, found) + 1
        end = data.find(b"\n", found)
        end = len(data) if end < 0 else end
        line += data[counted:begin].count(b"\n")
        counted = begin
        position = end + 1
        try:
            entry = parse_entry(bytes(data[begin:end]))
        except ValueError:
            continue  # the line itself is reported when it is checked
        if entry.event != START_EVENT:
            continue
        try:
            starts.append(_Start(line, check_start(entry), None))
        except ValueError as exc:
            starts.append(_Start(line, None, str(exc)))


def _chunks(data: mmap.mmap, path: str, keys: tuple[tuple[int, bytes], ...]) -> Iterator[_Chunk]:
    start, line, size = 0, 1, len(data)
    while start < size:
        end = data.find(b"\n", min(size, start + CHUNK_BYTES))
        end = size if end < 0 else end + 1
        yield _Chunk(path, start, end, line, keys)
        line += data[start:end].count(b"\n")
        start = end


def _check_chunk(chunk: _Chunk) -> _Checked:
    """Check every line of ``chunk``; what each says, packed so that it pickles cheaply."""
    with open(chunk.path, "rb") as file:
        file.seek(chunk.start)
        text = file.read(chunk.end - chunk.start)
    # The keys in force at a line: every key a start entry up to it named (several instances
    # of one CAS sign with keys of their own); the first one also before the first start.
    ring = KeyRing()
    keys = list(chunk.keys)
    if keys:
        ring.add(keys[0][1])
    following = 0
    parts = text.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    checked = _Checked(len(text), chunk.first_line, len(parts))
    event_index = _EVENT_INDEX
    check = ring.check if keys else None
    for offset, raw in enumerate(parts):
        line = chunk.first_line + offset
        while following < len(keys) and keys[following][0] <= line:
            ring.add(keys[following][1])
            following += 1
        try:
            facts = check_line(raw, check)
        except ValueError as exc:
            checked.faults.append((offset, str(exc)))
            continue
        checked.seqs.append(facts.seq)
        checked.prevs += bytes.fromhex(facts.prev)
        checked.hashes += bytes.fromhex(facts.hash)
        checked.flags.append(_PREV_FAILED * facts.prev_failed | _SIGNED * facts.signed)
        checked.events.append(event_index[facts.event])
    return checked
