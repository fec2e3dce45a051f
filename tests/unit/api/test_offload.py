"""The worker lane: results, errors, order, cancellation and closing."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

import pytest

from opencas.api.offload import LaneClosedError, WorkerLane


def test_runs_off_the_event_loop_thread_and_returns_the_result() -> None:
    lane = WorkerLane("test-lane")

    async def main() -> tuple[str, int]:
        name = await lane.run(lambda: threading.current_thread().name)
        total = await lane.run(sum, [1, 2, 3])
        return name, total

    name, total = asyncio.run(main())
    assert name == "test-lane"
    assert name != threading.current_thread().name
    assert total == 6


def test_an_exception_reaches_the_caller_and_the_lane_goes_on() -> None:
    lane = WorkerLane("test-lane")

    def fail() -> None:
        raise ValueError("bad evidence")

    async def main() -> int:
        with pytest.raises(ValueError, match="bad evidence"):
            await lane.run(fail)
        return await lane.run(int, "7")

    assert asyncio.run(main()) == 7


def test_many_concurrent_calls_each_get_their_own_result_in_submission_order() -> None:
    lane = WorkerLane("test-lane")
    ran: list[int] = []

    def record(n: int) -> int:
        ran.append(n)
        return n * n

    async def main() -> list[int]:
        return await asyncio.gather(*(lane.run(record, n) for n in range(500)))

    assert asyncio.run(main()) == [n * n for n in range(500)]
    assert ran == list(range(500))


def test_work_cancelled_before_it_starts_never_runs() -> None:
    lane = WorkerLane("test-lane")
    release = threading.Event()
    ran: list[str] = []

    async def main() -> None:
        blocker = asyncio.ensure_future(lane.run(release.wait, 10))
        queued = asyncio.ensure_future(lane.run(ran.append, "abandoned"))
        await asyncio.sleep(0)  # both submitted
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        release.set()
        assert await blocker is True
        await lane.run(ran.append, "after")

    asyncio.run(main())
    assert ran == ["after"]


def test_a_closed_lane_refuses_new_work_and_drops_waiting_work() -> None:
    lane = WorkerLane("test-lane")
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def block() -> bool:
        started.set()
        return release.wait(10)

    async def main() -> None:
        blocker = asyncio.ensure_future(lane.run(block))
        waiting = asyncio.ensure_future(lane.run(ran.append, "waiting"))
        assert await asyncio.to_thread(started.wait, 10)
        lane.close()
        release.set()
        assert await blocker is True  # work already running finishes
        with pytest.raises(LaneClosedError):
            await waiting
        with pytest.raises(LaneClosedError):
            await lane.run(ran.append, "new")

    asyncio.run(main())
    assert ran == []


def test_a_result_waits_for_its_dependency_while_the_lane_goes_on() -> None:
    lane = WorkerLane("test-lane")
    dependency: Future[None] = Future()

    async def main() -> None:
        held = asyncio.ensure_future(lane.run_then_wait(lambda _result: dependency, str, 1))
        # The lane is not blocked by the held result: the next job is answered first.
        assert await lane.run(str, 2) == "2"
        assert not held.done()
        dependency.set_result(None)
        assert await held == "1"
        # A dependency already done, or none at all, hands the result back at once.
        assert await lane.run_then_wait(lambda _result: dependency, str, 3) == "3"
        assert await lane.run_then_wait(lambda _result: None, str, 4) == "4"

    asyncio.run(main())
