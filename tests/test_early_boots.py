"""Resolvers and plugins boot ahead of need (issue 23, part 3): in a one-shot build the
resolvers (when a conflict is possible: two processor steps or more) and the first plugin start
while the processors work, after every processor's start in the engine's slots, so their boot
is off the critical path; one nobody needed is stopped (its start cut short) and reported not
needed, and its failure to start is only logged. Observed through the fake runtime's events
(the order things happened in), never timings. The local runtime's checks (the bundled
example's trace; a resolver nobody needs, never ready or exiting at start): the last tests."""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from boride import cache
from boride.pipeline import NOT_NEEDED
from boride.pipeline.timeline import Timeline
from boride.runtime.fake import Behaviour, Call, FakeRuntime, default_answer
from boride.types import Kind, Status
from tests.conftest import EXAMPLES
from tests.fake_support import by_name, plan, plugin, processor, resolver, run
from tests.helpers import run_cli, run_json, tree, write_pipeline
from tests.test_trace_file import Trace, end

WAIT = 10.0  # seconds a processor waits for what a test expects to happen during its call


def after(runtime: FakeRuntime, *events: str) -> Callable[[Call], Awaitable[Any]]:
    """A processor's answer given once ``events`` happened (at most :data:`WAIT` seconds
    later: without them, the test's order checks fail)."""

    async def answer(call: Call) -> Any:
        loop = asyncio.get_running_loop()
        until = loop.time() + WAIT
        while not set(events) <= set(runtime.counts.events) and loop.time() < until:
            await asyncio.sleep(0.01)
        return await default_answer(call)
    return answer


def index(events: list[str], event: str) -> int:
    assert event in events, (event, events)
    return events.index(event)


def last(events: list[str], prefix: str) -> int:
    return max(i for i, e in enumerate(events) if e.startswith(prefix))


