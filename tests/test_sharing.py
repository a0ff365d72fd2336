"""One instance per distinct component (issue 13, part 1): steps naming the same runnable (the
same image, or the same command and working folder) call one running instance, concurrently,
each call with its own config and its own ``writeDir``; each step keeps its own result. In a
build (``by_config``, which reports each call, and ``ok_processor``) and in the API (one
instance per pinned component id per session)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from boride.config import Limits
from boride.model import load
from boride.pipeline import BuildOptions, BuildResult, build
from boride.runtime.base import Instance, Workspace
from boride.runtime.local import LocalRuntime
from boride.types import Component
from tests.conftest import PipelineFactory, boride_processes
from tests.helpers import archive_files, tree
from tests.test_server import _try_setup
from tests.test_server_support import (
    build_body,
    entry,
    new_id,
    running_server,
    template_body,
    write_registry,
)

pytestmark = [pytest.mark.sandbox, pytest.mark.usefixtures("no_leftovers")]


class Counting(LocalRuntime):
    """The local runtime, counting what it starts."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[Component] = []

    async def start(self, workspace: Workspace, component: Component) -> Instance:
        self.started.append(component)
        return await super().start(workspace, component)


async def run(pipeline: Path, tmp_path: Path, parallelism: int = 4
              ) -> tuple[BuildResult, Counting, Path]:
    runtime = Counting()
    out = tmp_path / "out"
    result = await build(load(pipeline), runtime, BuildOptions(
        limits=Limits(parallelism=parallelism), out=out, work_root=tmp_path / "work"))
    return result, runtime, out


def by_name(result: BuildResult) -> dict[str, Any]:
    return {c.name: c for c in result.components}


