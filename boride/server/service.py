"""What the HTTP routes use: one object over the service's parts, each in its own module.

* :mod:`~boride.server.components` — which components a template pins and a build names;
* :mod:`~boride.server.templates` — registry templates and their shared components;
* :mod:`~boride.server.sessions` — sessions kept across requests;
* :mod:`~boride.server.tries` — try sessions of a local folder;
* :mod:`~boride.server.builds` — builds, streamed as ``cyan-output.tar.gz``;
* :mod:`~boride.server.proxy` — requests forwarded to components.

Starting, calling, merging and stopping components is the pipeline's
(:mod:`boride.pipeline`); failures are :mod:`boride.server.errors` (and the pipeline's and
the registry's), made problem details at the HTTP edge only (:mod:`boride.server.problems`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from boride import aio
from boride import registry as reg
from boride.errors import describe
from boride.pipeline import Session
from boride.runtime.base import Cleaned, Instance, Runtime, RuntimeFailure
from boride.server.builds import Builds
from boride.server.components import Catalog
from boride.server.context import Context, ServerConfig
from boride.server.drain import Drain
from boride.server.errors import ResolverNotFound, SessionNotFound
from boride.server.metrics import Metrics
from boride.server.models import TemplateVersionRes, TryReq, WorkerRes
from boride.server.sessions import Sessions, reap_period
from boride.server.templates import Templates
from boride.server.tries import Tries

__all__ = ["Cleanup", "ServerConfig", "Service"]

log = logging.getLogger("boride.server")


@dataclass(frozen=True)
class Cleanup:
    """What ``DELETE /cleanup`` removed, and what it could not (``errors``: empty when all)."""

    sessions: tuple[str, ...]
    removed: Cleaned
    errors: list[str]


class Service:
    def __init__(self, config: ServerConfig, runtime: Runtime, registry: reg.Registry,
                 metrics: Metrics | None = None) -> None:
        self.ctx = Context(config, runtime, registry, metrics or Metrics())
        self.config = config
        self.metrics = self.ctx.metrics
        self.catalog = Catalog(registry, runtime.name)
        self.templates = Templates(self.ctx, self.catalog)
        self.sessions = Sessions(self.ctx, self.catalog, self.templates)
        self.tries = Tries(self.ctx, self.catalog, self.sessions)
        self.builds = Builds(self.ctx, self.catalog, self.sessions, self.templates)
        #: the server's own background work (the idle reaper), for the server's life
        self.tasks = aio.TaskGroup("server")
        self._reaping = False
        self.drain = Drain()
        #: on close, leave the sessions and templates for a successor instead of removing
        #: them (``boride serve`` on SIGTERM, or ``--keep-sessions``)
        self.keep_on_close = False

    # -- life cycle ---------------------------------------------------------------------------
    def start_background(self) -> None:
        ttl = self.config.timeouts.session_idle
        if ttl and not self._reaping:
            self._reaping = True
            self.tasks.start_soon(self._reap(ttl), name="idle reaper")

    async def _reap(self, ttl: float) -> None:
        """The one idle reaper, forever: the sessions idle for ``ttl`` seconds are removed,
        then the templates idle as long are stopped (a template is in use while a session of
        it is open). A failed round is logged; the next one comes all the same."""
        while True:
            await asyncio.sleep(reap_period(ttl))
            try:
                await self.sessions.reap_idle(ttl)
            except Exception as exc:  # reported; the templates' turn and the next round come
                log.error("removing idle sessions failed: %s", describe(exc))
            try:
                await self.templates.reap_idle(ttl, self._template_in_use)
            except Exception as exc:  # reported; the next round comes all the same
                log.error("stopping idle templates failed: %s", describe(exc))

    async def adopt(self) -> None:
        """Take over the sessions and templates a previous server of the same
        :attr:`ServerConfig.state_name` left on the runtime (a restart); what is neither is
        removed."""
        name = self.config.state_name
        if not name:
            return
        kept = await self.ctx.runtime.adopt(name)
        for k in kept:
            if self.templates.adopt(k) or self.sessions.adopt(k):
                continue
            log.warning("session %s left by a previous %s: not one this server can use: "
                        "removing it", k.session_id, name)
            await Session.adopted(self.ctx.runtime, k, Path()).close()
        if kept:
            log.info("took over %d session(s) a previous %s left", len(kept), name)

    async def aclose(self) -> None:
        """Stop everything: the reaper, every session, every shared component, the runtime;
        with :attr:`keep_on_close`, the sessions' work ends but they and the templates' shared
        components stay on the runtime for a successor (:meth:`adopt`)."""
        await self.tasks.aclose()
        if self.keep_on_close:
            await self.sessions.leave_all()
            log.info("left %d session(s) and %d template(s) for the next server",
                     len(self.sessions.open_ids()), len(self.templates.warm_ids()))
        else:
            await self.sessions.close_all()
            await self.templates.close_all()
        for name, close in (("runtime", self.ctx.runtime.aclose),
                            ("registry", self.ctx.registry.aclose)):
            try:
                await close()
            except Exception as exc:  # reported; the rest still closes
                log.error("closing the %s failed: %s", name, describe(exc))
        self.ctx.executor.shutdown(wait=False, cancel_futures=True)

    async def cleanup(self) -> Cleanup:
        """``DELETE /cleanup``: every session and every template's shared components removed,
        then whatever the runtime made for boride (on Docker: every container and volume
        labelled by boride). The server lives on; the next request starts afresh."""
        sessions = tuple(self.sessions)
        errors: list[str] = []
        cleaned = Cleaned()
        try:
            # First, so that the answer names every container and volume removed, also the
            # sessions' own (closing a session afterwards finds them gone, which is fine).
            cleaned = await self.ctx.runtime.clean_all()
        except RuntimeFailure as exc:  # (one line for each thing left)
            errors += str(exc).splitlines()
        errors += await self.sessions.close_all()
        errors += await self.templates.close_all()
        for line in errors:
            log.warning("DELETE /cleanup: left behind: %s", line)
        return Cleanup(sessions, cleaned, errors)

    def _template_in_use(self, template_id: str) -> bool:
        return any(s.template_id == template_id and not s.try_session
                   for s in self.sessions.values())

    # -- what the routes do -------------------------------------------------------------------
    async def warm_template(self, template: TemplateVersionRes) -> None:
        await self.templates.warm(template)

    async def drop_template(self, template_id: str) -> None:
        await self.templates.drop(template_id)

    async def warm_session(self, session_id: str, template: TemplateVersionRes) -> None:
        await self.sessions.warm(session_id, template)

    async def start_session(self, session_id: str, template: TemplateVersionRes,
                            merger_id: str) -> None:
        await self.sessions.start(session_id, template, merger_id)

    async def try_session(self, req: TryReq) -> None:
        await self.tries.start(req)

    async def delete_session(self, session_id: str) -> bool:
        """Remove the session; False when there was none (unknown, expired or deleted
        already): nothing to remove, which the Go coordinator answers with OK too."""
        try:
            await self.sessions.delete(session_id)
        except SessionNotFound:
            log.info("DELETE of session %s: no such session, nothing to remove", session_id)
            return False
        return True

    async def worker_status(self) -> WorkerRes:
        """``GET /worker``: the node, the sessions, the warm templates, running resolvers."""
        try:
            node = await self.ctx.runtime.node_id()
        except RuntimeFailure as exc:
            log.warning("GET /worker: %s", exc)
            node = ""
        sessions = self.sessions.open_ids()
        return WorkerRes(
            node=node, sessions=sessions, sessions_active=len(sessions),
            sessions_total=self.sessions.total, templates=self.templates.warm_ids(),
            resolvers=sorted({*self.templates.resolver_ids(), *self.sessions.resolver_ids()}))

    def resolver(self, resolver_id: str) -> Instance:
        """A running resolver by version id: a template's shared one, else a try session's."""
        found = self.templates.resolver(resolver_id) or self.sessions.resolver(resolver_id)
        if found is None:
            raise ResolverNotFound(resolver_id, (
                f"no resolver {resolver_id!r} is running here (POST /template/warm starts a "
                "template's resolvers)"))
        return found
