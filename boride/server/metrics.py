"""Prometheus metrics of one server (a registry of its own, so several apps can coexist)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from boride.pipeline import STAGES, BuildResult
from boride.types import Kind, Status

_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 300.0)
_STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                  120.0, 300.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, _cpu_seconds, _open_fds
        self.request_seconds = Histogram(
            "boride_http_request_seconds",
            "Duration of HTTP requests until answered in full, by route template, method and "
            "status", ["route", "method", "status"], buckets=_REQUEST_BUCKETS, registry=r)
        self.builds_started = Counter("boride_builds_started", "Builds that got a build slot",
                                      registry=r)
        self.builds_finished = Counter("boride_builds_finished",
                                       "Builds that succeeded (output ready to stream)",
                                       registry=r)
        self.builds_failed = Counter("boride_builds_failed",
                                     "Builds that failed (a component, the merge, a timeout)",
                                     registry=r)
        self.builds_cancelled = Counter("boride_builds_cancelled",
                                        "Builds cancelled: the client went away or the "
                                        "session was deleted", registry=r)
        self.builds_in_flight = Gauge("boride_builds_in_flight",
                                      "Builds running now (begun, not ended)", registry=r)
        self.builds_waiting = Gauge("boride_builds_waiting",
                                    "Builds waiting for a build slot (--max-builds), to begin or "
                                    "to go on after their components answered", registry=r)
        self.builds_awaiting = Gauge("boride_builds_awaiting_components",
                                     "Builds in flight awaiting a component's answer (holding "
                                     "no build slot)", registry=r)
        self.build_slots_held = Gauge("boride_build_slots_held",
                                      "Build slots held now (--max-builds): builds doing "
                                      "boride's own work, component start-ups", registry=r)
        self.build_seconds = Histogram("boride_build_seconds",
                                       "Duration of whole builds (start to plugins and output)",
                                       buckets=_STAGE_BUCKETS, registry=r)
        self.stage_seconds = Histogram("boride_build_stage_seconds",
                                       "Duration of each build stage", ["stage"],
                                       buckets=_STAGE_BUCKETS, registry=r)
        self.component_failures = Counter("boride_component_failures",
                                          "Components that failed to start or during a call",
                                          ["kind"], registry=r)
        self.cache_hits = Counter("boride_cache_hits",
                                  "Processor steps whose output came from the cache (--cache)",
                                  registry=r)
        self.sessions = Gauge("boride_sessions", "Open sessions", registry=r)
        self.archive_bytes = Counter("boride_archive_bytes", "Bytes of tar.gz streamed",
                                     registry=r)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for kind in Kind:
            self.component_failures.labels(kind.value)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.request_seconds.labels(route, method, str(status)).observe(seconds)

    def record_build(self, result: BuildResult) -> None:
        for stage, seconds in result.stages.items():
            self.stage_seconds.labels(stage).observe(seconds)
        self.build_seconds.observe(sum(result.stages.values()))
        for c in result.components:
            if c.status == Status.FAILED:
                self.component_failures.labels(c.kind).inc()
            if c.cached:
                self.cache_hits.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
