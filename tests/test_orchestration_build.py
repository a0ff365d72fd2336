"""A build's orchestration on the fake runtime (in-process components, milliseconds): the
stages' result, the merge with resolvers (a conflict goes to the resolver whose globs match
it, with every version and its layer; without one the last processor wins), one instance per
runnable shared by its steps, and the build's use of the cache."""

from __future__ import annotations

from pathlib import Path

from boride import cache
from boride.runtime.fake import Behaviour, FakeRuntime
from tests.fake_support import by_name, plan, plugin, processor, resolver, run
from tests.helpers import DIR, tree

GOOD = {"ok": Behaviour(), "join": Behaviour(), "plug": Behaviour()}


async def test_processors_merge_and_plugins_give_the_result(tmp_path: Path,
                                                             template: Path) -> None:
    runtime = FakeRuntime(GOOD)
    result = await run(plan(template, [processor("a", suffix="<a>", files={"a.only": "A"})],
                            plugins=[plugin("one", line="one"), plugin("two", line="two")]),
                       runtime, tmp_path)
    assert result.ok, result.errors
    assert [(c.name, c.status) for c in result.components] == [
        ("a", "ok"), ("one", "ok"), ("two", "ok")]
    assert tree(tmp_path / "out") == {
        "README.md": b"# readme\n<a>one\ntwo\n", "a.only": b"Aone\ntwo\n",
        "src": DIR, "src/a.txt": b"alpha\n<a>one\ntwo\n",
        "src/deep": DIR, "src/deep/b.txt": b"beta\n<a>one\ntwo\n"}
    # the stages took their turns, each timed
    assert list(result.stages) == ["start", "process", "merge", "plugins", "output"]
    assert runtime.live == set() and runtime.areas == {}


async def test_without_a_resolver_the_last_processor_wins(tmp_path: Path,
                                                          template: Path) -> None:
    runtime = FakeRuntime({"ok": Behaviour(), "other": Behaviour()})
    result = await run(plan(template, [processor("first", suffix="1"),
                                       processor("second", "other", suffix="2")]),
                       runtime, tmp_path)
    assert result.ok, result.errors
    assert (tmp_path / "out" / "src" / "a.txt").read_text() == "alpha\n2"
    assert (tmp_path / "out" / "README.md").read_text() == "# readme\n2"


async def test_a_conflict_goes_to_the_resolver_whose_globs_match_it(tmp_path: Path,
                                                                    template: Path) -> None:
    runtime = FakeRuntime({**GOOD, "other": Behaviour()})
    result = await run(plan(template, [processor("first", suffix="1"),
                                       processor("second", "other", suffix="2")],
                            resolvers=[resolver("join", ("src/**",), separator="|")]),
                       runtime, tmp_path)
    assert result.ok, result.errors
    out = tmp_path / "out"
    assert (out / "src" / "a.txt").read_text() == "alpha\n1|alpha\n2"
    assert (out / "src" / "deep" / "b.txt").read_text() == "beta\n1|beta\n2"
    assert (out / "README.md").read_text() == "# readme\n2"  # no resolver for it: last wins
    (join,) = [i for i in runtime.instances if i.component.name == "join"]
    asked = sorted(c.body["files"][0]["path"] for c in join.calls)
    assert asked == ["src/a.txt", "src/deep/b.txt"]
    files = next(c.body["files"] for c in join.calls if c.body["files"][0]["path"] == "src/a.txt")
    assert [(f["content"], f["origin"]["layer"]) for f in files] == [
        ("alpha\n1", 0), ("alpha\n2", 1)]
    assert {f["origin"]["template"] for f in files} == {template.name}
    assert all(c.body["config"] == {"separator": "|"} for c in join.calls)


async def test_no_conflict_calls_no_resolver(tmp_path: Path, template: Path) -> None:
    runtime = FakeRuntime(GOOD)
    result = await run(plan(template, [processor("only")], resolvers=[resolver("join")]),
                       runtime, tmp_path)
    assert result.ok, result.errors
    assert "join" not in runtime.counts.started  # never needed, never started


async def test_a_resolver_answering_garbage_fails_the_merge_naming_it_and_the_path(
        tmp_path: Path, template: Path) -> None:
    runtime = FakeRuntime({**GOOD, "other": Behaviour(),
                           "bad-join": Behaviour(fails="http_500",
                                                 error="KeyError: 'separator'")})
    result = await run(plan(template, [processor("first"), processor("second", "other")],
                            resolvers=[resolver("bad", ("README.md",), key="bad-join")]),
                       runtime, tmp_path)
    assert not result.ok
    status, error = by_name(result)["bad"]
    assert status == "failed"
    assert "'README.md'" in error and "HTTP 500" in error
    assert "its error: KeyError: 'separator'" in error
    assert any("resolver 'bad'" in e and "KeyError: 'separator'" in e for e in result.errors)
    assert not (tmp_path / "out").exists()


async def test_steps_of_one_runnable_share_one_instance_each_with_its_own_config(
        tmp_path: Path, template: Path) -> None:
    runtime = FakeRuntime(GOOD)
    steps = [processor(f"p{i}", files={f"own-{i}.txt": f"config {i}"}) for i in range(8)]
    result = await run(plan(template, steps), runtime, tmp_path)
    assert result.ok, result.errors
    assert runtime.counts.started == ["p0"]  # one instance for the eight steps
    (instance,) = runtime.instances
    assert len(instance.calls) == 8
    assert len({c.body["writeDir"] for c in instance.calls}) == 8  # each its own writeDir
    files = tree(tmp_path / "out")
    assert all(files[f"own-{i}.txt"] == f"config {i}".encode() for i in range(8))
    assert [c.status for c in result.components] == ["ok"] * 8


