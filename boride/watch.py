"""``boride run --watch``: the template author's loop.

Build, then keep the session and its components (the lifetime rule of a kept session: until the
loop ends) and build again when a file of the template, the pipeline file or a local
component's folder changes, bursts of changes taken as one (:func:`watchfiles.awatch`'s
debounce). The cache is on, so an edit costs the work of the processors it concerns, plus
milliseconds. Each good result replaces ``--out`` (and ``--archive``) whole; a failed build
leaves the last good one and says why. Cancelling the loop (Ctrl-C) stops everything.

What a rebuild reuses and what it starts again:

* a component whose identity changed (:meth:`~boride.runtime.base.Runtime.identity`: its
  files, its image), or whose step now names another program, is stopped and started anew;
* on Docker the template is a copy in the session's volume: a template change opens a new
  session (its components start again); locally processors read the template folder itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import watchfiles

from boride import aio, telemetry
from boride.cache import IGNORED_NAMES
from boride.errors import describe
from boride.model import Pipeline, PipelineError, load
from boride.pipeline import (
    Build,
    BuildOptions,
    BuildResult,
    ComponentsFailed,
    Plan,
    Session,
    cannot_run,
    not_components,
)
from boride.pipeline.timeline import Timeline
from boride.runtime.base import Runtime, RuntimeFailure, TemplateSource
from boride.types import Component, Status

log = logging.getLogger(__name__)
#: What a watcher yields: the changes of one edit (kind, path).
_Changes = set[tuple[watchfiles.Change, str]]

DEBOUNCE_MS = 50  # changes this close together are one edit (an editor's save is several)
STEP_MS = 10
#: never a reason to rebuild: what is no part of a component (byte-code, version control:
#: :data:`boride.cache.IGNORED_NAMES`) and editors' temporary files
_IGNORED_SUFFIXES = (".swp", ".swx", "~", ".tmp")


@dataclass
class Round:
    """One build of the loop: its number, its result (None when the pipeline file could not
    be used: ``problems`` says why), and the changes that started it."""

    number: int
    result: BuildResult | None
    problems: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.ok


class _Filter(watchfiles.DefaultFilter):
    """Everything but what builds write (outputs, the cache, work areas) and noise."""

    def __init__(self, skip: Iterable[Path]) -> None:
        super().__init__(ignore_dirs=sorted(IGNORED_NAMES))
        self.skip = tuple(str(p.resolve()) for p in skip)

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        if path.endswith(_IGNORED_SUFFIXES):
            return False
        if any(path == s or path.startswith(s.rstrip("/") + "/") for s in self.skip):
            return False
        return super().__call__(change, path)


def watched_paths(pipeline_file: Path, pipeline: Pipeline | None) -> list[Path]:
    """The pipeline file's folder (the file, and the folder local components run in), the
    template, and the folders of files the commands name elsewhere."""
    paths = {pipeline_file.absolute().parent}
    if pipeline is not None:
        paths.add(pipeline.template_dir)
        for c in pipeline.components():
            for arg in c.command or ():
                candidate = (c.cwd or Path.cwd()) / arg
                if candidate.is_file():
                    paths.add(candidate.resolve().parent)
    # a folder below another watched one is watched already
    ordered = sorted((p.resolve() for p in paths if p.exists()), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for p in ordered:
        if not any(p == k or k in p.parents for k in kept):
            kept.append(p)
    return kept


class Loop:
    """The state of one watch loop: the pipeline, the session, what its components are.
    Its background work (the wait for the next change, starting ahead) is ``tasks``, closed
    with the loop."""

    def __init__(self, pipeline_file: Path, runtime: Runtime, options: BuildOptions) -> None:
        self.pipeline_file = pipeline_file
        self.runtime = runtime
        self.options = options
        self.session: Session | None = None
        self.identities: dict[str, str | None] = {}  # instance -> its identity when started
        self.tasks = aio.TaskGroup("watch")
        self.prestart: asyncio.Task[None] | None = None
        self._now: dict[tuple[object, ...], str | None] = {}  # runnable -> identity, this build
        self.template: TemplateSource = Path(".")  # the pipeline's, once loaded
        # what builds write: never a change to rebuild for
        self.skip = [p for p in (options.out, options.archive, options.work_root,
                                 options.cache.root if options.cache else None) if p]

    def load(self) -> tuple[Pipeline | None, list[str]]:
        try:
            return load(self.pipeline_file), []
        except PipelineError as exc:
            return None, [f"invalid pipeline file: {p}" for p in exc.problems]

    async def build(self, pipeline: Pipeline, template_changed: bool) -> BuildResult:
        plan = Plan.from_pipeline(pipeline)
        self.template = plan.template
        components = [s.component for s in plan.steps]
        problems = await cannot_run(self.runtime, components)
        if problems:
            return BuildResult(errors=problems)
        await self._settle()
        session = await self._session(plan, template_changed)
        await self._drop_stale(session, components)
        build = Build(plan, session, self.options)
        try:
            result = await build.run()
        finally:
            await build.release()
        result.session = session.id
        self._record(session, components)
        # components the cache spared start now, in the background: the next edit may need them
        self.prestart = self.tasks.start_soon(self._start_rest(session, components),
                                              name="watch: start ahead")
        return result

    async def _session(self, plan: Plan, template_changed: bool) -> Session:
        s = self.session
        same_template = s is not None and s.template == plan.template
        if s is not None and (not same_template or
                              (template_changed and not self.runtime.host_areas)):
            await self._close()
            s = None
        if s is None:
            s = Session(self.runtime, work_root=self.options.work_root)
            self.session = s
            await s.open(plan.template)
        return s

    async def _drop_stale(self, session: Session, components: list[Component]) -> None:
        """Stop the instances whose program is gone or changed."""
        distinct = list({c.runnable: c for c in components}.values())
        now = await aio.gather(*(self._identity(c) for c in distinct))
        # what runs keeps the identity it had when it started; what starts gets today's
        self._now = {c.runnable: ident for c, ident in zip(distinct, now, strict=True)}
        stale = [n for n, i in session.instances.items()
                 if i.component.runnable not in self._now
                 or self._now[i.component.runnable] != self.identities.get(n)]
        if stale:
            await session.drop(stale)
        for n in stale:
            self.identities.pop(n, None)

    async def _identity(self, c: Component) -> str | None:
        try:
            return await self.runtime.identity(c, skip=not_components(self.options,
                                                                       self.template))
        except OSError as exc:
            log.warning("cannot tell whether %r changed: %s", c.name, describe(exc))
            return None

    def _record(self, session: Session, components: list[Component]) -> None:
        for name, instance in session.instances.items():
            if name not in self.identities:
                self.identities[name] = self._now.get(instance.component.runnable)

    async def _start_rest(self, session: Session, components: list[Component]) -> None:
        missing = session.missing(components)
        if not missing:
            return
        try:
            await session.start(missing, self.options.timeouts.ready,
                                limit=self.options.limits.build_parallelism(None))
        except (ComponentsFailed, RuntimeFailure, OSError) as exc:
            # the next build starts them again, and reports what fails then
            log.info("starting ahead failed: %s", describe(exc))
        self._record(session, components)

    async def _settle(self) -> None:
        if self.prestart is not None:
            await asyncio.wait({self.prestart})  # its failures are told by _start_rest
            self.prestart = None

    async def _close(self) -> None:
        if self.prestart is not None:
            self.prestart.cancel()
        await self._settle()
        if self.session is not None:
            session, self.session = self.session, None
            self.identities.clear()
            await session.close()
            if session.leftovers:
                log.warning("left behind: %s", "; ".join(session.leftovers))

    async def aclose(self) -> None:
        await self.tasks.aclose()
        await self._close()

    def next_change(self, watcher: AsyncIterator[_Changes]) -> asyncio.Task[_Changes | None]:
        """The next change ``watcher`` sees (None when it ends), awaited in the background."""
        async def wait() -> _Changes | None:
            return await anext(watcher, None)

        return self.tasks.start_soon(wait(), name="watch: next change")


async def watch(pipeline_file: Path, runtime: Runtime, options: BuildOptions,
                report: Callable[[Round], None], *,
                changes: Callable[[list[Path], _Filter], AsyncIterator[set[tuple[
                    watchfiles.Change, str]]]] | None = None,
                trace: Callable[[int, Timeline], None] | None = None) -> None:
    """Build, then build again on every change, until cancelled; ``report`` is told each
    round, ``trace`` (if given) each build's number and timeline. Everything started is
    stopped before this returns or raises."""
    loop = Loop(pipeline_file, runtime, options)
    make = changes or _awatch
    watcher: AsyncIterator[_Changes] | None = None
    pending: asyncio.Task[_Changes | None] | None = None
    paths: list[Path] = []
    changed: list[str] = []
    number = 0
    try:
        while True:
            number += 1
            start = time.perf_counter()
            pipeline, problems = loop.load()
            wanted = watched_paths(pipeline_file, pipeline)
            if watcher is None or wanted != paths:
                if pending is not None:
                    pending.cancel()
                    await asyncio.wait({pending})
                    pending = None
                if watcher is not None:
                    await _close(watcher)
                paths, watcher = wanted, make(wanted, _Filter(loop.skip))
            if pending is None:
                # watching starts before the build: an edit made during it is the next round
                pending = loop.next_change(watcher)
                await asyncio.sleep(0)
            result = None
            if pipeline is not None:
                template = pipeline.template_dir
                touched = any(Path(p) == template or template in Path(p).parents
                              for p in changed)
                if trace is not None or telemetry.enabled():  # (a timeline per build)
                    options.timeline = Timeline(
                        options.limits.build_parallelism(pipeline.parallelism))
                with telemetry.span("boride run --watch"):  # (its calls carry the trace)
                    result = await loop.build(pipeline, touched)
                    telemetry.export_build(options.timeline, result)
                if trace is not None and options.timeline is not None:
                    trace(number, options.timeline)
                if result.ok:  # from now on each result replaces the last
                    options.replace = True
            report(Round(number, result, problems, changed, time.perf_counter() - start))
            found = await pending
            pending = None
            if found is None:
                return
            changed = sorted({p for _, p in found})
    finally:
        await loop.tasks.aclose()  # the wait for a change ends before its watcher closes
        if watcher is not None:
            await _close(watcher)
        await loop.aclose()


def _awatch(paths: list[Path], filt: _Filter) -> AsyncIterator[set[tuple[watchfiles.Change,
                                                                           str]]]:
    return watchfiles.awatch(*paths, watch_filter=filt, debounce=DEBOUNCE_MS, step=STEP_MS,
                             recursive=True)


async def _close(watcher: AsyncIterator[object]) -> None:
    aclose = getattr(watcher, "aclose", None)
    if aclose is not None:
        await aclose()


def counts(result: BuildResult) -> tuple[int, int]:
    """(cached, called) processor steps of a build."""
    done = [c for c in result.components if c.kind == "processor" and c.status == Status.OK]
    cached = sum(1 for c in done if c.cached)
    return cached, len(done) - cached
