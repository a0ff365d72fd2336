"""Tests of the bounded parallel engine (boride/parallel.py).

No test measures wall-clock time: ordering, concurrency and cancellation are driven by events and
gates, and the few timeouts used are either the engine's own (item timeout, deadline) acting on
items that never finish on their own, or hang guards far above anything a loaded machine needs.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from boride.parallel import (
    Event,
    FailFastCancelled,
    ItemTimeout,
    Outcome,
    ParallelError,
    Report,
    RunTimeout,
    Status,
    default_limit,
    run,
    stream,
)

X = TypeVar("X")

HANG_GUARD = 60.0  # seconds; only there so that a regression fails instead of hanging the suite


async def guarded(aw: Awaitable[X]) -> X:
    return await asyncio.wait_for(aw, HANG_GUARD)


async def settle(turns: int = 20) -> None:
    """Let every ready task run for a few event-loop turns (no wall-clock waiting)."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def forever() -> None:
    await asyncio.Event().wait()


@dataclass
class Tracker:
    """Counts starts and concurrency of an operation."""

    current: int = 0
    peak: int = 0
    starts: list[Any] = field(default_factory=list)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    full_at: int | None = None

    def enter(self, item: Any) -> None:
        self.starts.append(item)
        self.current += 1
        self.peak = max(self.peak, self.current)
        if self.full_at is not None and self.current >= self.full_at:
            self.full.set()

    def leave(self) -> None:
        self.current -= 1


