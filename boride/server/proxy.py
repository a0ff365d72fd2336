"""Requests forwarded to a running component (``/proxy/...``), answered as it answered."""

from __future__ import annotations

import httpx

from boride.runtime.base import Instance
from boride.server.errors import UpstreamFailed

TIMEOUT = 120.0


async def forward(instance: Instance, path: str, content: bytes,
                  content_type: str | None) -> httpx.Response:
    """POST ``content`` to the component; :class:`UpstreamFailed` when it cannot be reached."""
    headers = {"content-type": content_type or "application/json"}
    try:
        return await instance.client.post(path, content=content, headers=headers,
                                          timeout=TIMEOUT)
    except httpx.HTTPError as exc:
        c = instance.component
        raise UpstreamFailed(c.name, f"Failed to forward the request to {c.kind.value} "
                                     f"{c.name!r}",
                             f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
