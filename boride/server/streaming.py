"""Client disconnects and the streamed ``cyan-output.tar.gz``.

uvicorn does not cancel a request's task when its client goes away; it only reports
``http.disconnect`` on ``receive()``. :func:`until_disconnect` runs a task (a build) and
cancels it as soon as that message arrives; :class:`ArchiveResponse` streams an archive chunk by
chunk as it is produced (never the whole archive in memory), stops producing when the client
goes away, and always runs its clean-up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from boride import aio
from boride.errors import BorideError, describe

log = logging.getLogger("boride.server")
T = TypeVar("T")

FILENAME = "cyan-output.tar.gz"
MEDIA_TYPE = "application/x-gzip"


class ClientGone(BorideError):
    """The client closed the connection before the answer was ready."""

    def __init__(self) -> None:
        super().__init__("The build was cancelled")


class WorkCancelled(BorideError):
    """The work was cancelled by someone else (e.g. its session was deleted)."""


async def wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(receive: Receive, task: asyncio.Future[T]) -> T:
    """Await ``task``; if the client disconnects first, cancel it, wait for its clean-up and
    raise :class:`ClientGone`. If something else cancels ``task``, raise
    :class:`WorkCancelled`."""
    first = await aio.race(task, wait_disconnect(receive))
    if first is not task:
        raise ClientGone
    if task.cancelled():
        raise WorkCancelled
    return task.result()


@dataclass
class Hooks:
    """What an :class:`ArchiveResponse` asks of its owner: ``owner`` starts the streaming task
    in the owner's task group (the owner may cancel it; when the owner refuses, the stream is
    not sent); it is told each chunk's size, and the end (whether the whole archive went
    out)."""

    on_close: Callable[[bool], Awaitable[None]]
    owner: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]] | None = None
    on_bytes: Callable[[int], None] | None = None


class ArchiveResponse(Response):
    """Streams ``chunks`` (closed at the end), then runs ``hooks.on_close`` exactly once:
    after the last byte, a disconnect, an error or a cancellation (e.g. the session was
    deleted meanwhile)."""

    def __init__(self, chunks: AsyncIterator[bytes], hooks: Hooks) -> None:
        super().__init__(status_code=200, media_type=MEDIA_TYPE, headers={
            "Content-Disposition": f"attachment; filename={FILENAME}",
            "Cache-Control": "no-store"})
        # No Content-Length: the size is unknown until the end (chunked transfer).
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.chunks = chunks
        self.hooks = hooks

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        async for chunk in self.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if self.hooks.on_bytes is not None:
                self.hooks.on_bytes(len(chunk))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream: asyncio.Future[None] | None = None
        try:
            # Awaited here (the race) whoever owns it: nothing streams after this returns.
            stream = (self.hooks.owner(self._stream(send)) if self.hooks.owner is not None
                      else aio.spawn(self._stream(send)))
            await aio.race(stream, wait_disconnect(receive))
        finally:
            # The clean-up runs to its end even if this task is cancelled meanwhile.
            await aio.shielded(self._cleanup(stream))

    async def _cleanup(self, stream: asyncio.Future[None] | None) -> None:
        """``stream`` is None when its owner refused to start it (a session deleted since)."""
        complete = stream is not None and stream.done() and not stream.cancelled() \
            and stream.exception() is None
        if stream is not None and stream.done() and not stream.cancelled() and not complete:
            log.warning("streaming %s failed: %s", FILENAME, describe(stream.exception()))
        try:
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        except Exception as exc:  # reported; the owner's clean-up runs all the same
            log.warning("stopping the archive of %s failed: %s", FILENAME, describe(exc))
        finally:
            await self.hooks.on_close(complete)