class CountingInput:
    """An unsized, lazy input that records how many items have been taken from it."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.taken = 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.taken += 1
            yield i


# ------------------------------------------------------------------------------------------------
# Order and errors


async def test_order_preserved_with_random_completion_times() -> None:
    rng = random.Random(1234)
    delays = [rng.choice([0, 0, 1, 2, 5, 10]) for _ in range(300)]

    async def op(i: int) -> int:
        for _ in range(delays[i]):  # finish after a random number of loop turns
            await asyncio.sleep(0)
        return i * 10

    report = await guarded(run(op, range(300), limit=16))
    assert report.ok
    assert [o.index for o in report.outcomes] == list(range(300))
    assert [o.item for o in report.outcomes] == list(range(300))
    assert report.values == [i * 10 for i in range(300)]


async def test_order_preserved_with_random_real_sleeps() -> None:
    rng = random.Random(99)
    delays = [rng.uniform(0, 0.003) for _ in range(120)]
    finished: list[int] = []

    async def op(i: int) -> str:
        await asyncio.sleep(delays[i])
        finished.append(i)
        return f"v{i}"

    report = await guarded(run(op, range(120), limit=12))
    assert report.values == [f"v{i}" for i in range(120)]
    assert sorted(finished) == list(range(120))


async def test_order_preserved_when_completion_is_exactly_reversed() -> None:
    n = 10
    gates = [asyncio.Event() for _ in range(n)]
    started = Tracker(full_at=n)

    async def op(i: int) -> int:
        started.enter(i)
        await gates[i].wait()
        return i

    async def collect() -> list[int]:
        got: list[int] = []
        async with stream(op, range(n), limit=n) as outcomes:
            async for o in outcomes:
                got.append(o.index)
        return got

    task = asyncio.create_task(collect())
    await guarded(started.full.wait())
    for gate in reversed(gates):  # the last item finishes first
        gate.set()
        await settle(3)
    assert await guarded(task) == list(range(n))


async def test_every_error_is_kept_with_its_item() -> None:
    class Custom(Exception):
        pass

    def error_for(i: int) -> Exception | None:
        if i % 3 == 0:
            return ValueError(f"bad {i}")
        if i % 7 == 1:
            return Custom(f"custom {i}")
        return None

    async def op(i: int) -> int:
        await asyncio.sleep(0)
        err = error_for(i)
        if err is not None:
            raise err
        return -i

    items = [f"item-{i}" for i in range(60)]

    async def named(item: str) -> int:
        return await op(int(item.split("-")[1]))

    report = await guarded(run(named, items, limit=5))
    assert not report.ok
    expected_failed = [i for i in range(60) if error_for(i) is not None]
    assert sorted(o.index for o in report.failures) == expected_failed
    for o in report.outcomes:
        err = error_for(o.index)
        assert o.item == f"item-{o.index}"
        if err is None:
            assert o.status is Status.OK and o.value == -o.index and o.error is None
        else:
            assert o.status is Status.FAILED and o.value is None
            assert type(o.error) is type(err) and str(o.error) == str(err)
    assert report.cancelled == [] and report.skipped == []

    with pytest.raises(ParallelError) as info:
        report.raise_for_failures()
    assert info.value.report is report
    message = str(info.value)
    assert f"{len(expected_failed)} item(s) did not succeed" in message
    for i in expected_failed:
        assert f"item {i} ('item-{i}')" in message


async def test_raise_for_failures_is_silent_when_everything_succeeded() -> None:
    async def op(i: int) -> int:
        return i

    report = await run(op, range(5), limit=2)
    report.raise_for_failures()
    assert report.root is None and report.failures == []


async def test_empty_input() -> None:
    async def op(i: int) -> int:  # pragma: no cover - never called
        raise AssertionError

    report: Report[int, int] = await run(op, [], limit=3)
    assert report.ok and report.outcomes == []
    async with stream(op, iter(()), limit=3) as outcomes:
        assert [o async for o in outcomes] == []


async def test_root_failure_is_the_first_in_time_and_reported_first() -> None:
    later_failed = asyncio.Event()

    async def op(i: int) -> int:
        if i == 0:
            await later_failed.wait()  # fails only after item 3 has failed
            raise RuntimeError("second")
        if i == 3:
            later_failed.set()
            raise RuntimeError("first")
        return i

    report = await guarded(run(op, range(5), limit=5))
    assert report.root is not None and report.root.index == 3
    assert [o.index for o in report.failures] == [3, 0]
    assert [str(o.error) for o in report.failures] == ["first", "second"]


# ------------------------------------------------------------------------------------------------
# Containment of anything an operation raises


class CustomBase(BaseException):
    pass


@pytest.mark.parametrize("make", [CustomBase, GeneratorExit, MemoryError])
@pytest.mark.parametrize("where", ["sync", "after-await", "with-item-timeout"])
async def test_base_exceptions_are_contained(make: Callable[[], BaseException], where: str) -> None:
    async def op(i: int) -> int:
        if i == 2:
            if where != "sync":
                await asyncio.sleep(0)
            raise make()
        await asyncio.sleep(0)
        return i

    timeout = 30.0 if where == "with-item-timeout" else None
    report = await guarded(run(op, range(5), limit=2, item_timeout=timeout))
    assert [o.status for o in report.outcomes] == [Status.OK] * 2 + [Status.FAILED] + [
        Status.OK
    ] * 2
    assert type(report.outcomes[2].error) is type(make())
    assert report.root is report.outcomes[2]
    # The engine left nothing behind.
    assert asyncio.all_tasks() == {asyncio.current_task()}


# KeyboardInterrupt and SystemExit are not an item's outcome: they reach the caller once the
# other workers are cancelled and gone. (Not under guarded(): asyncio.wait_for runs its
# awaitable in a task of its own, out of which a KeyboardInterrupt would escape into the loop.)

@pytest.mark.parametrize("make", [KeyboardInterrupt, lambda: SystemExit(3)])
@pytest.mark.parametrize("where", ["sync", "after-await", "with-item-timeout", "fail-fast"])
async def test_keyboard_interrupt_and_system_exit_reach_the_caller(
        make: Callable[[], BaseException], where: str) -> None:
    tracker = Tracker(full_at=3)
    cleaned: list[int] = []
    raised: list[BaseException] = []

    async def op(i: int) -> int:
        if i == 3:
            await tracker.full.wait()  # the three others are running
            if where != "sync":
                await asyncio.sleep(0)
            raised.append(make())
            raise raised[0]
        tracker.enter(i)
        try:
            await forever()
        finally:
            await asyncio.sleep(0.01)  # clean-up that awaits: it ends before the caller hears
            cleaned.append(i)
        return i

    timeout = 30.0 if where == "with-item-timeout" else None
    async with asyncio.timeout(HANG_GUARD):
        with pytest.raises(type(make())) as caught:
            await run(op, range(10), limit=4, item_timeout=timeout, fail_fast=where == "fail-fast")
    assert caught.value is raised[0]
    assert sorted(cleaned) == [0, 1, 2]
    assert tracker.starts == [0, 1, 2]  # nothing more was taken
    assert asyncio.all_tasks() == {asyncio.current_task()}


@pytest.mark.parametrize("error", [KeyboardInterrupt("input broke"), SystemExit(4)])
async def test_input_raising_keyboard_interrupt_reaches_the_caller(error: BaseException) -> None:
    cleaned: list[int] = []

    async def op(i: int) -> int:
        try:
            await forever()
        finally:
            cleaned.append(i)
        return i

    async with asyncio.timeout(HANG_GUARD):
        with pytest.raises(type(error)) as caught:
            await run(op, failing_input(3, error), limit=4)
    assert caught.value is error
    assert sorted(cleaned) == [0, 1, 2]
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_progress_callback_raising_keyboard_interrupt_reaches_the_caller() -> None:
    def on_event(event: Event[Any]) -> None:
        if event.kind == "done":
            raise KeyboardInterrupt

    async def op(i: int) -> int:
        await asyncio.sleep(0)
        return i

    async with asyncio.timeout(HANG_GUARD):
        with pytest.raises(KeyboardInterrupt):
            await run(op, range(10), limit=2, on_event=on_event)
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_keyboard_interrupt_reaches_a_stream_consumer_that_stopped_iterating() -> None:
    async def op(i: int) -> int:
        if i == 1:
            raise KeyboardInterrupt
        await forever()
        return i

    async with asyncio.timeout(HANG_GUARD):
        with pytest.raises(KeyboardInterrupt):
            async with stream(op, range(5), limit=2):
                await settle()  # the body never iterates: leaving the block raises it
    assert asyncio.all_tasks() == {asyncio.current_task()}


# An uncaught KeyboardInterrupt ends Python by SIGINT (its exit status says so).
@pytest.mark.parametrize("error, code", [("KeyboardInterrupt()", -signal.SIGINT),
                                         ("SystemExit(7)", 7)])
def test_the_process_ends_on_keyboard_interrupt_or_system_exit_of_an_item(
        error: str, code: int) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio
        from boride.parallel import run

        async def op(i):
            if i == 2:
                await asyncio.sleep(0.05)
                raise {error}
            try:
                await asyncio.sleep(3600)
            finally:
                print("cleaned", i, flush=True)

        async def main():
            try:
                report = await run(op, range(8), limit=3)
            finally:
                print("caller left run", flush=True)
            print("a report", report.outcomes)

        asyncio.run(main())
        print("alive")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=HANG_GUARD,
        check=False,
    )
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.splitlines() == ["cleaned 0", "cleaned 1", "caller left run"]
    if code == -signal.SIGINT:
        assert proc.stderr.rstrip().endswith("KeyboardInterrupt"), proc.stderr


def test_process_survives_base_exceptions_from_operations() -> None:
    script = textwrap.dedent(
        """
        import asyncio
        from boride.parallel import run

        class Custom(BaseException):
            pass

        def make(i):
            return [Custom("c"), GeneratorExit()][i % 2]

        async def op(i):
            if i >= 4:
                await asyncio.sleep(0)
            raise make(i)

        async def main():
            report = await run(op, range(8), limit=3, fail_fast=False)
            print(sorted({type(o.error).__name__ for o in report.outcomes}))
            print(sum(o.status.value == "failed" for o in report.outcomes))

        asyncio.run(main())
        print("alive")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=HANG_GUARD,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "['Custom', 'GeneratorExit']",
        "8",
        "alive",
    ]
    assert proc.stderr == ""


