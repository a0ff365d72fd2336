"""One instance per distinct component (issue 13): steps that name the same runnable (the same
command in the same folder, or the same image) share one running instance; their calls go to it
concurrently, each with its own config and its own ``writeDir``; each step keeps its own result."""

from __future__ import annotations

from pathlib import Path

import pytest

from boride.config import Limits
from boride.model import load
from boride.pipeline import BuildOptions, build
from boride.runtime.base import Instance, Workspace
from boride.runtime.local import LocalRuntime
from boride.types import Component
from tests.conftest import PipelineFactory, tree

pytestmark = pytest.mark.sandbox


class Counting(LocalRuntime):
    """The local runtime, counting the instances it starts."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[str] = []

    async def start(self, workspace: Workspace, component: Component) -> Instance:
        self.started.append(component.name)
        return await super().start(workspace, component)


async def test_eight_steps_of_one_component_share_one_instance(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    steps = [(f"p{i}", "ok_processor", {"files": {f"own-{i}.txt": f"config {i}"},
                                        "delay": 0.2}) for i in range(8)]
    pipeline = load(make_pipeline(steps, parallelism=4))
    runtime = Counting()
    out = tmp_path / "out"
    result = await build(pipeline, runtime, BuildOptions(out=out, work_root=tmp_path / "w"))
    assert result.ok, result.errors
    assert runtime.started == ["p0"]  # one instance for the eight steps
    files = tree(out)
    for i in range(8):  # each call had its own config and its own writeDir
        assert files[f"own-{i}.txt"] == f"config {i}".encode()
    assert [(c.name, c.status) for c in result.components] == [
        (f"p{i}", "ok") for i in range(8)]


async def test_a_failing_step_fails_alone_on_a_shared_instance(
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
    assert runtime.started == ["good"]


async def test_a_shared_instance_dying_fails_every_step_with_the_cause(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    steps = [(f"d{i}", "die_during_call", {}) for i in range(3)]
    pipeline = load(make_pipeline(steps, parallelism=3))
    runtime = Counting()
    result = await build(pipeline, runtime, BuildOptions(work_root=tmp_path / "w"))
    assert not result.ok
    assert runtime.started == ["d0"]
    for c in result.components:
        assert c.status == "failed", c
        assert "died during its call" in (c.error or "") or "exited" in (c.error or ""), c


def test_a_cyan_naming_one_processor_four_times_uses_its_one_instance(tmp_path: Path) -> None:
    """In the API: one instance per pinned component id per session. The cyan's four uses of
    ``me/one`` (four configs) go to the instance ``POST /executor`` started."""
    from tests.conftest import boride_processes
    from tests.test_server import _try_setup, files_of
    from tests.test_server_support import build_body, entry, running_server, template_body

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
        files = files_of(r.content)
        assert {f"f{i}.txt": str(i).encode() for i in range(4)}.items() <= files.items()
        assert [p for p in boride_processes() if "ok_processor" in p] == started
        state = server.service.sessions[sid]
        assert list(state.session.instances) == ["me/one:1"]
        assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
