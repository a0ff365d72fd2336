"""Prometheus metrics of the front (a registry of its own)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

if TYPE_CHECKING:
    from boride.front.workers import Workers

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            10.0, 30.0, 60.0, 120.0, 300.0)


class FrontMetrics:
    def __init__(self, workers: Workers) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, _cpu_seconds, _open_fds
        self.forward_seconds = Histogram(
            "boride_front_forward_seconds",
            "From forwarding a call to a worker to the head of its answer, by route",
            ["route"], buckets=_BUCKETS, registry=r)
        self.bytes_streamed = Counter("boride_front_bytes_streamed",
                                      "Bytes of workers' answers passed on to clients",
                                      registry=r)
        self.placements = Counter("boride_front_placements",
                                  "New sessions placed, by worker address", ["worker"],
                                  registry=r)
        self.lost_calls = Counter("boride_front_lost_calls",
                                  "Calls answered 503 because their worker is lost",
                                  registry=r)
        workers_gauge = Gauge("boride_front_workers", "Workers known, by state", ["state"],
                              registry=r)
        workers_gauge.labels("healthy").set_function(lambda: len(workers.healthy()))
        workers_gauge.labels("unhealthy").set_function(
            lambda: len(workers.workers) - len(workers.healthy()))
        sessions = Gauge("boride_front_sessions", "Sessions the front maps to a worker",
                         registry=r)
        sessions.set_function(lambda: len(workers.sessions))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
