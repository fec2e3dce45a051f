"""A lane: one worker thread that runs CPU-bound work so the event loop never waits for it.

Every request that verifies evidence, renders a configuration, issues certificates and seals an
answer does a millisecond or more of work in Python or in code that holds the GIL. On the event
loop that work would hold up every other request; spread over a pool of threads it costs more
than it saves, because the threads only take turns at the GIL and each turn is a context switch
against the event loop. One thread runs the work in the order it was submitted; the event loop
keeps serving TLS, nonces and ``/healthz`` meanwhile.

The hand-over is kept to the minimum a thread hop needs: a job goes into a lock-free queue, and
results that finish while the event loop is busy are delivered together, with one wake-up of the
loop for all of them rather than one per result. A result can also be held back until something
it depends on is done in another thread (an audit entry made durable by a group commit), so the
entries of one commit wake the loop once, not once for the lane and once more for the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")


class LaneClosedError(RuntimeError):
    """Work was submitted to, or was waiting in, a lane that has been closed."""


class _Job:
    """One call waiting in, or run by, the lane; ``abandoned`` is set from the event loop."""

    __slots__ = ("abandoned", "call", "future", "outcome", "wait_for")

    def __init__(
        self,
        future: asyncio.Future[Any],
        call: Callable[[], Any],
        wait_for: Callable[[Any], Future[Any] | None] | None,
    ) -> None:
        self.future = future
        self.call = call
        self.wait_for = wait_for
        self.abandoned = False
        self.outcome: tuple[bool, Any] = (False, None)


class WorkerLane:
    """Runs functions one at a time in one worker thread, awaited from the event loop."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._finished: list[_Job] = []
        self._finished_lock = threading.Lock()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._start_lock = threading.Lock()

    async def run(self, function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``function(*args, **kwargs)``, run in the lane's thread; its result or its exception.

        When the awaiting task is cancelled (the client went away) before the function starts,
        the function never runs, so abandoned work does not pile up in the lane.
        """
        return await self._submit(None, lambda: function(*args, **kwargs))

    async def run_then_wait(
        self,
        wait_for: Callable[[_T], Future[Any] | None],
        function: Callable[_P, _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """As :meth:`run`, but the result is handed back only once ``wait_for(result)`` is done.

        ``wait_for`` runs in the lane's thread and names a future the result depends on (or
        None). The lane does not block on it: it goes on with the next job meanwhile. Whether
        that future succeeded is for the caller to ask; the lane only waits for it.
        """
        return await self._submit(wait_for, lambda: function(*args, **kwargs))

    async def _submit(
        self, wait_for: Callable[[Any], Future[Any] | None] | None, call: Callable[[], _T]
    ) -> _T:
        if self._closed:
            raise LaneClosedError("the lane is closed")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._start()
        future: asyncio.Future[_T] = loop.create_future()
        job = _Job(future, call, wait_for)
        self._jobs.put(job)
        try:
            return await future
        except asyncio.CancelledError:
            job.abandoned = True
            raise

    def _start(self) -> None:
        # The thread starts with the first job, so an API that never attests costs no thread.
        if self._thread.ident is None:
            with self._start_lock:
                if self._thread.ident is None:
                    self._thread.start()

    def close(self) -> None:
        """Stop the lane: work not yet started is dropped; work running finishes in its thread."""
        self._closed = True
        self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.abandoned:
                continue
            if self._closed:
                job.outcome = (False, LaneClosedError("the lane was closed before this work ran"))
                self._finish(job)
                continue
            try:
                result = job.call()
                job.outcome = (True, result)
                pending = job.wait_for(result) if job.wait_for is not None else None
            except BaseException as exc:  # handed to the awaiting task, which re-raises it
                job.outcome = (False, exc)
                pending = None
            if pending is None:
                self._finish(job)
            else:
                # Runs at once if already done, else in the thread that completes it.
                pending.add_done_callback(functools.partial(self._finish_waited, job))
        self._drop_waiting()

    def _finish(self, job: _Job) -> None:
        with self._finished_lock:
            self._finished.append(job)
            if self._wake_pending:
                return
            self._wake_pending = True
        loop = self._loop
        assert loop is not None  # set by run() before any job is queued
        # A closed loop raises RuntimeError: nobody awaits these results any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._deliver)

    def _finish_waited(self, job: _Job, _done: Future[Any]) -> None:
        self._finish(job)

    def _deliver(self) -> None:
        with self._finished_lock:
            finished, self._finished = self._finished, []
            self._wake_pending = False
        for job in finished:
            if job.future.done():
                continue
            ok, value = job.outcome
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)

    def _drop_waiting(self) -> None:
        # After close(): jobs still queued never run; their callers get a clear error.
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is None or job.abandoned:
                continue
            job.outcome = (False, LaneClosedError("the lane was closed before this work ran"))
            self._finish(job)
