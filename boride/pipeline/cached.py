"""A build's use of the cache (:mod:`boride.cache`): which processor steps need no call, what
the build stored, and taking it back when the inputs changed while the build ran."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from boride import aio, archive, cache, parallel
from boride.area import TRANSPORT_LEVEL, Area
from boride.errors import describe
from boride.pipeline.plan import Step
from boride.runtime.base import Runtime, TemplateSource
from boride.types import Component

log = logging.getLogger(__name__)


class BuildCache:
    """A build's use of the cache (:mod:`boride.cache`): the keys of its cacheable processor
    steps, the entries found for them (those steps are not called), what it stored, and the
    inputs the keys were made of (checked again at the end: :meth:`recheck`)."""

    def __init__(self, store: cache.Cache | None, steps: Mapping[str, Step], *,
                 runtime: Runtime, template: TemplateSource, skip: list[Path], limit: int,
                 area: Area | None) -> None:
        self.cache = store
        self.steps = steps
        self.runtime, self.template, self.skip = runtime, template, skip
        self.limit = limit
        self.area = area
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
        if self.stored and self.cache is not None:
            with contextlib.suppress(OSError):
                await aio.to_thread(self.cache.trim)

    async def store(self, name: str, output: str) -> None:
        """Keep a step's output in the cache (before the merge uses it up); a failure to
        store is only logged: the build goes on without."""
        key, store = self.keys.get(name), self.cache
        if key is None or store is None or self.area is None:
            return
        try:
            await store.put(key, await self.area.archive(output, level=TRANSPORT_LEVEL))
            self.stored[name] = key
        except (archive.ArchiveError, cache.CacheError, OSError) as exc:
            log.warning("the output of %r was not cached: %s", name, describe(exc))

    async def _identities(self, components: list[Component]
                          ) -> tuple[str | None, dict[tuple[object, ...], str]]:
        """The template's identity and each component's (by runnable; those that cannot be
        told are left out, and logged)."""
        runtime, skip = self.runtime, self.skip
        template_id, report = await aio.gather(
            runtime.template_identity(self.template),
            parallel.run(lambda c: runtime.identity(c, skip=skip), components, limit=self.limit))
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
        store = self.cache
        if not self.stored or store is None:
            return
        components = list({self.steps[n].component.runnable: self.steps[n].component
                           for n in self.stored}.values())
        try:
            template_id, ids = await self._identities(components)
        except OSError:
            template_id, ids = None, {}
        for name, key in self.stored.items():
            runnable = self.steps[name].component.runnable
            if (template_id != self.template_id
                    or ids.get(runnable) != self.identities.get(runnable)):
                log.info("%r's output is not kept: its inputs changed during the build", name)
                await aio.to_thread(store.remove, key)

    async def lookup(self, processors: list[Component]) -> None:
        """With a cache, the key of each cacheable processor step (:func:`cache.step_key`) and
        the entries found for them (checked in full): those steps are not called."""
        store = self.cache
        steps = [self.steps[c.name] for c in processors if self.steps[c.name].cacheable]
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
                    ident, s.component.kind.value, s.config, [g.wire() for g in s.globs],
                    template_id)

        def found() -> dict[str, IO[bytes]]:
            return {n: f for n, k in self.keys.items() if (f := store.open(k)) is not None}

        self.found = await aio.to_thread(found)
