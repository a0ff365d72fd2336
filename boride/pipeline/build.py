"""One build in an open session: start → processors in parallel → merge → plugins in order →
output, within the build's one deadline (:mod:`boride.pipeline.deadline`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import TypeVar

import httpx

from boride import aio, cache, diagnose, health, merge, parallel, protocol
from boride.area import Area, AreaFailure
from boride.errors import describe
from boride.model import Pipeline
from boride.pipeline.admission import Admission
from boride.pipeline.cached import BuildCache
from boride.pipeline.calls import Calls, checked, resolve_files
from boride.pipeline.deadline import Deadline
from boride.pipeline.deliver import deliver, full_disk
from boride.pipeline.lifetime import OnDemand, ahead_of_need
from boride.pipeline.plan import Plan, not_components, runners
from boride.pipeline.results import (
    NOT_NEEDED,
    BuildFailed,
    BuildOptions,
    BuildResult,
    CannotRun,
    ComponentResult,
)
from boride.pipeline.session import Session, fan_out
from boride.pipeline.template_watch import TemplateWatch
from boride.pipeline.timeline import BUILD_ROW, MERGE_ROW, OUTPUT_ROW, maybe
from boride.pipeline.timing import Timing
from boride.runtime.base import Instance, Runtime, RuntimeFailure
from boride.types import Component, Kind, Status

log = logging.getLogger(__name__)
T = TypeVar("T")


class _BuildCore:
    """What the stages of a build stand on: its plan's steps and the instance each calls, its
    deadline, its progress (results, events, stage times), the calls to its instances and its
    hold on a server's build slots (``admission``: given up while a call is pending)."""

    def __init__(self, plan: Plan, session: Session, options: BuildOptions,
                 shared: Session | None = None, *, on_demand: bool = False,
                 admission: Admission | None = None) -> None:
        self.plan = plan
        self.admission = admission or Admission()
        self.session = session
        self.options = options
        self.limit = options.limits.build_parallelism(plan.parallelism)
        self.steps = {s.component.name: s for s in plan.steps}
        self.components = [s.component for s in plan.steps]
        # step -> the instance it calls; components running already (in the session, or
        # shared: the HTTP server's template resolvers) are used as they are
        self.runner = runners(plan.steps, lambda c: session.name_of(c, shared))
        self.results = {c.name: ComponentResult(c.name, c.kind.value) for c in self.components}
        self.shared = shared
        self.calls = Calls(self.runner, session.instances,
                           shared.instances if shared is not None else None)
        self.result = BuildResult(components=list(self.results.values()))
        self.tree: str | None = None  # the final tree in the work area, once plugins are done
        self.deadline = Deadline(options.timeouts.build)
        self.stage: str | None = None  # the stage running
        self.watch = TemplateWatch(self.results)
        self._before: set[str] | None = None  # the area's names before the build: discard()
        ws = session.workspace
        self.cache = BuildCache(options.cache, self.steps, runtime=session.runtime,
                                template=plan.template, skip=not_components(options, plan.template),
                                limit=self.limit, area=ws.area if ws is not None else None)
        # One-shot builds (build()) follow the lifetime rule; a kept session's run as they are.
        self.demand = self._on_demand() if on_demand else None
        self.timeline = options.timeline
        self.timing = Timing(self.results, self.steps, self.runner, self.timeline)
        self._needed: set[str] = set()  # the resolvers called

    def _on_demand(self) -> OnDemand:
        calls: dict[str, int] = {}  # instance -> its calls (resolvers: as many as conflicts)
        for step, name in self.runner.items():
            if self.steps[step].component.kind is not Kind.RESOLVER:
                calls[name] = calls.get(name, 0) + 1
        return OnDemand(self.runner, calls, lambda n: self.start_one(self.steps[n].component),
                        lambda n: self.session.drop([n]), self.limit)

    # -- helpers ---------------------------------------------------------------------------
    def _event(self, stage: str, name: str | None, status: Status) -> None:
        if self.options.on_event is None:
            return
        try:
            self.options.on_event(stage, name, status)
        except Exception:  # a broken progress display must not break the build
            log.debug("progress display failed on %s %s %s", stage, name, status, exc_info=True)

    @contextlib.contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        self._event(name, None, Status.RUNNING)
        self.stage = name
        start = time.perf_counter()
        try:
            yield
        finally:
            end = time.perf_counter()
            self.result.stages[name] = end - start
            if self.timeline is not None:
                self.timeline.add(BUILD_ROW, name, start, end, stage=name)
            self._event(name, None, Status.DONE)

    async def _fan_out(self, stage: str, fn: Callable[[Component], Awaitable[T]],
                       items: list[Component], fail_fast: bool = False
                       ) -> parallel.Report[Component, T]:
        """Run ``fn`` per component through :func:`fan_out`, keeping each one's status."""

        async def tracked(c: Component) -> T:
            res = self.results[c.name]
            res.status = Status.RUNNING
            self._event(stage, c.name, Status.RUNNING)
            start = time.perf_counter()
            try:
                value = await fn(c)
            finally:
                if stage != "start":  # (a start's times are start_one's)
                    self.timing.called(c.name, start, cached=res.cached)
            res.status = Status.OK  # (told to the display with the others' outcomes: seen)
            return value

        def seen(o: parallel.Outcome[Component, T], message: str | None) -> None:
            # (a start is every step's that shares the instance)
            names = self._sharing(o.item.name) if stage == "start" else [o.item.name]
            for name in names:
                self._set(name, o.status, message)
                self._event(stage, name, o.status)

        return await fan_out(tracked, items, limit=self.limit, fail_fast=fail_fast, seen=seen)

    def _set(self, name: str, status: Status, error: str | None = None) -> None:
        res = self.results[name]
        res.status = status
        if error is not None:
            res.error = error

    async def _call(self, step: str, call: Callable[[httpx.AsyncClient], Awaitable[T]],
                    about: str = "") -> T:
        """A call to a step's instance (started first if the lifetime rule has not yet),
        named (``about``: on what) if the build's deadline cuts it off."""
        await self._wait_ready(step)
        c = self.steps[step].component
        # (no slot held while the call is pending: a wait for one afterwards is no call's)
        async with self.admission.awaiting():
            with self.deadline.doing(step, f"{c.kind.value} {step!r}", lambda: (
                    f"its call had not answered {self.deadline.ran_out}"), about):
                return await self.calls.call(step, call)

    async def _wait_ready(self, step: str) -> None:
        if self.demand is not None:
            await self.demand.ready(step)
        self.timing.ready(step)

    async def start_one(self, c: Component) -> None:
        """Start ``c`` in the session and wait until it is ready (a one-shot build's starts
        are told to the display here)."""
        told = self.demand is not None
        if told:
            self._event("start", c.name, Status.RUNNING)
        try:
            with self.deadline.doing(c.name, f"{c.kind.value} {c.name!r}",
                                     lambda: self._late(c)), \
                    self.timing.starting(c.name) as started:
                await self.session.start_one(c, self.options.timeouts.ready, started)
        except BaseException as exc:
            if told:  # (a start ahead of need cut short: nobody needed it)
                cut = isinstance(exc, asyncio.CancelledError) and self._unwanted(c.name)
                self._event("start", c.name, Status.CANCELLED if cut else Status.FAILED)
            raise
        if told:
            self._event("start", c.name, Status.OK)

    def _unwanted(self, name: str) -> bool:
        return self.demand is not None and self.demand.unwanted(name)

    def _late(self, c: Component) -> str | None:
        """What ``c``'s start was waiting for when the deadline cut it off (None: nothing
        worth naming, a start ahead of need nobody waited for)."""
        if self._unwanted(c.name):
            return None
        instance: Instance | None = self.session.instances.get(c.name)
        if instance is None:
            return f"not started {self.deadline.ran_out} (its start had not ended)"
        return (f"not ready {self.deadline.ran_out} ({health.NEVER_READY})"
                f"{diagnose.summary(instance.log_tail())}")

    def _timed_out(self) -> list[str]:
        """The deadline passed: every step it cut off failed (the others at work were
        cancelled); what each was waiting for."""
        for cut in self.deadline.cut_off:
            for name in self._sharing(cut.step):
                if self.results[name].status in (Status.PENDING, Status.RUNNING):
                    self._set(name, Status.FAILED, cut.own)
        for res in self.results.values():
            if res.status is Status.RUNNING:
                res.status = Status.CANCELLED
        return self.deadline.report(self.stage)

    @property
    def _area(self) -> Area:
        ws = self.session.workspace
        assert ws is not None and ws.area is not None, "the session has no work area"
        return ws.area

    def _sharing(self, name: str) -> list[str]:
        """The steps whose calls go to instance ``name`` (``name`` first)."""
        return [name, *(n for n, r in self.runner.items() if r == name and n != name)]

    def _called(self, step: str) -> None:
        if self.demand is not None:
            self.demand.called(self.runner.get(step, step))


