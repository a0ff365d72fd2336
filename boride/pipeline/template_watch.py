"""Guards the template during a build: it is read-only to processors."""

from __future__ import annotations

from boride.area import Area
from boride.pipeline.results import BuildFailed, ComponentResult
from boride.types import Status


class TemplateWatch:
    """Fails a build whose template changed, naming the processors that may have done it:
    those running since the last check that found it unchanged. Nothing to watch when the
    runtime keeps the template read-only itself (:attr:`Area.guards_template`)."""

    def __init__(self, results: dict[str, ComponentResult]) -> None:
        self.results = results
        self.area: Area | None = None
        self.print: dict[str, tuple[int, int, int, int]] = {}
        self.now_running: set[str] = set()
        self.suspects: set[str] = set()
        self.changed: str | None = None

    async def begin(self, area: Area) -> None:
        if not area.guards_template:
            self.area = area
            self.print = await area.template_print()

    def running(self, name: str) -> None:
        self.now_running.add(name)
        self.suspects.add(name)

    async def ended(self, name: str) -> None:
        self.now_running.discard(name)
        if self.changed is None:
            await self.check(name)

    async def check(self, just_ended: str | None = None) -> None:
        if self.area is None:
            return
        now = await self.area.template_print()
        if now == self.print:
            self.suspects = set(self.now_running)
            return
        paths = sorted({p for p, _ in set(now.items()) ^ set(self.print.items())})
        suspects = sorted(self.suspects | ({just_ended} if just_ended else set()))
        who = (f"processor {suspects[0]!r}" if len(suspects) == 1
               else "one of the processors " + ", ".join(repr(s) for s in suspects))
        message = (f"{who} changed the template, which is read-only to processors "
                   f"({', '.join(paths[:5])}{', ...' if len(paths) > 5 else ''})")
        self.changed = message
        for name in suspects:
            self.results[name].status = Status.FAILED
            self.results[name].error = message
        raise BuildFailed([message])