async def test_eight_steps_of_one_component_share_one_instance(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    steps = [(f"s{i}", "by_config", {"tag": f"t{i}", "delay": 0.2}) for i in range(8)]
    pipeline = make_pipeline([*steps, ("other", "ok_processor", {"suffix": "!"})])
    result, runtime, out = await run(pipeline, tmp_path)
    assert result.ok, result.errors
    # by_config once, ok_processor once: two instances for nine steps
    assert sorted(c.name for c in runtime.started) == ["other", "s0"]
    assert [c.name for c in result.components] == [*(f"s{i}" for i in range(8)), "other"]
    assert {c.status for c in result.components} == {"ok"}
    calls = {p.stem: p.read_text().split() for p in (out / "calls").iterdir()}
    assert sorted(calls) == [f"t{i}" for i in range(8)]  # each step's own config
    assert all(tag == name for name, (tag, _, _) in calls.items())
    assert len({pid for _, pid, _ in calls.values()}) == 1  # one process answered them all
    assert len({wd for _, _, wd in calls.values()}) == 8  # each call its own writeDir
    assert (out / "src" / "a.txt").read_text() == "alpha\n!"


async def test_a_failing_step_fails_alone_on_a_shared_instance(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline([("a", "by_config", {"tag": "a", "delay": 0.3}),
                              ("bad", "by_config", {"tag": "bad", "fail": True}),
                              ("c", "by_config", {"tag": "c", "delay": 0.3})])
    result, runtime, out = await run(pipeline, tmp_path)
    assert len(runtime.started) == 1
    assert not result.ok and not out.exists()
    steps = by_name(result)
    assert steps["bad"].status == "failed"
    assert "HTTP 500" in steps["bad"].error and "fails as asked" in steps["bad"].error
    assert (steps["a"].status, steps["c"].status) == ("ok", "ok")
    assert steps["a"].error is None and steps["c"].error is None
    assert any("'bad'" in e for e in result.errors)
    assert not any("'a'" in e or "'c'" in e for e in result.errors)


async def test_the_shared_instance_dying_fails_every_step_using_it(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    steps = [(f"s{i}", "by_config", {"tag": f"t{i}", "delay": 2}) for i in range(5)]
    # parallelism 3: "dies" and s0, s1 in flight when it dies; s2 to s4 called after
    pipeline = make_pipeline([("dies", "by_config", {"tag": "x", "die": True, "delay": 0.3}),
                              *steps, ("fine", "ok_processor", {})])
    result, runtime, _ = await run(pipeline, tmp_path, parallelism=3)
    assert len(runtime.started) == 2
    steps_ = by_name(result)
    for name in [*(f"s{i}" for i in range(5)), "dies"]:
        assert steps_[name].status == "failed", (name, steps_[name])
        assert "exited with code 7" in steps_[name].error, (name, steps_[name].error)
    assert steps_["fine"].status == "ok"
    assert sum("exited with code 7" in e for e in result.errors) == 6


async def test_a_start_failure_fails_every_step_of_that_component(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline([("x1", "exit_at_start", {}), ("x2", "exit_at_start", {})])
    result, runtime, _ = await run(pipeline, tmp_path)
    assert len(runtime.started) == 1
    assert [c.status for c in result.components] == ["failed", "failed"]
    assert all(c.error and "exited" in c.error for c in result.components)


async def test_same_command_as_another_kind_is_another_instance(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    """The kind is part of what runs (a processor and a plugin listen on different ports)."""
    pipeline = make_pipeline([("p1", "ok_processor", {"suffix": "1"}),
                              ("p2", "ok_processor", {"suffix": "2"})],
                             plugins=[("one", "ok_plugin", {"line": "one"}),
                                      ("two", "ok_plugin", {"line": "two"})])
    result, runtime, out = await run(pipeline, tmp_path)
    assert result.ok, result.errors
    assert sorted((c.kind.value, c.name) for c in runtime.started) == [
        ("plugin", "one"), ("processor", "p1")]
    assert (out / "README.md").read_text() == "# readme\n2one\ntwo\n"


def test_api_runs_one_instance_per_pinned_component_in_a_session(tmp_path: Path) -> None:
    """A cyan naming one processor three times (two names of the same pinned id) starts
    nothing beyond ``POST /executor``'s one instance, and each step gets its own config."""
    dev = tmp_path / "dev"
    folder = dev / "tpl"
    folder.mkdir(parents=True)
    (folder / "README.md").write_text("# readme\n")
    p = entry("me/by", "by_config")
    registry = write_registry(tmp_path / "registry.yaml", processors=[p])
    from boride.server import ServerConfig
    config = ServerConfig(registry=(str(registry),), dev_root=dev, work_root=tmp_path / "work")
    sid = new_id()
    template = template_body("local-s", [p])
    with running_server(config) as server, server.client() as http:
        r = http.post("/executor/try", json={"sessionId": sid, "localTemplateId": "local-s",
                                             "source": "path", "path": str(folder),
                                             "template": template})
        assert r.status_code == 200, r.text
        start = {"session_id": sid, "template": template, "merger": {"merger_id": "m"}}
        assert http.post("/executor", json=start).json() == {"status": "OK"}
        session = server.service.sessions[sid].session
        assert list(session.instances) == ["me/by:1"]
        first = session.instances["me/by:1"]
        body = build_body(template, [("me/by", {"tag": "a", "delay": 0.2}),
                                     ("me/by:1", {"tag": "b", "delay": 0.2}),
                                     ("me/by", {"tag": "c"})])
        for _ in range(2):
            r = http.post(f"/executor/{sid}", json=body)
            assert r.status_code == 200, r.text
            files = archive_files(r.content)
            assert sorted(files) == ["calls/a.txt", "calls/b.txt", "calls/c.txt"]
            assert len({files[f"calls/{t}.txt"].split()[1] for t in "abc"}) == 1
            assert list(session.instances) == ["me/by:1"]
            assert session.instances["me/by:1"] is first
        assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}


async def test_eight_steps_each_write_their_own_files_through_one_instance(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    steps = [(f"p{i}", "ok_processor", {"files": {f"own-{i}.txt": f"config {i}"},
                                        "delay": 0.2}) for i in range(8)]
    pipeline = load(make_pipeline(steps, parallelism=4))
    runtime = Counting()
    out = tmp_path / "out"
    result = await build(pipeline, runtime, BuildOptions(out=out, work_root=tmp_path / "w"))
    assert result.ok, result.errors
    assert [c.name for c in runtime.started] == ["p0"]  # one instance for the eight steps
    files = tree(out)
    for i in range(8):  # each call had its own config and its own writeDir
        assert files[f"own-{i}.txt"] == f"config {i}".encode()
    assert [(c.name, c.status) for c in result.components] == [
        (f"p{i}", "ok") for i in range(8)]


async def test_a_step_failing_on_its_config_fails_alone_on_a_shared_instance(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    steps = [("good", "ok_processor", {"files": {"good.txt": "g"}}),
             ("bad", "ok_processor", {"fail": "this step's input is wrong"}),
             ("also-good", "ok_processor", {"files": {"also.txt": "a"}})]
    pipeline = load(make_pipeline(steps, parallelism=3))
    runtime = Counting()
    result = await build(pipeline, runtime, BuildOptions(work_root=tmp_path / "w",
                                                         limits=Limits(parallelism=3)))
    assert not result.ok
    by_name = {c.name: c for c in result.components}
    assert by_name["bad"].status == "failed"
    assert "this step's input is wrong" in (by_name["bad"].error or "")
    assert by_name["good"].status == "ok" and by_name["also-good"].status == "ok"
    assert [c.name for c in runtime.started] == ["good"]


async def test_a_shared_instance_dying_fails_every_step_with_the_cause(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    steps = [(f"d{i}", "die_during_call", {}) for i in range(3)]
    pipeline = load(make_pipeline(steps, parallelism=3))
    runtime = Counting()
    result = await build(pipeline, runtime, BuildOptions(work_root=tmp_path / "w"))
    assert not result.ok
    assert [c.name for c in runtime.started] == ["d0"]
    for c in result.components:
        assert c.status == "failed", c
        assert "died during its call" in (c.error or "") or "exited" in (c.error or ""), c


def test_a_cyan_naming_one_processor_four_times_uses_its_one_instance(tmp_path: Path) -> None:
    """In the API: one instance per pinned component id per session. The cyan's four uses of
    ``me/one`` (four configs) go to the instance ``POST /executor`` started."""
    one = entry("me/one", "ok_processor")
    config, folder, sid = _try_setup(tmp_path, processors=[one])
    template = template_body(local_id := "local-four", [one])
    with running_server(config) as server, server.client() as http:
        assert http.post("/executor/try", json={
            "sessionId": sid, "localTemplateId": local_id, "source": "path",
            "path": str(folder), "template": template}).status_code == 200
        assert http.post("/executor", json={"session_id": sid, "template": template}
                         ).json() == {"status": "OK"}
        started = [p for p in boride_processes() if "ok_processor" in p]
        assert list(server.service.sessions[sid].session.instances) == ["me/one:1"]
        body = build_body(template, [("me/one", {"files": {f"f{i}.txt": str(i)}})
                                     for i in range(4)])
        r = http.post(f"/executor/{sid}", json=body)
        assert r.status_code == 200, r.text
        files = archive_files(r.content)
        assert {f"f{i}.txt": str(i).encode() for i in range(4)}.items() <= files.items()
        assert [p for p in boride_processes() if "ok_processor" in p] == started
        state = server.service.sessions[sid]
        assert list(state.session.instances) == ["me/one:1"]
        assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
