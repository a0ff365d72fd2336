"""One build, on any runtime: start → processors in parallel → merge → plugins in order → output.

The pipeline never knows where components run; it only uses :class:`~boride.runtime.base.Runtime`.
Every fan-out goes through :mod:`boride.parallel`. Whatever happens (success, failure, timeout,
Ctrl-C, SIGTERM), every component is stopped and the work area removed before :func:`build`
returns or raises.

Instances and their lifetime:

* **One instance per distinct component.** Steps whose components are the same runnable
  (:attr:`~boride.types.Component.runnable`: the kind, and the image, or the command and its
  working folder) call one instance, whatever their names; their calls go to it concurrently,
  at most the build's parallelism at once, each with its own config and its own ``writeDir``,
  and each step keeps its own result.
* **An instance lives as long as its owner will call it again.** In a one-shot build
  (:func:`build`, ``boride run``) from shortly before its first call to right after its last:
  processors' instances start in the order of their first call while the ones before them are
  called (start-up overlaps work), at most 2 x parallelism of them alive at once; a resolver
  starts at its first conflict and stops after the merge; a plugin starts while the plugin
  before it works (the first while the merge runs) and stops after its call
  (:class:`_OnDemand`). In a kept session (the HTTP
  API's, where ``POST /executor`` starts components ahead) they live until the session ends or
  idles out: :class:`Build` uses what runs and starts what is missing, all at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx

from boride import (
    aio,
    archive,
    cache,
    diagnose,
    fsutil,
    health,
    merge,
    output,
    parallel,
    protocol,
)
from boride.area import TRANSPORT_LEVEL, Area, AreaFailure
from boride.config import Limits, Timeouts
from boride.errors import BorideError, describe
from boride.model import Pipeline
from boride.runtime.base import (
    Instance,
    Runtime,
    RuntimeFailure,
    TemplateRefused,
    TemplateSource,
    Workspace,
)
from boride.types import Component, Kind, Status

log = logging.getLogger(__name__)
T = TypeVar("T")
STAGES = ("start", "process", "merge", "plugins", "output")
_DEATH_GRACE = 2.0  # after a broken connection, how long to wait to learn if the component died
_EXIT_GLANCE = 0.05  # how long to wait to learn whether a component has stopped
CLEANUP_RETRIES = (0.25, 0.5, 1.0, 2.0, 4.0)  # pauses before trying a failed clean-up again


@dataclass
class ComponentResult:
    name: str
    kind: str
    status: Status = Status.PENDING
    seconds: float = 0.0
    error: str | None = None
    cached: bool = False  # its output came from the cache: it was not called

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "status": self.status,
                "seconds": round(self.seconds, 6), "error": self.error, "cached": self.cached}


@dataclass
class BuildResult:
    status: Status = Status.FAILED
    session: str | None = None
    stages: dict[str, float] = field(default_factory=dict)
    components: list[ComponentResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    output: Path | None = None
    archive: Path | None = None
    work_dir: Path | None = None  # kept only with keep=True
    leftovers: list[str] = field(default_factory=list)  # what clean-up could not remove, and how

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "session": self.session,
            "stages": {k: round(v, 6) for k, v in self.stages.items()},
            "components": [c.as_json() for c in self.components],
            "errors": list(self.errors),
            "output": str(self.output) if self.output else None,
            "archive": str(self.archive) if self.archive else None,
            "work_dir": str(self.work_dir) if self.work_dir else None,
            "leftovers": list(self.leftovers),
        }


# Progress events for displays: (stage, component name or None, status)
EventFn = Callable[[str, str | None, Status], None]


@dataclass
class BuildOptions:
    # parallelism: this, else the pipeline file's, else the CPUs
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)  # ready (per component), build
    out: Path | None = None  # copy the result here (must not exist, or be empty)
    replace: bool = False  # replace ``out`` if it exists with content
    archive: Path | None = None  # write the result as tar.gz here
    keep: bool = False  # keep the work area for debugging
    cache: cache.Cache | None = None  # reuse processors' outputs whose inputs are unchanged
    # no part of a local component's identity (the pipeline file: its part is in the keys)
    cache_skip: tuple[Path, ...] = ()
    work_root: Path | None = None  # where work areas go (default: the system temp folder)
    on_event: EventFn | None = None


class BuildFailed(BorideError):
    """Raised inside a build to stop it; carries every error of the failing stage."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class ComponentsFailed(BuildFailed):
    """Components that failed (to start, to become ready, a call): every one's error, and which
    components they were."""

    def __init__(self, errors: list[str], failed: Sequence[Component]) -> None:
        super().__init__(errors)
        self.failed = list(failed)


class MergeFailed(BuildFailed):
    """The outputs cannot be merged: every problem, each naming its path."""


class CannotRun(BorideError):
    """Components that cannot run on this runtime (found before starting anything)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.errors = problems


class AreaUnavailable(BorideError):
    """A session's work area cannot be made (the runtime or the file system refused)."""