async def test_operation_that_is_not_a_coroutine_function() -> None:
    def returns_plain_value(i: int) -> int:
        return i

    report: Report[int, int] = await run(returns_plain_value, range(3), limit=2)  # type: ignore[arg-type]
    assert [o.status for o in report.outcomes] == [Status.FAILED] * 3
    assert all(isinstance(o.error, TypeError) for o in report.outcomes)

    def raises_synchronously(i: int) -> Awaitable[int]:
        raise ValueError(f"sync {i}")

    report2 = await run(raises_synchronously, range(3), limit=2)
    assert [str(o.error) for o in report2.failures] == ["sync 0", "sync 1", "sync 2"]

    def returns_awaitable(i: int) -> Awaitable[int]:
        return asyncio.sleep(0, i * 2)  # a plain function returning an awaitable is fine

    report3 = await run(returns_awaitable, range(3), limit=2)
    assert report3.ok and report3.values == [0, 2, 4]


async def test_operation_raising_cancelled_error_on_its_own_is_a_failure() -> None:
    async def op(i: int) -> int:
        if i == 1:
            raise asyncio.CancelledError
        return i

    report = await guarded(run(op, range(3), limit=3))
    assert [o.status for o in report.outcomes] == [Status.OK, Status.FAILED, Status.OK]
    assert isinstance(report.outcomes[1].error, RuntimeError)


async def test_broken_progress_callback_does_not_break_the_run() -> None:
    def on_event(event: Event[Any]) -> None:
        raise RuntimeError("display broke")

    async def op(i: int) -> int:
        return i

    report = await run(op, range(10), limit=3, on_event=on_event)
    assert report.ok and report.values == list(range(10))


# ------------------------------------------------------------------------------------------------
# Fail-fast


