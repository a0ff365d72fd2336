"""What a build tells its caller: its options, its result (per component and per stage), and
the errors that stop it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boride import archive, cache
from boride.config import Limits, Timeouts
from boride.errors import AreaFailure, BorideError, ComponentError, InputError
from boride.merge import MergeError
from boride.pipeline.timeline import Timeline
from boride.runtime.base import TemplateRefused
from boride.types import Component, Status

STAGES = ("start", "process", "merge", "plugins", "output")


@dataclass
class ComponentResult:
    name: str
    kind: str
    status: Status = Status.PENDING
    seconds: float = 0.0
    error: str | None = None
    cached: bool = False  # its output came from the cache: it was not called
    # its instance's start (the runtime's launch) and readiness wait, in this build
    start_seconds: float = 0.0
    ready_seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "status": self.status,
                "seconds": round(self.seconds, 6),
                "start_seconds": round(self.start_seconds, 6),
                "ready_seconds": round(self.ready_seconds, 6),
                "error": self.error, "cached": self.cached}


@dataclass
class BuildResult:
    status: Status = Status.FAILED
    session: str | None = None
    stages: dict[str, float] = field(default_factory=dict)
    components: list[ComponentResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    output: Path | None = None
    archive: Path | None = None
    work_dir: Path | None = None  # kept only with keep=True
    leftovers: list[str] = field(default_factory=list)  # what clean-up could not remove, and how

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "session": self.session,
            "stages": {k: round(v, 6) for k, v in self.stages.items()},
            "components": [c.as_json() for c in self.components],
            "errors": list(self.errors),
            "output": str(self.output) if self.output else None,
            "archive": str(self.archive) if self.archive else None,
            "work_dir": str(self.work_dir) if self.work_dir else None,
            "leftovers": list(self.leftovers),
        }

    @classmethod
    def not_started(cls, components: Sequence[Component], errors: list[str],
                    session: str | None = None) -> BuildResult:
        """A build that stopped before anything started: every component skipped."""
        return cls(session=session, errors=errors, components=[
            ComponentResult(c.name, c.kind.value, Status.SKIPPED) for c in components])


# Progress events for displays: (stage, component name or None, status)
EventFn = Callable[[str, str | None, Status], None]
#: Told (stage "merge") for a resolver that had no conflict to decide: never needed.
NOT_NEEDED = Status.SKIPPED


@dataclass
class BuildOptions:
    # parallelism: this, else the pipeline file's, else the CPUs
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)  # ready (per component), build
    out: Path | None = None  # copy the result here (must not exist, or be empty)
    replace: bool = False  # replace ``out`` if it exists with content
    archive: Path | None = None  # write the result as tar.gz here
    keep: bool = False  # keep the work area for debugging
    cache: cache.Cache | None = None  # reuse processors' outputs whose inputs are unchanged
    # no part of a local component's identity (the pipeline file: its part is in the keys)
    cache_skip: tuple[Path, ...] = ()
    work_root: Path | None = None  # where work areas go (default: the system temp folder)
    on_event: EventFn | None = None
    timeline: Timeline | None = None  # record the build's spans here (None: nothing recorded)


class BuildFailed(BorideError):
    """Raised inside a build to stop it; carries every error of the failing stage."""


class ComponentsFailed(BuildFailed, ComponentError):
    """Components that failed (to start, to become ready, a call): every one's error, and which
    components they were."""

    def __init__(self, errors: list[str], failed: Sequence[Component]) -> None:
        super().__init__(errors)
        self.failed = list(failed)


class CannotRun(InputError):
    """Components that cannot run on this runtime (found before starting anything)."""


class AreaUnavailable(AreaFailure):
    """A session's work area cannot be made (the runtime or the file system refused)."""


#: The template folder cannot be used (outside the allowed root, not a folder, links leading
#: out); the message says which and why. (The runtime's own error, not wrapped again.)
TemplateUnusable = TemplateRefused
#: A tree cannot be archived: every problem, each naming its path.
ArchiveFailed = archive.ArchiveError
#: The outputs cannot be merged: every problem, each naming its path.
MergeFailed = MergeError


class BuildError(BorideError):
    """A build that failed, as its result tells: which components, and every error."""

    def __init__(self, result: BuildResult) -> None:
        failed = [c for c in result.components if c.status == Status.FAILED]
        names = ", ".join(f"{c.kind} {c.name!r}" for c in failed[:5])
        super().__init__(result.errors, message=f"The build failed ({names})" if failed
                         else "The build failed")
        self.result = result
