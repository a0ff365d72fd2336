"""Stopping without dropping work: on SIGTERM a server *drains* (``boride serve
--drain-timeout``). It stops admitting new sessions and builds — they get 503 with
``Retry-After`` and a problem body saying why, as do ``GET /`` and ``GET /worker`` so that a
load balancer or ``boride front`` stops sending it work — while the requests in flight (a
build streaming its output, a Q&A call) go on, until none is left or the grace period ends;
then it exits."""

from __future__ import annotations

import logging
import re
import signal
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

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
        self._busy = 0
        self._until = 0.0  # when the grace period ends (time.monotonic), once draining
        self._grace = 0.0

    @property
    def busy(self) -> int:
        return self._busy

    def enter(self) -> None:
        self._busy += 1

    def leave(self) -> None:
        self._busy -= 1

    def begin(self, timeout: float) -> None:
        """Refuse new work from now on; the requests in flight get ``timeout`` seconds."""
        if not self.draining:
            self.draining, self._grace = True, timeout
            self._until = time.monotonic() + timeout
            log.info("draining: no new sessions or builds; waiting up to %gs for %d "
                     "request(s) in flight", timeout, self._busy)

    def over(self) -> bool:
        """Whether the drain is done: nothing in flight, or the grace period ended (said)."""
        if not self.draining:
            return False
        if self._busy and time.monotonic() >= self._until:
            log.warning("drain: %d request(s) still in flight after %gs: stopping them",
                        self._busy, self._grace)
            return True
        return self._busy == 0


class DrainingServer(uvicorn.Server):
    """uvicorn's server that drains on the first SIGTERM (``drain``, ``timeout`` seconds),
    then exits as on any signal (``on_sigterm`` is told first: a server that leaves its
    sessions for a successor); a second SIGTERM, and SIGINT (Ctrl-C), exit at once."""

    def __init__(self, config: uvicorn.Config, drain: Drain, timeout: float,
                 on_sigterm: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.drain = drain
        self.timeout = timeout
        self.on_sigterm = on_sigterm

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self.drain.draining and not self.should_exit:
            if self.on_sigterm is not None:
                self.on_sigterm()
            self.drain.begin(self.timeout)
            # (uvicorn raises the signals it caught again once shut down: the exit status
            # stays a SIGTERM's)
            self._captured_signals.append(sig)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain.over():  # (looked at every tenth of a second)
            self.should_exit = True
        return await super().on_tick(counter)
