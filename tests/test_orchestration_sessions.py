"""Sessions on the fake runtime: a work area and the components running for it, kept across
builds (the HTTP API's); starting (once per runnable), restarting what died, dropping,
closing (everything stopped, the area removed), and builds in a kept session that use what
runs, start what is missing and leave the session ready for the next."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from boride.config import Limits, Timeouts
from boride.pipeline import Build, BuildOptions, ComponentsFailed, Session
from boride.runtime.fake import Behaviour, FakeRuntime
from boride.types import Component, Kind
from tests.fake_support import plan, plugin, processor, resolver


def proc(name: str, key: str = "ok") -> Component:
    return Component(name, Kind.PROCESSOR, image=key)


async def opened(runtime: FakeRuntime, tmp_path: Path, template: Path,
                 sid: str = "s1") -> Session:
    return await Session.opened(runtime, sid, template, work_root=tmp_path / "work")


async def test_a_session_starts_each_runnable_once_and_close_removes_everything(
        tmp_path: Path, template: Path) -> None:
    runtime = FakeRuntime({"ok": Behaviour(), "other": Behaviour()})
    session = await opened(runtime, tmp_path, template)
    assert session.root is not None and session.root.is_dir()
    started = await session.start([proc("a"), proc("a-too"), proc("b", "other")])
    assert [c.name for c in started] == ["a", "b"]  # a-too is a's runnable
    assert sorted(session.instances) == ["a", "b"]
    assert session.name_of(proc("a-too")) == "a"
    assert await session.start([proc("a"), proc("b", "other")]) == []  # running already
    await session.close()
    assert runtime.live == set() and runtime.areas == {}
    assert not session.root.exists() and session.leftovers == []


async def test_a_start_failure_names_the_component_and_drops_only_it(
        tmp_path: Path, template: Path) -> None:
    runtime = FakeRuntime({"ok": Behaviour(), "mute": Behaviour(
        never_ready=True, output=("OSError: port 5551 in use",))})
    session = await opened(runtime, tmp_path, template)
    try:
        with pytest.raises(ComponentsFailed) as failed:
            await session.start([proc("a"), proc("m", "mute")], ready_timeout=0.05)
        (error,) = failed.value.errors
        assert error.startswith("processor 'm': not ready after 0.05s")
        assert "its error: OSError: port 5551 in use" in error
        assert [c.name for c in failed.value.failed] == ["m"]
        assert list(session.instances) == ["a"]  # the others keep running
        assert runtime.alive() == ["a"]
    finally:
        await session.close()


async def test_what_died_is_dropped_and_started_again(tmp_path: Path, template: Path) -> None:
    runtime = FakeRuntime({"ok": Behaviour(), "other": Behaviour()})
    session = await opened(runtime, tmp_path, template)
    try:
        await session.start([proc("a"), proc("b", "other")])
        first = session.instances["a"]
        runtime.instances[0].exit(137, "Killed")
        assert await session.drop_dead() == ["a"]
        assert list(session.instances) == ["b"]
        assert await session.start([proc("a"), proc("b", "other")]) == [proc("a")]
        assert session.instances["a"] is not first
        assert runtime.counts.started == ["a", "b", "a"]
    finally:
        await session.close()


async def test_a_dropped_component_is_stopped_and_started_anew(tmp_path: Path,
                                                              template: Path) -> None:
    runtime = FakeRuntime({"ok": Behaviour()})
    session = await opened(runtime, tmp_path, template)
    try:
        await session.start([proc("a")])
        assert await session.drop(["a", "not-running"]) == []
        assert session.instances == {} and runtime.live == set()
        assert runtime.counts.stopped == ["a"]
        await session.start([proc("a")])
        assert runtime.counts.started == ["a", "a"]
    finally:
        await session.close()


async def test_a_kept_session_s_area_stays(tmp_path: Path, template: Path) -> None:
    runtime = FakeRuntime({"ok": Behaviour()})
    session = Session(runtime, "kept", work_root=tmp_path / "work", keep=True)
    await session.open(template)
    await session.start([proc("a")])
    kept = await session.close()
    assert kept is not None and kept.is_dir() and runtime.live == set()


def files_of(chunks: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(chunks), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isfile()}


async def test_builds_in_a_kept_session_reuse_its_components(tmp_path: Path,
                                                             template: Path) -> None:
    runtime = FakeRuntime({"ok": Behaviour(), "plug": Behaviour()})
    session = await opened(runtime, tmp_path, template)
    the_plan = plan(template, [processor("a", suffix="!")], plugins=[plugin("stamp")])
    try:
        area = session.workspace.area if session.workspace else None
        assert area is not None
        empty = await area.names()
        for n in range(2):
            build = Build(the_plan, session, BuildOptions())
            result = await build.run()
            assert result.ok, result.errors
            data = b"".join([chunk async for chunk in await build.stream()])
            assert files_of(data)["README.md"] == b"# readme\n!plugged\n"
            assert await build.release() == []
            assert await area.names() == empty  # the build's folders are gone
            assert sorted(session.instances) == ["a", "stamp"]  # alive for the next build
            assert runtime.counts.started == ["a", "stamp"], n  # started by the first only
    finally:
        await session.close()
    assert runtime.live == set()


async def test_a_failed_build_releases_what_failed_and_the_next_starts_it_again(
        tmp_path: Path, template: Path) -> None:
    runtime = FakeRuntime({"ok": Behaviour(), "crashy": Behaviour()})
    session = await opened(runtime, tmp_path, template)
    try:
        failing = plan(template, [processor("a"), processor("c", "crashy", fake="die",
                                                            error="Error: boom")])
        build = Build(failing, session, BuildOptions())
        result = await build.run()
        assert not result.ok
        assert any("processor 'c'" in e and "its error: Error: boom" in e
                   for e in result.errors), result.errors
        await build.release()
        assert list(session.instances) == ["a"]  # the dead one dropped, a lives on
        good = Build(plan(template, [processor("a"), processor("c", "crashy")]), session,
                     BuildOptions())
        assert (await good.run()).ok
        assert runtime.counts.started == ["a", "c", "c"]
    finally:
        await session.close()


async def test_a_build_uses_the_shared_session_s_resolver(tmp_path: Path,
                                                          template: Path) -> None:
    """The API's registry templates run their resolvers in a session of their own, shared by
    the template's sessions: a build calls them there and starts no resolver of its own."""
    runtime = FakeRuntime({"ok": Behaviour(), "other": Behaviour(), "join": Behaviour()})
    shared = await Session.opened(runtime, "shared", template, work_root=tmp_path / "work",
                                  area=False)
    session = await opened(runtime, tmp_path, template)
    join = resolver("join", ("**",), separator="+")
    try:
        await shared.start([join.component])
        build = Build(plan(template, [processor("a", suffix="1"),
                                      processor("b", "other", suffix="2")], [join]),
                      session, BuildOptions(limits=Limits(parallelism=2),
                                            timeouts=Timeouts(ready=5)), shared=shared)
        result = await build.run()
        assert result.ok, result.errors
        data = b"".join([chunk async for chunk in await build.stream()])
        assert files_of(data)["README.md"] == b"# readme\n1+# readme\n2"
        assert runtime.counts.started.count("join") == 1 and "join" not in session.instances
        await build.release()
    finally:
        await session.close()
        await shared.close()
    assert runtime.live == set()