async def test_fail_fast_starts_nothing_new_and_cancels_running_items() -> None:
    tracker = Tracker(full_at=3)
    cleaned: list[int] = []
    release_failure = asyncio.Event()

    async def op(i: int) -> int:
        tracker.enter(i)
        try:
            if i == 1:
                await release_failure.wait()
                raise ValueError("root")
            await forever()
            return i
        finally:
            cleaned.append(i)
            tracker.leave()

    async def main() -> Report[int, int]:
        return await run(op, list(range(100)), limit=3, fail_fast=True)

    task = asyncio.create_task(main())
    await guarded(tracker.full.wait())  # items 0, 1, 2 are running
    release_failure.set()
    report = await guarded(task)

    assert tracker.starts == [0, 1, 2]  # nothing started after the failure
    assert sorted(cleaned) == [0, 1, 2]
    assert [o.index for o in report.failures] == [1]
    assert report.root is report.outcomes[1]
    assert isinstance(report.root.error, ValueError)
    assert [o.index for o in report.cancelled] == [0, 2]
    assert all(isinstance(o.error, FailFastCancelled) for o in report.cancelled)
    assert [o.index for o in report.skipped] == list(range(3, 100))
    assert all(isinstance(o.error, FailFastCancelled) for o in report.skipped)
    assert [o.index for o in report.outcomes] == list(range(100))
    assert report.skipped[0].item == 3


async def test_fail_fast_counts_starts_with_many_fast_items() -> None:
    starts: list[int] = []

    async def op(i: int) -> int:
        starts.append(i)
        await asyncio.sleep(0)
        if i == 25:
            raise ValueError("boom")
        return i

    report = await guarded(run(op, range(1000), limit=4, fail_fast=True))
    failed_at = starts.index(25)
    # Once item 25 failed nothing new starts: at most the other 3 workers' items were running.
    assert len(starts) <= failed_at + 4
    assert report.root is not None and report.root.index == 25
    assert report.failures[0] is report.root
    n_ok = sum(o.ok for o in report.outcomes)
    assert n_ok + len(report.failures) + len(report.cancelled) == len(starts)
    assert len(report.skipped) == 1000 - len(starts)
    assert len(report.outcomes) == 1000


async def test_fail_fast_root_first_and_cancellations_apart() -> None:
    both_running = Tracker(full_at=3)

    async def op(i: int) -> int:
        both_running.enter(i)
        if i == 2:
            await both_running.full.wait()
            raise ValueError("root cause")
        try:
            await forever()
        except asyncio.CancelledError:
            if i == 0:  # item 0 turns its cancellation into an error of its own
                raise RuntimeError("clean-up failed") from None
            raise
        return i

    report = await guarded(run(op, range(3), limit=3, fail_fast=True))
    assert [str(o.error) for o in report.failures] == ["root cause", "clean-up failed"]
    assert report.failures[0] is report.root
    assert [o.index for o in report.cancelled] == [1]
    message = str(ParallelError(report))
    assert message.index("root cause") < message.index("clean-up failed")


async def test_fail_fast_with_unsized_input_stops_consuming_it() -> None:
    source = CountingInput(10_000)

    async def op(i: int) -> int:
        await asyncio.sleep(0)
        if i == 5:
            raise ValueError("stop")
        return i

    report = await guarded(run(op, source, limit=2, fail_fast=True))
    assert report.root is not None and report.root.index == 5
    assert source.taken < 20
    assert report.skipped == []  # an unsized input is not drained to report the rest


async def test_fail_fast_item_timeout_counts_as_failure() -> None:
    async def op(i: int) -> int:
        if i == 0:
            await forever()
        await forever()
        return i

    report = await guarded(run(op, range(4), limit=2, item_timeout=0.05, fail_fast=True))
    assert report.root is not None
    assert isinstance(report.root.error, ItemTimeout)
    assert report.failures[0] is report.root
    assert len(report.failures) + len(report.cancelled) == 2
    assert [o.index for o in report.skipped] == [2, 3]


# ------------------------------------------------------------------------------------------------
# Item timeout and deadline


async def test_item_timeout() -> None:
    async def op(i: int) -> int:
        if i % 2:
            await forever()
        return i

    report = await guarded(run(op, range(6), limit=3, item_timeout=0.05))
    assert [o.status for o in report.outcomes] == [Status.OK, Status.FAILED] * 3
    for o in report.failures:
        assert isinstance(o.error, ItemTimeout) and isinstance(o.error, TimeoutError)
        assert o.error.seconds == 0.05
    assert report.values == [0, None, 2, None, 4, None]


async def test_item_timeout_keeps_an_operations_own_timeout_error() -> None:
    async def op(i: int) -> int:
        await asyncio.sleep(0)
        raise TimeoutError(f"upstream timed out for {i}")

    report = await guarded(run(op, range(2), limit=2, item_timeout=60.0))
    for o in report.outcomes:
        assert type(o.error) is TimeoutError
        assert str(o.error) == f"upstream timed out for {o.index}"


