"""Which runnable components a template pins and a build names, from the registry.

A component's name (the key of its instance in a session) is ``user/name:version`` when the
registry knows the id, else the id itself; a build's names resolve to the same components,
named the same way, as ``POST /executor`` starts. A session runs one instance per runnable
component (see :meth:`boride.pipeline.Session.missing`): the steps of a build naming the same
pinned id (``name#2``, ...) call that one instance."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from boride import parallel
from boride import registry as reg
from boride.errors import describe
from boride.pipeline import Step
from boride.runtime.base import BlobImage, TemplateSource
from boride.server.errors import (
    QuestionServerUnknown,
    RegistryUnavailable,
    TemplateUnknown,
    UnknownNames,
)
from boride.server.models import BuildReq, ComponentRes, ResolverRes, TemplateVersionRes
from boride.types import Component, Kind

_LOOKUPS = 8  # names looked up at once


class Catalog:
    def __init__(self, registry: reg.Registry, runtime_name: str) -> None:
        self.registry = registry
        self.runtime_name = runtime_name

    async def template_files(self, template: TemplateVersionRes) -> TemplateSource:
        """Where a registry template's files come from: the registry file's folder for it
        (a ``templates`` entry with a ``path``), else the template's blob image."""
        tid = template.principal.id
        entry = await self.registry.by_id(Kind.TEMPLATE, tid)
        if entry is not None and entry.path is not None:
            return entry.path
        props = template.principal.properties
        blob = props.blob_image if props is not None else None
        if blob is not None:
            return BlobImage(blob, tid)
        raise TemplateUnknown(tid, (
            f"template {tid!r} has no files boride can use: no blob image "
            "(principal.properties.blobDockerReference) and no folder (a 'templates' entry "
            "with a 'path' in the registry file); or use a try session (POST /executor/try)"))

    async def component(self, kind: Kind, pinned: ComponentRes) -> Component:
        """The runnable component of a version a template pins."""
        entry = await self.registry.by_id(kind, pinned.id)
        if entry is not None:
            return Component(entry.label, kind, entry.command, entry.image or pinned.image,
                             entry.cwd)
        return Component(pinned.id, kind, image=pinned.image)

    async def components(self, kind: Kind, pinned: Iterable[ComponentRes]) -> list[Component]:
        seen: dict[str, Component] = {}
        for p in pinned:
            c = await self.component(kind, p)
            seen.setdefault(c.name, c)
        return list(seen.values())

    async def runnables(self, template: TemplateVersionRes) -> list[Component]:
        """The template's processors and plugins."""
        return (await self.components(Kind.PROCESSOR, template.processors)
                + await self.components(Kind.PLUGIN, template.plugins))

    async def resolvers(self, resolvers: Iterable[ResolverRes]
                        ) -> list[tuple[ResolverRes, Component]]:
        out: dict[str, tuple[ResolverRes, Component]] = {}
        for r in resolvers:
            if r.id not in out:
                out[r.id] = (r, await self.component(Kind.RESOLVER, r))
        return list(out.values())

    async def resolver_steps(self, resolvers: Iterable[ResolverRes]) -> tuple[Step, ...]:
        return tuple(Step(c, r.config, files=tuple(r.files))
                     for r, c in await self.resolvers(resolvers))

    async def question_server(self, template: TemplateVersionRes) -> Component:
        """The template's Q&A server: the registry entry's command (or image), else, on Docker,
        the template's image (``principal.properties.templateDockerReference/Tag``);
        :class:`QuestionServerUnknown` when neither says how to run it here."""
        tid = template.principal.id
        entry = await self.registry.by_id(Kind.TEMPLATE, tid)
        if entry is not None and (entry.command or entry.image):
            return entry.component(f"template:{entry.label}")
        props = template.principal.properties
        image = None
        if props is not None and props.templateDockerReference:
            image = (f"{props.templateDockerReference}:{props.templateDockerTag}"
                     if props.templateDockerTag else props.templateDockerReference)
        if image is not None and self.runtime_name == "docker":
            return Component(f"template:{tid}", Kind.TEMPLATE, image=image)
        if image is not None:
            raise QuestionServerUnknown(tid, (
                f"template {tid!r}: its Q&A server is the image {image!r}, which runs on the "
                f"Docker runtime only (boride serve --runtime docker); on the "
                f"{self.runtime_name} runtime give its registry entry a 'command'"))
        raise QuestionServerUnknown(tid, (
            f"template {tid!r} has no Q&A server: the template names no image for it "
            "(principal.properties.templateDockerReference) and the registry gives no "
            "'command' for it (a 'templates' entry of the registry file)"))

    async def steps(self, req: BuildReq) -> tuple[tuple[Step, ...], tuple[Step, ...]]:
        """The processors and plugins a build names, each resolved to a version the template
        pins: :class:`UnknownNames` or :class:`RegistryUnavailable` with every failure."""
        entries = await self._resolve(req)
        bases: dict[tuple[Kind, str], Component] = {}
        pins = {p.id: p for p in [*req.template.processors, *req.template.plugins]}
        for e in entries:
            if (e.kind, e.id) not in bases:
                base = await self.component(e.kind, pins[e.id])
                if base.image is None and base.command is None:
                    base = dataclasses.replace(base, image=e.image)
                bases[(e.kind, e.id)] = base
        used: dict[str, int] = {}

        def component(entry: reg.Entry) -> Component:
            base = bases[(entry.kind, entry.id)]
            used[base.name] = n = used.get(base.name, 0) + 1
            # The same component twice in one build: a step of its own (its own result), calling
            # the same instance (the pipeline runs one per runnable).
            return base if n == 1 else dataclasses.replace(base, name=f"{base.name}#{n}")

        count = len(req.cyan.processors)
        processors = tuple(Step(component(e), p.config,
                                globs=tuple(g.protocol() for g in p.files))
                           for e, p in zip(entries[:count], req.cyan.processors, strict=True))
        plugins = tuple(Step(component(e), p.config)
                        for e, p in zip(entries[count:], req.cyan.plugins, strict=True))
        return processors, plugins

    async def _resolve(self, req: BuildReq) -> list[reg.Entry]:
        pinned = {Kind.PROCESSOR: [p.id for p in req.template.processors],
                  Kind.PLUGIN: [p.id for p in req.template.plugins]}

        async def resolve(item: tuple[Kind, str]) -> reg.Entry:
            kind, name = item
            return await reg.resolve(self.registry, kind, name, pinned[kind])

        items = ([(Kind.PROCESSOR, p.name) for p in req.cyan.processors]
                 + [(Kind.PLUGIN, p.name) for p in req.cyan.plugins])
        report = await parallel.run(resolve, items, limit=_LOOKUPS)
        down = [o for o in report.failures if isinstance(o.error, reg.Unavailable)]
        if down:
            raise RegistryUnavailable([f"{o.item[1]}: {o.error}" for o in down],
                                      str(down[0].error))
        if report.failures:
            raise UnknownNames([str(o.error) if isinstance(o.error, reg.RegistryError)
                                else f"{o.item[1]}: {describe(o.error)}"
                                for o in report.failures])
        return [e for e in report.values if e is not None]
