"""Readiness: poll ``GET /`` with fast backoff until 200, a timeout, or the component's death."""

from __future__ import annotations

import asyncio
import time

import httpx

from boride import aio, diagnose
from boride.config import Timeouts
from boride.errors import ComponentError
from boride.runtime.base import ExitInfo, Instance

#: what a component that never became ready did not do
NEVER_READY = "GET / never answered 200"
FIRST_DELAY = 0.002
MAX_DELAY = 0.2
#: how much longer each wait is than the last: gentle, so that a component ready in 30 ms
#: (a forked one) is seen within a few ms of it, not up to twice as late as doubling would
GROWTH = 1.25


class NotReady(ComponentError):
    """The component never answered ``GET /`` with 200; the message says why."""


async def _poll(instance: Instance, first_delay: float, max_delay: float) -> None:
    delay = first_delay
    while True:
        try:
            # only the status counts: the body is never read (it may be endless)
            async with instance.client.stream("GET", "/", timeout=max(1.0, max_delay)) as r:
                if r.status_code == 200:
                    return
        except httpx.HTTPError:
            pass  # not listening yet, or the connection was cut: try again
        await asyncio.sleep(delay)
        delay = min(delay * GROWTH, max_delay)


async def wait_ready(instance: Instance, timeout: float = Timeouts.ready, *,
                     first_delay: float = FIRST_DELAY, max_delay: float = MAX_DELAY) -> float:
    """Wait until ``instance`` is healthy; return the seconds it took.

    Raises :class:`NotReady` after ``timeout`` seconds, or at once when the component exits first.
    """
    start = time.perf_counter()
    first = await aio.race(_poll(instance, first_delay, max_delay), instance.wait_exit(),
                           timeout=timeout)
    if first is None:
        raise NotReady(f"not ready after {timeout:g}s ({NEVER_READY})"
                       f"{diagnose.summary(instance.log_tail())}")
    value = first.result()
    if isinstance(value, ExitInfo):
        raise NotReady(f"{value.headline()} before it was ready{diagnose.summary(value.log_tail)}")
    return time.perf_counter() - start