class TemplateUnusable(BorideError):
    """The template folder cannot be used (outside the allowed root, not a folder, links
    leading out); the message says which and why."""


class ArchiveFailed(BorideError):
    """A tree cannot be archived: every problem, each naming its path."""

    def __init__(self, error: archive.ArchiveError) -> None:
        super().__init__(str(error).splitlines()[0])
        self.errors = error.errors


class BuildError(BorideError):
    """A build that failed, as its result tells: which components, and every error."""

    def __init__(self, result: BuildResult) -> None:
        failed = [c for c in result.components if c.status == Status.FAILED]
        names = ", ".join(f"{c.kind} {c.name!r}" for c in failed[:5])
        super().__init__(f"The build failed ({names})" if failed else "The build failed")
        self.result = result
        self.errors = list(result.errors)


@dataclass(frozen=True)
class Step:
    """One component's part in a build: what to call and with which config/globs.

    ``files`` are wire globs (dicts) for a processor and glob strings for a resolver.
    """

    component: Component
    config: Any = None
    files: tuple[Any, ...] = ()
    cacheable: bool = True  # with a cache, its output may be reused (a pure processor)


@dataclass(frozen=True)
class Plan:
    """What a build does, whoever asked for it (a pipeline file, or the HTTP API)."""

    template: TemplateSource
    processors: tuple[Step, ...]
    resolvers: tuple[Step, ...] = ()
    plugins: tuple[Step, ...] = ()
    parallelism: int | None = None

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline) -> Plan:
        comps = {c.name: c for c in pipeline.components()}
        return cls(
            template=pipeline.template_dir,
            processors=tuple(Step(comps[p.name], p.config, tuple(g.wire() for g in p.files),
                                  p.cache) for p in pipeline.processors),
            resolvers=tuple(Step(comps[r.name], r.config, tuple(r.files))
                            for r in pipeline.resolvers),
            plugins=tuple(Step(comps[p.name], p.config) for p in pipeline.plugins),
            parallelism=pipeline.parallelism)

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.processors + self.resolvers + self.plugins


async def fan_out(fn: Callable[[Component], Awaitable[T]], items: list[Component], *,
                  limit: int, fail_fast: bool = False, timeout: float | None = None,
                  timed_out: Callable[[], str] | None = None,
                  seen: Callable[[parallel.Outcome[Component, T], str | None], None] | None = None
                  ) -> parallel.Report[Component, T]:
    """Run ``fn`` per component through the engine; raise :class:`ComponentsFailed` with every
    failed component's error. ``seen`` is told each outcome with its message (None when it
    went well); ``timed_out`` says what a run stopped by ``timeout`` reports."""
    report = await parallel.run(fn, items, limit=limit, fail_fast=fail_fast, timeout=timeout)
    errors: list[str] = []
    failed: list[Component] = []
    for o in report.outcomes:
        message = None
        if o.status is not Status.OK:
            late = isinstance(o.error, parallel.RunTimeout)
            message = timed_out() if late and timed_out is not None else describe(o.error)
            if o.status is Status.FAILED or late:
                errors.append(f"{o.item.kind.value} {o.item.name!r}: {message}")
                failed.append(o.item)
        if seen is not None:
            seen(o, message)
    if errors:
        raise ComponentsFailed(errors, failed)
    return report


def runners(steps: Iterable[Step], session: Session, shared: Session | None = None
            ) -> dict[str, str]:
    """Which instance each step calls, step name to instance name: one instance per runnable
    (:attr:`Component.runnable`), the one running already in ``session`` or ``shared``, else
    the one the first step of that runnable starts, under that step's name."""
    first: dict[tuple[object, ...], str] = {}
    return {s.component.name: session.name_of(s.component, shared)
            or first.setdefault(s.component.runnable, s.component.name) for s in steps}


def not_components(options: BuildOptions, template: TemplateSource) -> list[Path]:
    """What is no part of a local component's identity (:meth:`Runtime.identity`), even in the
    folder it runs in: what builds write (outputs, work areas, the cache), and what is in the
    cache's keys on its own (the template, the pipeline file)."""
    return [p for p in (template if isinstance(template, Path) else None, options.out,
                        options.archive, options.cache.root if options.cache else None,
                        options.work_root or Path(tempfile.gettempdir()),
                        *options.cache_skip) if p is not None]


async def cannot_run(runtime: Runtime, components: Sequence[Component]) -> list[str]:
    """Everything that would stop these components from starting on ``runtime``."""
    if not components:
        return []
    return await runtime.problems(list(components))


