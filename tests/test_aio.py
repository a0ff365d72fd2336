"""The concurrency helpers (boride.aio): task groups own their tasks, threads are waited for."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from boride import aio


async def test_closing_a_group_cancels_and_waits_for_its_tasks() -> None:
    cleaned = []

    async def forever(n: int) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.01)  # clean-up that takes time: aclose waits for it
            cleaned.append(n)

    group = aio.TaskGroup("test")
    tasks = [group.start_soon(forever(n)) for n in range(3)]
    await asyncio.sleep(0)
    await group.aclose()
    assert sorted(cleaned) == [0, 1, 2]
    assert all(t.cancelled() for t in tasks)
    assert len(group) == 0


async def test_a_closed_group_refuses_new_tasks() -> None:
    group = aio.TaskGroup("runtime")
    await group.aclose()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="runtime: closed"):
        group.start_soon(coro)


async def test_a_failing_task_stops_nothing_else() -> None:
    async def fail() -> None:
        raise ValueError("boom")

    async with aio.TaskGroup() as group:
        failing = group.start_soon(fail())
        other = group.start_soon(asyncio.sleep(0.01, result=7))
    assert isinstance(failing.exception(), ValueError)
    assert other.result() == 7


async def test_leaving_the_block_normally_waits_for_every_task() -> None:
    done = []

    async def later() -> None:
        await asyncio.sleep(0.02)
        done.append(True)

    async with aio.TaskGroup() as group:
        group.start_soon(later())
    assert done == [True]


async def test_leaving_the_block_on_an_error_cancels_the_tasks() -> None:
    group = aio.TaskGroup()
    with pytest.raises(KeyError):
        async with group:
            task = group.start_soon(asyncio.sleep(3600))
            raise KeyError("x")
    assert task.cancelled()


async def test_start_returns_what_the_task_says_once_it_is_ready() -> None:
    async def serve(status: aio.TaskStatus[int]) -> None:
        await asyncio.sleep(0.01)
        status.started(5551)
        await asyncio.sleep(3600)

    async with aio.TaskGroup() as group:
        assert await group.start(serve) == 5551
        assert len(group) == 1  # still running in the background
        await group.aclose()


async def test_start_raises_the_error_of_a_task_that_fails_before_it_is_ready() -> None:
    async def broken(status: aio.TaskStatus[None]) -> None:
        raise OSError("port in use")

    async def quits(status: aio.TaskStatus[None]) -> None:
        return None

    async with aio.TaskGroup() as group:
        with pytest.raises(OSError, match="port in use"):
            await group.start(broken)
        with pytest.raises(RuntimeError, match="without saying it had started"):
            await group.start(quits)


async def test_a_cancelled_start_cancels_its_task() -> None:
    cancelled = asyncio.Event()

    async def slow(status: aio.TaskStatus[None]) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    group = aio.TaskGroup()
    waiter = asyncio.ensure_future(group.start(slow))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert cancelled.is_set()
    assert len(group) == 0


async def test_to_thread_waits_for_the_thread_when_cancelled() -> None:
    ended = threading.Event()

    def blocking() -> None:
        time.sleep(0.1)
        ended.set()

    task = asyncio.ensure_future(aio.to_thread(blocking))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ended.is_set()  # the cancelled caller returned only after the thread had ended


async def test_to_thread_tells_the_thread_to_stop_when_cancelled() -> None:
    stop = threading.Event()
    started = threading.Event()
    seen = []

    def blocking(label: str) -> None:
        seen.append(label)  # stop is the helper's, not passed on
        started.set()
        stop.wait(60)  # a hang guard only: the cancellation sets it

    task = asyncio.ensure_future(aio.to_thread(blocking, "work", stop=stop))
    while not started.is_set():
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stop.is_set() and seen == ["work"]


async def test_to_thread_runs_at_most_its_limit_of_threads_at_once() -> None:
    running = 0
    most = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1

    await asyncio.gather(*(aio.to_thread(work) for _ in range(aio.THREADS * 3)))
    assert most <= aio.THREADS


async def test_gather_cancels_and_waits_for_the_others_when_one_fails() -> None:
    """asyncio.gather raises the first error and leaves the others running, owned by nobody;
    aio.gather cancels them and has waited for their clean-up when the error reaches us."""
    cleaned: list[str] = []

    async def slow(name: str) -> str:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.01)  # a clean-up that takes a moment
            cleaned.append(name)
        return name

    async def fails() -> str:
        await asyncio.sleep(0.01)
        raise ValueError("the first error")

    with pytest.raises(ValueError, match="the first error"):
        await aio.gather(slow("a"), fails(), slow("b"))
    assert sorted(cleaned) == ["a", "b"]
    assert await aio.gather(asyncio.sleep(0, "x"), asyncio.sleep(0, "y")) == ["x", "y"]
