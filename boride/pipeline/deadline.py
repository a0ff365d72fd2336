"""A build's one deadline: the whole build runs inside one timeout scope, and when it runs out
the build says who was still at work and what each was waiting for, not just that time ran
out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class CutOff:
    """A wait the deadline cut off: ``step``'s, said as ``who`` (``about``: on what, e.g. a
    path) and what it was waiting for."""

    step: str
    who: str
    what: str
    about: str = ""

    @property
    def line(self) -> str:
        """For the build's errors: ``processor 'slow': its call had not answered ...``."""
        return f"{self.who}{' ' + self.about if self.about else ''}: {self.what}"

    @property
    def own(self) -> str:
        """For the component's own result (its name is said there already)."""
        return f"{self.about}: {self.what}" if self.about else self.what


class Deadline:
    """The timeout of one build (``seconds`` from when it was made; None: no limit).

    :meth:`scope` is the timeout scope the build runs in (:func:`asyncio.timeout_at`). Each
    wait worth naming runs in :meth:`doing`; those the deadline cuts off are kept, in the
    order they were cut off (:attr:`cut_off`, :meth:`report`)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.when = asyncio.get_running_loop().time() + seconds if seconds else None
        self._scope: asyncio.Timeout | None = None
        self.cut_off: list[CutOff] = []

    @contextlib.asynccontextmanager
    async def scope(self) -> AsyncIterator[None]:
        """Run the block until the deadline; past it, the block is cancelled and
        :class:`TimeoutError` raised (see :attr:`passed`)."""
        async with asyncio.timeout_at(self.when) as scope:
            self._scope = scope
            yield

    @property
    def passed(self) -> bool:
        """The deadline ran out (the scope cancelled what ran in it)."""
        return self._scope is not None and self._scope.expired()

    @property
    def _timeout(self) -> str:
        return f"the build's {self.seconds or 0:g}s timeout"

    @property
    def ran_out(self) -> str:
        return f"when {self._timeout} ran out"

    @contextlib.contextmanager
    def doing(self, step: str, who: str, waiting: Callable[[], str | None], about: str = ""
              ) -> Iterator[None]:
        """Run the block as ``who``'s work for ``step`` (``about``: on what); if the deadline
        cuts it off (in this task, or in a background task its owner cancels once the
        deadline passed), keep what ``waiting()`` says it waited for (None: nothing to keep,
        a wait nobody needed)."""
        try:
            yield
        except asyncio.CancelledError:
            if self.passed and (what := waiting()) is not None:
                cut = CutOff(step, who, what, about)
                if cut not in self.cut_off:
                    self.cut_off.append(cut)
            raise

    def report(self, stage: str | None) -> list[str]:
        """What the deadline cut off, one line each; at least one line, naming the stage."""
        return [c.line for c in self.cut_off] or [
            f"{self._timeout} ran out" + (f" during its {stage} stage" if stage else "")]