async def test_item_timeout_lets_the_item_clean_up() -> None:
    cleaned = asyncio.Event()

    async def op(i: int) -> int:
        try:
            await forever()
        finally:
            await asyncio.sleep(0.01)
            cleaned.set()
        return i

    report = await guarded(run(op, [0], limit=1, item_timeout=0.02))
    assert cleaned.is_set()
    assert isinstance(report.outcomes[0].error, ItemTimeout)


async def test_deadline_cancels_running_and_skips_the_rest() -> None:
    started: list[int] = []
    cleaned: list[int] = []

    async def op(i: int) -> int:
        started.append(i)
        if i < 2:
            return i  # finishes within the worker's first step, long before any deadline
        try:
            await forever()
        finally:
            await asyncio.sleep(0)
            cleaned.append(i)
        return i

    report = await guarded(run(op, list(range(20)), limit=3, timeout=0.05))
    assert started == [0, 1, 2, 3, 4]
    assert sorted(cleaned) == [2, 3, 4]
    assert [o.status for o in report.outcomes[:5]] == [Status.OK] * 2 + [Status.CANCELLED] * 3
    assert all(o.status is Status.SKIPPED for o in report.outcomes[5:])
    assert [o.item for o in report.skipped] == list(range(5, 20))
    for o in report.cancelled + report.skipped:
        assert isinstance(o.error, RunTimeout) and o.error.seconds == 0.05
    assert report.failures == [] and report.root is None and not report.ok
    with pytest.raises(ParallelError):
        report.raise_for_failures()


async def test_deadline_with_unsized_input_cancels_running() -> None:
    source = CountingInput(1_000_000)

    async def op(i: int) -> int:
        await forever()
        return i

    report = await guarded(run(op, source, limit=2, timeout=0.05))
    assert [o.status for o in report.outcomes] == [Status.CANCELLED] * 2
    assert source.taken == 2


async def test_deadline_not_reached() -> None:
    async def op(i: int) -> int:
        await asyncio.sleep(0)
        return i

    report = await guarded(run(op, range(50), limit=4, timeout=HANG_GUARD))
    assert report.ok and report.values == list(range(50))


# ------------------------------------------------------------------------------------------------
# Cancellation of the caller


async def test_caller_cancellation_waits_for_clean_up_of_items_in_flight() -> None:
    tracker = Tracker(full_at=3)
    cleaned: list[int] = []

    async def op(i: int) -> int:
        tracker.enter(i)
        try:
            await forever()
        finally:
            await asyncio.sleep(0.02)  # clean-up that itself awaits
            cleaned.append(i)
        return i

    task = asyncio.create_task(run(op, range(10), limit=3))
    await guarded(tracker.full.wait())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await guarded(task)
    # Control is back: every item in flight has finished its clean-up.
    assert sorted(cleaned) == [0, 1, 2]
    assert tracker.starts == [0, 1, 2]
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_caller_cancelled_twice_still_waits_for_clean_up() -> None:
    running = asyncio.Event()
    in_cleanup = asyncio.Event()
    finish_cleanup = asyncio.Event()
    cleaned = False

    async def op(i: int) -> int:
        nonlocal cleaned
        running.set()
        try:
            await forever()
        finally:
            in_cleanup.set()
            await finish_cleanup.wait()
            cleaned = True
        return i

    task = asyncio.create_task(run(op, range(5), limit=1))
    await guarded(running.wait())
    task.cancel()
    await guarded(in_cleanup.wait())
    task.cancel()  # impatient caller: cancel again while the item cleans up
    await settle()
    assert not task.done()
    finish_cleanup.set()
    with pytest.raises(asyncio.CancelledError):
        await guarded(task)
    assert cleaned


async def test_caller_cancellation_of_a_stream_consumer() -> None:
    tracker = Tracker(full_at=2)
    cleaned: list[int] = []
    got: list[int] = []

    async def op(i: int) -> int:
        tracker.enter(i)
        if i == 0:
            return i
        try:
            await forever()
        finally:
            await asyncio.sleep(0.01)
            cleaned.append(i)
        return i

    async def consume() -> None:
        async with stream(op, range(100), limit=2) as outcomes:
            async for o in outcomes:
                got.append(o.index)

    task = asyncio.create_task(consume())
    await guarded(tracker.full.wait())
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await guarded(task)
    assert got == [0]
    assert sorted(cleaned) == sorted(set(tracker.starts) - {0})
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_leaving_the_stream_early_cancels_and_cleans_up() -> None:
    cleaned: list[int] = []
    source = CountingInput(1_000_000)

    async def op(i: int) -> int:
        if i < 3:
            return i
        try:
            await forever()
        finally:
            await asyncio.sleep(0)
            cleaned.append(i)
        return i

    got = []
    async with stream(op, source, limit=4) as outcomes:
        async for o in outcomes:
            got.append(o.index)
            if o.index == 2:
                break
    assert got == [0, 1, 2]
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert len(cleaned) == source.taken - 3
    assert source.taken <= 3 + 4 * 4