async def test_a_failing_step_fails_alone_on_a_shared_instance(tmp_path: Path,
                                                               template: Path) -> None:
    runtime = FakeRuntime(GOOD)
    steps = [processor("good"), processor("bad", fake="http_500",
                                          error="ValueError: this step's input is wrong"),
             processor("also-good")]
    result = await run(plan(template, steps), runtime, tmp_path)
    assert not result.ok
    status = by_name(result)
    assert status["good"] == ("ok", None) and status["also-good"] == ("ok", None)
    assert status["bad"][0] == "failed"
    assert "its error: ValueError: this step's input is wrong" in status["bad"][1]
    assert len(result.errors) == 1 and "processor 'bad'" in result.errors[0]


async def test_the_shared_instance_dying_fails_every_step_using_it(tmp_path: Path,
                                                                   template: Path) -> None:
    runtime = FakeRuntime({**GOOD, "other": Behaviour()})
    steps = [processor("dies", fake="die", error="Error: out of memory", delay=0.01),
             *(processor(f"s{i}", delay=0.5) for i in range(3)),
             processor("fine", "other")]
    result = await run(plan(template, steps), runtime, tmp_path)
    status = by_name(result)
    for name in ["dies", "s0", "s1", "s2"]:
        assert status[name][0] == "failed", (name, status[name])
        assert "exited with code 1" in status[name][1], (name, status[name])
        assert "its error: Error: out of memory" in status[name][1]
    assert status["fine"] == ("ok", None)


async def test_a_processor_and_a_plugin_of_one_image_are_two_instances(
        tmp_path: Path, template: Path) -> None:
    runtime = FakeRuntime({"same": Behaviour()})
    result = await run(plan(template, [processor("p", "same", suffix="!")],
                            plugins=[plugin("q", "same", line="q")]), runtime, tmp_path)
    assert result.ok, result.errors
    assert runtime.counts.started == ["p", "q"]
    assert (tmp_path / "out" / "README.md").read_text() == "# readme\n!q\n"


# -- the cache -------------------------------------------------------------------------------

def calls(runtime: FakeRuntime, name: str) -> int:
    return sum(len(i.calls) for i in runtime.instances if i.component.name == name)


async def test_a_second_build_with_the_same_inputs_does_not_call_the_processor(
        tmp_path: Path, template: Path) -> None:
    store = cache.Cache(tmp_path / "cache")
    the_plan = plan(template, [processor("a", suffix="+a"), processor("b", "other", suffix="+b")],
                    plugins=[plugin("stamp", line="s")])
    runtime = FakeRuntime({**GOOD, "other": Behaviour()})
    first = await run(the_plan, runtime, tmp_path, cache=store)
    assert first.ok, first.errors
    before = tree(tmp_path / "out")
    second = await run(the_plan, runtime, tmp_path, cache=store)
    assert second.ok, second.errors
    assert {c.name: c.cached for c in second.components} == {"a": True, "b": True,
                                                             "stamp": False}
    assert calls(runtime, "a") == calls(runtime, "b") == 1  # the first build's only
    assert runtime.counts.started.count("a") == 1  # not even started the second time
    assert calls(runtime, "stamp") == 2  # plugins are always called
    assert tree(tmp_path / "out") == before


async def test_what_changed_is_called_again_the_rest_comes_from_the_cache(
        tmp_path: Path, template: Path) -> None:
    store = cache.Cache(tmp_path / "cache")
    runtime = FakeRuntime({"ok": Behaviour(), "other": Behaviour()})
    await run(plan(template, [processor("a", suffix="1"), processor("b", "other")]),
              runtime, tmp_path, cache=store)
    changed = await run(plan(template, [processor("a", suffix="2"), processor("b", "other")]),
                        runtime, tmp_path, cache=store)
    assert {c.name: c.cached for c in changed.components} == {"a": False, "b": True}
    assert (tmp_path / "out" / "src" / "a.txt").read_text() == "alpha\n"  # b's (last) copy

    runtime.behaviours["other"] = Behaviour(version="2")  # a new version of b's component
    (template / "new.txt").write_text("new\n")  # and a template edit: everything again
    again = await run(plan(template, [processor("a", suffix="2"), processor("b", "other")]),
                      runtime, tmp_path, cache=store)
    assert {c.name: c.cached for c in again.components} == {"a": False, "b": False}
    assert (tmp_path / "out" / "new.txt").read_text() == "new\n"


async def test_a_step_that_opts_out_of_the_cache_is_always_called(tmp_path: Path,
                                                                  template: Path) -> None:
    store = cache.Cache(tmp_path / "cache")
    runtime = FakeRuntime(GOOD)
    the_plan = plan(template, [processor("clock", cacheable=False)])
    for _ in range(2):
        result = await run(the_plan, runtime, tmp_path, cache=store)
        assert result.ok and not result.components[0].cached
    assert calls(runtime, "clock") == 2
    assert store.info().entries == 0


async def test_a_failed_call_stores_nothing(tmp_path: Path, template: Path) -> None:
    store = cache.Cache(tmp_path / "cache")
    runtime = FakeRuntime({"ok": Behaviour(), "flaky": Behaviour(fails="http_500")})
    result = await run(plan(template, [processor("a"), processor("f", "flaky")]),
                       runtime, tmp_path, cache=store)
    assert not result.ok
    runtime.behaviours["flaky"] = Behaviour()  # (same identity: only the result differs)
    again = await run(plan(template, [processor("a"), processor("f", "flaky")]),
                      runtime, tmp_path, cache=store)
    assert again.ok, again.errors
    assert {c.name: c.cached for c in again.components} == {"a": True, "f": False}
