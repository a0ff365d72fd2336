"""The lifetime rule of a one-shot build on the fake runtime: an instance lives from shortly
before its first call to right after its last. Processors start on demand, in the order of
their first call, at most 2 x parallelism alive at once; a resolver starts ahead (when a
conflict is possible) and stops after the merge; each plugin starts while the one before it
works and stops after its call; a step whose output comes from the cache starts nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from boride import cache
from boride.runtime.fake import Behaviour, FakeRuntime
from boride.types import Kind
from tests.fake_support import plan, plugin, processor, resolver, run


def before(events: list[str], first: str, then: str) -> bool:
    """Whether the event ``first`` happened before ``then`` (both happened)."""
    return events.index(first) < events.index(then)


@pytest.mark.parametrize("parallelism", [1, 3])
async def test_at_most_twice_the_parallelism_alive_in_a_40_processor_build(
        tmp_path: Path, template: Path, parallelism: int) -> None:
    runtime = FakeRuntime(default=Behaviour())
    steps = [processor(f"p{i}", f"proc-{i}", suffix=f"<{i}>", files={f"out/{i}.txt": str(i)})
             for i in range(40)]
    result = await run(plan(template, steps, [resolver("join", ("src/deep/**",),
                                                       separator="")],
                            [plugin(f"plug{i}", f"plug-{i}", line=f"plug{i}") for i in range(3)]),
                       runtime, tmp_path, parallelism=parallelism)
    assert result.ok, result.errors
    assert sorted(runtime.counts.started) == sorted(
        [f"p{i}" for i in range(40)] + ["join"] + [f"plug{i}" for i in range(3)])  # each once
    assert runtime.counts.peak[Kind.PROCESSOR] <= 2 * parallelism
    assert runtime.counts.peak[Kind.RESOLVER] == 1
    assert runtime.counts.peak[Kind.PLUGIN] <= 2  # the plugin in use and the next one
    assert runtime.live == set()
    out = tmp_path / "out"
    # the result is as with every component alive at once: step order, resolver, plugins
    assert sorted(p.name for p in (out / "out").iterdir()) == sorted(f"{i}.txt"
                                                                     for i in range(40))
    assert (out / "src" / "a.txt").read_text() == "alpha\n<39>plug0\nplug1\nplug2\n"
    assert (out / "src" / "deep" / "b.txt").read_text() == (
        "".join(f"beta\n<{i}>" for i in range(40)) + "plug0\nplug1\nplug2\n")


async def test_processors_start_in_the_order_of_their_first_call_and_stop_after_it(
        tmp_path: Path, template: Path) -> None:
    runtime = FakeRuntime(default=Behaviour())
    steps = [processor("a", "one"), processor("b", "two"), processor("a-again", "one"),
             processor("c", "three")]
    result = await run(plan(template, steps, plugins=[plugin("stamp")]), runtime, tmp_path,
                       parallelism=1)
    assert result.ok, result.errors
    events = runtime.counts.events
    starts = [e.split()[1] for e in events if e.startswith("start ") and e != "start stamp"]
    assert starts == ["a", "b", "c"]  # a's instance serves a-again too: its calls together
    calls = [e.split()[1] for e in events if e.startswith("call ") and "process" in e]
    assert calls == ["a", "a", "b", "c"]
    for name in ("a", "b", "c"):  # stopped after its last call, before the plugins work
        last_end = max(i for i, e in enumerate(events) if e.startswith(f"end {name} "))
        assert last_end < events.index(f"stop {name}") < events.index("call stamp /api/plug")


async def test_a_resolver_starts_ahead_when_a_conflict_is_possible_and_stops_after_the_merge(
        tmp_path: Path, template: Path) -> None:
    runtime = FakeRuntime(default=Behaviour())
    result = await run(plan(template, [processor("a", "one"), processor("b", "two")],
                            [resolver("join", ("src/**",))], [plugin("stamp")]),
                       runtime, tmp_path)
    assert result.ok, result.errors
    events = runtime.counts.events
    # after the processors' starts, ahead of need (tests/test_early_boots.py)
    assert before(events, "start b", "start join")
    assert before(events, "stop join", "call stamp /api/plug")


async def test_each_plugin_starts_while_the_one_before_it_works(tmp_path: Path,
                                                                template: Path) -> None:
    runtime = FakeRuntime(default=Behaviour())
    result = await run(plan(template, [processor("p")],
                            plugins=[plugin("one", "first", delay=0.05),
                                     plugin("two", "second", delay=0.05),
                                     plugin("three", "third")]), runtime, tmp_path)
    assert result.ok, result.errors
    events = runtime.counts.events
    assert before(events, "start two", "end one /api/plug")
    assert before(events, "start three", "end two /api/plug")
    assert before(events, "stop one", "call two /api/plug")
    assert before(events, "stop two", "call three /api/plug")
    assert runtime.counts.peak[Kind.PLUGIN] <= 2


async def test_a_failing_start_stops_nothing_else_and_leaves_nothing_running(
        tmp_path: Path, template: Path) -> None:
    runtime = FakeRuntime({"bad": Behaviour(exit_at_start=1)}, default=Behaviour())
    steps = [*(processor(f"p{i}", f"proc-{i}") for i in range(6)),
             processor("bad", "bad"), processor("bad-again", "bad")]
    result = await run(plan(template, steps), runtime, tmp_path, parallelism=1, out=False)
    assert not result.ok
    status = {c.name: c.status for c in result.components}
    assert status["bad"] == status["bad-again"] == "failed"
    assert all(status[f"p{i}"] == "ok" for i in range(6))
    assert runtime.counts.started.count("bad") == 1  # one instance for both steps
    assert runtime.counts.peak[Kind.PROCESSOR] <= 2
    assert runtime.live == set()


async def test_a_cached_step_starts_nothing(tmp_path: Path, template: Path) -> None:
    store = cache.Cache(tmp_path / "cache")
    runtime = FakeRuntime(default=Behaviour())
    the_plan = plan(template, [processor("pure", "pure"), processor("clock", "clock",
                                                                    cacheable=False)],
                    plugins=[plugin("stamp")])
    assert (await run(the_plan, runtime, tmp_path, cache=store)).ok
    runtime.counts.started.clear()
    again = await run(the_plan, runtime, tmp_path, cache=store)
    assert again.ok, again.errors
    assert runtime.counts.started == ["clock", "stamp"]
