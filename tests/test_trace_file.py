"""``boride run --trace FILE``: a real build of the example writes a Trace Event file (what
Perfetto and chrome://tracing open) whose rows and times agree with ``--json``."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import EXAMPLES
from tests.helpers import run_cli, run_json
from tests.test_watch import Watcher

pytestmark = pytest.mark.usefixtures("no_leftovers")
TOL = 2e-6  # seconds: --json rounds to 1 µs, the file to 1 ns (the same measurements)
STAGES = ("start", "process", "merge", "plugins", "output")


class Trace:
    """A trace file: its rows by name, each row's complete events."""

    def __init__(self, path: Path) -> None:
        data = json.loads(path.read_text())
        assert data["displayTimeUnit"] == "ms"
        self.events: list[dict[str, Any]] = data["traceEvents"]
        for e in self.events:
            assert {"name", "ph", "pid", "tid"} <= e.keys(), e
        names = {e["tid"]: e["args"]["name"] for e in self.events
                 if e["ph"] == "M" and e["name"] == "thread_name"}
        assert len(set(names.values())) == len(names), names
        assert any(e["ph"] == "M" and e["name"] == "process_name" for e in self.events)
        self.rows: dict[str, list[dict[str, Any]]] = {n: [] for n in names.values()}
        for e in self.events:
            if e["ph"] == "X":
                assert e["dur"] >= 0 and {"ts", "dur", "args"} <= e.keys(), e
                self.rows[names[e["tid"]]].append(e)

    def row(self, prefix: str) -> list[dict[str, Any]]:
        """The events of a row and its lanes ("resolver concat", "resolver concat (2)")."""
        return [e for name, evs in self.rows.items()
                if name == prefix or name.startswith(prefix + " (") for e in evs]

    def one(self, row: str, name: str) -> dict[str, Any]:
        found = [e for e in self.row(row) if e["name"] == name]
        assert len(found) == 1, (row, name, self.rows.get(row))
        return found[0]


def end(e: dict[str, Any]) -> float:
    return float(e["ts"] + e["dur"])


def check_nesting(trace: Trace) -> None:
    """Every row's events are nested or apart (what the viewers need)."""
    for name, evs in trace.rows.items():
        open_: list[dict[str, Any]] = []
        for e in sorted(evs, key=lambda e: (e["ts"], -e["dur"])):
            while open_ and end(open_[-1]) <= e["ts"] + 1e-3:
                open_.pop()
            assert not open_ or end(e) <= end(open_[-1]) + 1e-3, (name, open_[-1], e)
            open_.append(e)


def check_slots(trace: Trace, parallelism: int) -> list[dict[str, Any]]:
    """The slot rows: at most ``parallelism`` of them, each one call at a time; their calls."""
    slots = {n: evs for n, evs in trace.rows.items() if n.startswith("slot ")}
    assert 1 <= len(slots) <= parallelism, list(slots)
    for evs in slots.values():
        evs = sorted(evs, key=lambda e: e["ts"])
        for a, b in itertools.pairwise(evs):
            assert end(a) <= b["ts"] + 1e-3, (a, b)
    calls = [e for evs in slots.values() for e in evs]
    points = sorted([(e["ts"], 1) for e in calls] + [(end(e), -1) for e in calls],
                    key=lambda p: (p[0], p[1]))
    running = peak = 0
    for _, step in points:
        running += step
        peak = max(peak, running)
    assert peak <= parallelism
    return calls


