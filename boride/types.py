"""The vocabulary every layer shares: kinds of component, what to run, and statuses.

Nothing here imports anything of boride: the engine, the runtimes, the pipeline and the server
all import it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Component", "Kind", "Status"]


class Kind(enum.Enum):
    """A kind of component, with the fixed port its SDK server listens on."""

    TEMPLATE = "template"
    PROCESSOR = "processor"
    PLUGIN = "plugin"
    RESOLVER = "resolver"

    @property
    def port(self) -> int:
        return _PORTS[self]


_PORTS = {Kind.TEMPLATE: 5550, Kind.PROCESSOR: 5551, Kind.PLUGIN: 5552, Kind.RESOLVER: 5553}


@dataclass(frozen=True)
class Component:
    """What to run. ``command`` is for the local runtime (run in ``cwd``), ``image`` for Docker."""

    name: str
    kind: Kind
    command: tuple[str, ...] | None = None
    image: str | None = None
    cwd: Path | None = None
    #: the local runtime may fork it from a session's fork server (``fork: false``: never);
    #: not part of what it is (its instance, its cache identity)
    fork: bool = field(default=True, compare=False)

    @property
    def runnable(self) -> tuple[object, ...]:
        """What runs: components with the same runnable (the same kind, and the same image, or
        command and working folder) are one instance, whatever their names."""
        return (self.kind, self.image, self.command, self.cwd if self.command else None)


class Status(enum.StrEnum):
    """Where a piece of work stands: an item of the engine, a component of a build, a stage."""

    PENDING = "pending"  # not started yet
    RUNNING = "running"
    OK = "ok"
    DONE = "done"  # a stage that ended (its components say how)
    FAILED = "failed"  # it raised (or timed out on its own timeout)
    CANCELLED = "cancelled"  # stopped because another item failed, or the deadline hit
    SKIPPED = "skipped"  # never started: fail-fast or the deadline stopped the run first
