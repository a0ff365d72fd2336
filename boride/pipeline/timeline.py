"""A build's timeline: spans recorded with monotonic times, written in the Trace Event Format
(``{"traceEvents": [...]}``) that Perfetto (ui.perfetto.dev) and ``chrome://tracing`` open.

Rows (``tid``): the build's stages, one per component instance (its start, its readiness wait,
each call), the merge (each resolver call), the output, and the calls placed on slot rows (each
on the lowest one free when it began: as many rows overlap as calls ran at once, at most the
parallelism)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUILD_ROW = "build"
MERGE_ROW = "merge"
OUTPUT_ROW = "output"


@dataclass
class Span:
    row: str
    name: str
    start: float  # perf_counter seconds
    end: float
    args: dict[str, Any] = field(default_factory=dict)
    slot: bool = False  # a call: also placed on a slot row


def digest(config: object) -> str:
    """A short digest of a step's config (the same config, the same digest)."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Timeline:
    """The spans of one build (cheap: a list append per span); :meth:`write` the file."""

    def __init__(self, parallelism: int | None = None) -> None:
        self.origin = time.perf_counter()
        self.spans: list[Span] = []
        self.rows: list[str] = [BUILD_ROW]  # in order of first use
        self.parallelism = parallelism

    def add(self, row: str, name: str, start: float, end: float, *, slot: bool = False,
            **args: Any) -> None:
        if row not in self.rows:
            self.rows.append(row)
        self.spans.append(Span(row, name, start, end, args, slot))

    @contextlib.contextmanager
    def span(self, row: str, name: str, *, slot: bool = False, **args: Any) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(row, name, start, time.perf_counter(), slot=slot, **args)

    def _us(self, t: float) -> float:
        return round((t - self.origin) * 1e6, 3)

    def events(self) -> list[dict[str, Any]]:
        """The Trace Event list: metadata naming the rows, then one "X" event per span."""
        pid = os.getpid()
        slots = self._slots()
        lanes = self._lanes()
        rows = [f"{row} ({k + 1})" if k else row for row in self.rows
                for k in range(max((lanes[i] for i, s in enumerate(self.spans) if s.row == row),
                                   default=0) + 1)]
        rows += [f"slot {i + 1}" for i in range(max(slots.values(), default=-1) + 1)]
        tids = {row: i + 1 for i, row in enumerate(rows)}
        out: list[dict[str, Any]] = [
            {"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
             "args": {"name": "boride build"}}]
        for row, tid in tids.items():
            out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                        "args": {"name": row}})
            out.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid,
                        "args": {"sort_index": tid}})

        def complete(s: Span, row: str) -> dict[str, Any]:
            return {"name": s.name, "cat": row.split(" ")[0], "ph": "X", "ts": self._us(s.start),
                    "dur": round((s.end - s.start) * 1e6, 3), "pid": pid, "tid": tids[row],
                    "args": dict(s.args)}

        for i, s in enumerate(self.spans):
            out.append(complete(s, f"{s.row} ({lanes[i] + 1})" if lanes[i] else s.row))
            if i in slots:
                out.append(complete(s, f"slot {slots[i] + 1}"))
        return out

    def _lanes(self) -> list[int]:
        """Each span's lane in its row: viewers want a row's spans nested or apart, so a span
        overlapping another without nesting in it (an instance's concurrent calls) goes to
        the row's next lane ("resolver concat (2)")."""
        stacks: dict[str, list[list[float]]] = {}  # row -> per lane, the ends of open spans
        lane = [0] * len(self.spans)
        spans = self.spans
        for i in sorted(range(len(spans)), key=lambda i: (spans[i].start, -spans[i].end)):
            s = spans[i]
            row = stacks.setdefault(s.row, [])
            for k, stack in enumerate([*row, []]):
                while stack and stack[-1] <= s.start:
                    stack.pop()
                if not stack or s.end <= stack[-1]:
                    if k == len(row):
                        row.append(stack)
                    stack.append(s.end)
                    lane[i] = k
                    break
        return lane

    def _slots(self) -> dict[int, int]:
        """Each call (by span index) on the lowest slot free when it began."""
        busy: list[float] = []  # slot -> when its call ends
        placed: dict[int, int] = {}
        calls = sorted((i for i, s in enumerate(self.spans) if s.slot),
                       key=lambda i: self.spans[i].start)
        for i in calls:
            s = self.spans[i]
            free = next((k for k, end in enumerate(busy) if end <= s.start), None)
            if free is None:
                busy.append(s.end)
                free = len(busy) - 1
            busy[free] = s.end
            placed[i] = free
        return placed

    def data(self) -> dict[str, Any]:
        """The whole trace file's JSON (:meth:`write`; ``GET /executor/{id}/trace``)."""
        return {"traceEvents": self.events(), "displayTimeUnit": "ms",
                "otherData": {"parallelism": self.parallelism}}

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.data(), indent=1), encoding="utf-8")


def numbered(path: Path, number: int) -> Path:
    """``--watch``'s file for build ``number``: trace.json -> trace-1.json, trace-2.json ..."""
    return path.with_name(f"{path.stem}-{number}{path.suffix}")


def maybe(timeline: Timeline | None, row: str, name: str, **args: Any
          ) -> contextlib.AbstractContextManager[None]:
    """A span on ``timeline``'s ``row``, or nothing without a timeline."""
    return timeline.span(row, name, **args) if timeline is not None else contextlib.nullcontext()
