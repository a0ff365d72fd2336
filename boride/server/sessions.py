"""Sessions: each a :class:`boride.pipeline.Session` (a work area and the components running
for it) kept across requests, for one template. Builds of one session run one after another
(its ``lock``); an idle session is removed after ``--session-ttl``."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from boride import aio, parallel
from boride.errors import describe
from boride.pipeline import Session
from boride.pipeline.timeline import Timeline
from boride.runtime.base import Instance, Kept, TemplateSource, source_from_note
from boride.server.components import Catalog
from boride.server.context import Context, Table, noted_names
from boride.server.errors import (
    InvalidSessionId,
    OtherTemplate,
    SessionExists,
    SessionNotFound,
    TemplateCannotRun,
    TooManySessions,
)
from boride.server.models import RESERVED_PREFIX, SESSION_RE, TemplateVersionRes
from boride.server.templates import Templates

log = logging.getLogger("boride.server")
T = TypeVar("T")


def reap_period(ttl: float) -> float:
    """How often the idle reaper looks, for a time to live of ``ttl`` seconds."""
    return max(0.05, min(ttl / 4, 30.0))


@dataclass
class SessionState:
    id: str
    template_id: str
    folder: TemplateSource
    session: Session
    try_session: bool = False  # a try session owns its resolvers
    merger_id: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: the session's work (a build, the stream of its output): closed when it is deleted
    tasks: aio.TaskGroup = field(default_factory=lambda: aio.TaskGroup("session"))
    resolvers: dict[str, str] = field(default_factory=dict)  # resolver id -> component name
    last_used: float = field(default_factory=time.monotonic)
    closed: bool = False
    #: the timeline of its last build asked to be traced (``?trace=true``): the only one kept
    trace: Timeline | None = None

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def start_soon(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """``work`` in the background, owned by the session (cancelled when it is deleted);
        :class:`SessionNotFound` once it is."""
        if self.closed:
            work.close()
            raise SessionNotFound(self.id, f"session {self.id!r} was deleted")
        return self.tasks.start_soon(work, name=f"session {self.id}")


def check_id(session_id: str) -> str:
    if not SESSION_RE.fullmatch(session_id):
        raise InvalidSessionId(session_id, f"invalid session id {session_id!r}: use 1 to 64 "
                                           "letters, digits and inner dashes (a UUID, for "
                                           "example)")
    if session_id.startswith(RESERVED_PREFIX):
        raise InvalidSessionId(session_id, f"session ids starting with {RESERVED_PREFIX!r} are "
                                           "reserved for the server's own use")
    return session_id


class Sessions(Table[SessionState]):
    """The open sessions, by id."""

    def __init__(self, ctx: Context, catalog: Catalog, templates: Templates) -> None:
        super().__init__()
        self.ctx = ctx
        self.catalog = catalog
        self.templates = templates
        self._create_lock = asyncio.Lock()
        self.total = 0  # sessions made since the server started

    def open_ids(self) -> list[str]:
        return [sid for sid, s in self._table.items() if not s.closed]

    def resolver_ids(self) -> list[str]:
        """Resolvers running for a (try) session of their own."""
        return [rid for s in self._table.values() for rid, name in s.resolvers.items()
                if name in s.session.instances]

    def find(self, session_id: str) -> SessionState:
        check_id(session_id)
        s = self._table.get(session_id)
        if s is None or s.closed:
            raise SessionNotFound(session_id, (
                f"no session {session_id!r} (start one with POST /executor, "
                "POST /executor/{sessionId}/warm or POST /executor/try)"))
        s.touch()
        return s

    def shared(self, state: SessionState) -> Session | None:
        """The session of the registry template whose shared components ``state`` uses (none
        for a try session: it runs its own, whatever id it was tried with)."""
        return None if state.try_session else self.templates.shared(state.template_id)

    def resolver(self, resolver_id: str) -> Instance | None:
        for s in self._table.values():
            name = s.resolvers.get(resolver_id)
            if name is not None and name in s.session.instances:
                return s.session.instances[name]
        return None

    async def _folder(self, session_id: str, template: TemplateVersionRes) -> TemplateSource:
        """What session ``session_id`` builds for ``template``: a try session's own folder (for
        the id it was tried with), else the registry template's."""
        tid = template.principal.id
        existing = self._table.get(session_id)
        if existing is not None and not existing.closed:
            if existing.template_id != tid:
                raise OtherTemplate(session_id, existing.template_id, tid)
            if existing.try_session:
                return existing.folder
        return (await self.templates.of(template)).folder

    async def create(self, session_id: str, tid: str, folder: TemplateSource, *,
                     try_session: bool = False, exists_ok: bool = True,
                     resolvers: Mapping[str, str] | None = None
                     ) -> tuple[SessionState, bool]:
        """The session ``session_id`` of template ``tid``, made if new (``resolvers``: a try
        session's, by resolver id, kept with it for a server taking it over); whether it
        was made."""
        async with self._create_lock:
            existing = self._table.get(session_id)
            if existing is not None:
                if not exists_ok:
                    raise SessionExists(session_id, f"session {session_id!r} exists already")
                if existing.template_id != tid:
                    raise OtherTemplate(session_id, existing.template_id, tid)
                existing.touch()
                return existing, False
            if len(self._table) >= self.ctx.config.limits.max_sessions:
                raise TooManySessions(self.ctx.config.limits.max_sessions)
            note = self.ctx.note("session", tid, folder, try_session="1" if try_session else "",
                                 resolvers=json.dumps(dict(resolvers or {})))
            session = await self.ctx.open_session(session_id, folder, note=note)
            state = SessionState(session_id, tid, folder, session, try_session=try_session)
            self._table[session_id] = state
            self.total += 1
            self.ctx.metrics.sessions.set(len(self._table))
            return state, True

    def adopt(self, kept: Kept) -> bool:
        """Take over a session a previous server left (:meth:`Runtime.adopt`); False when
        ``kept`` is no session of a server's (a template's shared components)."""
        note = kept.note
        folder = source_from_note(note.get("source"))
        if note.get("kind") != "session" or folder is None or kept.session_id in self._table:
            return False
        resolvers = noted_names(note, "resolvers")
        self._table[kept.session_id] = SessionState(
            kept.session_id, note.get("template", ""), folder,
            Session.adopted(self.ctx.runtime, kept, folder),
            try_session=note.get("try_session") == "1", resolvers=resolvers)
        self.total += 1
        self.ctx.metrics.sessions.set(len(self._table))
        log.info("session %s: taken over (%d of its components running)", kept.session_id,
                 len(kept.instances))
        return True

    async def warm(self, session_id: str, template: TemplateVersionRes) -> None:
        """The session's area, and every image (or command) it needs present."""
        check_id(session_id)
        folder = await self._folder(session_id, template)
        _, created = await self.create(session_id, template.principal.id, folder)
        problems = await self.ctx.cannot_run(await self.catalog.runnables(template))
        if problems:
            if created:
                await self.delete_if_open(session_id)
            raise TemplateCannotRun(problems)

    async def start(self, session_id: str, template: TemplateVersionRes, merger_id: str) -> None:
        """The session's processors and plugins started and ready (again, when dead)."""
        check_id(session_id)
        folder = await self._folder(session_id, template)
        state, _ = await self.create(session_id, template.principal.id, folder)
        state.merger_id = merger_id or state.merger_id
        components = await self.catalog.runnables(template)
        async with state.lock:
            if state.closed:
                raise SessionNotFound(session_id, f"session {session_id!r} was deleted")
            await state.session.drop_dead()
            try:
                await self.ctx.start(state.session, components)
            finally:
                state.touch()

    async def delete(self, session_id: str) -> None:
        """Cancel what runs in the session, stop every component, remove the area."""
        check_id(session_id)
        state = self._table.pop(session_id, None)
        self.ctx.metrics.sessions.set(len(self._table))
        if state is None or state.closed:
            raise SessionNotFound(session_id, f"no session {session_id!r}")
        state.closed = True
        # its work cancelled, waited for (their own clean-up included; their outcome is their
        # requests' business)
        await state.tasks.aclose()
        async with state.lock:
            await state.session.close()
        if state.session.leftovers:
            log.warning("session %s: left behind: %s", session_id,
                        "; ".join(state.session.leftovers))

    async def delete_if_open(self, session_id: str) -> None:
        if session_id in self._table:  # no await between this test and delete's pop
            await self.delete(session_id)

    async def reap_idle(self, ttl: float) -> None:
        """Remove the sessions idle for ``ttl`` seconds (the server's idle reaper calls it)."""
        now = time.monotonic()
        for s in list(self._table.values()):
            idle = now - s.last_used > ttl and not s.lock.locked() and len(s.tasks) == 0
            if idle and self._table.get(s.id) is s:  # not deleted (or made anew) meanwhile
                log.info("session %s idle for %.0fs: removing it", s.id, now - s.last_used)
                await self.delete(s.id)

    async def leave_all(self) -> None:
        """End every session's work (builds, streams), leaving the sessions themselves on
        the runtime for the next server (the server is stopping, :meth:`Service.adopt`)."""
        for s in list(self._table.values()):
            await s.tasks.aclose()

    async def close_all(self) -> list[str]:
        """Delete every session; return (and log) what could not be removed."""
        ids = list(self._table)
        report = await parallel.run(self.delete_if_open, ids, limit=max(1, len(ids)))
        errors = [f"session {o.item}: {describe(o.error)}" for o in report.failures]
        for line in errors:
            log.error("closing %s", line)
        return errors
