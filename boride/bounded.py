"""Answers read with a bound: what a component (or a helper, a worker) answers is read only
while it stays below the bound, never whole first (a 50 MB answer must not take boride's
memory)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from boride.errors import ComponentError

if TYPE_CHECKING:  # (httpx is imported by whoever has a response to read)
    import httpx

__all__ = ["AnswerTooBig", "read_bounded", "size_text"]


class AnswerTooBig(ComponentError):
    """An answer larger than the bound it is read with (not read further)."""


def size_text(size: int) -> str:
    """A bound for a user: ``1 MiB``, ``512 KiB``, else in bytes."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} bytes"


async def read_bounded(response: httpx.Response, limit: int, what: str) -> bytes:
    """The body of a streamed ``response``, if it has at most ``limit`` bytes (decoded);
    else :class:`AnswerTooBig` (``what`` answered more than the bound) as soon as that is
    known, from an announced ``Content-Length`` or the count going past it: the rest is never
    read (the caller closes the response, and with it the connection)."""
    too_big = AnswerTooBig(f"{what} answered more than {size_text(limit)}")
    announced = response.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > limit and \
            "content-encoding" not in response.headers:
        raise too_big
    chunks: list[bytes] = []
    got = 0
    async for chunk in response.aiter_bytes():
        got += len(chunk)
        if got > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)
