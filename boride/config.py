"""Every bound and every default, in one place (in the spirit of httpx's ``Limits`` and
``Timeout``): the command line, :class:`~boride.pipeline.BuildOptions` and the server's
configuration all take them from here.

Names mean one thing everywhere: a *timeout* is a number of seconds from when a wait starts
(None: no limit); a *deadline* is an absolute time on :func:`time.monotonic`'s clock; a
*limit* is how many things may be in flight at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Limits", "Timeouts", "cpu_count"]


def cpu_count() -> int:
    """The CPUs this process may run on (the seed's default parallelism), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Timeouts:
    """Seconds each wait may take (None: no limit)."""

    ready: float = 60.0  # a component starting until it answers GET / with 200
    build: float | None = None  # a whole build, start to output
    #: the API: an idle session is removed after this; 12 hours like the Go coordinator's
    #: clean-up, so a long interactive Q&A between bootstrap and build keeps its session
    session_idle: float | None = 12 * 3600.0


@dataclass(frozen=True)
class Limits:
    """How much may run at once, and how big things may be."""

    parallelism: int | None = None  # components in flight within a build (None: CPU count)
    max_builds: int = 4  # the API: builds (and component start-ups) at once; others wait
    max_sessions: int = 256  # the API: sessions alive at once
    max_body: int = 8 * 1024 * 1024  # the API: largest request body, in bytes

    def build_parallelism(self, pipeline_says: int | None = None) -> int:
        """The parallelism of one build: this limit, else the pipeline file's, else the CPUs."""
        return self.parallelism or pipeline_says or cpu_count()