class Session:
    """A work area and the components running for it, on one runtime.

    :func:`build` makes one per build; the HTTP server keeps them across requests, starting,
    restarting and dropping components only through the methods here. ``close`` stops every
    component and removes the work area, whatever state the session is in.
    """

    def __init__(self, runtime: Runtime, session_id: str | None = None, *,
                 work_root: Path | None = None, keep: bool = False) -> None:
        self.runtime = runtime
        self.id = session_id or uuid.uuid4().hex
        self.work_root = work_root
        self.keep = keep
        self.root: Path | None = None
        self.leftovers: list[str] = []  # what the last close could not remove, and how
        self.workspace: Workspace | None = None
        self.template: TemplateSource | None = None  # what the area was opened with
        self.instances: dict[str, Instance] = {}

    @classmethod
    async def opened(cls, runtime: Runtime, session_id: str, template: TemplateSource, *,
                     work_root: Path | None = None, area: bool = True) -> Session:
        """A session with its work area open (without ``area``: only its template, for
        components sharing it); :class:`AreaUnavailable` (nothing left behind) when the area
        cannot be made."""
        session = cls(runtime, session_id, work_root=work_root)
        try:
            await session.open(template, area=area)
        except TemplateRefused as exc:
            await session.close()
            raise TemplateUnusable(str(exc)) from None
        except (RuntimeFailure, OSError) as exc:
            await session.close()
            if session.leftovers:
                log.warning("session %s: left behind: %s", session_id,
                            "; ".join(session.leftovers))
            raise AreaUnavailable(describe(exc)) from None
        return session

    async def open(self, template: TemplateSource, *, area: bool = True) -> Workspace:
        if self.runtime.host_areas:
            parent = self.work_root or Path(tempfile.gettempdir())
            parent.mkdir(parents=True, exist_ok=True)
            safe = "".join(ch for ch in self.id if ch.isalnum())[:12]
            self.root = Path(tempfile.mkdtemp(prefix=f"boride-{safe}-", dir=parent))
        self.template = template
        self.workspace = await self.runtime.open_workspace(self.id, template, self.root,
                                                           area=area)
        return self.workspace

    def missing(self, components: Iterable[Component], shared: Session | None = None
                ) -> list[Component]:
        """The components running neither here nor in ``shared`` (under their name, or as the
        same runnable under another), the first of each runnable only: one instance each."""
        found: dict[tuple[object, ...], Component] = {}
        for c in components:
            if self.name_of(c, shared) is None:
                found.setdefault(c.runnable, c)
        return list(found.values())

    def name_of(self, component: Component, shared: Session | None = None) -> str | None:
        """The name of the instance running ``component`` here or in ``shared``: its own
        name, else the instance of the same runnable (:attr:`Component.runnable`); or None."""
        sessions = [s for s in (self, shared) if s is not None]
        for s in sessions:
            if component.name in s.instances:
                return component.name
        for s in sessions:
            for name, instance in s.instances.items():
                if instance.component.runnable == component.runnable:
                    return name
        return None

    async def start_one(self, component: Component, ready_timeout: float = Timeouts.ready
                        ) -> None:
        """Start a component and wait until it is ready (it is stopped by ``close``)."""
        assert self.workspace is not None, "open() first"
        self.instances[component.name] = await self.runtime.start(self.workspace, component)
        await health.wait_ready(self.instances[component.name], ready_timeout)

    async def start(self, components: Iterable[Component], ready_timeout: float = Timeouts.ready,
                    *, limit: int | None = None) -> list[Component]:
        """Start the components not running yet, in parallel, and wait until each is ready;
        return them. :class:`ComponentsFailed` with every failed one's error, as a build's start
        stage reports them; those are stopped again, the others keep running."""
        missing = self.missing(components)
        if missing:
            try:
                await fan_out(lambda c: self.start_one(c, ready_timeout), missing,
                              limit=limit or len(missing))
            except ComponentsFailed as exc:
                await self.drop(c.name for c in exc.failed)
                raise
        return missing

    async def drop(self, names: Iterable[str]) -> list[str]:
        """Stop these components and forget them (the next start starts them anew); what
        could not be stopped, also logged (``close`` tries again)."""
        instances = [i for n in dict.fromkeys(names) if (i := self.instances.pop(n, None))]
        problems = await self._stop(instances)
        for problem in problems:
            log.warning("session %s: %s (closing the session tries again)", self.id, problem)
        return problems

    async def drop_dead(self) -> list[str]:
        """Drop the components that have exited (the next start restarts them); their names."""
        items = list(self.instances.items())
        if not items:
            return []
        report = await parallel.run(lambda i: aio.race(i.wait_exit(), timeout=_EXIT_GLANCE),
                                    [i for _, i in items], limit=len(items))
        dead = [name for (name, _), ended in zip(items, report.values, strict=True) if ended]
        await self.drop(dead)
        return dead

    async def close(self) -> Path | None:
        """Stop everything, remove the work area; return it instead when ``keep`` is set."""
        await aio.shielded(self._close())
        return self.root if self.keep else None

    async def _stop(self, instances: list[Instance]) -> list[str]:
        if not instances:
            return []
        report = await parallel.run(self.runtime.stop, instances, limit=len(instances))
        return [f"{o.item.component.kind.value} {o.item.component.name!r}: "
                f"{describe(o.error)}" for o in report.outcomes if not o.ok]

    async def _close(self) -> None:
        instances = list(self.instances.values())
        self.instances.clear()
        if self.workspace is not None:
            # the area's own helpers go while the components stop (close_workspace below
            # removes whatever is left)
            problems, _ = await asyncio.gather(
                self._stop(instances), self.runtime.release_area(self.workspace))
        else:
            problems = await self._stop(instances)
        if self.workspace is not None:
            left = await self._close_workspace(self.workspace)
            # Closing the workspace removes whatever the stops could not: only what it
            # could not remove is left behind.
            problems = [left] if left else []
        if self.root is not None and not self.keep:
            try:
                await asyncio.to_thread(fsutil.remove_tree, self.root)
            except OSError as exc:
                problems.append(f"the work area {self.root} could not be removed "
                                f"({exc.strerror or exc}): remove it with rm -rf {self.root}")
        self.leftovers = problems

    async def _close_workspace(self, workspace: Workspace) -> str | None:
        """Close the workspace; when that fails (say the engine is restarting), try again for
        a few seconds. Return what is left behind, or None."""
        error: BaseException | None = None
        for pause in (*CLEANUP_RETRIES, None):
            try:
                await self.runtime.close_workspace(workspace)
                return None
            except Exception as exc:
                error = exc
            if pause is not None:
                await asyncio.sleep(pause)
        return f"clean-up failed: {describe(error)}"


