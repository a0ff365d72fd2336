"""Stopping without dropping work: on SIGTERM a server *drains* (``boride serve
--drain-timeout``). It stops admitting new sessions and builds — they get 503 with
``Retry-After`` and a problem body saying why, as does ``GET /`` so that a load balancer or
``boride front`` stops sending it work — while the requests in flight (a build streaming its
output, a Q&A call) go on, until none is left or the grace period ends; then it exits."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:
    from boride.server.service import Service

log = logging.getLogger("boride.server")

#: What a draining server refuses: whatever makes a session or starts work in one.
_ADMITTING = [("POST", re.compile(p)) for p in (
    r"/executor", r"/executor/try", r"/executor/[^/]+", r"/executor/[^/]+/warm",
    r"/template/warm")]
RETRY_AFTER = 5  # seconds a client should wait: the successor is usually up by then


def admits_work(method: str, path: str) -> bool:
    return any(method == m and pattern.fullmatch(path) for m, pattern in _ADMITTING)


class Drain:
    """Whether the server drains, and the requests in flight it waits for."""

    def __init__(self) -> None:
        self.draining = False
        self.since: float | None = None
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def busy(self) -> int:
        return self._busy

    def enter(self) -> None:
        self._busy += 1
        self._idle.clear()

    def leave(self) -> None:
        self._busy -= 1
        if self._busy == 0:
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Refuse new work from now on and wait until the requests in flight have ended,
        at most ``timeout`` seconds; whether they all did."""
        if not self.draining:
            self.draining, self.since = True, time.monotonic()
            log.info("draining: no new sessions or builds; waiting up to %gs for %d "
                     "request(s) in flight", timeout, self._busy)
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            log.warning("drain: %d request(s) still in flight after %gs: stopping them",
                        self._busy, timeout)
            return False
        return True


class DrainingServer(uvicorn.Server):
    """uvicorn's server that drains on the first SIGTERM (``service.drain``), leaving the
    sessions for a successor when the runtime can keep them, then exits; a second SIGTERM,
    and SIGINT (Ctrl-C), exit at once as uvicorn does."""

    def __init__(self, config: uvicorn.Config, service: Service, timeout: float) -> None:
        super().__init__(config)
        self.service = service
        self.timeout = timeout
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self._draining and not self.should_exit:
            self._draining = True
            # (uvicorn raises the signals it caught again once shut down: the exit status
            # stays a SIGTERM's)
            self._captured_signals.append(sig)
            service = self.service
            service.keep_on_close = service.keep_on_close or service.ctx.runtime.sessions_outlive
            # (a signal handler: the drain starts on the loop, not in here)
            asyncio.get_running_loop().call_soon_threadsafe(
                lambda: service.tasks.start_soon(self._drain(), name="drain"))
            return
        super().handle_exit(sig, frame)

    async def _drain(self) -> None:
        try:
            await self.service.drain.drain(self.timeout)
        finally:
            self.should_exit = True
