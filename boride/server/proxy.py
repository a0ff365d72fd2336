"""Requests forwarded to a running component (``/proxy/...``), answered as it answered."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from boride.bounded import AnswerTooBig, read_bounded
from boride.config import MAX_ANSWER
from boride.runtime.base import Instance
from boride.server.errors import UpstreamFailed

TIMEOUT = 120.0


@dataclass(frozen=True)
class Answer:
    """What the component answered (its body read whole: at most the bound)."""

    status_code: int
    content_type: str
    content: bytes


async def forward(instance: Instance, path: str, content: bytes,
                  content_type: str | None, *, limit: int = MAX_ANSWER) -> Answer:
    """POST ``content`` to the component; :class:`UpstreamFailed` when it cannot be reached
    or answers more than ``limit`` bytes (not read further)."""
    headers = {"content-type": content_type or "application/json"}
    c = instance.component
    failed = f"Failed to forward the request to {c.kind.value} {c.name!r}"
    try:
        async with instance.client.stream("POST", path, content=content, headers=headers,
                                          timeout=TIMEOUT) as r:
            body = await read_bounded(r, limit, f"POST {path}")
            return Answer(r.status_code, r.headers.get("content-type", "application/json"),
                          body)
    except AnswerTooBig as exc:
        raise UpstreamFailed(c.name, failed, str(exc)) from None
    except httpx.HTTPError as exc:
        raise UpstreamFailed(c.name, failed, f"{type(exc).__name__}: {exc}".rstrip(": ")) \
            from None
