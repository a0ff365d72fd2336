"""The few asyncio patterns boride needs, written once (in the spirit of trio/anyio):

* :func:`shielded` — run something to its end even if the caller is cancelled meanwhile (the
  cancellation is raised afterwards): clean-up that must finish (anyio's
  ``CancelScope(shield=True)``).
* :func:`race` — run several awaitables until the first one ends (or a timeout), then cancel
  the others and wait until they are gone: nothing is left running behind the caller.
* :func:`in_thread` — a blocking function on a thread pool; when the caller is cancelled, the
  function is told to stop (an event) and waited for (anyio's ``to_thread.run_sync``).
* :class:`ThreadedChunks` — a blocking iterator of bytes (an archive being made) read on
  threads as an async iterator, closable (its work stopped) even while a thread reads it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar

__all__ = ["ThreadedChunks", "in_thread", "race", "shielded"]

T = TypeVar("T")


async def shielded(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end whatever happens to the caller; if the caller was cancelled
    meanwhile, raise :class:`asyncio.CancelledError` once it has ended (its own result or
    error is then dropped, but retrieved, so nothing is logged as never retrieved)."""
    task = asyncio.ensure_future(aw)
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


async def race(*aws: Awaitable[Any], timeout: float | None = None) -> asyncio.Future[Any] | None:
    """Run ``aws`` at once until the first ends; cancel the rest and wait for them to go.
    Return the one that ended first (read its ``result()``, which raises its error), or None
    when ``timeout`` seconds passed first. Cancelling the caller cancels them all, waited for."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await shielded(asyncio.gather(*tasks, return_exceptions=True))
    return next((t for t in tasks if t in done), None)


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