class Build(_BuildCore):
    """The stages of one build in an open :class:`Session`; ``tree`` is the result folder
    (inside the session's work area) once :meth:`run` succeeded. Without ``out``/``archive``
    options the result stays there, for the caller to deliver (the HTTP server streams it with
    :meth:`stream`, then :meth:`release` s the session for the next build)."""

    async def run(self) -> BuildResult:
        """Run the stages in the (open) session, within the build's deadline; the caller
        closes the session."""
        began = time.perf_counter()
        try:
            await self._within_deadline()
            self.result.status = Status.OK
        except BuildFailed as exc:
            self.result.errors.extend(exc.errors)
        except merge.MergeError as exc:
            self.result.errors.extend(f"merge: {e}" for e in exc.errors)
        except AreaFailure as exc:  # the work area (on Docker, its helper) failed
            self.result.errors.append(str(exc))
        except OSError as exc:  # e.g. the output folder cannot be written
            self.result.errors.append(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        except Exception as exc:  # a bug: still report it as a failed build, not a traceback
            self.result.errors.append(f"unexpected error: {describe(exc)}")
        finally:
            if not self.result.ok:
                self.result.errors.extend(await full_disk(self.session))
            for res in self.result.components:
                if res.status == Status.PENDING:
                    res.status = Status.OK if self.result.status == Status.OK else Status.SKIPPED
            if self.timeline is not None:
                self.timeline.add(BUILD_ROW, "build", began, time.perf_counter(),
                                  status=str(self.result.status))
        return self.result

    async def _within_deadline(self) -> None:
        """The stages in the deadline's scope; once it passed, what it cut off, by name."""
        try:
            try:
                async with self.deadline.scope():
                    await self._stages()
            finally:
                await self.cache.close()
                if self.demand is not None:
                    await self.demand.close()  # (its starts cut off are named too)
        except TimeoutError:
            if not self.deadline.passed:
                raise  # an operation's own timeout
            raise BuildFailed(self._timed_out()) from None

    # -- stages ----------------------------------------------------------------------------
    async def _stages(self) -> None:
        area = self._area
        processors = [c for c in self.components if c.kind is Kind.PROCESSOR]
        plugins = [c for c in self.components if c.kind is Kind.PLUGIN]

        # What the area holds before the build (see discard), asked while components start:
        # on Docker the area's helper may be starting too.
        async with aio.TaskGroup("the build's start") as group:
            before = group.start_soon(area.names(), name="the area's names")
            with self._stage("start"):
                await self.cache.lookup(processors)
                await self._start_stage(processors)
        self._before = before.result()
        for res in self.results.values():
            res.status = Status.PENDING  # started and ready; each stage sets its own status below

        with self._stage("process"):
            await self.watch.begin(area)
            order = self.demand.order(processors) if self.demand else processors
            report = await self._fan_out("process", self._process, order)
            await self.watch.check()
            done = {o.item.name: o.value for o in report.outcomes}
            outputs = [p for c in processors if (p := done.get(c.name)) is not None]

        with self._stage("merge"):
            if self.demand is not None and plugins:  # the first plugin starts meanwhile
                self.demand.prefetch(plugins[0].name)
            tree = await area.new_dir(private=True)
            await self.merge_into(outputs, tree)
            if self.demand is not None:  # (a start cut short is told first)
                await self.demand.retire(self.runner[r.component.name]
                                         for r in self.plan.resolvers)
            for r in self.plan.resolvers:
                if self.results[r.component.name].status == Status.PENDING:
                    self.results[r.component.name].status = Status.OK
                    self._event("merge", r.component.name, Status.OK if r.component.name
                                in self._needed else NOT_NEEDED)

        with self._stage("plugins"):
            tree = await self._plugins(plugins, tree)

        self.tree = tree
        if self.options.out is not None or self.options.archive is not None:
            with self._stage("output"):
                await self._output(area, tree)

    async def _start_stage(self, processors: list[Component]) -> None:
        """Start what the build needs: everything at once, or in a one-shot build (the lifetime
        rule, :class:`OnDemand`) the processors in the background, then the resolvers and
        plugins to boot ahead of need (:func:`ahead_of_need`), waiting for the first."""
        if self.demand is not None:
            for name in self.cache.found:
                self.demand.skip(name)
            calls = [c for c in processors if not self.cache.hit(c.name)]
            first = self.demand.ahead((c.name for c in self.demand.order(calls)),
                                      ahead_of_need(self.plan, calls))
            if first is not None:
                await asyncio.wait([first])  # (its error is its first call's)
            return
        await self._fan_out("start", self.start_one, self.missing(), fail_fast=True)

    async def _process(self, c: Component) -> str:
        area = self._area
        step = self.steps[c.name]
        entry = self.cache.found.pop(c.name, None)
        if entry is not None:  # unchanged inputs: the output of an earlier call
            self.results[c.name].cached = True
            return await area.unpack(cache.payload_chunks(entry))
        self.watch.running(c.name)
        try:
            # (its folder is made for the user its instance runs as: known once it started)
            write_dir = await area.new_dir(owner=await self._user(c.name))
            output = await self._call(c.name, lambda client: protocol.process(
                client, area.template, write_dir, step.globs, step.config,
                limit=self.options.limits.max_answer))
        finally:
            self._called(c.name)
            await self.watch.ended(c.name)
        result = checked(area, output, write_dir, "writeDir")
        await area.take_back(write_dir)  # now no other component can reach it, nor it change it
        await self.cache.store(c.name, result)
        return result

    async def _user(self, step: str) -> tuple[int, int] | None:
        """The user of a step's instance (started first if the lifetime rule has not yet)."""
        await self._wait_ready(step)
        return self.calls.instance(step).user

    async def _resolve(self, rule: merge.ResolverRule, conflict: merge.Conflict
                       ) -> tuple[str, bytes]:
        step = self.steps[rule.name]
        files = resolve_files(rule.name, conflict, self.plan.template.name)
        await self._wait_ready(rule.name)  # (its call's time begins once it is ready)
        if rule.name not in self._needed:
            self._needed.add(rule.name)
            self._event("merge", rule.name, Status.RUNNING)
        start = time.perf_counter()
        try:
            path, content = await self._call(rule.name, lambda client: protocol.resolve(
                client, step.config, files, limit=self.options.limits.max_answer),
                about=f"on {conflict.path!r}")
        except protocol.ProtocolError as exc:
            self._set(rule.name, Status.FAILED, f"on {conflict.path!r}: {exc}")
            raise protocol.ProtocolError(f"resolver {rule.name!r} on {conflict.path!r}: {exc}")\
                from None
        finally:
            self.timing.resolved(rule.name, start, conflict.path)
        refused = merge.other_path(conflict.path, path)
        if refused is not None:  # the merge refuses it (and says so): the resolver failed
            self._set(rule.name, Status.FAILED, f"on {conflict.path!r}: {refused}")
        return path, content.encode("utf-8")

    async def merge_into(self, outputs: Sequence[str], target: str) -> None:
        """Merge ``outputs`` (folders of the area, in order) into ``target``, conflicts sent
        to the plan's resolvers; :class:`~boride.merge.MergeError` with every problem."""
        rules = [merge.ResolverRule(r.component.name, tuple(r.files))
                 for r in self.plan.resolvers]
        with maybe(self.timeline, MERGE_ROW, "merge", outputs=len(outputs)):
            await self._area.merge(outputs, target, rules, self._resolve, limit=self.limit)

    async def _plugins(self, plugins: list[Component], tree: str) -> str:
        for i, c in enumerate(plugins):
            if self.demand is not None:  # the next plugin starts while this one works
                await self.demand.settle()
                for after in plugins[i:i + 2]:
                    self.demand.prefetch(after.name)

            # One at a time: plugin N sees plugin N-1's changes.
            async def plug(c: Component, tree: str = tree) -> str:
                return await self._plug(c, tree)

            tree = (await self._fan_out("plugins", plug, [c])).values[0] or tree
        return tree

    async def _plug(self, c: Component, tree: str) -> str:
        area = self._area
        try:
            await area.hand_over(tree, await self._user(c.name))
            output = await self._call(c.name, lambda client: protocol.plug(
                client, tree, self.steps[c.name].config, limit=self.options.limits.max_answer))
        finally:
            self._called(c.name)
        result = checked(area, output, tree, "directory")
        await area.take_back(tree)
        return result

    async def _output(self, area: Area, tree: str) -> None:
        # A one-shot build's components are all done: once their processes have ended,
        # nothing can change the result any more, and it may be moved out.
        move = (self.demand is not None and self.shared is None and area.moves_out
                and self.options.out is not None)
        if move:
            assert self.demand is not None
            await self.demand.settle()
            await self.session.drop(list(self.session.instances))
        with maybe(self.timeline, OUTPUT_ROW, "output", moved=move):
            await deliver(area, tree, self.options, self.result, move=move)

    def missing(self) -> list[Component]:
        """The components the build will start (running neither in the session nor shared),
        one per runnable: each step's runner, named as the first step using it."""
        # (an instance named as no step is one running already)
        needed = dict.fromkeys(self.runner.get(c.name, c.name) for c in self.components
                               if not self.cache.hit(c.name))
        return self.session.missing([self.steps[n].component for n in needed if n in self.steps],
                                    self.shared)

    # -- after a build in a kept session (the HTTP server's) -------------------------------
    async def stream(self, *, copy_links: bool = False) -> AsyncIterator[bytes]:
        """The result as ``.tar.gz`` chunks, produced while iterating (after a successful
        :meth:`run`); :class:`~boride.archive.ArchiveError` when the tree cannot be
        archived. With
        ``copy_links``, in-tree symlinks are stored as what they lead to."""
        assert self.tree is not None, "the build has no result"
        return await self._area.archive(self.tree, copy_links=copy_links)

    async def release(self, *, cancelled: bool = False) -> list[str]:
        """Ready the session for its next build: stop the components that failed or were cut
        off (dead, or in an unknown state; the next build starts them again), all of them when
        the build was cancelled (they may be busy with calls nobody waits for), and remove the
        build's folders. Return the shared components that failed: whether they live on is
        for their session's owner to decide."""
        bad = list(dict.fromkeys(self.runner.get(c.name, c.name) for c in self.result.components
                                 if c.status in (Status.FAILED, Status.CANCELLED)))
        await self.session.drop(list(self.session.instances) if cancelled else bad)
        await self.discard()
        shared = self.shared.instances if self.shared is not None else {}
        return [name for name in bad if name in shared]

    async def discard(self) -> list[str]:
        """Remove what the build made in the session's area (the session lives on); what
        could not be removed, also logged."""
        if self._before is None:
            return []  # the build never ran: it made nothing
        problems = await self._area.remove_new(self._before)
        for problem in problems:
            log.warning("session %s: %s", self.session.id, problem)
        return problems


async def build(pipeline: Pipeline | Plan, runtime: Runtime,
                options: BuildOptions | None = None) -> BuildResult:
    """Run one build in a session of its own, closed (everything stopped and removed) before
    returning, also when cancelled. Never raises for build failures: see ``BuildResult``."""
    options = options or BuildOptions()
    plan = Plan.from_pipeline(pipeline) if isinstance(pipeline, Pipeline) else pipeline
    components = [s.component for s in plan.steps]
    session = Session(runtime, work_root=options.work_root, keep=options.keep)
    try:
        await session.refuse_unrunnable(components)
    except CannotRun as exc:
        return BuildResult.not_started(components, exc.errors)
    try:
        try:
            await session.open(plan.template)
        except (RuntimeFailure, OSError) as exc:  # (a template refused, too)
            return BuildResult.not_started(components, [f"cannot open the work area: {exc}"],
                                           session.id)
        result = await Build(plan, session, options, on_demand=True).run()
    finally:
        kept = await session.close()
    result.work_dir = kept
    result.session = session.id
    result.leftovers = session.leftovers
    return result
