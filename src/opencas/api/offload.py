"""A lane: one worker thread that runs CPU-bound work so the event loop never waits for it.

Every request that verifies evidence, renders a configuration, issues certificates and seals an
answer does a millisecond or more of work in Python or in code that holds the GIL. On the event
loop that work would hold up every other request; spread over a pool of threads it costs more
than it saves, because the threads only take turns at the GIL and each turn is a context switch
against the event loop. One thread runs the work in the
order it was submitted; the event loop keeps serving TLS, nonces and ``/healthz`` meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")


class WorkerLane:
    """Runs functions one at a time in one worker thread, awaited from the event loop."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``function(*args, **kwargs)``, run in the lane's thread; its result or its exception.

        When the awaiting task is cancelled (the client went away) before the function starts,
        the function never runs, so abandoned work does not pile up in the lane.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: function(*args, **kwargs))

    def close(self) -> None:
        """Stop the lane: work not yet started is dropped; work running finishes in its thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)
