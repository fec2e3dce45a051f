"""A daemon thread that runs one step again and again, a fixed time apart, until stopped."""

from __future__ import annotations

import threading
from collections.abc import Callable


class StepThread:
    """Runs ``step`` in a daemon thread named ``name`` from :meth:`start` until :meth:`stop`,
    ``interval`` seconds after the step before (with ``wait_first``, also before the first).

    An exception a step raises goes to ``failed`` and the next step runs as planned: background
    upkeep must not stop the CAS.
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], object],
        interval: float,
        failed: Callable[[Exception], None],
        *,
        wait_first: bool = False,
    ) -> None:
        self._name = name
        self._step = step
        self._interval = interval
        self._failed = failed
        self._wait_first = wait_first
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread."""
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread: no step starts after this; the one running finishes (waited for
        at most ``timeout`` seconds)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        if self._wait_first and self._stopping.wait(self._interval):
            return
        while not self._stopping.is_set():
            try:
                self._step()
            except Exception as exc:
                self._failed(exc)
            if self._stopping.wait(self._interval):
                return
