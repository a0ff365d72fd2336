"""One instance per distinct component (issue 13): steps that name the same runnable (the same
command in the same folder, or the same image) share one running instance; their calls go to it
concurrently, each with its own config and its own ``writeDir``; each step keeps its own result."""

from __future__ import annotations

from pathlib import Path

from boride.config import Limits
from boride.model import load
from boride.pipeline import BuildOptions, build
from boride.runtime.base import Instance, Workspace
from boride.runtime.local import LocalRuntime
from boride.types import Component
from tests.conftest import PipelineFactory, tree


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
