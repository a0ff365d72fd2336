"""What the HTTP routes do: templates, sessions and builds, on one runtime and one registry.

* A **template** (by its version id) is a folder of files from the registry plus, once
  warmed, its *shared* components: resolvers (and the template's own Q&A server when the
  registry knows how to run it), started in a server-owned session and used by every session
  of that template.
* A **try** template (``POST /executor/try``) is not in that table: its folder and resolvers
  belong to its one session and go with it, so a try can never shadow or change a registry
  template, even under the same id.
* A **session** is a :class:`boride.pipeline.Session` (a work area and the components running
  for it) kept across requests. Its builds run one at a time, each as a
  :class:`boride.pipeline.Build` over the already-running components; at most
  ``max_builds`` builds (and component start-ups) run at once across all sessions.
* A build's output is streamed as ``cyan-output.tar.gz`` straight from the merged tree; the
  build's folders are removed when the stream ends. A client that goes away mid-build cancels
  it, and the session's components are stopped (the next build starts them again).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from boride import archive, fsutil, merge, parallel, protocol
from boride import registry as reg
from boride.config import Limits, Timeouts
from boride.errors import describe
from boride.fsutil import is_within
from boride.pipeline import Build, BuildOptions, BuildResult, Plan, Session, Step
from boride.runtime.base import Instance, Runtime, RuntimeFailure
from boride.server.metrics import Metrics
from boride.server.models import (
    RESERVED_PREFIX,
    SESSION_RE,
    BuildReq,
    ComponentRes,
    MergeReq,
    ResolverRes,
    TemplateVersionRes,
    TryReq,
)
from boride.server.problems import ProblemError
from boride.server.streaming import ArchiveResponse, finish
from boride.types import Component, Kind, Status

log = logging.getLogger("boride.server")

_PROXY_TIMEOUT = 120.0


@dataclass
class ServerConfig:
    """Everything ``boride serve`` can be told (see ``boride serve --help``)."""

    runtime: str = "local"
    registry: tuple[str, ...] = ()
    token: str | None = None
    dev_root: Path | None = None
    work_root: Path | None = None
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)


@dataclass
class TemplateState:
    id: str
    folder: Path
    session: Session | None = None  # server-owned: the shared components
    resolvers: dict[str, str] = field(default_factory=dict)  # resolver id -> component name
    template_component: str | None = None  # name of the running Q&A server
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def instances(self) -> dict[str, Instance]:
        return self.session.instances if self.session is not None else {}


@dataclass
class SessionState:
    id: str
    template_id: str
    folder: Path
    session: Session
    try_session: bool = False  # a try session owns its resolvers
    merger_id: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: set[asyncio.Future[Any]] = field(default_factory=set)
    resolvers: dict[str, str] = field(default_factory=dict)  # resolver id -> component name
    last_used: float = field(default_factory=time.monotonic)
    closed: bool = False

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def track(self, task: asyncio.Future[Any]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def _problem_for(exc: reg.RegistryError) -> ProblemError:
    if isinstance(exc, reg.Unavailable):
        return ProblemError(502, "Registry unavailable", str(exc))
    return ProblemError(400, "Unknown component", str(exc))


class Service:
    def __init__(self, config: ServerConfig, runtime: Runtime, registry: reg.Registry,
                 metrics: Metrics | None = None) -> None:
        self.config = config
        self.runtime = runtime
        self.registry = registry
        self.metrics = metrics or Metrics()
        self.sessions: dict[str, SessionState] = {}
        self.templates: dict[str, TemplateState] = {}
        self.slots = asyncio.Semaphore(config.limits.max_builds)
        self.executor = ThreadPoolExecutor(max_workers=max(16, 4 * config.limits.max_builds),
                                           thread_name_prefix="boride-stream")
        self._create_lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None
        self.dev_root = config.dev_root.resolve() if config.dev_root else None

    # -- life cycle ---------------------------------------------------------------------------
    def start_background(self) -> None:
        if self.config.timeouts.session_idle and self._reaper is None:
            self._reaper = asyncio.ensure_future(self._reap(self.config.timeouts.session_idle))

    async def _reap(self, ttl: float) -> None:
        while True:
            await asyncio.sleep(max(0.05, min(ttl / 4, 30.0)))
            now = time.monotonic()
            for s in list(self.sessions.values()):
                if now - s.last_used > ttl and not s.lock.locked() and not s.tasks:
                    log.info("session %s idle for %.0fs: removing it", s.id, now - s.last_used)
                    with contextlib.suppress(ProblemError):
                        await self.delete_session(s.id)

    async def aclose(self) -> None:
        """Stop everything: every session, every shared component, the runtime."""
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        ids = list(self.sessions)
        await parallel.run(self._delete_quietly, ids, limit=max(1, len(ids)))
        templates = list(self.templates.values())
        self.templates.clear()
        await parallel.run(self._close_template, templates, limit=max(1, len(templates)))
        with contextlib.suppress(Exception):
            await self.runtime.aclose()
        with contextlib.suppress(Exception):
            await self.registry.aclose()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _delete_quietly(self, session_id: str) -> None:
        with contextlib.suppress(ProblemError):
            await self.delete_session(session_id)

    async def _close_template(self, t: TemplateState) -> None:
        if t.session is not None:
            await t.session.close()
            t.session = None
        t.resolvers.clear()
        t.template_component = None

    # -- helpers --------------------------------------------------------------------------------
    def check_session_id(self, session_id: str) -> str:
        if not SESSION_RE.fullmatch(session_id):
            raise ProblemError(400, "Invalid session id",
                               f"invalid session id {session_id!r}: use 1 to 64 letters, digits "
                               "and inner dashes (a UUID, for example)")
        if session_id.startswith(RESERVED_PREFIX):
            raise ProblemError(400, "Invalid session id",
                               f"session ids starting with {RESERVED_PREFIX!r} are reserved "
                               "for the server's own use")
        return session_id

    def get_session(self, session_id: str) -> SessionState:
        self.check_session_id(session_id)
        s = self.sessions.get(session_id)
        if s is None or s.closed:
            raise ProblemError(404, "Unknown session",
                               f"no session {session_id!r} (start one with POST /executor, "
                               "POST /executor/{sessionId}/warm or POST /executor/try)")
        s.touch()
        return s

    async def _problems(self, components: list[Component]) -> list[str]:
        if not components:
            return []
        return await self.runtime.problems(components)

    async def _known(self, kind: Kind, id_: str) -> reg.Entry | None:
        try:
            return await self.registry.by_id(kind, id_)
        except reg.RegistryError as exc:
            raise _problem_for(exc) from None

    async def _component(self, kind: Kind, pinned: ComponentRes) -> Component:
        """The runnable component of a version a template pins. Its name (the key of its
        instance in a session) is ``user/name:version`` when the registry knows the id, else
        the id itself: the same rule as for resolved names in :meth:`plan`."""
        entry = await self._known(kind, pinned.id)
        if entry is not None:
            return Component(entry.label, kind, entry.command, entry.image or pinned.image,
                             entry.cwd)
        return Component(pinned.id, kind, image=pinned.image)

    async def _components(self, kind: Kind, pinned: Iterable[ComponentRes]
                          ) -> list[Component]:
        seen: dict[str, Component] = {}
        for p in pinned:
            c = await self._component(kind, p)
            seen.setdefault(c.name, c)
        return list(seen.values())

    async def _start(self, session: Session, components: list[Component]) -> list[str]:
        """Start the components not running yet in ``session``, in parallel, holding a slot;
        every error (failed components are stopped again)."""
        missing = [c for c in components if c.name not in session.instances]
        if not missing:
            return []
        problems = await self._problems(missing)
        if problems:
            raise ProblemError(400, "Cannot run components",
                               "Some components cannot run on this server's runtime", problems)
        async with self.slots:
            report = await parallel.run(
                lambda c: session.start_one(c, self.config.timeouts.ready), missing,
                limit=self.config.limits.parallelism or max(len(missing), 1))
        errors = []
        failed = []
        for o in report.outcomes:
            if o.ok:
                continue
            self.metrics.component_failures.labels(o.item.kind.value).inc()
            errors.append(f"{o.item.kind.value} {o.item.name!r}: {describe(o.error)}")
            instance = session.instances.pop(o.item.name, None)
            if instance is not None:
                failed.append(instance)
        if failed:
            await parallel.run(self.runtime.stop, failed, limit=len(failed))
        return errors

    async def _drop_dead(self, session: Session) -> list[str]:
        """Forget (and release) the components of ``session`` that have exited; their names."""
        items = list(session.instances.items())
        if not items:
            return []
        report = await parallel.run(lambda item: _exited(item[1]), items, limit=len(items))
        dead = [item for item, gone in zip(items, report.values, strict=True) if gone]
        for name, _ in dead:
            session.instances.pop(name, None)
        if dead:
            await parallel.run(self.runtime.stop, [i for _, i in dead], limit=len(dead))
        return [name for name, _ in dead]

    # -- templates ------------------------------------------------------------------------------
    async def _template_folder(self, template_id: str) -> Path:
        known = self.templates.get(template_id)
        if known is not None:
            return known.folder
        try:
            entry = await self.registry.by_id(Kind.TEMPLATE, template_id)
        except reg.RegistryError as exc:
            raise _problem_for(exc) from None
        if entry is None or entry.path is None:
            raise ProblemError(400, "Unknown template",
                               f"template {template_id!r} is not in the registry: boride needs "
                               "its files as a folder (a 'templates' entry with a 'path' in the "
                               "registry file), or a try session (POST /executor/try)")
        return entry.path

    async def template(self, template: TemplateVersionRes) -> TemplateState:
        """The registry template ``template`` names (never a try session's folder)."""
        tid = template.principal.id
        folder = await self._template_folder(tid)
        return self.templates.setdefault(tid, TemplateState(tid, folder))

    async def _session_folder(self, session_id: str, template: TemplateVersionRes) -> Path:
        """The folder session ``session_id`` builds for ``template``: a try session's own
        folder (for the id it was tried with), else the registry template's."""
        tid = template.principal.id
        existing = self.sessions.get(session_id)
        if existing is not None and not existing.closed:
            if existing.template_id != tid:
                raise _other_template(session_id, existing.template_id, tid)
            if existing.try_session:
                return existing.folder
        return (await self.template(template)).folder

    def _shared(self, state: SessionState) -> TemplateState | None:
        """The registry template whose shared components a session uses (none for a try
        session: it runs its own, whatever id it was tried with)."""
        return None if state.try_session else self.templates.get(state.template_id)

    def _template_session_id(self, tid: str) -> str:
        return f"{RESERVED_PREFIX}t{hashlib.sha256(tid.encode()).hexdigest()[:24]}"

    async def _template_component(self, template: TemplateVersionRes) -> Component | None:
        try:
            entry = await self.registry.by_id(Kind.TEMPLATE, template.principal.id)
        except reg.RegistryError as exc:
            raise _problem_for(exc) from None
        props = template.principal.properties
        image = None
        if props is not None and props.templateDockerReference:
            image = (f"{props.templateDockerReference}:{props.templateDockerTag}"
                     if props.templateDockerTag else props.templateDockerReference)
        if entry is not None and (entry.command or entry.image):
            return entry.component(f"template:{entry.label}")
        if image is not None and self.runtime.name == "docker":
            return Component(f"template:{template.principal.id}", Kind.TEMPLATE, image=image)
        return None

    async def _resolver_components(self, resolvers: list[ResolverRes]
                                   ) -> list[tuple[ResolverRes, Component]]:
        out: list[tuple[ResolverRes, Component]] = []
        seen: set[str] = set()
        for r in resolvers:
            if r.id in seen:
                continue
            seen.add(r.id)
            out.append((r, await self._component(Kind.RESOLVER, r)))
        return out

    async def warm_template(self, template: TemplateVersionRes) -> None:
        """POST /template/warm: the template's files, its resolvers and Q&A server running."""
        t = await self.template(template)
        resolvers = await self._resolver_components(template.resolvers)
        qna = await self._template_component(template)
        components = [c for _, c in resolvers] + ([qna] if qna is not None else [])
        async with t.lock:
            if t.session is None:
                session = Session(self.runtime, self._template_session_id(t.id),
                                  work_root=self.config.work_root)
                try:
                    await session.open(t.folder)
                except (RuntimeFailure, OSError) as exc:
                    await session.close()
                    raise ProblemError(503, "Failed to warm template", str(exc)) from None
                t.session = session
            await self._drop_dead(t.session)  # warming again restarts what died
            errors = await self._start(t.session, components)
            for r, c in resolvers:
                if c.name in t.session.instances:
                    t.resolvers[r.id] = c.name
            if qna is not None and qna.name in t.session.instances:
                t.template_component = qna.name
        if errors:
            raise ProblemError(503, "Failed to warm template",
                               "Some of the template's components did not start", errors)

    async def drop_template(self, template_id: str) -> None:
        t = self.templates.pop(template_id, None)
        if t is None:
            raise ProblemError(404, "Unknown template", f"no template {template_id!r} here")
        async with t.lock:
            await self._close_template(t)

    # -- sessions -------------------------------------------------------------------------------
    async def _create_session(self, session_id: str, tid: str, folder: Path, *,
                              try_session: bool = False, exists_ok: bool = True
                              ) -> tuple[SessionState, bool]:
        async with self._create_lock:
            existing = self.sessions.get(session_id)
            if existing is not None:
                if not exists_ok:
                    raise ProblemError(409, "Session collision",
                                       f"session {session_id!r} exists already")
                if existing.template_id != tid:
                    raise _other_template(session_id, existing.template_id, tid)
                existing.touch()
                return existing, False
            if len(self.sessions) >= self.config.limits.max_sessions:
                raise ProblemError(429, "Too many sessions",
                                   f"this server holds at most {self.config.limits.max_sessions} "
                                   "sessions; delete finished ones (DELETE /executor/{id})")
            session = Session(self.runtime, session_id, work_root=self.config.work_root)
            try:
                await session.open(folder)
            except (RuntimeFailure, OSError) as exc:
                await session.close()
                raise ProblemError(503, "Failed to prepare the session", str(exc)) from None
            state = SessionState(session_id, tid, folder, session, try_session=try_session)
            self.sessions[session_id] = state
            self.metrics.sessions.set(len(self.sessions))
            return state, True

    async def warm_session(self, session_id: str, template: TemplateVersionRes) -> None:
        """POST /executor/{id}/warm: the session's area, and every image it needs present."""
        self.check_session_id(session_id)
        folder = await self._session_folder(session_id, template)
        _, created = await self._create_session(session_id, template.principal.id, folder)
        components = (await self._components(Kind.PROCESSOR, template.processors)
                      + await self._components(Kind.PLUGIN, template.plugins))
        problems = await self._problems(components)
        if problems:
            if created:
                await self._delete_quietly(session_id)
            raise ProblemError(400, "Failed to warm executor",
                               "Some of the template's components cannot run here", problems)

    async def start_session(self, session_id: str, template: TemplateVersionRes,
                            merger_id: str) -> None:
        """POST /executor: the session's processors and plugins started and ready."""
        self.check_session_id(session_id)
        folder = await self._session_folder(session_id, template)
        state, _ = await self._create_session(session_id, template.principal.id, folder)
        state.merger_id = merger_id or state.merger_id
        components = (await self._components(Kind.PROCESSOR, template.processors)
                      + await self._components(Kind.PLUGIN, template.plugins))
        async with state.lock:
            if state.closed:
                raise ProblemError(404, "Unknown session", f"session {session_id!r} was deleted")
            await self._drop_dead(state.session)  # starting again restarts what died
            errors = await self._start(state.session, components)
        state.touch()
        if errors:
            raise ProblemError(503, "Failed to start executor",
                               "Some components did not start or never became ready", errors)

    async def try_session(self, req: TryReq) -> None:
        """POST /executor/try: a session building a local folder (under --dev-root)."""
        self.check_session_id(req.session_id)
        if req.source != "path":
            raise ProblemError(400, "Unsupported source",
                               "boride builds try sessions from a folder: use source 'path' "
                               "(source 'image' is not supported yet)")
        if not req.path:
            raise ProblemError(400, "Missing path", "path is required when source is 'path'")
        if self.dev_root is None:
            raise ProblemError(403, "Try from a path is disabled",
                               "this server accepts no local paths: start it with "
                               "--dev-root DIR to allow folders below DIR")
        candidate = Path(req.path)
        if not candidate.is_absolute():
            candidate = self.dev_root / candidate
        try:
            folder = Path(os.path.realpath(candidate))
        except (OSError, ValueError) as exc:
            raise ProblemError(400, "Invalid path", f"{req.path!r}: {exc}") from None
        if not is_within(str(folder), str(self.dev_root)):
            raise ProblemError(403, "Path outside the development root",
                               f"{req.path!r} is not below --dev-root {self.dev_root}")
        if not folder.is_dir():
            raise ProblemError(400, "Not a folder", f"{req.path!r} is not a folder")
        # The try template lives in its session only (never in self.templates).
        tid = req.local_template_id
        resolvers = await self._resolver_components(req.template.resolvers)
        others = (await self._components(Kind.PROCESSOR, req.template.processors)
                  + await self._components(Kind.PLUGIN, req.template.plugins))
        problems = await self._problems(others)
        if problems:
            raise ProblemError(400, "Failed to set up the try session",
                               "Some of the template's components cannot run here", problems)
        state, _ = await self._create_session(req.session_id, tid, folder, try_session=True,
                                              exists_ok=False)
        state.merger_id = req.merger_id
        try:
            async with state.lock:
                errors = await self._start(state.session, [c for _, c in resolvers])
                for r, c in resolvers:
                    if c.name in state.session.instances:
                        state.resolvers[r.id] = c.name
        except BaseException:
            await self._delete_quietly(req.session_id)
            raise
        if errors:
            await self._delete_quietly(req.session_id)
            raise ProblemError(503, "Failed to set up the try session",
                               "The template's resolvers did not start", errors)

    async def delete_session(self, session_id: str) -> None:
        """DELETE /executor/{id}: cancel what runs, stop every component, remove the area."""
        self.check_session_id(session_id)
        state = self.sessions.pop(session_id, None)
        self.metrics.sessions.set(len(self.sessions))
        if state is None or state.closed:
            raise ProblemError(404, "Unknown session", f"no session {session_id!r}")
        state.closed = True
        tasks = list(state.tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            await finish(task)
        async with state.lock:
            await state.session.close()

    # -- builds ---------------------------------------------------------------------------------
    async def plan(self, state: SessionState, req: BuildReq) -> tuple[Plan, dict[str, Instance]]:
        """The build a request asks for, every name resolved; the shared instances to use."""
        template = req.template
        pinned_processors = [p.id for p in template.processors]
        pinned_plugins = [p.id for p in template.plugins]

        async def resolve(item: tuple[Kind, str]) -> reg.Entry:
            kind, name = item
            pinned = pinned_processors if kind is Kind.PROCESSOR else pinned_plugins
            return await reg.resolve(self.registry, kind, name, pinned)

        items = ([(Kind.PROCESSOR, p.name) for p in req.cyan.processors]
                 + [(Kind.PLUGIN, p.name) for p in req.cyan.plugins])
        report = await parallel.run(resolve, items, limit=8)
        unavailable = [o for o in report.failures if isinstance(o.error, reg.Unavailable)]
        if unavailable:
            raise ProblemError(502, "Registry unavailable", str(unavailable[0].error),
                               [f"{o.item[1]}: {o.error}" for o in unavailable])
        if report.failures:
            raise ProblemError(400, "Unknown component",
                               "Some processors or plugins cannot be resolved to a version "
                               "pinned in the template",
                               [str(o.error) if isinstance(o.error, reg.RegistryError)
                                else f"{o.item[1]}: {describe(o.error)}"
                                for o in report.failures])
        entries = [e for e in report.values if e is not None]
        # Each resolved version as the template pins it (and the registry runs it): the same
        # component, named the same way, as POST /executor starts.
        pinned_res = {p.id: p for p in [*template.processors, *template.plugins]}
        bases: dict[tuple[Kind, str], Component] = {}
        for e in entries:
            if (e.kind, e.id) not in bases:
                base = await self._component(e.kind, pinned_res[e.id])
                if base.image is None and base.command is None:
                    base = dataclasses.replace(base, image=e.image)
                bases[(e.kind, e.id)] = base
        used: dict[str, int] = {}

        def component(entry: reg.Entry) -> Component:
            base = bases[(entry.kind, entry.id)]
            used[base.name] = n = used.get(base.name, 0) + 1
            # The same component twice in one build: a second instance of it.
            return base if n == 1 else dataclasses.replace(base, name=f"{base.name}#{n}")

        processors = tuple(Step(component(e), p.config, tuple(g.wire() for g in p.files))
                           for e, p in zip(entries[:len(req.cyan.processors)],
                                           req.cyan.processors, strict=True))
        plugins = tuple(Step(component(e), p.config)
                        for e, p in zip(entries[len(req.cyan.processors):], req.cyan.plugins,
                                        strict=True))
        resolver_steps = tuple(Step(c, r.config, tuple(r.files))
                               for r, c in await self._resolver_components(template.resolvers))
        shared: dict[str, Instance] = {}
        t = self._shared(state)
        if t is not None:
            shared = {s.component.name: t.instances[s.component.name]
                      for s in resolver_steps if s.component.name in t.instances}
        plan = Plan(state.folder, processors, resolver_steps, plugins,
                    self.config.limits.parallelism)
        missing = [s.component for s in plan.steps
                   if s.component.name not in state.session.instances
                   and s.component.name not in shared]
        problems = await self._problems(missing)
        if problems:
            raise ProblemError(400, "Cannot run components",
                               "Some components cannot run on this server's runtime", problems)
        return plan, shared

    async def build(self, state: SessionState, plan: Plan, shared: dict[str, Instance]
                    ) -> ArchiveResponse:
        """Run a build in the session; the response streams its output, then cleans up."""
        await state.lock.acquire()
        handed_over = False
        try:
            if state.closed:
                raise ProblemError(404, "Unknown session", f"session {state.id!r} was deleted")
            area = state.session.workspace.host_area if state.session.workspace else None
            assert area is not None
            before = set(os.listdir(area))
            try:
                result, tree = await self._run_stages(state, plan, shared)
            except asyncio.CancelledError:
                try:
                    await finish(asyncio.ensure_future(self._after_cancel(state, area, before)))
                finally:
                    self.metrics.builds_cancelled.inc()  # once everything is cleaned up
                raise
            if not result.ok or tree is None:
                await self._after_failure(state, result, area, before)
                raise ProblemError(400, "Build failed", _summary(result), result.errors)
            try:
                chunks = archive.iter_archive(tree, within=area)
            except archive.ArchiveError as exc:
                await self._remove_new(area, before)
                raise ProblemError(400, "Cannot archive the output",
                                   "The build's output cannot be archived", exc.errors) from None

            async def on_close(complete: bool) -> None:
                try:
                    await self._remove_new(area, before)
                finally:
                    state.touch()
                    state.lock.release()

            response = ArchiveResponse(chunks, on_close, self.executor, track=state.track,
                                       on_bytes=self.metrics.archive_bytes.inc)
            handed_over = True
            return response
        finally:
            if not handed_over:
                state.touch()
                state.lock.release()

    async def _run_stages(self, state: SessionState, plan: Plan, shared: dict[str, Instance]
                          ) -> tuple[BuildResult, Path | None]:
        m = self.metrics
        m.builds_waiting.inc()
        try:
            await self.slots.acquire()
        finally:
            m.builds_waiting.dec()
        try:
            m.builds_started.inc()
            m.builds_in_flight.inc()
            options = BuildOptions(limits=self.config.limits, timeouts=self.config.timeouts,
                                   work_root=self.config.work_root)
            b = Build(plan, state.session, options, shared=shared)
            result = await b.run()
        finally:
            m.builds_in_flight.dec()
            self.slots.release()
        m.record_build(result)
        if result.ok:
            m.builds_finished.inc()
        else:
            m.builds_failed.inc()
        return result, b.tree

    async def _after_cancel(self, state: SessionState, area: Path, before: set[str]) -> None:
        """A cancelled build: stop the session's components (they may be busy with calls
        nobody waits for any more) and remove the build's folders."""
        instances = list(state.session.instances.values())
        state.session.instances.clear()
        state.resolvers.clear()
        if instances:
            await parallel.run(self.runtime.stop, instances, limit=len(instances))
        await self._remove_new(area, before)

    async def _after_failure(self, state: SessionState, result: BuildResult, area: Path,
                             before: set[str]) -> None:
        """A failed build: stop the components that failed or were cut off (dead, or in an
        unknown state; the next build starts them again) and remove the build's folders."""
        bad = [c.name for c in result.components if c.status in (Status.FAILED, Status.CANCELLED)]
        instances = [i for n in bad if (i := state.session.instances.pop(n, None)) is not None]
        for rid, name in list(state.resolvers.items()):
            if name in bad:
                del state.resolvers[rid]
        if instances:
            await parallel.run(self.runtime.stop, instances, limit=len(instances))
        t = self._shared(state)
        if t is not None and t.session is not None and any(n in t.instances for n in bad):
            # A shared resolver that failed: if it died, forget it (the next build or warm
            # starts another); if it only failed on this input, it keeps serving the others.
            async with t.lock:
                gone = set(await self._drop_dead(t.session))
            t.resolvers = {rid: n for rid, n in t.resolvers.items() if n not in gone}
        await self._remove_new(area, before)

    async def _remove_new(self, area: Path, before: set[str]) -> None:
        def remove() -> None:
            try:
                names = os.listdir(area)
            except FileNotFoundError:
                return
            for name in names:
                if name not in before:
                    path = area / name
                    if path.is_dir() and not path.is_symlink():
                        fsutil.remove_tree(path, within=area)
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            path.unlink()

        await asyncio.to_thread(remove)

    # -- proxies and internal routes ------------------------------------------------------------
    def template_instance(self, template_id: str) -> Instance:
        t = self.templates.get(template_id)
        if t is None:
            raise ProblemError(404, "Unknown template",
                               f"template {template_id!r} is not warm here "
                               "(POST /template/warm first)")
        if t.template_component is None or t.template_component not in t.instances:
            raise ProblemError(404, "No template component",
                               f"template {template_id!r} has no running Q&A server (the "
                               "registry gives no command or image for it)")
        return t.instances[t.template_component]

    def resolver_instance(self, resolver_id: str) -> Instance:
        for t in self.templates.values():
            name = t.resolvers.get(resolver_id)
            if name is not None and name in t.instances:
                return t.instances[name]
        for s in self.sessions.values():
            name = s.resolvers.get(resolver_id)
            if name is not None and name in s.session.instances:
                return s.session.instances[name]
        raise ProblemError(404, "Unknown resolver",
                           f"no resolver {resolver_id!r} is running here (POST /template/warm "
                           "starts a template's resolvers)")

    async def forward(self, instance: Instance, path: str, content: bytes,
                      content_type: str | None) -> httpx.Response:
        headers = {"content-type": content_type or "application/json"}
        try:
            return await instance.client.post(path, content=content, headers=headers,
                                              timeout=_PROXY_TIMEOUT)
        except httpx.HTTPError as exc:
            raise ProblemError(502, "Upstream failed",
                               f"Failed to forward the request to {instance.component.kind.value} "
                               f"{instance.component.name!r}",
                               [f"{type(exc).__name__}: {exc}".rstrip(": ")]) from None

    async def merge_dirs(self, state: SessionState, req: MergeReq) -> None:
        """POST /merge/{id} (internal app): merge folders of the session's area (paths as
        components see them), resolving conflicts with the template's running resolvers."""
        ws = state.session.workspace
        assert ws is not None
        errors = []
        sources: list[Path] = []
        for d in req.from_dirs:
            try:
                p = ws.host(d)
            except (OSError, ValueError) as exc:
                errors.append(f"from_dirs: {exc}")
                continue
            if not p.is_dir():
                errors.append(f"from_dirs: {d!r} is not a folder")
            sources.append(p)
        try:
            target = ws.host(req.to_dir)
        except (OSError, ValueError) as exc:
            errors.append(f"to_dir: {exc}")
            target = None
        if errors or target is None:
            raise ProblemError(400, "Invalid folders",
                               "Merge folders must lie in the session's work area", errors)
        running: dict[str, Instance] = dict(state.session.instances)
        t = self._shared(state)
        if t is not None:
            running.update(t.instances)
        rules: list[merge.ResolverRule] = []
        configs: dict[str, Any] = {}
        resolvers = req.template.resolvers if req.template is not None else []
        for r, c in await self._resolver_components(resolvers):
            if c.name not in running:
                raise ProblemError(400, "Resolver not running",
                                   f"resolver {c.name!r} is not running (warm the template)")
            rules.append(merge.ResolverRule(c.name, tuple(r.files)))
            configs[c.name] = r.config
        template_name = state.folder.name

        async def resolve(rule: merge.ResolverRule, conflict: merge.Conflict
                          ) -> tuple[str, bytes]:
            files = [{"path": conflict.path,
                      "content": v.content.decode("utf-8", errors="replace"),
                      "origin": {"template": template_name, "layer": v.layer}}
                     for v in conflict.versions]
            path, content = await protocol.resolve(running[rule.name].client,
                                                   configs[rule.name], files)
            return path, content.encode("utf-8")

        async with state.lock:
            try:
                await merge.merge(sources, target, rules, resolve)
            except merge.MergeError as exc:
                raise ProblemError(400, "Merge failed", "The folders cannot be merged",
                                   exc.errors) from None
            except ValueError as exc:
                raise ProblemError(400, "Merge failed", str(exc)) from None

    def zip_folder(self, target_dir: str) -> Path:
        """POST /zip (internal app): a folder inside some session's work area (never anything
        else), named as components see it or by its host path."""
        for s in self.sessions.values():
            ws = s.session.workspace
            if ws is None:
                continue
            try:
                path = ws.host(target_dir)
            except (OSError, ValueError):
                try:
                    real = os.path.realpath(target_dir)
                except (OSError, ValueError):
                    continue
                if not is_within(real, str(ws.host_area.resolve())):
                    continue
                path = Path(real)
            if path.is_dir():
                return path
        raise ProblemError(400, "Invalid target_dir",
                           f"{target_dir!r} is not a folder in a session's work area")


async def _exited(instance: Instance) -> bool:
    """Whether a component has stopped (asks without waiting more than a moment)."""
    task = asyncio.ensure_future(instance.wait_exit())
    done, _ = await asyncio.wait({task}, timeout=0.05)
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return bool(done)


def _other_template(session_id: str, existing: str, tid: str) -> ProblemError:
    return ProblemError(409, "Session belongs to another template",
                        f"session {session_id!r} was started for template {existing!r}, "
                        f"not {tid!r}")


def _summary(result: BuildResult) -> str:
    failed = [c for c in result.components if c.status == Status.FAILED]
    if failed:
        names = ", ".join(f"{c.kind} {c.name!r}" for c in failed[:5])
        return f"The build failed ({names})"
    return "The build failed"


