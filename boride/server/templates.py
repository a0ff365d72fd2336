"""Registry templates (by version id): a folder of files plus, once warmed, its *shared*
components, resolvers and the template's own Q&A server (the registry's command, or the
template's image on Docker), started in a server-owned session and used by every session of
that template. They stop on ``DELETE /template/{id}``, ``DELETE /cleanup``, or when the
template is idle (no request used them and no session of it is open) for the session
lifetime.

Try templates are not here: they belong to their one session (:mod:`boride.server.tries`)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from boride import parallel
from boride.errors import describe
from boride.pipeline import Session
from boride.runtime.base import Instance, Kept, RuntimeFailure, TemplateSource, source_from_note
from boride.server.components import Catalog
from boride.server.context import Context, Table, noted_names
from boride.server.errors import NoQuestionServer, TemplateNotWarm
from boride.server.models import RESERVED_PREFIX, TemplateVersionRes

log = logging.getLogger("boride.server")


@dataclass
class TemplateState:
    id: str
    folder: TemplateSource  # where its files come from: a folder, or its blob image
    session: Session | None = None  # server-owned: the shared components
    resolvers: dict[str, str] = field(default_factory=dict)  # resolver id -> component name
    question_server: str | None = None  # name of its Q&A server's component
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)

    def touch(self) -> None:
        self.last_used = time.monotonic()

    @property
    def instances(self) -> dict[str, Instance]:
        return self.session.instances if self.session is not None else {}


def _session_id(template_id: str) -> str:
    return f"{RESERVED_PREFIX}t{hashlib.sha256(template_id.encode()).hexdigest()[:24]}"


class Templates(Table[TemplateState]):
    """The registry templates this server has seen, by id."""

    def __init__(self, ctx: Context, catalog: Catalog) -> None:
        super().__init__()
        self.ctx = ctx
        self.catalog = catalog

    async def of(self, template: TemplateVersionRes) -> TemplateState:
        """The registry template ``template`` names (never a try session's folder)."""
        tid = template.principal.id
        known = self._table.get(tid)
        if known is not None:
            return known
        folder = await self.catalog.template_files(template)
        return self._table.setdefault(tid, TemplateState(tid, folder))

    async def warm(self, template: TemplateVersionRes) -> None:
        """The template's files, its resolvers and Q&A server running (again, when dead)."""
        t = await self.of(template)
        t.touch()
        qna = await self.catalog.question_server(template)  # refused before anything starts
        resolvers = await self.catalog.resolvers(template.resolvers)
        components = [c for _, c in resolvers] + [qna]
        async with t.lock:
            if t.session is None:
                # its components read the template at most: no work area
                note = self.ctx.note("template", t.id, t.folder, question_server=qna.name,
                                     resolvers=json.dumps({r.id: c.name for r, c in resolvers}))
                t.session = await self.ctx.open_session(_session_id(t.id), t.folder, area=False,
                                                        note=note)
            await t.session.drop_dead()
            try:
                await self.ctx.start(t.session, components)
            finally:  # what started serves, whatever else failed
                session = t.session
                t.resolvers.update({r.id: n for r, c in resolvers
                                    if (n := session.name_of(c)) is not None})
                t.question_server = session.name_of(qna) or t.question_server
                t.touch()

    def adopt(self, kept: Kept) -> bool:
        """Take over a template's shared components a previous server left
        (:meth:`Runtime.adopt`); False when ``kept`` is no template's."""
        note = kept.note
        folder = source_from_note(note.get("source"))
        tid = note.get("template", "")
        if (note.get("kind") != "template" or folder is None or tid in self._table
                or kept.session_id != _session_id(tid)):
            return False
        resolvers = noted_names(note, "resolvers")
        session = Session.adopted(self.ctx.runtime, kept, folder)
        qna = note.get("question_server") or None
        self._table[tid] = TemplateState(tid, folder, session, resolvers, qna)
        log.info("template %s: its shared components taken over (%d running)", tid,
                 len(kept.instances))
        return True

    async def forget_dead(self, template_id: str) -> None:
        """After a shared component failed in a build: if it died, drop it (the next build
        or warm starts another); if it only failed on that input, it keeps serving."""
        t = self._table.get(template_id)
        if t is not None and t.session is not None:
            async with t.lock:
                await t.session.drop_dead()

    async def drop(self, template_id: str) -> None:
        t = self._table.pop(template_id, None)
        if t is None:
            raise TemplateNotWarm(template_id, f"no template {template_id!r} here")
        async with t.lock:
            await _close(t)
            await self._drop_files(t)

    async def _drop_files(self, t: TemplateState) -> None:
        """The copy of the template's files made for its sessions (a blob image's), once the
        last of them has closed."""
        try:
            await self.ctx.runtime.drop_template(t.folder)
        except RuntimeFailure as exc:
            log.warning("template %s: %s", t.id, exc)

    async def close_all(self) -> list[str]:
        """Stop every template's shared components; return (and log) what failed."""
        templates = list(self._table.values())
        self._table.clear()
        async def close(t: TemplateState) -> None:
            await _close(t)
            await self._drop_files(t)

        report = await parallel.run(close, templates, limit=max(1, len(templates)))
        errors = [f"template {o.item.id}: {describe(o.error)}" for o in report.failures]
        for line in errors:
            log.error("closing %s", line)
        return errors

    async def reap_idle(self, ttl: float, in_use: Callable[[str], bool]) -> None:
        """Stop the templates idle for ``ttl`` seconds (``in_use``: whether a session of the
        template is open; the server's idle reaper calls it)."""
        now = time.monotonic()
        for t in list(self._table.values()):
            if in_use(t.id):
                t.touch()
            idle = now - t.last_used > ttl and not t.lock.locked()
            if idle and self._table.get(t.id) is t:
                log.info("template %s idle for %.0fs: stopping its components", t.id,
                         now - t.last_used)
                await self.drop(t.id)

    def warm_ids(self) -> list[str]:
        """The templates whose shared components run here now."""
        return [tid for tid, t in self._table.items() if t.instances]

    def resolver_ids(self) -> list[str]:
        return [rid for t in self._table.values() for rid, name in t.resolvers.items()
                if name in t.instances]

    def shared(self, template_id: str) -> Session | None:
        t = self._table.get(template_id)
        if t is None:
            return None
        t.touch()
        return t.session

    def question_server(self, template_id: str) -> Instance:
        t = self._table.get(template_id)
        if t is None:
            raise TemplateNotWarm(template_id, f"template {template_id!r} is not warm here "
                                               "(POST /template/warm first)")
        if t.question_server is None or t.question_server not in t.instances:
            raise NoQuestionServer(template_id, (
                f"template {template_id!r} has no running Q&A server (POST /template/warm "
                "starts it again)"))
        t.touch()
        return t.instances[t.question_server]

    def resolver(self, resolver_id: str) -> Instance | None:
        for t in self._table.values():
            name = t.resolvers.get(resolver_id)
            if name is not None and name in t.instances:
                t.touch()
                return t.instances[name]
        return None


async def _close(t: TemplateState) -> None:
    if t.session is not None:
        await t.session.close()
        if t.session.leftovers:
            log.warning("template %s: left behind: %s", t.id, "; ".join(t.session.leftovers))
        t.session = None
    t.resolvers.clear()
    t.question_server = None
