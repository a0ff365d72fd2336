"""Helpers of the orchestration tests on the fake runtime (no tests here): plans of steps
whose components are fake behaviours (:mod:`boride.runtime.fake`), and a build of one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from boride.config import Limits, Timeouts
from boride.pipeline import BuildOptions, BuildResult, Plan, ProtocolGlob, Step, build
from boride.runtime.fake import FakeRuntime
from boride.types import Component, Kind


def processor(name: str, key: str = "ok", globs: tuple[ProtocolGlob, ...] = (),
              cacheable: bool = True, **config: Any) -> Step:
    """A processor step running the fake behaviour ``key`` with ``config``."""
    return Step(Component(name, Kind.PROCESSOR, image=key), config, globs=globs,
                cacheable=cacheable)


def resolver(name: str, globs: tuple[str, ...] = ("**",), key: str = "join",
             **config: Any) -> Step:
    return Step(Component(name, Kind.RESOLVER, image=key), config, files=globs)


def plugin(name: str, key: str = "plug", **config: Any) -> Step:
    return Step(Component(name, Kind.PLUGIN, image=key), config)


def plan(template: Path, processors: list[Step], resolvers: list[Step] = (),  # type: ignore[assignment]
         plugins: list[Step] = (), parallelism: int | None = None) -> Plan:  # type: ignore[assignment]
    return Plan(template, tuple(processors), tuple(resolvers), tuple(plugins), parallelism)


async def run(the_plan: Plan, runtime: FakeRuntime, tmp_path: Path, *, out: bool = True,
              parallelism: int = 4, ready: float = 5.0, timeout: float | None = None,
              **options: Any) -> BuildResult:
    """One build (:func:`boride.pipeline.build`) of ``the_plan`` on ``runtime``, its result in
    ``tmp_path / "out"`` (with ``out``)."""
    return await build(the_plan, runtime, BuildOptions(
        limits=Limits(parallelism=parallelism), timeouts=Timeouts(ready=ready, build=timeout),
        out=tmp_path / "out" if out else None, replace=True, work_root=tmp_path / "work",
        **options))


def by_name(result: BuildResult) -> dict[str, Any]:
    """Step name -> (status, error)."""
    return {c.name: (str(c.status), c.error) for c in result.components}
