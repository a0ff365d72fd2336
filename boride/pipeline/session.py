"""A session: a work area and the components running for it, on one runtime, started,
restarted and dropped only through :class:`Session`; and :func:`fan_out`, the engine run per
component that every start goes through."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from boride import aio, fsutil, health, parallel, workdirs
from boride.config import Timeouts
from boride.errors import RuntimeFailure, describe
from boride.pipeline.plan import cannot_run
from boride.pipeline.results import AreaUnavailable, CannotRun, ComponentsFailed
from boride.runtime.base import (
    Instance,
    Kept,
    Runtime,
    TemplateRefused,
    TemplateSource,
    Workspace,
)
from boride.types import Component, Status

log = logging.getLogger(__name__)
T = TypeVar("T")
_EXIT_GLANCE = 0.05  # how long to wait to learn whether a component has stopped
CLEANUP_RETRIES = (0.25, 0.5, 1.0, 2.0, 4.0)  # pauses before trying a failed clean-up again


async def fan_out(fn: Callable[[Component], Awaitable[T]], items: list[Component], *,
                  limit: int, fail_fast: bool = False,
                  seen: Callable[[parallel.Outcome[Component, T], str | None], None] | None = None
                  ) -> parallel.Report[Component, T]:
    """Run ``fn`` per component through the engine; raise :class:`ComponentsFailed` with every
    failed component's error. ``seen`` is told each outcome with its message (None when it
    went well)."""
    report = await parallel.run(fn, items, limit=limit, fail_fast=fail_fast)
    errors: list[str] = []
    failed: list[Component] = []
    for o in report.outcomes:
        message = None
        if o.status is not Status.OK:
            message = describe(o.error)
            if o.status is Status.FAILED:
                errors.append(f"{o.item.kind.value} {o.item.name!r}: {message}")
                failed.append(o.item)
        if seen is not None:
            seen(o, message)
    if errors:
        raise ComponentsFailed(errors, failed)
    return report


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
        self._owned: workdirs.OwnedFolder | None = None  # (the lock on root)
        self.leftovers: list[str] = []  # what the last close could not remove, and how
        self.workspace: Workspace | None = None
        self.template: TemplateSource | None = None  # what the area was opened with
        self.instances: dict[str, Instance] = {}
        self._expected: list[Component] = []  # to start, known before the area was open

    @classmethod
    async def opened(cls, runtime: Runtime, session_id: str, template: TemplateSource, *,
                     work_root: Path | None = None, area: bool = True,
                     note: Mapping[str, str] | None = None) -> Session:
        """A session with its work area open (without ``area``: only its template, for
        components sharing it; ``note``: kept with it, see :meth:`Runtime.adopt`);
        :class:`AreaUnavailable` (nothing left behind) when the area cannot be made."""
        session = cls(runtime, session_id, work_root=work_root)
        try:
            await session.open(template, area=area, note=note)
        except TemplateRefused:
            await session.close()
            raise
        except (RuntimeFailure, OSError) as exc:
            await session.close()
            if session.leftovers:
                log.warning("session %s: left behind: %s", session_id,
                            "; ".join(session.leftovers))
            raise AreaUnavailable(describe(exc)) from None
        return session

    @classmethod
    def adopted(cls, runtime: Runtime, kept: Kept, template: TemplateSource) -> Session:
        """A session a previous server left on ``runtime`` (:meth:`Runtime.adopt`), of
        ``template``, with what of its components still runs."""
        session = cls(runtime, kept.session_id)
        session.workspace = kept.workspace
        session.template = template
        session.instances = dict(kept.instances)
        return session

    async def open(self, template: TemplateSource, *, area: bool = True,
                   note: Mapping[str, str] | None = None) -> Workspace:
        if self.runtime.host_areas:
            parent = self.work_root or Path(tempfile.gettempdir())
            parent.mkdir(parents=True, exist_ok=True)
            safe = "".join(ch for ch in self.id if ch.isalnum())[:12]
            # locked as this process's: the next boride reclaims it if this one is killed
            self._owned = workdirs.OwnedFolder(parent, f"{workdirs.PREFIX}{safe}-")
            self.root = self._owned.path
        self.template = template
        self.workspace = await self.runtime.open_workspace(self.id, template, self.root,
                                                           area=area, note=note)
        if self._expected:
            await self.runtime.expect(self.workspace, self._expected)
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

    async def refuse_unrunnable(self, components: Iterable[Component],
                                shared: Session | None = None) -> list[Component]:
        """The components this session would start for ``components`` (:meth:`missing`);
        :class:`CannotRun` naming every one of them that cannot run on its runtime, before
        anything starts."""
        missing = self.missing(components, shared)
        problems = await cannot_run(self.runtime, missing)
        if problems:
            raise CannotRun(problems)
        if self.workspace is None:
            self._expected = missing  # told to the runtime once the area is open
        else:
            await self.runtime.expect(self.workspace, missing)
        return missing

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

    async def start_one(self, component: Component, ready_timeout: float = Timeouts.ready,
                        started: Callable[[], None] | None = None) -> None:
        """Start a component and wait until it is ready (it is stopped by ``close``);
        ``started`` is told between the start and the readiness wait."""
        assert self.workspace is not None, "open() first"
        self.instances[component.name] = await self.runtime.start(self.workspace, component)
        if started is not None:
            started()
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
                await aio.to_thread(fsutil.remove_tree, self.root)
            except OSError as exc:
                problems.append(f"the work area {self.root} could not be removed "
                                f"({exc.strerror or exc}): remove it with rm -rf {self.root}")
        if self._owned is not None:
            self._owned.release(keep=self.keep)
            self._owned = None
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

