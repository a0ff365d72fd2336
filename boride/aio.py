"""The few asyncio patterns boride needs, written once (in the spirit of trio/anyio).

The house rule (``tests/test_house_rules.py``): this is the only module that calls
``ensure_future``/``create_task``, ``asyncio.to_thread`` or ``run_in_executor``. Elsewhere,
background work is a :class:`TaskGroup` owned by whoever lives as long as it (a session, a
runtime, an instance, the server, the front, a watch loop) and closed when its owner closes,
so that nothing outlives its owner; readiness is :meth:`TaskGroup.start` with
:meth:`TaskStatus.started`, never a hand-made future; a short race awaited in place is
:func:`race` (or :func:`spawn`, for a task the caller awaits itself before it returns); threads
are :func:`to_thread` (or :func:`in_thread` on a pool of one's own). The one other task maker
allowed is ``group.create_task`` inside the ``async with asyncio.TaskGroup() as group`` block
that owns it (a structured fork and join, as :mod:`boride.merge` does).

* :class:`TaskGroup` — the owner of background tasks (a build's, a session's, a runtime's, the
  server's): :meth:`~TaskGroup.start_soon`, :meth:`~TaskGroup.start` (trio's
  ``nursery.start()``: wait until the task says it is ready), and closing it cancels what is
  left and waits until it is gone. A closed group refuses new tasks.
* :func:`to_thread` — a blocking function on a thread, at most :data:`THREADS` at once; a
  cancelled caller sets its ``stop`` event, if any, and waits for the thread to end (anyio's
  ``to_thread.run_sync``).

* :func:`shielded` — run something to its end even if the caller is cancelled meanwhile (the
  cancellation is raised afterwards): clean-up that must finish (anyio's
  ``CancelScope(shield=True)``).
* :func:`gather` — run awaitables at once, their results in order; the first error cancels
  the others and waits for them (``asyncio.gather`` would leave them running).
* :func:`race` — run several awaitables until the first one ends (or a timeout), then cancel
  the others and wait until they are gone: nothing is left running behind the caller.
* :func:`in_thread` — a blocking function on a thread pool; when the caller is cancelled, the
  function is told to stop (an event) and waited for (anyio's ``to_thread.run_sync``).
* :class:`ThreadedChunks` — a blocking iterator of bytes (an archive being made) read on
  threads as an async iterator, closable (its work stopped) even while a thread reads it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import Executor
from types import TracebackType
from typing import Any, Generic, TypeVar

__all__ = ["TaskGroup", "TaskStatus", "ThreadedChunks", "gather", "in_thread", "race",
           "shielded", "spawn", "to_thread"]

T = TypeVar("T")
log = logging.getLogger(__name__)

#: How many threads :func:`to_thread` runs at once per event loop (the default pool's size
#: on a small machine; more would only queue in the pool).
THREADS = 16
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary())


def spawn(aw: Awaitable[T]) -> asyncio.Future[T]:
    """A task (or future) running ``aw``. Only for this module's helpers and for code that
    awaits the task itself before it returns (a race); background work goes to a
    :class:`TaskGroup`."""
    return asyncio.ensure_future(aw)


async def shielded(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end whatever happens to the caller; if the caller was cancelled
    meanwhile, raise :class:`asyncio.CancelledError` once it has ended (its own result or
    error is then dropped, but retrieved, so nothing is logged as never retrieved)."""
    task = spawn(aw)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait({task})  # unlike await task, cancelling us leaves it running
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not task.cancelled():
            task.exception()
        raise asyncio.CancelledError
    return task.result()


async def gather(*aws: Awaitable[Any]) -> list[Any]:
    """Run the awaitables at once; their results, in order. The first to fail cancels the
    others, which are waited for before its error is raised (:class:`asyncio.TaskGroup`'s
    rule; :func:`asyncio.gather` leaves them running, owned by nobody)."""

    async def run(aw: Awaitable[Any]) -> Any:
        return await aw

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(run(aw)) for aw in aws]
    except BaseExceptionGroup as errors:
        raise errors.exceptions[0] from None  # the first: as asyncio.gather raises it
    return [t.result() for t in tasks]


async def race(*aws: Awaitable[Any], timeout: float | None = None) -> asyncio.Future[Any] | None:
    """Run ``aws`` at once until the first ends; cancel the rest and wait for them to go.
    Return the one that ended first (read its ``result()``, which raises its error), or None
    when ``timeout`` seconds passed first. Cancelling the caller cancels them all, waited for."""
    tasks = [spawn(aw) for aw in aws]
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await shielded(asyncio.gather(*tasks, return_exceptions=True))
    return next((t for t in tasks if t in done), None)