class Told:
    """The build's progress events: (stage, name, status)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, Status]] = []

    def __call__(self, stage: str, name: str | None, status: Status) -> None:
        self.events.append((stage, name, status))

    def of(self, name: str) -> list[tuple[str, Status]]:
        return [(stage, status) for stage, n, status in self.events if n == name]


async def test_the_resolver_and_the_plugin_boot_while_the_processors_are_called(
        tmp_path: Path, template: Path) -> None:
    runtime = FakeRuntime(default=Behaviour())
    runtime.behaviours["slow"] = Behaviour(answer=after(runtime, "start join", "start stamp"))
    timeline = Timeline()
    result = await run(plan(template, [processor("a", "one"), processor("b", "slow")],
                            [resolver("join", ("src/**",))], [plugin("stamp")]),
                       runtime, tmp_path, parallelism=4, timeline=timeline)
    assert result.ok, result.errors
    events = runtime.counts.events
    # both started before the processors' calls ended, after the processors' starts
    for name in ("join", "stamp"):
        assert index(events, "start b") < index(events, f"start {name}") < last(
            events, "end b /api/process")
    assert events.count("start join") == events.count("start stamp") == 1
    assert index(events, "stop join") < index(events, "call stamp /api/plug")  # after the merge
    assert (tmp_path / "out" / "src" / "a.txt").read_text() == "alpha\n\nalpha\nplugged\n"
    assert runtime.live == set()
    # the timeline too: their starts begin after b's, before b's call ends
    spans = {(s.row, s.name): s for s in timeline.spans}
    for row in ("resolver join", "plugin stamp"):
        assert (spans[("processor b", "start")].start <= spans[(row, "start")].start
                <= spans[("processor b", "call b")].end)
    assert [s.name for s in timeline.spans if s.row == "resolver join"].count("call join") == 2


async def test_one_processor_cannot_conflict_its_resolver_never_starts(
        tmp_path: Path, template: Path) -> None:
    runtime = FakeRuntime(default=Behaviour())
    runtime.behaviours["slow"] = Behaviour(answer=after(runtime, "start stamp"))
    result = await run(plan(template, [processor("a", "slow")], [resolver("join")],
                            [plugin("stamp")]), runtime, tmp_path)
    assert result.ok, result.errors
    assert runtime.counts.started == ["a", "stamp"]
    assert index(runtime.counts.events, "start stamp") < index(runtime.counts.events,
                                                               "end a /api/process")


async def test_a_resolver_nobody_needs_is_stopped_and_reported_not_needed(
        tmp_path: Path, template: Path) -> None:
    runtime = FakeRuntime(default=Behaviour())
    runtime.behaviours["slow"] = Behaviour(answer=after(runtime, "start join"))
    told = Told()
    # its globs match none of the conflicts (src/a.txt, src/deep/b.txt: the last layer wins)
    result = await run(plan(template, [processor("a", "one"), processor("b", "slow")],
                            [resolver("join", ("nothing/**",))]),
                       runtime, tmp_path, on_event=told)
    assert result.ok, result.errors
    events = runtime.counts.events
    assert index(events, "start join") < last(events, "end b /api/process")
    assert "stop join" in events and runtime.live == set()
    join = next(c for c in result.components if c.name == "join")
    assert (join.status, join.error, join.seconds) == (Status.OK, None, 0)
    assert told.of("join")[-1] == ("merge", NOT_NEEDED)
    assert not any(e.startswith("call join") for e in events)


async def test_a_start_nobody_needs_is_cut_short(tmp_path: Path, template: Path) -> None:
    """A resolver still starting when the merge ends (it never becomes ready) is stopped
    then, not waited for until its readiness timeout."""
    runtime = FakeRuntime({"mute": Behaviour(never_ready=True)}, default=Behaviour())
    told = Told()
    result = await run(plan(template, [processor("a", "one"), processor("b", "two")],
                            [resolver("join", ("nothing/**",), key="mute")]),
                       runtime, tmp_path, ready=600, timeout=60, on_event=told)
    assert result.ok, result.errors
    assert "stop join" in runtime.counts.events and runtime.live == set()
    assert told.of("join") == [("start", Status.RUNNING), ("start", Status.CANCELLED),
                               ("merge", NOT_NEEDED)]


async def test_a_failing_early_boot_nobody_needs_is_logged_not_fatal(
        tmp_path: Path, template: Path, caplog: pytest.LogCaptureFixture) -> None:
    runtime = FakeRuntime({"bad": Behaviour(exit_at_start=3, error="ImportError: no sdk")},
                          default=Behaviour())
    runtime.behaviours["slow"] = Behaviour(answer=after(runtime, "stop join"))
    with caplog.at_level(logging.WARNING, logger="boride.pipeline.lifetime"):
        result = await run(plan(template, [processor("a", "one"), processor("b", "slow")],
                                [resolver("join", ("nothing/**",), key="bad")]),
                           runtime, tmp_path)
    assert result.ok, result.errors
    assert by_name(result)["join"] == ("ok", None)
    assert index(runtime.counts.events, "stop join") < last(runtime.counts.events,
                                                            "end b /api/process")
    [line] = [r.getMessage() for r in caplog.records if "join" in r.getMessage()]
    assert line.startswith("resolver 'join', started ahead of need, was not needed; its start "
                           "failed: exited with code 3")
    assert runtime.live == set()


async def test_a_failed_build_s_plugin_that_could_not_start_is_not_its_error(
        tmp_path: Path, template: Path, caplog: pytest.LogCaptureFixture) -> None:
    runtime = FakeRuntime({"bad": Behaviour(exit_at_start=3)}, default=Behaviour())
    runtime.behaviours["fails"] = Behaviour(answer=after(runtime, "stop stamp"),
                                            fails="http_500", error="ValueError: boom")
    runtime.behaviours["waits"] = Behaviour(answer=after(runtime, "stop stamp"))
    with caplog.at_level(logging.WARNING, logger="boride.pipeline.lifetime"):
        result = await run(plan(template, [processor("a", "waits"), processor("b", "fails")],
                                plugins=[plugin("stamp", "bad")]), runtime, tmp_path)
    assert not result.ok
    assert len(result.errors) == 1 and result.errors[0].startswith("processor 'b'"), result.errors
    assert by_name(result)["stamp"] == ("skipped", None)
    assert any("plugin 'stamp', started ahead of need, was not needed" in r.getMessage()
               for r in caplog.records)
    assert runtime.live == set()


@pytest.mark.parametrize("kind", ["resolver", "plugin"])
async def test_a_failing_early_boot_of_a_needed_component_fails_the_build_naming_it(
        tmp_path: Path, template: Path, kind: str) -> None:
    runtime = FakeRuntime({"bad": Behaviour(exit_at_start=3, error="ImportError: no sdk")},
                          default=Behaviour())
    runtime.behaviours["slow"] = Behaviour(answer=after(runtime, "stop bad"))
    bad = kind == "resolver"
    result = await run(plan(template, [processor("a", "one"), processor("b", "slow")],
                            [resolver("bad" if bad else "join", key="bad" if bad else "join")],
                            [plugin("stamp" if bad else "bad", "plug" if bad else "bad")]),
                       runtime, tmp_path)
    assert not result.ok
    events = runtime.counts.events
    assert index(events, "stop bad") < last(events, "end b /api/process")  # it failed early
    assert events.count("start bad") == 1  # not started again when needed
    # the errors a start at its first call gives (the same words: checked against 40c60a4)
    said = ("exited with code 3 before it was ready\n  its error: ImportError: no sdk\n"
            f"  its last output:\n    fake {kind} bad: starting\n    ImportError: no sdk")
    assert result.errors == ([f"merge: conflict '{p}', resolver 'bad': failed: {said}"
                              for p in ("README.md", "src/a.txt", "src/deep/b.txt")] if bad
                             else [f"plugin 'bad': {said}"])
    if not bad:
        assert by_name(result)["bad"] == ("failed", said)
    assert runtime.live == set()


@pytest.mark.parametrize(("parallelism", "processors"), [(1, 5), (2, 4)])
async def test_processors_start_first_and_early_boots_take_the_slots_left(
        tmp_path: Path, template: Path, parallelism: int, processors: int) -> None:
    """Processors' starts take the engine's slots first, in call order (at parallelism 1 the
    third waits for a place, 2 x parallelism being alive, and the early boots wait behind it);
    the early boots come once every processor has its slot."""
    runtime = FakeRuntime(default=Behaviour())
    n = processors - 1
    runtime.behaviours["last"] = Behaviour(answer=after(runtime, "start join"))
    steps = [processor(f"p{i}", f"proc-{i}") for i in range(n)] + [processor(f"p{n}", "last")]
    result = await run(plan(template, steps, [resolver("join")], [plugin("stamp")]),
                       runtime, tmp_path, parallelism=parallelism)
    assert result.ok, result.errors
    events = runtime.counts.events
    starts = [e.split()[1] for e in events if e.startswith("start ")]
    assert starts == [f"p{i}" for i in range(processors)] + ["join", "stamp"]
    assert index(events, "start join") < last(events, f"end p{n} /api/process")
    assert runtime.counts.peak[Kind.PROCESSOR] <= 2 * parallelism
    assert runtime.counts.peak[Kind.RESOLVER] == runtime.counts.peak[Kind.PLUGIN] == 1
    assert runtime.live == set()


async def test_a_build_of_cached_processors_starts_nothing_ahead(tmp_path: Path,
                                                                template: Path) -> None:
    store = cache.Cache(tmp_path / "cache")
    runtime = FakeRuntime(default=Behaviour())
    the_plan = plan(template, [processor("a", "one"), processor("b", "two")],
                    [resolver("join", ("nothing/**",))])
    first = await run(the_plan, runtime, tmp_path, cache=store)
    assert first.ok, first.errors
    assert runtime.counts.started == ["a", "b", "join"]
    runtime.counts.started.clear()
    again = await run(the_plan, runtime, tmp_path, cache=store)
    assert again.ok, again.errors
    assert runtime.counts.started == []  # nothing to overlap with: nothing ahead


async def test_a_deadline_during_the_processors_names_them_not_the_early_boots(
        tmp_path: Path, template: Path) -> None:
    runtime = FakeRuntime({"mute": Behaviour(never_ready=True), "hang": Behaviour(fails="hang")},
                          default=Behaviour())
    result = await run(plan(template, [processor("a", "one"), processor("b", "hang")],
                            [resolver("join", key="mute")], [plugin("stamp", "mute")]),
                       runtime, tmp_path, ready=600, timeout=1)
    assert not result.ok
    assert result.errors == [
        "processor 'b': its call had not answered when the build's 1s timeout ran out"]
    assert {c.name: c.status for c in result.components}["join"] == Status.SKIPPED
    assert runtime.live == set()


def test_the_live_table_says_not_needed_after_a_start_cut_short() -> None:
    from rich.console import Console

    from boride.cli import Progress

    console = Console(file=io.StringIO(), width=100, force_terminal=False, color_system=None)
    p = Progress(console, [("concat", "resolver")], live=False)
    p.event("start", "concat", Status.RUNNING)
    p.event("start", "concat", Status.CANCELLED)
    p.event("merge", "concat", NOT_NEEDED)
    console.print(p._render())
    lines = [line.split() for line in console.file.getvalue().splitlines()]  # type: ignore[attr-defined]
    row = next(line for line in lines if line[0] == "concat")
    assert row[:5] == ["concat", "resolver", "merge", "not", "needed"]


@pytest.mark.sandbox
@pytest.mark.usefixtures("no_leftovers")
def test_the_example_s_resolver_and_plugin_boot_while_its_processors_work(
        tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "ex", ignore=shutil.ignore_patterns("expected"))
    path, out = tmp_path / "trace.json", tmp_path / "out"
    proc, data = run_json(tmp_path / "ex" / "pipeline.yaml", "--out", out, "--no-cache",
                          "--trace", path, tmpdir=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    assert tree(out) == tree(EXAMPLES / "expected")  # the same result as ever
    trace = Trace(path)
    calls = [e for name in ("upper", "substitute", "license")
             for e in trace.row(f"processor {name}") if e["name"] == f"call {name}"]
    processors_done = max(end(e) for e in calls)
    merge = trace.one("build", "merge")
    for row in ("resolver concat", "plugin stamp"):
        start = trace.one(row, "start")
        # its boot began while the processors worked, before the merge that needs it
        assert start["ts"] < processors_done and start["ts"] < merge["ts"], (row, start)
    assert [e["name"] for e in trace.row("resolver concat")].count("call concat") == 2
    assert {c["status"] for c in data["components"]} == {"ok"}


@pytest.mark.sandbox
@pytest.mark.usefixtures("no_leftovers")
@pytest.mark.parametrize("component", ["never_ready", "exit_at_start"])
def test_a_local_resolver_nobody_needs_neither_fails_nor_delays_the_build(
        tmp_path: Path, template: Path, component: str) -> None:
    """Real processes: a resolver whose globs match no conflict, never ready (its start is cut
    short after the merge, not waited for until the 120 s readiness timeout) or exiting at
    start (a warning line, not an error); nothing is left running."""
    pipeline = write_pipeline(
        tmp_path / "p.yaml", template, [("a", "ok_processor", {}), ("b", "ok_processor", {})],
        [("spare", component, ["nothing/**"], {})])
    proc = run_cli("run", pipeline, "--out", tmp_path / "out", "--ready-timeout", "120",
                   "--timeout", "100", tmpdir=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert "boride: merge resolver spare: not needed" in lines
    warned = [line for line in lines if "started ahead of need" in line]
    if component == "never_ready":
        assert "boride: start resolver spare: cancelled" in lines and not warned
    else:
        assert len(warned) == 1 and "resolver 'spare', started ahead of need, was not needed; " \
            "its start failed: exited with code 3" in warned[0], lines
    assert (tmp_path / "out" / "src" / "a.txt").exists()
