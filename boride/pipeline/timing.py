"""A build's times: each step's call (``seconds``, once its instance was ready), each instance's
start and readiness wait (``start_seconds``, ``ready_seconds``), and their spans on the build's
timeline (:mod:`boride.pipeline.timeline`) when one is recorded."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping

from boride.pipeline.plan import Step
from boride.pipeline.results import ComponentResult
from boride.pipeline.timeline import MERGE_ROW, Timeline, digest


class Timing:
    """Times a build's steps into their results (and its timeline, if any)."""

    def __init__(self, results: Mapping[str, ComponentResult], steps: Mapping[str, Step],
                 runner: Mapping[str, str], timeline: Timeline | None) -> None:
        self.results, self.steps, self.runner = results, steps, runner
        self.timeline = timeline
        self.ready_at: dict[str, float] = {}  # step -> when its wait for its instance ended

    def row(self, step: str) -> str:
        """The timeline row of a step's instance."""
        name = self.runner.get(step, step)
        c = self.steps[name].component if name in self.steps else self.steps[step].component
        return f"{c.kind.value} {name}"

    def ready(self, step: str) -> None:
        """The step's instance is ready: what the step does from now on is its call's time."""
        self.ready_at.setdefault(step, time.perf_counter())

    def called(self, step: str, start: float, *, cached: bool = False, waited: bool = True,
               **args: object) -> None:
        """A step's work from ``start`` ended: its time once its instance was ready (unless
        not ``waited`` from ``start``) is its ``seconds`` and its span on the timeline (a
        call: on a slot row too)."""
        end = time.perf_counter()
        begin = max(start, self.ready_at.pop(step, start)) if waited else start
        self.results[step].seconds += end - begin
        if self.timeline is not None:
            self.timeline.add(self.row(step), "cached" if cached else f"call {step}", begin,
                              end, slot=not cached, step=step, cached=cached,
                              config=digest(self.steps[step].config), **args)

    def resolved(self, step: str, start: float, path: str) -> None:
        """A resolver call ended: on the resolver's row (and a slot's), and the merge's."""
        self.called(step, start, waited=False, path=path)  # (its calls run at once)
        if self.timeline is not None:
            call = self.timeline.spans[-1]
            self.timeline.add(MERGE_ROW, f"resolve {path}", call.start, call.end,
                              resolver=step, path=path)

    @contextlib.contextmanager
    def starting(self, name: str) -> Iterator[Callable[[], None]]:
        """Time instance ``name``'s start: the launch until the callable yielded is told (the
        instance runs), then its readiness wait."""
        times = [time.perf_counter()]
        try:
            yield lambda: times.append(time.perf_counter())
        finally:
            end = time.perf_counter()
            launched = times[1] if len(times) > 1 else end
            res = self.results[name]
            res.start_seconds += launched - times[0]
            res.ready_seconds += end - launched
            if self.timeline is not None:
                self.timeline.add(self.row(name), "start", times[0], launched)
                if len(times) > 1:
                    self.timeline.add(self.row(name), "ready", launched, end)
