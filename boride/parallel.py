"""The bounded parallel engine: run an async operation over many items, at most ``limit`` at once.

Every fan-out in boride goes through here: starting components, readiness checks, processor and
resolver calls, removals. Compared with the Go coordinator's semaphore-per-goroutine pattern:

* a fixed pool of ``limit`` workers pulls items lazily from the input, so memory is O(limit) and a
  million items cost no more memory than ten;
* outcomes come back in input order, each with its own error: nothing is dropped or swallowed;
* an operation that raises anything else than ``KeyboardInterrupt`` or ``SystemExit`` (any other
  ``BaseException`` included) becomes a failed outcome, never an error in the event loop;
* ``KeyboardInterrupt`` and ``SystemExit`` (from an operation, the input or a progress callback)
  are never an item's outcome: the other workers are cancelled and waited for, then the error is
  raised to the caller (by the iteration of :func:`stream`'s outcomes or when its block is left);
* per-item timeouts, a timeout for the whole run, optional fail-fast, and cancellation of the
  caller cancels every item in flight and waits for their clean-up before returning.

Two entry points: :func:`stream` (an async context manager yielding outcomes in input order, for
huge inputs) and :func:`run` (collects a :class:`Report`, for the usual list of components).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sized
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypedDict, TypeVar, Unpack

from boride import aio
from boride.config import cpu_count
from boride.errors import BorideError, BorideTimeout, describe
from boride.types import Status

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

#: What stops a run instead of being an item's outcome: the process is asked to end.
FATAL = (KeyboardInterrupt, SystemExit)


def default_limit() -> int:
    """The default limit: the CPU count (the seed's rule)."""
    return cpu_count()


class ItemTimeout(BorideTimeout):
    """An item ran longer than its ``item_timeout``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"timed out after {seconds:g}s")
        self.seconds = seconds


class RunTimeout(BorideTimeout):
    """The whole run went past its ``timeout``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the run's timeout of {seconds:g}s passed")
        self.seconds = seconds


class FailFastCancelled(BorideError):
    """This item was cancelled because another item failed first."""

    def __init__(self) -> None:
        super().__init__("cancelled after another item failed")


@dataclass(slots=True)
class Outcome(Generic[T, R]):
    index: int
    item: T
    status: Status
    value: R | None = None
    error: BaseException | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


@dataclass(slots=True)
class Progress:
    """Counters a progress bar can follow. ``total`` is None for inputs of unknown length."""

    total: int | None = None
    started: int = 0
    done: int = 0
    failed: int = 0

    @property
    def running(self) -> int:
        return self.started - self.done - self.failed

    @property
    def queued(self) -> int | None:
        return None if self.total is None else self.total - self.started


@dataclass(frozen=True, slots=True)
class Event(Generic[T]):
    """One change of state: ``kind`` is "started", "done" or "failed"."""

    kind: str
    index: int
    item: T
    progress: Progress
    outcome: Outcome[T, Any] | None = None


ProgressCallback = Callable[[Event[Any]], None]


@dataclass
class Report(Generic[T, R]):
    """All outcomes of a :func:`run`, in input order."""

    outcomes: list[Outcome[T, R]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)

    @property
    def values(self) -> list[R | None]:
        return [o.value for o in self.outcomes]

    @property
    def failures(self) -> list[Outcome[T, R]]:
        """Items that failed on their own, root failure (first to fail) first, then input order."""
        failed = [o for o in self.outcomes if o.status is Status.FAILED]
        return sorted(failed, key=lambda o: (o is not self.root, o.index))

    @property
    def cancelled(self) -> list[Outcome[T, R]]:
        return [o for o in self.outcomes if o.status is Status.CANCELLED]

    @property
    def skipped(self) -> list[Outcome[T, R]]:
        return [o for o in self.outcomes if o.status is Status.SKIPPED]

    root: Outcome[T, R] | None = None  # the first item to fail, in time

    def raise_for_failures(self) -> None:
        if not self.ok:
            raise ParallelError(self)


class ParallelError(BorideError):
    """Raised by :meth:`Report.raise_for_failures`; carries the whole report."""

    def __init__(self, report: Report[Any, Any]) -> None:
        self.report = report
        lines = [f"item {o.index} ({o.item!r}): {describe(o.error)}" for o in report.failures]
        lines += [f"item {o.index} ({o.item!r}): {describe(o.error)}" for o in report.cancelled]
        super().__init__(f"{len(lines)} item(s) did not succeed:\n  " + "\n  ".join(lines))


class Fanout(Generic[T, R]):
    """One run: shared state of its workers; iterate it for the outcomes, in input order.

    ``progress`` holds the live counters and ``root`` the first item to fail (in time).
    """

    def __init__(
        self,
        fn: Callable[[T], Awaitable[R]],
        items: Iterable[T],
        limit: int,
        item_timeout: float | None,
        timeout: float | None,
        fail_fast: bool,
        on_event: ProgressCallback | None,
    ) -> None:
        self.fn = fn
        self.items = iter(items)
        self.limit = limit
        self.item_timeout = item_timeout
        self.timeout = timeout
        self.fail_fast = fail_fast
        self.on_event = on_event
        self.progress = Progress(total=len(items) if isinstance(items, Sized) else None)
        self.next_index = 0  # next item to take from the input
        self.next_out = 0  # next index the consumer yields
        # Ordered hand-off: finished outcomes wait here until every earlier one has been yielded.
        # Workers stop taking items more than ``window`` ahead of the consumer, so it stays bounded.
        self.window = 4 * limit
        self.buffer: dict[int, Outcome[T, R]] = {}
        self.exhausted = False
        self.closing = False  # the ``async with`` block is being left: take nothing more
        self.stopping: Status | None = None  # CANCELLED (fail-fast) or SKIPPED reason once stopping
        self.stop_error: BaseException | None = None
        self.root: Outcome[T, R] | None = None
        self.wake_consumer = asyncio.Event()
        self.wake_workers = asyncio.Event()
        self.workers: list[asyncio.Task[None]] = []
        self.running: dict[int, asyncio.Task[None]] = {}  # item index -> worker running it
        self.fatal: BaseException | None = None  # a KeyboardInterrupt or SystemExit to raise

    def _emit(self, kind: str, index: int, item: T, outcome: Outcome[T, R] | None) -> None:
        assert self.on_event is not None
        try:
            self.on_event(Event(kind, index, item, self.progress, outcome))
        except Exception:  # a broken progress display must not break the run
            log.debug("progress callback failed on %s of item %d", kind, index, exc_info=True)

    def _take(self) -> tuple[int, T] | None:
        """The next item to run, or None when there is nothing more for this worker."""
        if self.stopping is not None or self.exhausted or self.closing:
            return None
        try:
            item = next(self.items)
        except StopIteration:
            self.exhausted = True
            return None
        except FATAL:
            raise
        except BaseException as exc:  # the input itself failed: record it as a failed item
            self._input_failed(exc)
            return None
        index = self.next_index
        self.next_index += 1
        return index, item

    def _input_failed(self, exc: BaseException) -> None:
        """Taking the next item raised: that is a failed item (with no item), counted as such."""
        self.exhausted = True
        outcome: Outcome[T, R] = Outcome(self.next_index, None, Status.FAILED, error=exc)  # type: ignore[arg-type]
        self.next_index += 1
        self.progress.started += 1  # keeps running == started - done - failed
        self._record_failure(outcome)

    def _finish(self, outcome: Outcome[T, R]) -> None:
        self.buffer[outcome.index] = outcome
        if outcome.index == self.next_out:
            self.wake_consumer.set()

    def _stop_on_failure(self) -> None:
        if self.fail_fast and self.stopping is None:
            self.stopping = Status.CANCELLED
            self.stop_error = FailFastCancelled()
            self._cancel_running()
            self.wake_workers.set()

    def _cancel_running(self) -> None:
        current = asyncio.current_task()
        for task in self.running.values():
            if task is not current:
                task.cancel()

    async def _call(self, item: T) -> R:
        if self.item_timeout is None:
            return await self.fn(item)
        timeout = asyncio.timeout(self.item_timeout)
        try:
            async with timeout:
                return await self.fn(item)
        except TimeoutError as exc:
            if not timeout.expired():
                raise  # the operation's own TimeoutError, not our timeout: keep it as it is
            task = asyncio.current_task()
            # asyncio.timeout turns only its own cancellation into TimeoutError; if the worker is
            # also being cancelled from outside, that wins.
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from exc
            raise ItemTimeout(self.item_timeout) from exc

    async def worker(self) -> None:
        """One worker: takes items until there are none. A KeyboardInterrupt or SystemExit
        stops the run (:meth:`_stop_fatally`) instead of escaping into the event loop."""
        try:
            await self._work()
        except FATAL as exc:
            self._stop_fatally(exc)

    def _stop_fatally(self, exc: BaseException) -> None:
        """Keep ``exc`` for the caller, take nothing more, cancel the other workers (once:
        unless the block is being left, which cancels them itself)."""
        if self.fatal is None:
            self.fatal = exc
        else:
            log.debug("a second %r while the run stops for %r", exc, self.fatal)
        if not self.closing:
            self.closing = True
            current = asyncio.current_task()
            for w in self.workers:
                if w is not current:
                    w.cancel()
        self.wake_consumer.set()

    async def _work(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while True:
            while (
                self.stopping is None
                and not self.closing
                and self.next_index >= self.next_out + self.window
            ):
                self.wake_workers.clear()
                await self.wake_workers.wait()
            taken = self._take()
            if taken is None:
                self.wake_consumer.set()
                return
            index, item = taken
            self.progress.started += 1
            if self.on_event is not None:
                self._emit("started", index, item, None)
            self.running[index] = task
            start = time.perf_counter()
            try:
                value = await self._call(item)
            except asyncio.CancelledError:
                del self.running[index]
                if self._cancelled(task, index, item, time.perf_counter() - start):
                    continue
                raise  # the caller is cancelling the whole run
            except FATAL:
                del self.running[index]
                raise
            except BaseException as exc:  # contain everything else
                seconds = time.perf_counter() - start
                del self.running[index]
                self._record_failure(Outcome(index, item, Status.FAILED, error=exc,
                                             seconds=seconds))
                continue
            del self.running[index]
            self.progress.done += 1
            outcome = Outcome(index, item, Status.OK, value=value,
                              seconds=time.perf_counter() - start)
            self._finish(outcome)
            if self.on_event is not None:
                self._emit("done", index, item, outcome)

    def _cancelled(self, task: asyncio.Task[None], index: int, item: T, seconds: float) -> bool:
        """The item raised CancelledError: record its outcome and return True for the worker
        to go on, or return False when the caller is cancelling the whole run."""
        if self.stopping is not None and task.cancelling():
            # Cancelled by fail-fast or the run's timeout: record it and keep the worker alive
            # so that it can drain (take returns None now).
            task.uncancel()
            outcome: Outcome[T, R] = Outcome(
                index, item, Status.CANCELLED, error=self.stop_error, seconds=seconds
            )
            self.progress.failed += 1
            self._finish(outcome)
            if self.on_event is not None:
                self._emit("failed", index, item, outcome)
            return True
        if not task.cancelling():
            # The operation raised CancelledError on its own: that is its failure.
            self._record_failure(Outcome(index, item, Status.FAILED,
                                         error=RuntimeError("operation raised CancelledError"),
                                         seconds=seconds))
            return True
        return False

    def _record_failure(self, outcome: Outcome[T, R]) -> None:
        self.progress.failed += 1
        if self.root is None:
            self.root = outcome
        self._finish(outcome)
        if self.on_event is not None:
            self._emit("failed", outcome.index, outcome.item, outcome)
        self._stop_on_failure()

    def expire(self) -> None:
        """The run's timeout passed: cancel what runs, start nothing more."""
        if self.stopping is None:
            assert self.timeout is not None
            self.stopping = Status.CANCELLED
            self.stop_error = RunTimeout(self.timeout)
            self._cancel_running()
            self.wake_workers.set()

    def skipped_rest(self) -> Iterable[Outcome[T, R]]:
        """Outcomes for the items never started because the run stopped early (sized input only)."""
        if self.progress.total is None or self.stopping is None or self.exhausted:
            return
        reason = self.stop_error
        while True:
            try:
                item = next(self.items)
            except StopIteration:
                self.exhausted = True
                return
            except FATAL:
                raise
            except BaseException as exc:  # the input itself failed
                self._input_failed(exc)
                yield self.buffer.pop(self.next_index - 1)
                return
            yield Outcome(self.next_index, item, Status.SKIPPED, error=reason)
            self.next_index += 1

    def __aiter__(self) -> AsyncIterator[Outcome[T, R]]:
        return self._outcomes()

    async def _outcomes(self) -> AsyncIterator[Outcome[T, R]]:
        while True:
            if self.fatal is not None:
                raise self.fatal
            outcome = self.buffer.pop(self.next_out, None)
            if outcome is not None:
                self.next_out += 1
                if self.next_index >= self.next_out + self.window - 1:
                    self.wake_workers.set()
                yield outcome
                continue
            if all(w.done() for w in self.workers) and not self.buffer:
                for rest in self.skipped_rest():
                    yield rest
                return
            self.wake_consumer.clear()
            await self.wake_consumer.wait()


@asynccontextmanager
async def stream(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    limit: int | None = None,
    item_timeout: float | None = None,
    timeout: float | None = None,
    fail_fast: bool = False,
    on_event: ProgressCallback | None = None,
) -> AsyncIterator[Fanout[T, R]]:
    """Run ``fn`` over ``items`` with at most ``limit`` in flight; yield outcomes in input order.

    Leaving the ``async with`` block (normally, by an error, or by cancellation) cancels whatever
    still runs and waits for it to finish cleaning up. The workers are a task group owned by
    the block. A KeyboardInterrupt or SystemExit of the run is raised once they are all gone.
    """
    if limit is None:
        limit = default_limit()
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    for name, value in (("item_timeout", item_timeout), ("timeout", timeout)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    run = Fanout(fn, items, limit, item_timeout, timeout, fail_fast, on_event)
    workers = aio.TaskGroup("parallel workers")
    run.workers = [workers.start_soon(run.worker()) for _ in range(limit)]
    loop = asyncio.get_running_loop()
    timer = loop.call_later(timeout, run.expire) if timeout is not None else None
    try:
        yield run
    finally:
        if timer is not None:
            timer.cancel()
        # An item may swallow (or turn into an error) the cancellation below: its worker must
        # then stop instead of taking more items.
        if run.fatal is None:
            run.closing = True
            # Cancel every worker and wait for its clean-up, even if we are being cancelled
            # ourselves.
            await workers.aclose()
        if run.fatal is not None:
            # The other workers were cancelled when it happened (a second cancellation would
            # cut their clean-up short): wait for them.
            await aio.shielded(workers.join())
            await workers.aclose()
            raise run.fatal


class Options(TypedDict, total=False):
    """The keyword options of :func:`stream`, which :func:`run` passes on."""

    limit: int | None
    item_timeout: float | None
    timeout: float | None
    fail_fast: bool
    on_event: ProgressCallback | None


async def run(fn: Callable[[T], Awaitable[R]], items: Iterable[T],
              **options: Unpack[Options]) -> Report[T, R]:
    """Run ``fn`` over every item and wait for all (options as for :func:`stream`); return
    every outcome in input order."""
    report: Report[T, R] = Report()
    async with stream(fn, items, **options) as outcomes:
        async for outcome in outcomes:
            report.outcomes.append(outcome)
        # The root failure is the first one that happened, not the first in input order.
        report.root = outcomes.root
    return report
