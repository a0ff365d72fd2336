"""Builds (``POST /executor/{sessionId}``): one at a time per session, each a
:class:`boride.pipeline.Build` over the session's running components (and its template's
shared ones), at most ``max_builds`` doing boride's own work at once across sessions (a build
awaiting its components' answers holds no slot: :mod:`boride.pipeline.admission`). The output
streams as ``cyan-output.tar.gz`` straight from the merged tree; the build's folders are removed
when the stream ends; in-tree symlinks are stored as the content they lead to (the CyanPrint CLI's
unpacker cannot make links), links leading out are refused. A cancelled build (client gone,
session deleted) stops the session's components (the next build starts them again)."""

from __future__ import annotations

import asyncio

from boride import aio, telemetry
from boride.pipeline import Build, BuildError, BuildResult, Plan, Session
from boride.server.components import Catalog
from boride.server.context import Context
from boride.server.errors import SessionNotFound
from boride.server.models import BuildReq
from boride.server.sessions import Sessions, SessionState
from boride.server.streaming import ArchiveResponse, Hooks
from boride.server.templates import Templates


class Builds:
    def __init__(self, ctx: Context, catalog: Catalog, sessions: Sessions,
                 templates: Templates) -> None:
        self.ctx = ctx
        self.catalog = catalog
        self.sessions = sessions
        self.templates = templates

    async def plan(self, state: SessionState, req: BuildReq) -> tuple[Plan, Session | None]:
        """The build a request asks for, every name resolved, and the session whose running
        components it shares; :class:`CannotRun` when what it must start cannot run here."""
        processors, plugins = await self.catalog.steps(req)
        resolvers = await self.catalog.resolver_steps(req.template.resolvers)
        plan = Plan(state.folder, processors, resolvers, plugins,
                    self.ctx.config.limits.parallelism)
        shared = self.sessions.shared(state)
        await state.session.refuse_unrunnable([s.component for s in plan.steps], shared)
        return plan, shared

    async def run(self, state: SessionState, plan: Plan, shared: Session | None, *,
                  trace: bool = False) -> ArchiveResponse:
        """Run a build in the session; the response streams its output, then cleans up and
        lets the session's next build run. ``trace``: its timeline is kept in the session
        (its last traced build's: ``GET /executor/{id}/trace``), failed or not."""
        await state.lock.acquire()
        handed_over = False
        try:
            if state.closed:
                raise SessionNotFound(state.id, f"session {state.id!r} was deleted")
            build = Build(plan, state.session, self.ctx.build_options(trace=trace),
                          shared=shared, admission=self.ctx.admission())
            await self._run(state, build, trace)
            try:
                # the CyanPrint CLI's create unpacker turns link entries into empty files
                chunks = await build.stream(copy_links=True)
            except BaseException:
                await build.discard()
                raise

            async def on_close(complete: bool) -> None:
                try:
                    await build.discard()
                finally:
                    state.touch()
                    state.lock.release()

            response = ArchiveResponse(chunks, Hooks(
                on_close, owner=state.start_soon, on_bytes=self.ctx.metrics.archive_bytes.inc))
            handed_over = True
            return response
        finally:
            if not handed_over:
                state.touch()
                state.lock.release()

    async def _run(self, state: SessionState, build: Build, trace: bool) -> None:
        """Run ``build``; a failed one releases what failed and raises :class:`BuildError`."""
        try:
            with telemetry.recording():  # (what it does meanwhile: under its spans)
                result = await self._in_slot(build)
        except asyncio.CancelledError:
            try:
                await aio.shielded(build.release(cancelled=True))
            finally:
                self.ctx.metrics.builds_cancelled.inc()  # once everything is cleaned up
            raise
        if trace:
            state.trace = build.timeline
        if not result.ok or build.tree is None:
            if await build.release():  # a shared component failed: dropped if it died
                await self.templates.forget_dead(state.template_id)
            raise BuildError(result)

    async def _in_slot(self, build: Build) -> BuildResult:
        """Run ``build`` holding a build slot while it does boride's own work (see
        :class:`Admission`: not while it awaits its components' answers)."""
        m = self.ctx.metrics
        async with build.admission:
            try:
                m.builds_started.inc()
                m.builds_in_flight.inc()
                result = await build.run()
            finally:
                m.builds_in_flight.dec()
        m.record_build(result)
        telemetry.export_build(build.timeline, result)
        (m.builds_finished if result.ok else m.builds_failed).inc()
        return result