async def test_error_in_stream_body_cancels_and_cleans_up() -> None:
    cleaned: list[int] = []

    async def op(i: int) -> int:
        try:
            await forever()
        finally:
            await asyncio.sleep(0)
            cleaned.append(i)
        return i

    with pytest.raises(LookupError):
        async with stream(op, range(10), limit=3):
            await settle()
            raise LookupError("consumer failed")
    assert sorted(cleaned) == [0, 1, 2]
    assert asyncio.all_tasks() == {asyncio.current_task()}


@pytest.mark.parametrize("how", ["swallow", "convert"])
async def test_caller_cancellation_when_an_item_ignores_its_cancellation(how: str) -> None:
    """An item that swallows (or converts) its cancellation must not keep the run going."""
    started = asyncio.Event()
    starts: list[int] = []

    async def op(i: int) -> int:
        starts.append(i)
        if i == 0:
            started.set()
            try:
                await forever()
            except asyncio.CancelledError:
                if how == "convert":
                    raise RuntimeError("cancelled, but said otherwise") from None
                return -1  # swallowed
        await asyncio.sleep(0)
        return i

    task = asyncio.create_task(run(op, range(1000), limit=1))
    await guarded(started.wait())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await guarded(task)
    assert starts == [0]  # nothing more started once the caller had cancelled
    assert asyncio.all_tasks() == {asyncio.current_task()}


# ------------------------------------------------------------------------------------------------
# Laziness, memory and the limit


@pytest.mark.parametrize("limit", [1, 3, 8])
async def test_input_is_consumed_lazily(limit: int) -> None:
    source = CountingInput(2_000)
    window = 4 * limit
    max_lead = 0

    async def op(i: int) -> int:
        await asyncio.sleep(0)
        return i

    async with stream(op, source, limit=limit) as outcomes:
        async for o in outcomes:
            max_lead = max(max_lead, source.taken - o.index)
            assert source.taken <= o.index + 1 + window
            assert len(outcomes.buffer) <= window
            if o.index % 50 == 0:
                await settle(5)  # a slow consumer: workers must not run ahead of it
    assert max_lead >= limit  # it does run ahead, by a bounded amount
    assert source.taken == 2_000


async def test_a_slow_first_item_does_not_let_the_rest_run_away() -> None:
    source = CountingInput(1_000_000)
    gate = asyncio.Event()
    peak_taken = 0

    async def op(i: int) -> int:
        nonlocal peak_taken
        if i == 0:
            await gate.wait()
        peak_taken = max(peak_taken, source.taken)
        return i

    async def consume() -> int:
        count = 0
        async with stream(op, source, limit=4) as outcomes:
            async for o in outcomes:
                count += 1
                if o.index == 100:
                    break
        return count

    task = asyncio.create_task(consume())
    await settle(200)
    # Item 0 blocks the ordered hand-off; the other workers stop at the window.
    assert source.taken <= 4 * 4 + 1
    gate.set()
    assert await guarded(task) == 101


async def test_a_million_items_through_stream() -> None:
    n = 1_000_000
    source = CountingInput(n)
    limit = 8
    window = 4 * limit

    async def op(i: int) -> int:
        return i

    count = 0
    max_buffer = 0
    async with stream(op, source, limit=limit) as outcomes:
        async for o in outcomes:
            if o.index != count or o.value != count or not o.ok:
                raise AssertionError(f"outcome {count} is {o}")
            count += 1
            if count % 1000 == 0:
                max_buffer = max(max_buffer, len(outcomes.buffer))
                assert source.taken <= count + window
    assert count == n and source.taken == n
    assert max_buffer <= window
    assert outcomes.progress.done == n and outcomes.progress.failed == 0


@pytest.mark.parametrize("limit", [1, 2, 5, 16])
async def test_limit_is_respected_and_reached(limit: int) -> None:
    n = 4 * limit + 3
    tracker = Tracker(full_at=limit)
    gate = asyncio.Event()

    async def op(i: int) -> int:
        tracker.enter(i)
        try:
            await gate.wait()
            await asyncio.sleep(0)
            return i
        finally:
            tracker.leave()

    task = asyncio.create_task(run(op, range(n), limit=limit))
    await guarded(tracker.full.wait())
    await settle()
    assert tracker.current == limit  # full, and nothing beyond the limit started
    gate.set()
    report = await guarded(task)
    assert report.ok and len(report.outcomes) == n
    assert tracker.peak == limit


