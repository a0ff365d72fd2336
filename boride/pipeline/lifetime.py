"""The lifetime rule of a one-shot build: an instance lives from shortly before its first call
to right after its last; resolvers and the first plugin boot ahead of need, while the processors
work (:func:`ahead_of_need`)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from boride import aio, parallel
from boride.errors import describe
from boride.pipeline.plan import Plan
from boride.types import Component

log = logging.getLogger(__name__)


class OnDemand:
    """Starts and stops a build's instances around their calls.

    Each instance's life is one task of the build's task group: it starts the instance,
    reports it ready (trio's ``nursery.start()``: :meth:`aio.TaskGroup.start`), waits until
    the instance's last call has ended, and stops it. Closing (:meth:`close`) cancels what is
    left and waits until it is gone.

    Processors' instances start in the order of their first call, ``limit`` at a time, while
    the ones before them are being called, and at most ``2 x limit`` of them are alive at once
    (the calls go in that order too, each instance's calls together, so every started one
    finishes: no wait for a place can last forever). Resolvers and the first plugin may start
    ahead of need (:meth:`ahead`'s ``early``: after every processor, in the engine's slots the
    processors leave, outside the places), else at their first call: a resolver at its first
    conflict; a resolver stops after the merge (its start cut short if nobody needed it), a
    plugin after its call, and a plugin's instance starts while the plugin before it is called.

    ``runner`` maps each step to its instance's name, ``calls`` counts each instance's calls to
    come; ``start(name)`` starts an instance and waits until it is ready, ``stop(name)``
    stops it.
    """

    def __init__(self, runner: Mapping[str, str], calls: Mapping[str, int],
                 start: Callable[[str], Awaitable[None]],
                 stop: Callable[[str], Awaitable[object]], limit: int) -> None:
        self.runner = runner
        self.calls = dict(calls)  # instance name -> calls (steps) still to make
        self._start, self._stop = start, stop
        self.limit = limit
        self.places = asyncio.Semaphore(2 * limit)  # instances started ahead, alive at once
        self.group = aio.TaskGroup("a build's instances")
        self.readiness: dict[str, asyncio.Task[None]] = {}  # instance name -> its start
        self.lives: dict[str, asyncio.Task[None]] = {}  # instance name -> its life
        self.last_call: dict[str, asyncio.Event] = {}  # set once its last call has ended
        self.turns: dict[str, asyncio.Event] = {}  # started ahead: set when its turn comes
        self.early: dict[str, Component] = {}  # started ahead of need (see ahead)
        self.wanted: set[str] = set()  # instances somebody waited for (needed)

    def order(self, steps: list[Component]) -> list[Component]:
        """``steps`` grouped by instance, in the order of each instance's first step."""
        first: dict[str, int] = {}
        for i, c in enumerate(steps):
            first.setdefault(self.runner[c.name], i)
        return sorted(steps, key=lambda c: first[self.runner[c.name]])

    def ahead(self, steps: Iterable[str], early: Iterable[Component] = ()
              ) -> asyncio.Task[None] | None:
        """Start the instances of ``steps`` (processors) in the background, in that order,
        ``limit`` at a time through the engine, each when it has a place, then those of the
        ``early`` steps (maybe never needed: no place) in the slots left, so that no
        processor's start waits for theirs; the start of the first (None without steps: then
        nothing starts)."""
        names = list(dict.fromkeys(self.runner[s] for s in steps))
        if not names:
            return None
        self.early.update((self.runner[c.name], c) for c in early
                          if self.runner[c.name] not in names)
        extra = list(self.early)
        for name in names + extra:
            self.turns[name] = asyncio.Event()
            self.readiness[name] = self.group.start_soon(
                self._started(name, placed=name not in self.early), name=f"start {name}")
        self.group.start_soon(parallel.run(self._turn, names + extra, limit=self.limit),
                              name="starts ahead")
        return self.readiness[names[0]]

    def unwanted(self, name: str) -> bool:
        """Instance ``name`` was started ahead of need and nobody has waited for it yet."""
        return name in self.early and name not in self.wanted

    def _unneeded_failures(self) -> None:
        """Log the failed starts ahead of need that nobody needed (not the build's errors)."""
        for name, c in self.early.items():
            task = self.readiness[name]
            if (name not in self.wanted and task.done() and not task.cancelled()
                    and (error := task.exception()) is not None):
                log.warning("%s %r, started ahead of need, was not needed; its start failed: "
                            "%s", c.kind.value, name, describe(error))

    async def _turn(self, name: str) -> None:
        """The engine's item for a start ahead: let it begin, wait until it has ended (its
        error is for whoever calls the instance)."""
        self.turns[name].set()
        await asyncio.wait([self.readiness[name]])

    def prefetch(self, step: str) -> None:
        """Start a step's instance now, in the background, unless started already."""
        name = self.runner[step]
        if name not in self.readiness:
            self.readiness[name] = self.group.start_soon(self._started(name),
                                                         name=f"start {name}")

    async def ready(self, step: str) -> None:
        """Wait until a step's instance is ready, starting it if nobody has; its start's
        error if it could not start."""
        self.prefetch(step)
        self.wanted.add(self.runner[step])
        await asyncio.shield(self.readiness[self.runner[step]])

    def skip(self, step: str) -> None:
        """A step that needs no call (its output comes from the cache)."""
        name = self.runner[step]
        self.calls[name] = self.calls.get(name, 1) - 1

    def called(self, name: str) -> None:
        """A call to instance ``name`` ended: after its last, the instance stops."""
        left = self.calls[name] = self.calls.get(name, 1) - 1
        if left <= 0:
            self._last_call(name).set()

    async def settle(self) -> None:
        """Wait for the stops under way (of instances whose last call has ended)."""
        await self._wait_lives(n for n, e in self.last_call.items() if e.is_set())

    async def retire(self, names: Iterable[str]) -> None:
        """Stop these instances now (the resolvers, after the merge): a start ahead of need
        still under way is cut short (nobody will call it)."""
        names = list(dict.fromkeys(names))
        cut = [t for n in names if self.unwanted(n) and not (t := self.readiness[n]).done()]
        for task in cut:
            task.cancel()
        for name in names:
            self._last_call(name).set()
        if cut:
            await asyncio.wait(cut)
        await self._wait_lives(names)

    async def close(self) -> None:
        """Cancel the starts still to come; wait for every start and stop under way (what
        runs still is the session's to stop; a stop under way is not cut short, as the
        session no longer knows the instance)."""
        await self.group.aclose()
        self._unneeded_failures()

    async def _started(self, name: str, *, placed: bool = False) -> None:
        turn = self.turns.get(name)
        if turn is not None:
            await turn.wait()
        await self.group.start(functools.partial(self._life, name, placed),
                               name=f"instance {name}")

    async def _life(self, name: str, placed: bool, status: aio.TaskStatus[None]) -> None:
        current = asyncio.current_task()
        assert current is not None
        self.lives[name] = current
        if placed:
            await self.places.acquire()
        try:
            try:
                await self._start(name)
            except BaseException:
                await aio.shielded(self._stop(name))
                raise
            status.started()
            await self._last_call(name).wait()
            await aio.shielded(self._stop(name))  # (once begun, a stop ends: see close)
        finally:
            if placed:
                self.places.release()

    def _last_call(self, name: str) -> asyncio.Event:
        return self.last_call.setdefault(name, asyncio.Event())

    async def _wait_lives(self, names: Iterable[str]) -> None:
        lives = [t for n in names if (t := self.lives.get(n)) is not None and not t.done()]
        if lives:
            await asyncio.wait(lives)


def ahead_of_need(plan: Plan, calls: Sequence[Component]) -> list[Component]:
    """The steps a one-shot build starts ahead of need, while its processors' ``calls`` are
    made (their boot overlaps them; with no call to make, as when every processor's output is
    cached, none: each starts at its first call): the resolvers when a conflict is possible
    (a file in two outputs or more: two processor steps or more), then the first plugin (the
    next ones start while the one before works)."""
    if not calls:
        return []
    return [s.component for s in (*(plan.resolvers if len(plan.processors) > 1 else ()),
                                  *plan.plugins[:1])]
