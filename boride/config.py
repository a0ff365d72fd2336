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

__all__ = ["COMPONENT_UIDS", "DEFAULT_CPUS", "DEFAULT_MEMORY", "DEFAULT_PIDS", "HELPER_MEMORY",
           "MAX_ANSWER", "NOBODY", "SERVE_BUILD_TIMEOUT", "SLOT_GRACE", "Limits", "Timeouts",
           "cpu_count"]

# What one component may use and who it runs as, on either runtime (a local sandbox, a
# Docker container); ``BORIDE_LOCAL_MEMORY``/``_PIDS`` and ``BORIDE_DOCKER_CPUS``/``_MEMORY``/
# ``_PIDS`` override them.
NOBODY = (65534, 65534)  # (uid, gid) of components when no user of their own can be given
#: Each component instance of a session runs as a user of its own, one of these uids (its gid
#: the same number), so that no component can read or change another's folders: on the local
#: runtime when boride runs as root, always on Docker (unless a ``user`` is given). No account
#: of this machine has them (useradd's first subordinate ids start at 100000 too: a machine
#: giving those to rootless containers could move this).
COMPONENT_UIDS = range(100_000, 100_000 + 65_536)
DEFAULT_MEMORY = "512m"  # memory of each component (swap included)
DEFAULT_PIDS = 256  # processes of each component
DEFAULT_CPUS = 1.0  # CPUs of each component (Docker: a local sandbox has no CPU bound)
HELPER_MEMORY = "1g"  # memory of a Docker session's helper container (the session's file work)
#: the largest answer of a component's call boride reads (its JSON: an outputDir, a resolved
#: file); a larger one is refused unread
MAX_ANSWER = 1024 * 1024


def cpu_count() -> int:
    """The CPUs this process may run on (the seed's default parallelism), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


#: ``boride serve``'s build timeout: the CyanPrint CLI's own client timeout; past it nobody
#: waits for the build any more (``boride run`` has none: its user is there to stop it)
SERVE_BUILD_TIMEOUT = 600.0
#: seconds a build keeps its build slot while one of its component calls is pending; then it
#: gives the slot up until its calls have answered (:mod:`boride.pipeline.admission`)
SLOT_GRACE = 1.0


@dataclass(frozen=True)
class Timeouts:
    """Seconds each wait may take (None: no limit)."""

    ready: float = 60.0  # a component starting until it answers GET / with 200
    build: float | None = None  # a whole build, start to output (serve: SERVE_BUILD_TIMEOUT)
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
    max_answer: int = MAX_ANSWER  # largest answer of a component (a call, a proxied call)

    def build_parallelism(self, pipeline_says: int | None = None) -> int:
        """The parallelism of one build: this limit, else the pipeline file's, else the CPUs."""
        return self.parallelism or pipeline_says or cpu_count()