class _BuildCore:
    """What the stages of a build stand on: its plan's steps and the instance each calls, its
    deadline, its progress (results, events, stage times) and the calls to its instances."""

    def __init__(self, plan: Plan, session: Session, options: BuildOptions,
                 shared: Session | None = None, *, on_demand: bool = False) -> None:
        self.plan = plan
        self.session = session
        self.options = options
        self.limit = options.limits.build_parallelism(plan.parallelism)
        self.steps = {s.component.name: s for s in plan.steps}
        self.components = [s.component for s in plan.steps]
        self.runner = runners(plan.steps, session, shared)  # step -> the instance it calls
        self.results = {c.name: ComponentResult(c.name, c.kind.value) for c in self.components}
        # Components running already (in the session, or shared: the HTTP server's template
        # resolvers) are used as they are.
        self.instances: dict[str, Instance] = session.instances
        self.shared = shared
        self.result = BuildResult(components=list(self.results.values()))
        self.tree: str | None = None  # the final tree in the work area, once plugins are done
        timeout = options.timeouts.build
        self.deadline = (time.monotonic() + timeout) if timeout else None  # on the monotonic clock
        self.watch = _TemplateWatch(self.results)
        self._before: set[str] | None = None  # the area's names before the build: discard()
        self.cache = _BuildCache(self)
        # One-shot builds (build()) follow the lifetime rule; a kept session's run as they are.
        self.demand = _OnDemand(self) if on_demand else None

    # -- helpers ---------------------------------------------------------------------------
    def _event(self, stage: str, name: str | None, status: Status) -> None:
        if self.options.on_event is None:
            return
        try:
            self.options.on_event(stage, name, status)
        except Exception:  # a broken progress display must not break the build
            log.debug("progress display failed on %s %s %s", stage, name, status, exc_info=True)

    def _remaining(self) -> float | None:
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise BuildFailed([self._timed_out()])
        return left

    def _timed_out(self, during: str = "") -> str:
        return f"build timed out after {self.options.timeouts.build:g}s{during}"

    @contextlib.contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        self._event(name, None, Status.RUNNING)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.result.stages[name] = time.perf_counter() - start
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
                res.seconds += time.perf_counter() - start
            return value

        def seen(o: parallel.Outcome[Component, T], message: str | None) -> None:
            # (a start is every step's that shares the instance)
            names = self._sharing(o.item.name) if stage == "start" else [o.item.name]
            for name in names:
                res = self.results[name]
                res.status = o.status
                if message is not None:
                    res.error = message
                self._event(stage, name, o.status)

        return await fan_out(tracked, items, limit=self.limit, fail_fast=fail_fast,
                             timeout=self._remaining(), timed_out=self._timed_out, seen=seen)

    async def _call(self, component: Component,
                    call: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
        """Run a call to a component; if the component dies meanwhile, say so, and on any
        failure show what the component itself printed about it."""
        if self.demand is not None:
            await self.demand.ready(component.name)
        instance = self._instance(component.name)
        task = asyncio.ensure_future(call(instance.client))
        first = await aio.race(task, instance.wait_exit())
        died = first if first is not task else None
        if died is None and isinstance(task.exception(), protocol.TransportFailed):
            # The connection broke: if the component is dying, say that rather than "disconnected".
            died = await aio.race(instance.wait_exit(), timeout=_DEATH_GRACE)
        if died is not None:
            raise protocol.ProtocolError(f"died during its call: {died.result().describe()}")
        error = task.exception()
        if isinstance(error, protocol.ProtocolError):
            raise protocol.ProtocolError(f"{error}{await _own_words(instance)}") from None
        return task.result()  # raises the call's own error

    def _instance(self, step: str) -> Instance:
        """The instance a step calls (shared by every step of the same runnable)."""
        name = self.runner.get(step, step)
        instance = self.instances.get(name)
        if instance is None and self.shared is not None:
            instance = self.shared.instances.get(name)
        if instance is None:
            raise protocol.ProtocolError(f"{name!r} is not running")
        return instance

    async def start_one(self, c: Component) -> None:
        """Start ``c`` in the session and wait until it is ready (within the build's time)."""
        timeout = self.options.timeouts.ready
        remaining = self._remaining()
        if remaining is not None:
            timeout = min(timeout, remaining)
        await self.session.start_one(c, timeout)

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

    # -- stages ----------------------------------------------------------------------------
    async def _process(self, c: Component) -> str:
        area = self._area
        step = self.steps[c.name]
        entry = self.cache.found.pop(c.name, None)
        if entry is not None:  # unchanged inputs: the output of an earlier call
            self.results[c.name].cached = True
            return await area.unpack(cache.payload_chunks(entry))
        write_dir = await area.new_dir()
        self.watch.running(c.name)
        try:
            output = await self._call(c, lambda client: protocol.process(
                client, area.template, write_dir, list(step.files), step.config))
        finally:
            self._called(c.name)
            await self.watch.ended(c.name)
        checked = _checked(area, output)
        await self.cache.store(c.name, checked)
        return checked

    async def _resolve(self, rule: merge.ResolverRule, conflict: merge.Conflict
                       ) -> tuple[str, bytes]:
        step = self.steps[rule.name]
        files = []
        for v in conflict.versions:
            try:
                content = v.content.decode("utf-8")
            except UnicodeDecodeError:
                raise protocol.ProtocolError(
                    f"cannot send {conflict.path!r} to resolver {rule.name!r}: "
                    "it is not UTF-8 text") from None
            files.append({"path": conflict.path, "content": content,
                          "origin": {"template": self.plan.template.name,
                                     "layer": v.layer}})
        try:
            path, content = await self._call(step.component, lambda client: protocol.resolve(
                client, step.config, files))
        except protocol.ProtocolError as exc:
            res = self.results[rule.name]
            res.status = Status.FAILED
            res.error = f"on {conflict.path!r}: {exc}"
            raise protocol.ProtocolError(f"resolver {rule.name!r} on {conflict.path!r}: {exc}")\
                from None
        return path, content.encode("utf-8")

    async def merge_into(self, outputs: Sequence[str], target: str) -> None:
        """Merge ``outputs`` (folders of the area, in order) into ``target``, conflicts sent
        to the plan's resolvers; :class:`MergeFailed` with every problem."""
        rules = [merge.ResolverRule(r.component.name, tuple(r.files))
                 for r in self.plan.resolvers]
        try:
            merged = self._area.merge(outputs, target, rules, self._resolve, limit=self.limit)
            remaining = self._remaining()
            await (asyncio.wait_for(merged, remaining) if remaining else merged)
        except merge.MergeError as exc:
            raise MergeFailed([f"merge: {e}" for e in exc.errors]) from None
        except TimeoutError:
            raise BuildFailed([self._timed_out(" (during the merge)")]) from None

    async def _plug(self, c: Component, tree: str) -> str:
        area = self._area
        await area.hand_over(tree)
        try:
            output = await self._call(c, lambda client: protocol.plug(
                client, tree, self.steps[c.name].config))
        finally:
            self._called(c.name)
        return _checked(area, output)

    def missing(self) -> list[Component]:
        """The components the build will start (running neither in the session nor shared),
        one per runnable: each step's runner, named as the first step using it."""
        # (an instance named as no step is one running already)
        needed = dict.fromkeys(self.runner.get(c.name, c.name) for c in self.components
                               if not self.cache.hit(c.name))
        return self.session.missing([self.steps[n].component for n in needed if n in self.steps],
                                    self.shared)

    async def _start_stage(self, processors: list[Component]) -> None:
        """Start what the build needs: everything at once, or in a one-shot build (the lifetime
        rule, :class:`_OnDemand`) the processors in the background, waiting for the first."""
        if self.demand is not None:
            for name in self.cache.found:
                self.demand.skip(name)
            calls = [c for c in processors if not self.cache.hit(c.name)]
            await asyncio.wait([self.demand.ahead(self.demand.order(calls))])
            return
        await self._fan_out("start", self.start_one, self.missing(), fail_fast=True)

    async def run(self) -> BuildResult:
        """Run the stages in the (open) session; the caller closes the session."""
        try:
            try:
                await self._stages()
            finally:
                await self.cache.close()
                if self.demand is not None:
                    await self.demand.close()
            self.result.status = Status.OK
        except BuildFailed as exc:
            self.result.errors.extend(exc.errors)
        except AreaFailure as exc:  # the work area (on Docker, its helper) failed
            self.result.errors.append(str(exc))
        except OSError as exc:  # e.g. the output folder cannot be written
            self.result.errors.append(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        except Exception as exc:  # a bug: still report it as a failed build, not a traceback
            self.result.errors.append(f"unexpected error: {describe(exc)}")
        finally:
            if not self.result.ok:
                self.result.errors.extend(await _full_disk(self.session))
            for res in self.result.components:
                if res.status == Status.PENDING:
                    res.status = Status.OK if self.result.status == Status.OK else Status.SKIPPED
        return self.result

    async def _stages(self) -> None:
        area = self._area
        processors = [c for c in self.components if c.kind is Kind.PROCESSOR]
        plugins = [c for c in self.components if c.kind is Kind.PLUGIN]

        # What the area holds before the build (see discard), asked while components start:
        # on Docker the area's helper may be starting too.
        before = asyncio.ensure_future(area.names())
        try:
            with self._stage("start"):
                await self.cache.lookup(processors)
                await self._start_stage(processors)
        except BaseException:
            before.cancel()
            await asyncio.gather(before, return_exceptions=True)
            raise
        self._before = await before
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
            for r in self.plan.resolvers:
                if self.results[r.component.name].status == Status.PENDING:
                    self.results[r.component.name].status = Status.OK
            if self.demand is not None:
                await self.demand.retire(self.runner[r.component.name]
                                         for r in self.plan.resolvers)

        with self._stage("plugins"):
            for i, c in enumerate(plugins):
                if self.demand is not None:  # the next plugin starts while this one works
                    await self.demand.settle()
                    for after in plugins[i:i + 2]:
                        self.demand.prefetch(after.name)
                # One at a time: plugin N sees plugin N-1's changes.
                async def plug(c: Component, tree: str = tree) -> str:
                    return await self._plug(c, tree)

                tree = (await self._fan_out("plugins", plug, [c])).values[0] or tree

        self.tree = tree
        if self.options.out is not None or self.options.archive is not None:
            with self._stage("output"):
                await self._output(area, tree)

    async def _output(self, area: Area, tree: str) -> None:
        # A one-shot build's components are all done: once their processes have ended,
        # nothing can change the result any more, and it may be moved out.
        move = (self.demand is not None and self.shared is None and area.moves_out
                and self.options.out is not None)
        if move:
            assert self.demand is not None
            await self.demand.settle()
            await self.session.drop(list(self.session.instances))
        await _deliver(area, tree, self.options, self.result, move=move)

    # -- after a build in a kept session (the HTTP server's) -------------------------------
    async def stream(self, *, copy_links: bool = False) -> AsyncIterator[bytes]:
        """The result as ``.tar.gz`` chunks, produced while iterating (after a successful
        :meth:`run`); :class:`ArchiveFailed` when the tree cannot be archived. With
        ``copy_links``, in-tree symlinks are stored as what they lead to."""
        assert self.tree is not None, "the build has no result"
        try:
            return await self._area.archive(self.tree, copy_links=copy_links)
        except archive.ArchiveError as exc:
            raise ArchiveFailed(exc) from None

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


class _BuildCache:
    """A build's use of the cache (:mod:`boride.cache`): the keys of its cacheable processor
    steps, the entries found for them (those steps are not called), what it stored, and the
    inputs the keys were made of (checked again at the end: :meth:`recheck`)."""

    def __init__(self, build: _BuildCore) -> None:
        self.build = build
        self.keys: dict[str, str] = {}  # step -> its key
        self.found: dict[str, IO[bytes]] = {}  # step -> its entry, until unpacked
        self.stored: dict[str, str] = {}  # step -> key: outputs put in the cache
        # what the keys were made of: the template's identity, each runnable's
        self.template_id: str | None = None
        self.identities: dict[tuple[object, ...], str] = {}

    def hit(self, step: str) -> bool:
        return step in self.found

    async def close(self) -> None:
        """The build ended: release the entries, take back what must go, keep the bound."""
        for entry in self.found.values():
            entry.close()
        self.found.clear()
        await aio.shielded(self.recheck())
        if self.stored and self.build.options.cache is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.build.options.cache.trim)

    async def store(self, name: str, output: str) -> None:
        """Keep a step's output in the cache (before the merge uses it up); a failure to
        store is only logged: the build goes on without."""
        key, store = self.keys.get(name), self.build.options.cache
        if key is None or store is None:
            return
        try:
            await store.put(key, await self.build._area.archive(output, level=TRANSPORT_LEVEL))
            self.stored[name] = key
        except (archive.ArchiveError, cache.CacheError, OSError) as exc:
            log.warning("the output of %r was not cached: %s", name, describe(exc))

    async def _identities(self, components: list[Component]
                          ) -> tuple[str | None, dict[tuple[object, ...], str]]:
        """The template's identity and each component's (by runnable; those that cannot be
        told are left out, and logged)."""
        runtime = self.build.session.runtime
        skip = not_components(self.build.options, self.build.plan.template)
        template_id, report = await asyncio.gather(
            runtime.template_identity(self.build.plan.template),
            parallel.run(lambda c: runtime.identity(c, skip=skip), components,
                         limit=self.build.limit))
        ids = {}
        for c, o in zip(components, report.outcomes, strict=True):
            if o.ok and o.value:
                ids[c.runnable] = o.value
            elif not o.ok:
                log.warning("%r is not cached: %s", c.name, describe(o.error))
        return template_id, ids

    async def recheck(self) -> None:
        """Take back what this build stored if the template or a component changed while it
        ran (an author saving during a watch build): those outputs may come from either."""
        store = self.build.options.cache
        if not self.stored or store is None:
            return
        components = list({self.build.steps[n].component.runnable: self.build.steps[n].component
                           for n in self.stored}.values())
        try:
            template_id, ids = await self._identities(components)
        except OSError:
            template_id, ids = None, {}
        for name, key in self.stored.items():
            runnable = self.build.steps[name].component.runnable
            if (template_id != self.template_id
                    or ids.get(runnable) != self.identities.get(runnable)):
                log.info("%r's output is not kept: its inputs changed during the build", name)
                await asyncio.to_thread(store.remove, key)

    async def lookup(self, processors: list[Component]) -> None:
        """With a cache, the key of each cacheable processor step (:func:`cache.step_key`) and
        the entries found for them (checked in full): those steps are not called."""
        store = self.build.options.cache
        steps = [self.build.steps[c.name] for c in processors
                 if self.build.steps[c.name].cacheable]
        if store is None or not steps:
            return
        distinct = list({s.component.runnable: s.component for s in steps}.values())
        try:
            template_id, ids = await self._identities(distinct)
        except OSError as exc:
            log.warning("no cache for this build: cannot read the template: %s", describe(exc))
            return
        if template_id is None:
            return
        self.template_id, self.identities = template_id, ids
        for s in steps:
            if (ident := ids.get(s.component.runnable)) is not None:
                self.keys[s.component.name] = cache.step_key(
                    ident, s.component.kind.value, s.config, s.files, template_id)

        def found() -> dict[str, IO[bytes]]:
            return {n: f for n, k in self.keys.items() if (f := store.open(k)) is not None}

        self.found = await asyncio.to_thread(found)


class _OnDemand:
    """The lifetime rule of a one-shot build: an instance lives from shortly before its first
    call to right after its last.

    Processors' instances start in the order of their first call, ``limit`` at a time, while
    the ones before them are being called, and at most ``2 x limit`` of them are alive at once
    (the calls go in that order too, each instance's calls together, so every started one
    finishes: no wait for a place can last forever). A resolver starts at its first conflict and
    stops after the merge; a plugin's instance starts while the plugin before it is called.
    """

    def __init__(self, build: _BuildCore) -> None:
        self.build = build
        self.calls: dict[str, int] = {}  # instance name -> calls (steps) still to make
        for step, name in build.runner.items():
            if build.steps[step].component.kind is not Kind.RESOLVER:
                self.calls[name] = self.calls.get(name, 0) + 1
        self.places = asyncio.Semaphore(2 * build.limit)
        self.started: dict[str, asyncio.Future[None]] = {}  # instance name -> its readiness
        self.placed: set[str] = set()  # instances holding a place
        self.tasks: set[asyncio.Future[Any]] = set()  # starts under way
        self.stops: set[asyncio.Future[Any]] = set()

    def order(self, steps: list[Component]) -> list[Component]:
        """``steps`` grouped by instance, in the order of each instance's first step."""
        first: dict[str, int] = {}
        for i, c in enumerate(steps):
            first.setdefault(self.build.runner[c.name], i)
        return sorted(steps, key=lambda c: first[self.build.runner[c.name]])

    def ahead(self, steps: list[Component]) -> asyncio.Future[None]:
        """Start the instances of ``steps`` (in :meth:`order`) in the background, each when it
        has a place; the readiness of the first."""
        names = list(dict.fromkeys(self.build.runner[c.name] for c in steps))
        for name in names:
            self._future(name)
        task = asyncio.ensure_future(parallel.run(self._placed_start, names,
                                                  limit=self.build.limit))
        self._track(task)
        return self.started[names[0]] if names else _done()

    async def _placed_start(self, name: str) -> None:
        await self.places.acquire()
        self.placed.add(name)
        await self._start(name)

    def _future(self, name: str) -> asyncio.Future[None]:
        fut = self.started.get(name)
        if fut is None:
            fut = self.started[name] = asyncio.get_running_loop().create_future()
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
        return fut

    async def _start(self, name: str) -> None:
        fut = self._future(name)
        try:
            await self.build.start_one(self.build.steps[name].component)
        except BaseException as exc:
            await aio.shielded(self._stop(name))
            if isinstance(exc, Exception):
                fut.set_exception(exc)
            else:
                fut.cancel()
            raise
        if not fut.done():
            fut.set_result(None)

    def prefetch(self, step: str) -> None:
        """Start a step's instance now, in the background, unless started already."""
        name = self.build.runner[step]
        if name not in self.started:
            self._future(name)
            self._track(asyncio.ensure_future(self._start(name)))

    async def ready(self, step: str) -> None:
        """Wait until a step's instance is ready, starting it if nobody has."""
        self.prefetch(step)
        await asyncio.shield(self.started[self.build.runner[step]])

    def skip(self, step: str) -> None:
        """A step that needs no call (its output comes from the cache)."""
        name = self.build.runner[step]
        self.calls[name] = self.calls.get(name, 1) - 1

    def called(self, name: str) -> None:
        """A call to instance ``name`` ended: after its last, stop it (in the background)."""
        left = self.calls[name] = self.calls.get(name, 1) - 1
        if left <= 0:
            self._track(asyncio.ensure_future(self._stop(name)), self.stops)

    async def settle(self) -> None:
        """Wait for the stops under way."""
        await asyncio.gather(*self.stops, return_exceptions=True)

    async def retire(self, names: Iterable[str]) -> None:
        """Stop these instances now (the resolvers, after the merge)."""
        await parallel.run(self._stop, list(names), limit=self.build.limit)

    async def _stop(self, name: str) -> None:
        try:
            await self.build.session.drop([name])
        finally:
            if name in self.placed:
                self.placed.discard(name)
                self.places.release()

    def _track(self, task: asyncio.Future[Any], tasks: set[asyncio.Future[Any]] | None = None
               ) -> None:
        tasks = self.tasks if tasks is None else tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved

    async def close(self) -> None:
        """Cancel the starts still to come; wait for every start and stop under way."""
        starts = list(self.tasks)
        for t in starts:
            t.cancel()
        await aio.shielded(asyncio.gather(*starts, *self.stops, return_exceptions=True))


def _done() -> asyncio.Future[None]:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    fut.set_result(None)
    return fut


class _TemplateWatch:
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


def _checked(area: Area, returned: str) -> str:
    """A folder a component returned, if it is in the area; else its call failed."""
    try:
        return area.check(returned)
    except ValueError as exc:
        raise protocol.ProtocolError(f"returned an unusable outputDir: {exc}") from None


async def _deliver(area: Area, tree: str, options: BuildOptions, result: BuildResult, *,
                   move: bool = False) -> None:
    """Write the result where the options say: an archive, a folder (with ``move``, by
    renaming the result into place where the area can)."""
    try:
        if options.archive is not None:
            dest = options.archive
            try:
                await area.write_archive(tree, dest)
            except OSError as exc:
                raise BuildFailed([f"output: cannot write the archive {dest}: "
                                   f"{exc.strerror or exc}"]) from None
            result.archive = dest
        if options.out is not None:
            result.output = await area.write_folder(tree, options.out, replace=options.replace,
                                                    move=move)
    except (archive.ArchiveError, output.OutputError) as exc:
        raise BuildFailed([f"output: {e}" for e in exc.errors[:output.MAX_SHOWN]] + (
            [f"output: ... and {len(exc.errors) - output.MAX_SHOWN} more"]
            if len(exc.errors) > output.MAX_SHOWN else [])) from None


async def _full_disk(session: Session) -> list[str]:
    """Components rarely say that the disk is full (they may not even manage to print):
    when a build fails on a full work area, say so."""
    ws = session.workspace
    if ws is not None and ws.area is not None and await ws.area.full():
        return [f"the work area's file system is full ({ws.area.root}): "
                "free some space, or give another work folder (TMPDIR)"]
    return []


async def _own_words(instance: Instance) -> str:
    """What a component that failed a call printed about it: its error line and last output.
    A server may log the exception just after answering 500: look again briefly for it."""
    for pause in (0.05, 0.1, 0.2, 0.4, 0):
        lines = await asyncio.to_thread(instance.log_tail)
        if diagnose.error_line(lines) is not None or not pause:
            return diagnose.summary(lines)
        await asyncio.sleep(pause)
    return ""


async def build(pipeline: Pipeline | Plan, runtime: Runtime,
                options: BuildOptions | None = None) -> BuildResult:
    """Run one build in a session of its own, closed (everything stopped and removed) before
    returning, also when cancelled. Never raises for build failures: see ``BuildResult``."""
    options = options or BuildOptions()
    plan = Plan.from_pipeline(pipeline) if isinstance(pipeline, Pipeline) else pipeline
    problems = await cannot_run(runtime, [s.component for s in plan.steps])
    if problems:
        return BuildResult(components=[ComponentResult(s.component.name, s.component.kind.value,
                                                       Status.SKIPPED) for s in plan.steps],
                           errors=problems)
    session = Session(runtime, work_root=options.work_root, keep=options.keep)
    try:
        try:
            await session.open(plan.template)
        except (RuntimeFailure, OSError) as exc:
            return BuildResult(session=session.id, errors=[f"cannot open the work area: {exc}"],
                               components=[ComponentResult(s.component.name,
                                                           s.component.kind.value, Status.SKIPPED)
                                           for s in plan.steps])
        result = await Build(plan, session, options, on_demand=True).run()
    finally:
        kept = await session.close()
    result.work_dir = kept
    result.session = session.id
    result.leftovers = session.leftovers
    return result
