"""The background step thread: steps a fixed time apart, failures reported and survived."""

from __future__ import annotations

import threading

from opencas.service.step_thread import StepThread

WAIT = 10.0


def test_steps_run_again_after_a_failure_until_stopped() -> None:
    calls: list[int] = []
    failures: list[Exception] = []
    third = threading.Event()

    def step() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("first step fails")
        if len(calls) == 3:
            third.set()

    thread = StepThread("test-steps", step, 0.001, failures.append)
    thread.start()
    assert third.wait(WAIT)
    thread.stop()
    stopped_at = len(calls)
    assert [str(exc) for exc in failures] == ["first step fails"]
    assert stopped_at >= 3
    thread.stop()  # stopping twice is harmless
    assert len(calls) == stopped_at  # no step after stop() returned


def test_the_first_step_comes_at_once_or_after_one_interval() -> None:
    ran = threading.Event()
    at_once = StepThread("test-at-once", ran.set, 3600.0, lambda exc: None)
    at_once.start()
    assert ran.wait(WAIT)
    at_once.stop()

    later = threading.Event()
    waiting = StepThread("test-wait-first", later.set, 3600.0, lambda exc: None, wait_first=True)
    waiting.start()
    waiting.stop()
    assert not later.is_set()


def test_stop_before_start_does_nothing() -> None:
    StepThread("test-never", lambda: None, 1.0, lambda exc: None).stop()
