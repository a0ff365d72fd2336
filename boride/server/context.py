"""The server's configuration, and what every part of the service shares: the runtime, the
registry, the metrics, the build slots and the streaming threads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from boride import registry as reg
from boride import telemetry
from boride.cache import Cache
from boride.config import SERVE_BUILD_TIMEOUT, Limits, Timeouts
from boride.pipeline import Admission, BuildOptions, ComponentsFailed, Session, cannot_run
from boride.pipeline.timeline import Timeline
from boride.runtime.base import Runtime, TemplateSource, source_note
from boride.server.metrics import Metrics
from boride.types import Component

V = TypeVar("V")


@dataclass
class ServerConfig:
    """Everything ``boride serve`` can be told (see ``boride serve --help``)."""

    runtime: str = "local"
    registry: tuple[str, ...] = ()
    token: str | None = None
    dev_root: Path | None = None
    work_root: Path | None = None
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=lambda: Timeouts(build=SERVE_BUILD_TIMEOUT))
    cache: Cache | None = None  # reuse unchanged processors' outputs (``--cache``)
    #: the name its sessions are kept under on the runtime (``--state-name``): a server
    #: started with the same name on the same Docker engine takes them over; None: not kept
    state_name: str | None = None


def noted_names(note: Mapping[str, str], key: str) -> dict[str, str]:
    """The names a note (:meth:`Context.note`) keeps under ``key``, by id (a resolver's);
    none when they cannot be read."""
    try:
        said = json.loads(note.get(key) or "{}")
        return {str(k): str(v) for k, v in said.items()}
    except (ValueError, AttributeError):
        return {}


class Context:
    """One server's shared parts. At most ``max_builds`` builds doing boride's own work and
    component start-ups run at once across all sessions (``slots``); a build awaiting its
    components' answers holds none (:meth:`admission`). A start-up holds its slot until its
    components are ready, at most the ready timeout."""

    def __init__(self, config: ServerConfig, runtime: Runtime, registry: reg.Registry,
                 metrics: Metrics) -> None:
        self.config = config
        self.runtime = runtime
        self.registry = registry
        self.metrics = metrics
        self.slots = asyncio.Semaphore(config.limits.max_builds)
        self.executor = ThreadPoolExecutor(max_workers=max(16, 4 * config.limits.max_builds),
                                           thread_name_prefix="boride-stream")

    def admission(self) -> Admission:
        """A build's hold on the slots, counted in the metrics."""
        m = self.metrics
        return Admission(self.slots, waiting=m.builds_waiting, held=m.build_slots_held,
                         awaiting=m.builds_awaiting)

    def build_options(self, *, trace: bool = False) -> BuildOptions:
        """A build's options; ``trace``: its timeline recorded (else only for its spans)."""
        timeline = (Timeline(self.config.limits.build_parallelism()) if trace
                    else telemetry.timeline())
        return BuildOptions(limits=self.config.limits, timeouts=self.config.timeouts,
                            work_root=self.config.work_root, cache=self.config.cache,
                            timeline=timeline)

    def note(self, kind: str, template_id: str, folder: TemplateSource,
             **more: str) -> dict[str, str] | None:
        """What a server taking over a session of this one needs to know of it (a ``kind``:
        session or template), kept with the session on the runtime; None when this server
        keeps nothing (no :attr:`ServerConfig.state_name`)."""
        if not self.config.state_name:
            return None
        return {"owner": self.config.state_name, "kind": kind, "template": template_id,
                "source": source_note(folder), **more}

    async def open_session(self, session_id: str, folder: TemplateSource, *,
                           area: bool = True, note: Mapping[str, str] | None = None) -> Session:
        return await Session.opened(self.runtime, session_id, folder,
                                    work_root=self.config.work_root, area=area, note=note)

    async def cannot_run(self, components: Iterable[Component]) -> list[str]:
        """Everything that would stop these components from starting on this runtime."""
        return await cannot_run(self.runtime, list(components))

    async def start(self, session: Session, components: Iterable[Component]) -> None:
        """Start what of ``components`` is not running in ``session``, holding a slot:
        :class:`CannotRun` before anything starts, :class:`ComponentsFailed` (every one's
        error) when some do not start or never become ready."""
        wanted = list(components)
        await session.refuse_unrunnable(wanted)
        async with Admission(self.slots, held=self.metrics.build_slots_held):
            try:
                await session.start(wanted, self.config.timeouts.ready,
                                    limit=self.config.limits.parallelism)
            except ComponentsFailed as exc:
                for c in exc.failed:
                    self.metrics.component_failures.labels(c.kind.value).inc()
                raise


class Table(Mapping[str, V]):
    """A part's table by id: others read it as a mapping, only its owner changes it."""

    def __init__(self) -> None:
        self._table: dict[str, V] = {}

    def __getitem__(self, key: str) -> V:
        return self._table[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)
