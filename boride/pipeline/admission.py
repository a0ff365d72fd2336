"""A build's hold on its server's build slots (``--max-builds``): a slot bounds boride's own
work (starting components, merging), not a component's. A build holds one while none of its
component calls is pending, and through a short call; once a call has been pending for
``grace`` seconds (:data:`~boride.config.SLOT_GRACE`, 1 s), the build gives its slot up, and
takes one again (waiting for it like a new build) once its last pending call has answered. So
builds whose components never answer (or work long) hold no slot, and other sessions' builds
go on; builds whose calls answer at once keep theirs (giving it up at every call let every
build in at once, which on 2 cores made the median build 1.8x slower)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

from boride.config import SLOT_GRACE


class Gauge(Protocol):
    def inc(self) -> None: ...

    def dec(self) -> None: ...


class _NoGauge:
    def inc(self) -> None:
        pass

    def dec(self) -> None:
        pass


class Admission:
    """One build's hold on ``slots`` (None: no bound, as in ``boride run``). The gauges count
    builds ``waiting`` for a slot, slots ``held`` and builds ``awaiting`` their components."""

    def __init__(self, slots: asyncio.Semaphore | None = None, *, waiting: Gauge | None = None,
                 held: Gauge | None = None, awaiting: Gauge | None = None,
                 grace: float = SLOT_GRACE) -> None:
        self._slots = slots
        self.grace = grace
        self._timer: asyncio.TimerHandle | None = None  # gives the slot up after the grace
        self._waiting = waiting or _NoGauge()
        self._held_gauge = held or _NoGauge()
        self._awaiting = awaiting or _NoGauge()
        self._held = False
        self._calls = 0  # the build's component calls pending
        self._taking = asyncio.Lock()  # one of the build's tasks waits for a slot at a time

    @property
    def held(self) -> bool:
        return self._held

    async def take(self) -> None:
        """Wait for a slot, unless one is held or a call of the build is pending."""
        if self._slots is None:
            return
        async with self._taking:
            if self._held or self._calls:
                return
            self._waiting.inc()
            try:
                await self._slots.acquire()
            finally:
                self._waiting.dec()
            self._held = True
            self._held_gauge.inc()
            if self._calls:  # a call began meanwhile: its grace starts now
                self._arm()

    def give_up(self) -> None:
        if self._slots is not None and self._held:
            self._held = False
            self._held_gauge.dec()
            self._slots.release()

    def _arm(self) -> None:
        if self._slots is not None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.grace, self._grace_over)

    def _grace_over(self) -> None:
        self._timer = None
        if self._calls:
            self.give_up()

    @contextlib.asynccontextmanager
    async def awaiting(self) -> AsyncIterator[None]:
        """A component call: the slot is given up once it (or another call of the build) has
        been pending for the grace, and taken again after the last one answered (not when the
        build is cancelled)."""
        self._calls += 1
        if self._calls == 1:
            self._awaiting.inc()
            self._arm()
        try:
            yield
        except asyncio.CancelledError:
            self._end_call()
            raise
        except BaseException:
            if self._end_call():
                await self.take()
            raise
        if self._end_call():
            await self.take()

    def _end_call(self) -> bool:
        """The end of a call; whether it was the build's last one pending."""
        self._calls -= 1
        if self._calls:
            return False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._awaiting.dec()
        return True

    async def __aenter__(self) -> Admission:
        await self.take()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.give_up()