async def test_limit_is_respected_with_random_durations() -> None:
    rng = random.Random(7)
    turns = [rng.randint(0, 8) for _ in range(400)]
    tracker = Tracker()

    async def op(i: int) -> int:
        tracker.enter(i)
        try:
            for _ in range(turns[i]):
                await asyncio.sleep(0)
            return i
        finally:
            tracker.leave()

    report = await guarded(run(op, range(400), limit=6))
    assert report.ok
    assert tracker.peak == 6


def test_default_limit_is_the_cpu_count() -> None:
    assert default_limit() == len(os.sched_getaffinity(0))
    assert default_limit() >= 1


async def test_default_limit_is_used_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert default_limit() == 3
    tracker = Tracker(full_at=3)
    gate = asyncio.Event()

    async def op(i: int) -> int:
        tracker.enter(i)
        try:
            await gate.wait()
            return i
        finally:
            tracker.leave()

    async def main() -> Report[int, int]:
        async with stream(op, range(20)) as outcomes:
            assert outcomes.limit == 3
            report: Report[int, int] = Report()
            async for o in outcomes:
                report.outcomes.append(o)
            return report

    task = asyncio.create_task(main())
    await guarded(tracker.full.wait())
    await settle()
    assert tracker.current == 3
    gate.set()
    report = await guarded(task)
    assert report.ok and tracker.peak == 3


async def test_default_limit_with_the_real_cpu_count() -> None:
    expected = len(os.sched_getaffinity(0))
    tracker = Tracker(full_at=expected)
    gate = asyncio.Event()

    async def op(i: int) -> int:
        tracker.enter(i)
        try:
            await gate.wait()
            return i
        finally:
            tracker.leave()

    task = asyncio.create_task(run(op, range(expected * 3)))
    await guarded(tracker.full.wait())
    await settle()
    assert tracker.current == expected
    gate.set()
    assert (await guarded(task)).ok
    assert tracker.peak == expected


# ------------------------------------------------------------------------------------------------
# Argument validation


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": 0},
        {"limit": -3},
        {"item_timeout": 0},
        {"item_timeout": -1.5},
        {"timeout": 0},
        {"timeout": -0.1},
    ],
)
async def test_invalid_arguments(kwargs: dict[str, Any]) -> None:
    called = False

    async def op(i: int) -> int:  # pragma: no cover - never called
        nonlocal called
        called = True
        return i

    with pytest.raises(ValueError):
        await run(op, range(3), **kwargs)
    with pytest.raises(ValueError):
        async with stream(op, range(3), **kwargs):
            pass  # pragma: no cover
    assert not called
    assert asyncio.all_tasks() == {asyncio.current_task()}


# ------------------------------------------------------------------------------------------------
# Input that fails


def failing_input(good: int, error: BaseException | None = None) -> Iterator[int]:
    yield from range(good)
    raise error if error is not None else OSError("input broke")


@pytest.mark.parametrize("error", [OSError("input broke"), GeneratorExit("input broke")])
async def test_input_raising_midway_is_a_failed_item(error: BaseException) -> None:
    async def op(i: int) -> int:
        await asyncio.sleep(0)
        return i

    report = await guarded(run(op, failing_input(5, error), limit=2))
    assert [o.status for o in report.outcomes] == [Status.OK] * 5 + [Status.FAILED]
    bad = report.outcomes[5]
    assert bad.index == 5 and bad.item is None
    assert bad.error is error and str(bad.error) == "input broke"
    assert report.failures == [bad]
    assert report.root is bad


async def test_input_raising_midway_with_fail_fast() -> None:
    gate = asyncio.Event()

    async def op(i: int) -> int:
        await gate.wait()
        return i

    report = await guarded(run(op, failing_input(2), limit=4, fail_fast=True))
    assert [o.status for o in report.outcomes] == [Status.CANCELLED] * 2 + [Status.FAILED]
    assert report.root is report.outcomes[2]
    assert report.failures == [report.outcomes[2]]


async def test_sized_input_whose_iterator_raises() -> None:
    class Broken:
        def __len__(self) -> int:
            return 10

        def __iter__(self) -> Iterator[int]:
            return self

        def __next__(self) -> int:
            raise KeyError("always")

    async def op(i: int) -> int:  # pragma: no cover - never called
        return i

    for fail_fast in (False, True):
        report = await guarded(run(op, Broken(), limit=2, fail_fast=fail_fast))
        assert [o.status for o in report.outcomes] == [Status.FAILED]
        assert isinstance(report.outcomes[0].error, KeyError)
        assert report.root is report.outcomes[0]


# ------------------------------------------------------------------------------------------------
# Progress events