@pytest.mark.sandbox
def test_the_example_s_trace_agrees_with_its_json(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    proc, data = run_json(EXAMPLES / "pipeline.yaml", "--out", tmp_path / "out", "--no-cache",
                          "--trace", path, tmpdir=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    trace = Trace(path)
    check_nesting(trace)

    build = trace.one("build", "build")
    assert build["args"]["status"] == "ok"
    for stage in STAGES:  # each stage on the build's row, inside the build, as --json says
        e = trace.one("build", stage)
        assert build["ts"] <= e["ts"] and end(e) <= end(build) + 1e-3
        assert abs(e["dur"] / 1e6 - data["stages"][stage]) < TOL

    components = {c["name"]: c for c in data["components"]}
    assert sorted(components) == ["concat", "license", "stamp", "substitute", "upper"]
    for name, c in components.items():
        row = f"{c['kind']} {name}"
        start, ready = trace.one(row, "start"), trace.one(row, "ready")
        calls = [e for e in trace.row(row) if e["name"] == f"call {name}"]
        assert calls, (row, trace.row(row))
        # start, then its readiness wait, then its calls, all within the build
        assert build["ts"] <= start["ts"]
        assert abs(end(start) - ready["ts"]) < 1e-2
        for call in calls:
            assert end(ready) <= call["ts"] + 1e-3 and end(call) <= end(build) + 1e-3
            assert call["args"]["step"] == name and call["args"]["cached"] is False
            assert len(call["args"]["config"]) == 12
        # the same measurements as --json's
        assert c["start_seconds"] > 0 and c["ready_seconds"] > 0
        assert abs(start["dur"] / 1e6 - c["start_seconds"]) < TOL
        assert abs(ready["dur"] / 1e6 - c["ready_seconds"]) < TOL
        assert abs(sum(e["dur"] for e in calls) / 1e6 - c["seconds"]) < TOL * len(calls)

    # the resolver's calls, one per conflict, on the merge's row too, inside the merge
    merge = trace.one("merge", "merge")
    resolved = sorted(e["args"]["path"] for e in trace.row("merge") if e["name"] != "merge")
    assert resolved == ["src/farewell.txt", "src/greeting.txt"]
    for e in trace.row("merge"):
        assert merge["ts"] <= e["ts"] and end(e) <= end(merge) + 1e-3
    output = trace.one("output", "output")
    assert trace.one("build", "output")["ts"] <= output["ts"]

    # every call (3 processors, 2 resolver calls, the plugin) on a slot row, at most 3 at once
    slotted = check_slots(trace, parallelism=3)
    assert sorted(e["name"] for e in slotted) == sorted(
        ["call upper", "call substitute", "call license", "call concat", "call concat",
         "call stamp"])


def test_a_trace_file_in_a_missing_folder_is_refused(tmp_path: Path) -> None:
    proc = run_cli("run", EXAMPLES / "pipeline.yaml", "--out", tmp_path / "out", "--no-cache",
                   "--trace", tmp_path / "nowhere" / "t.json", in_process=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"boride: cannot write the trace file {tmp_path / 'nowhere' / 't.json'}: "
        "its folder does not exist"]


@pytest.fixture
def no_conflicts(tmp_path: Path) -> Path:
    """The example without ``upper``: nothing for the resolver to decide."""
    shutil.copytree(EXAMPLES, tmp_path / "ex", ignore=shutil.ignore_patterns("expected"))
    pipeline = tmp_path / "ex" / "pipeline.yaml"
    data = yaml.safe_load(pipeline.read_text())
    data["processors"] = [p for p in data["processors"] if p["name"] != "upper"]
    pipeline.write_text(yaml.safe_dump(data))
    return pipeline


@pytest.mark.sandbox
def test_a_resolver_with_no_conflict_is_not_needed(tmp_path: Path, no_conflicts: Path) -> None:
    path = tmp_path / "trace.json"
    proc, data = run_json(no_conflicts, "--out", tmp_path / "out", "--no-cache", "--trace",
                          path, tmpdir=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    concat = next(c for c in data["components"] if c["name"] == "concat")
    assert concat["status"] == "ok" and concat["seconds"] == 0
    trace = Trace(path)
    # started ahead of need (two processors may conflict), never called; its start, if it
    # had not ended when the merge did, was cut short then
    assert [e["name"] for e in trace.row("resolver concat")] in (["start"], ["start", "ready"])
    assert [e["name"] for e in trace.row("merge")] == ["merge"]

    # the display (plain lines off a terminal) says so instead of leaving it pending
    proc = run_cli("run", no_conflicts, "--out", tmp_path / "out2", "--no-cache",
                   tmpdir=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    assert "boride: merge resolver concat: not needed" in proc.stderr.splitlines()
    assert "boride: start processor license: ok" in proc.stderr.splitlines()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(EXAMPLES, tmp_path / "ex", ignore=shutil.ignore_patterns("expected"))
    return tmp_path


@pytest.mark.sandbox
def test_watch_writes_one_trace_file_per_build(project: Path) -> None:
    watcher = Watcher(project, "--trace", project / "trace.json")
    try:
        first = watcher.next_build()
        assert first["status"] == "ok", first["errors"]
        readme = project / "ex" / "template" / "README.md"
        readme.write_text(readme.read_text() + "one more line\n")
        second = watcher.next_build()
        assert second["status"] == "ok", second["errors"]
        assert watcher.interrupt() == 130
    finally:
        watcher.kill()
    assert not (project / "trace.json").exists()
    for number, data in ((1, first), (2, second)):
        trace = Trace(project / f"trace-{number}.json")
        check_nesting(trace)
        assert trace.one("build", "build")["args"]["status"] == "ok"
        for stage in STAGES:
            trace.one("build", stage)
        for c in data["components"]:  # every step's call (or its cached output) has its span
            if c["kind"] != "resolver":
                spans = [e for e in trace.row(f"{c['kind']} {c['name']}")
                         if e["name"] in (f"call {c['name']}", "cached")]
                assert len(spans) == 1, (number, c, trace.rows)
        check_slots(trace, parallelism=3)
    # the second build's components were running already: no start of theirs in its file
    assert not any(e["name"] == "start"
                   for e in Trace(project / "trace-2.json").row("processor upper"))


def test_a_row_s_overlapping_spans_get_lanes_and_calls_the_lowest_free_slot() -> None:
    from boride.pipeline.timeline import Timeline

    t = Timeline(parallelism=2)
    o = t.origin
    t.add("resolver r", "start", o, o + 1)
    t.add("resolver r", "call r", o + 2, o + 4, slot=True)
    t.add("resolver r", "call r", o + 3, o + 5, slot=True)  # overlaps the first, not inside
    t.add("resolver r", "call r", o + 4.5, o + 6, slot=True)  # the first slot is free again
    path_events = t.events()
    names = {e["tid"]: e["args"]["name"] for e in path_events if e["name"] == "thread_name"}
    rows: dict[str, list[float]] = {}
    for e in path_events:
        if e["ph"] == "X":
            rows.setdefault(names[e["tid"]], []).append(e["ts"] / 1e6)
    assert rows == {"resolver r": [0, 2, 4.5], "resolver r (2)": [3],
                    "slot 1": [2, 4.5], "slot 2": [3]}


def test_the_live_table_shows_start_and_call_apart_and_not_needed() -> None:
    import io

    from rich.console import Console

    from boride.cli import Progress
    from boride.pipeline import NOT_NEEDED
    from boride.types import Status

    console = Console(file=io.StringIO(), width=100, force_terminal=False, color_system=None)
    p = Progress(console, [("up", "processor"), ("concat", "resolver")], live=False)
    p.event("process", "up", Status.RUNNING)  # its call waits for its instance ...
    p.event("start", "up", Status.RUNNING)
    p.event("start", "up", Status.OK)  # ... which is ready now: the call's time begins
    p.event("process", "up", Status.OK)
    p.event("merge", "concat", NOT_NEEDED)
    console.print(p._render())
    lines = [line.split() for line in console.file.getvalue().splitlines()]  # type: ignore[attr-defined]
    assert ["component", "kind", "stage", "status", "start", "call"] in lines
    up = next(line for line in lines if line[0] == "up")
    assert up[:4] == ["up", "processor", "process", "ok"] and len(up) == 6
    assert next(line for line in lines if line[0] == "concat") == [
        "concat", "resolver", "merge", "not", "needed"]
