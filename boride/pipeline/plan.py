"""What a build does, whoever asked for it: its steps, and which instance each step calls."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

from boride import protocol
from boride.model import Pipeline
from boride.pipeline.results import BuildOptions
from boride.runtime.base import Runtime, TemplateSource
from boride.types import Component


@dataclass(frozen=True)
class Step:
    """One component's part in a build: what to call and with which config: a processor's
    ``globs`` (the template files it reads), a resolver's ``files`` (the paths it decides,
    as glob patterns)."""

    component: Component
    config: Any = None
    _: KW_ONLY
    globs: tuple[protocol.Glob, ...] = ()
    files: tuple[str, ...] = ()
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
            processors=tuple(Step(comps[p.name], p.config,
                                  globs=tuple(g.protocol() for g in p.files), cacheable=p.cache)
                             for p in pipeline.processors),
            resolvers=tuple(Step(comps[r.name], r.config, files=tuple(r.files))
                            for r in pipeline.resolvers),
            plugins=tuple(Step(comps[p.name], p.config) for p in pipeline.plugins),
            parallelism=pipeline.parallelism)

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.processors + self.resolvers + self.plugins


def runners(steps: Iterable[Step], running: Callable[[Component], str | None]
            ) -> dict[str, str]:
    """Which instance each step calls, step name to instance name: one instance per runnable
    (:attr:`Component.runnable`), the one ``running`` names (running already), else the one
    the first step of that runnable starts, under that step's name."""
    first: dict[tuple[object, ...], str] = {}
    return {s.component.name: running(s.component)
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