async def to_thread(fn: Callable[..., T], *args: Any, stop: threading.Event | None = None,
                    **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on a thread of the loop's pool, at most :data:`THREADS` at once
    (a caller waits for its turn); if the caller is cancelled, ``stop`` (when given; not passed
    to ``fn``) is set for ``fn`` to notice, and the thread is waited for before the cancellation
    goes on (a thread cannot be stopped: nothing it still does outlives its caller unnoticed).
    The caller's context variables are seen in the thread."""
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = asyncio.Semaphore(THREADS)
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    async with limiter:
        return await in_thread(None, call, stop=stop)


async def in_thread(pool: Executor | None, fn: Callable[..., T], *args: Any,
                    stop: threading.Event | None = None) -> T:
    """``fn(*args)`` on ``pool`` (None: the loop's default pool). If the caller is cancelled,
    ``stop`` is set (for ``fn`` to notice) and the thread is waited for before re-raising."""
    future = asyncio.get_running_loop().run_in_executor(pool, fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if stop is not None:
            stop.set()
        await shielded(asyncio.wait({future}))
        if not future.cancelled():
            future.exception()
        raise


class TaskStatus(Generic[T]):
    """Handed to a task started with :meth:`TaskGroup.start`: it calls :meth:`started` once it
    is ready, with what the starter gets back."""

    def __init__(self, future: asyncio.Future[T]) -> None:
        self._future = future

    def started(self, value: T = None) -> None:  # type: ignore[assignment]
        if self._future.done():
            raise RuntimeError("started() was called already")
        self._future.set_result(value)


class TaskGroup:
    """Owns background tasks for its owner's life (a build, a session, a runtime, the
    server). Unlike :class:`asyncio.TaskGroup`, a task's failure stops nothing else: it is
    kept in its task (await the task returned by :meth:`start_soon` for it) and logged at
    debug level. :meth:`aclose` (also leaving ``async with``) cancels every task still
    running and waits for all to end; ``async with`` without an error waits for them instead.
    After :meth:`aclose`, :meth:`start_soon` raises :class:`RuntimeError`: nothing can start
    behind an owner that has closed."""

    def __init__(self, name: str = "tasks") -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def start_soon(self, coro: Coroutine[Any, Any, T], *, name: str | None = None
                   ) -> asyncio.Task[T]:
        """Run ``coro`` in the background, owned by this group."""
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self.name}: closed, no new task can start")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        # Retrieved here (asyncio never warns of it), and logged: whoever needs the task's
        # outcome awaits the task itself.
        if not task.cancelled() and (error := task.exception()) is not None:
            log.debug("%s: task %s ended with %r", self.name, task.get_name(), error)

    async def start(self, fn: Callable[[TaskStatus[T]], Coroutine[Any, Any, Any]], *,
                    name: str | None = None) -> T:
        """Run ``fn(status)`` in the background and wait until it calls ``status.started()``
        (trio's ``nursery.start``); return what it passed. If the task ends first, its error
        is raised here (an end without ``started()`` is a :class:`RuntimeError`); if the
        caller is cancelled meanwhile, the task is cancelled too and waited for."""
        ready: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        task = self.start_soon(fn(TaskStatus(ready)), name=name)
        try:
            await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            await shielded(asyncio.wait({task}))
            raise
        if ready.done():
            return ready.result()
        ready.cancel()
        if task.cancelled():
            raise asyncio.CancelledError
        error = task.exception()
        raise error if error is not None else RuntimeError(
            f"{task.get_name()} ended without saying it had started")

    async def join(self) -> None:
        """Wait until every task (also those started meanwhile) has ended."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def aclose(self) -> None:
        """Refuse new tasks, cancel those still running and wait until all have ended (to
        the end even if the caller is cancelled meanwhile)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await shielded(self.join())

    async def __aenter__(self) -> TaskGroup:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> None:
        if kind is None:
            try:
                await self.join()
            except BaseException:
                await self.aclose()
                raise
        await self.aclose()


class ThreadedChunks(AsyncIterator[bytes]):
    """``chunks`` (a blocking iterator, maybe a generator holding files open) read on ``pool``;
    :meth:`aclose` stops it, waiting for a read in progress (a generator cannot be closed
    while it runs)."""

    def __init__(self, chunks: Iterator[bytes], pool: Executor | None = None) -> None:
        self._chunks = chunks
        self._pool = pool
        self._turn = threading.Lock()

    def _next(self) -> bytes | None:
        with self._turn:
            return next(self._chunks, None)

    def _close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            with self._turn:
                close()

    def __aiter__(self) -> ThreadedChunks:
        return self

    async def __anext__(self) -> bytes:
        chunk = await in_thread(self._pool, self._next)
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        await shielded(in_thread(self._pool, self._close))
