"""One build, on any runtime: start → processors in parallel → merge → plugins in order → output.

The pipeline never knows where components run; it only uses :class:`~boride.runtime.base.Runtime`.
Every fan-out goes through :mod:`boride.parallel`. Whatever happens (success, failure, timeout,
Ctrl-C, SIGTERM), every component is stopped and the work area removed before :func:`build`
returns or raises.

Instances and their lifetime:

* **One instance per distinct component.** Steps whose components are the same runnable
  (:attr:`~boride.types.Component.runnable`: the kind, and the image, or the command and its
  working folder) call one instance, whatever their names; their calls go to it concurrently,
  at most the build's parallelism at once, each with its own config and its own ``writeDir``,
  and each step keeps its own result.
* **An instance lives as long as its owner will call it again.** In a one-shot build
  (:func:`build`, ``boride run``) from shortly before its first call to right after its last:
  processors' instances start in the order of their first call while the ones before them are
  called (start-up overlaps work), at most 2 x parallelism of them alive at once; the resolvers
  (when a conflict is possible) and the first plugin boot ahead of need while the processors
  work, in the start slots the processors leave; a resolver stops after the merge (not needed:
  its start cut short, its failure only logged); a plugin starts while the plugin before it
  works and stops after its call (:mod:`~boride.pipeline.lifetime`). In a kept session (the HTTP
  API's, where ``POST /executor`` starts components ahead) they live until the session ends or
  idles out: :class:`Build` uses what runs and starts what is missing, all at once.

The package, one concept a module: :mod:`~boride.pipeline.plan` (what a build does: steps,
which instance each calls), :mod:`~boride.pipeline.session` (instances: start, restart, drop),
:mod:`~boride.pipeline.build` (the stages), :mod:`~boride.pipeline.lifetime` (the lifetime
rule), :mod:`~boride.pipeline.deadline` (the one timeout), :mod:`~boride.pipeline.calls`,
:mod:`~boride.pipeline.admission` (a build's hold on a server's build slots),
:mod:`~boride.pipeline.cached` (the build's use of the cache),
:mod:`~boride.pipeline.timing` and :mod:`~boride.pipeline.timeline` (its times, its timeline),
:mod:`~boride.pipeline.template_watch`, :mod:`~boride.pipeline.deliver` and
:mod:`~boride.pipeline.results` (options, results, errors).
"""

from boride.pipeline.admission import Admission
from boride.pipeline.build import Build, build
from boride.pipeline.plan import Plan, Step, cannot_run, not_components, runners
from boride.pipeline.results import (
    NOT_NEEDED,
    STAGES,
    ArchiveFailed,
    AreaUnavailable,
    BuildError,
    BuildFailed,
    BuildOptions,
    BuildResult,
    CannotRun,
    ComponentResult,
    ComponentsFailed,
    EventFn,
    MergeFailed,
    TemplateUnusable,
)
from boride.pipeline.session import Session, fan_out
from boride.protocol import Glob as ProtocolGlob

__all__ = [
    "NOT_NEEDED",
    "STAGES",
    "Admission",
    "ArchiveFailed",
    "AreaUnavailable",
    "Build",
    "BuildError",
    "BuildFailed",
    "BuildOptions",
    "BuildResult",
    "CannotRun",
    "ComponentResult",
    "ComponentsFailed",
    "EventFn",
    "MergeFailed",
    "Plan",
    "ProtocolGlob",
    "Session",
    "Step",
    "TemplateUnusable",
    "build",
    "cannot_run",
    "fan_out",
    "not_components",
    "runners",
]