@dataclass
class Snapshot:
    kind: str
    index: int
    started: int
    done: int
    failed: int
    running: int
    queued: int | None
    total: int | None
    outcome: Outcome[Any, Any] | None


def recorder() -> tuple[list[Snapshot], Callable[[Event[Any]], None]]:
    seen: list[Snapshot] = []

    def on_event(e: Event[Any]) -> None:
        p = e.progress
        seen.append(Snapshot(e.kind, e.index, p.started, p.done, p.failed, p.running, p.queued,
                             p.total, e.outcome))

    return seen, on_event


def check_events(seen: list[Snapshot], report: Report[Any, Any], limit: int,
                 total: int | None) -> None:
    prev = (0, 0, 0)
    started_at: dict[int, int] = {}
    finished: set[int] = set()
    for pos, s in enumerate(seen):
        assert s.total == total
        assert (s.started, s.done, s.failed) >= prev
        assert s.started >= prev[0] and s.done >= prev[1] and s.failed >= prev[2]
        prev = (s.started, s.done, s.failed)
        assert 0 <= s.running <= limit
        assert s.running == s.started - s.done - s.failed
        if total is not None:
            assert s.queued == total - s.started and s.queued >= 0
        else:
            assert s.queued is None
        if s.kind == "started":
            assert s.index not in started_at and s.outcome is None
            started_at[s.index] = pos
        else:
            assert s.kind in ("done", "failed")
            assert s.index not in finished
            finished.add(s.index)
            assert s.outcome is not None and s.outcome.index == s.index
            if s.index in started_at:
                assert started_at[s.index] < pos
            assert (s.kind == "done") == (s.outcome.status is Status.OK)

    last = seen[-1] if seen else Snapshot("", 0, 0, 0, 0, 0, total, total, None)
    n_ok = sum(o.ok for o in report.outcomes)
    n_bad = len(report.failures) + len(report.cancelled)
    assert last.done == n_ok
    assert last.failed == n_bad
    assert last.running == 0
    assert last.started == n_ok + n_bad
    assert finished == {o.index for o in report.outcomes if o.status is not Status.SKIPPED}
    if total is not None:
        assert last.queued == len(report.skipped)


async def test_progress_events_all_ok() -> None:
    seen, on_event = recorder()

    async def op(i: int) -> int:
        await asyncio.sleep(0)
        return i

    report = await guarded(run(op, range(50), limit=4, on_event=on_event))
    assert len(seen) == 100
    assert sum(s.kind == "started" for s in seen) == 50
    check_events(seen, report, limit=4, total=50)
    assert seen[0].queued == 49 and seen[-1].queued == 0


async def test_progress_events_with_failures_and_unsized_input() -> None:
    seen, on_event = recorder()

    async def op(i: int) -> int:
        await asyncio.sleep(0)
        if i % 4 == 0:
            raise ValueError(i)
        return i

    report = await guarded(run(op, (i for i in range(40)), limit=3, on_event=on_event))
    check_events(seen, report, limit=3, total=None)
    assert seen[-1].failed == 10 and seen[-1].done == 30


async def test_progress_events_with_fail_fast() -> None:
    seen, on_event = recorder()
    full = Tracker(full_at=3)

    async def op(i: int) -> int:
        full.enter(i)
        if i == 1:
            await full.full.wait()
            raise ValueError("x")
        await forever()
        return i

    report = await guarded(run(op, range(30), limit=3, fail_fast=True, on_event=on_event))
    check_events(seen, report, limit=3, total=30)
    assert seen[-1].started == 3 and seen[-1].queued == 27


async def test_progress_events_with_deadline() -> None:
    seen, on_event = recorder()

    async def op(i: int) -> int:
        if i < 5:
            return i
        await forever()
        return i

    report = await guarded(run(op, range(30), limit=2, timeout=0.05, on_event=on_event))
    check_events(seen, report, limit=2, total=30)
    assert len(report.cancelled) == 2 and len(report.skipped) == 23


async def test_progress_events_when_the_input_fails() -> None:
    seen, on_event = recorder()

    async def op(i: int) -> int:
        await asyncio.sleep(0)
        return i

    report = await guarded(run(op, failing_input(6), limit=2, on_event=on_event))
    check_events(seen, report, limit=2, total=None)
    assert seen[-1].failed == 1 and seen[-1].done == 6


async def test_progress_live_object_is_shared() -> None:
    async def op(i: int) -> int:
        return i

    async with stream(op, range(5), limit=2) as outcomes:
        items = [o async for o in outcomes]
    p = outcomes.progress
    assert (p.total, p.started, p.done, p.failed, p.running, p.queued) == (5, 5, 5, 0, 0, 0)
    assert len(items) == 5
