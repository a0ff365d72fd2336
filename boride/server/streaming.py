"""Client disconnects and the streamed ``cyan-output.tar.gz``.

uvicorn does not cancel a request's task when its client goes away; it only reports
``http.disconnect`` on ``receive()``. :func:`until_disconnect` runs a coroutine (a build) and
cancels it as soon as that message arrives; :class:`ArchiveResponse` streams an archive chunk by
chunk as :func:`boride.archive.iter_archive` produces it (never the whole archive in memory),
stops producing when the client goes away, and always runs its clean-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor
from typing import TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from boride.errors import BorideError

log = logging.getLogger("boride.server")
T = TypeVar("T")

FILENAME = "cyan-output.tar.gz"
MEDIA_TYPE = "application/x-gzip"


class ClientGone(BorideError):
    """The client closed the connection before the answer was ready."""


class WorkCancelled(BorideError):
    """The work was cancelled by someone else (e.g. its session was deleted)."""


async def wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def finish(task: asyncio.Future[T]) -> None:
    """Wait until ``task`` is done (its clean-up included), even if we are cancelled meanwhile;
    re-raise that cancellation afterwards."""
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            cancelled = True
    if not task.cancelled():
        task.exception()  # retrieved: never "exception was never retrieved"
    if cancelled:
        raise asyncio.CancelledError


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Run ``work``; if the client disconnects first, cancel it, wait for its clean-up and raise
    :class:`ClientGone`. If something else cancels ``work``, raise :class:`WorkCancelled`."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if not task.done():
            task.cancel()
        await finish(task)
    if task.cancelled():
        if watcher.done() and not watcher.cancelled():
            raise ClientGone
        raise WorkCancelled
    return task.result()


class ArchiveResponse(Response):
    """Streams ``chunks`` (a blocking iterator, read on ``executor``), then runs ``on_close``.

    ``on_close`` runs exactly once: after the last byte, after a disconnect, after an error
    and after a cancellation (e.g. the session was deleted meanwhile). ``track`` is told about
    the streaming task so that its owner can cancel it.
    """

    def __init__(self, chunks: Iterator[bytes], on_close: Callable[[bool], Awaitable[None]],
                 executor: Executor, track: Callable[[asyncio.Task[None]], None] | None = None,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        super().__init__(status_code=200, media_type=MEDIA_TYPE, headers={
            "Content-Disposition": f"attachment; filename={FILENAME}",
            "Cache-Control": "no-store"})
        # No Content-Length: the size is unknown until the end (chunked transfer).
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.chunks = chunks
        self.on_close = on_close
        self.executor = executor
        self.track = track
        self.on_bytes = on_bytes
        # A generator cannot be closed while another thread runs its next(): take turns.
        self._turn = threading.Lock()

    def _next(self) -> bytes | None:
        with self._turn:
            return next(self.chunks, None)

    def _close(self) -> None:
        close = getattr(self.chunks, "close", None)
        if close is not None:
            with self._turn:
                close()

    async def _stream(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        while True:
            chunk = await loop.run_in_executor(self.executor, self._next)
            if chunk is None:
                break
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if self.on_bytes is not None:
                self.on_bytes(len(chunk))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.ensure_future(self._stream(send))
        if self.track is not None:
            self.track(stream)
        watcher = asyncio.ensure_future(wait_disconnect(receive))
        try:
            await asyncio.wait({stream, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # The clean-up runs to its end even if this task is cancelled meanwhile.
            await finish(asyncio.ensure_future(self._cleanup(stream, watcher)))

    async def _cleanup(self, stream: asyncio.Future[None], watcher: asyncio.Future[None]
                       ) -> None:
        watcher.cancel()
        if not stream.done():
            stream.cancel()
        await asyncio.gather(watcher, stream, return_exceptions=True)
        complete = not stream.cancelled() and stream.exception() is None
        if not complete and not stream.cancelled():
            log.warning("streaming %s failed: %r", FILENAME, stream.exception())
        # Stops the archive's threads; may wait for a block in progress: not on the loop.
        with contextlib.suppress(Exception):
            await asyncio.get_running_loop().run_in_executor(self.executor, self._close)
        await self.on_close(complete)
