"""The lifetime rule of a one-shot build (issue 13, part 2): an instance lives from shortly
before its first call to right after its last; at most 2 x parallelism processors are alive at
once (plus the resolvers with pending conflicts and the plugin in use). API sessions keep their
components between builds: see tests/test_sharing.py's API test."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from boride.config import Limits
from boride.model import load
from boride.pipeline import BuildOptions, build
from boride.runtime.base import Instance, Workspace
from boride.runtime.local import LocalRuntime
from boride.types import Component, Kind
from tests.conftest import COMPONENTS
from tests.helpers import write_pipeline

pytestmark = [pytest.mark.sandbox, pytest.mark.usefixtures("no_leftovers")]


class Live(LocalRuntime):
    """The local runtime, counting the instances alive (started and not stopped yet)."""

    def __init__(self) -> None:
        super().__init__()
        self.alive: dict[Kind, int] = dict.fromkeys(Kind, 0)
        self.most: dict[Kind, int] = dict.fromkeys(Kind, 0)
        self.starts = 0

    async def start(self, workspace: Workspace, component: Component) -> Instance:
        kind = component.kind
        self.starts += 1
        self.alive[kind] += 1
        self.most[kind] = max(self.most[kind], self.alive[kind])
        try:
            return await super().start(workspace, component)
        except BaseException:
            self.alive[kind] -= 1
            raise

    async def stop(self, instance: Instance) -> None:
        try:
            await super().stop(instance)
        finally:
            self.alive[instance.component.kind] -= 1


def distinct(tmp_path: Path, n: int, script: str) -> list[list[str]]:
    """``n`` distinct components (each its own file) running ``tests/components/<script>.py``."""
    folder = tmp_path / "components"
    folder.mkdir(exist_ok=True)
    commands = []
    for i in range(n):
        path = folder / f"{script}_{i}.py"
        shutil.copy(COMPONENTS / f"{script}.py", path)
        commands.append([sys.executable, str(path)])
    return commands


@pytest.mark.parametrize("parallelism", [1, 3])
async def test_at_most_twice_the_parallelism_alive_in_a_40_processor_build(
        tmp_path: Path, template: Path, parallelism: int) -> None:
    procs = distinct(tmp_path, 40, "ok_processor")
    write_pipeline(
        tmp_path / "p.yaml", template,
        [(f"p{i}", cmd, {"suffix": f"<{i}>", "files": {f"out/{i}.txt": str(i)}})
         for i, cmd in enumerate(procs)],
        [("join", distinct(tmp_path, 1, "ok_resolver")[0], ["src/deep/**"], {"separator": ""})],
        [(f"plug{i}", cmd, {"line": f"plug{i}"})
         for i, cmd in enumerate(distinct(tmp_path, 3, "ok_plugin"))],
        files=None, parallelism=parallelism)
    runtime = Live()
    out = tmp_path / "out"
    result = await build(load(tmp_path / "p.yaml"), runtime, BuildOptions(
        limits=Limits(parallelism=parallelism), out=out, work_root=tmp_path / "work"))
    assert result.ok, result.errors
    assert runtime.starts == 44  # each once
    assert runtime.most[Kind.PROCESSOR] <= 2 * parallelism
    assert runtime.most[Kind.RESOLVER] <= 1
    # the plugin in use and the next one, starting meanwhile
    assert runtime.most[Kind.PLUGIN] <= 2
    assert runtime.alive == dict.fromkeys(Kind, 0)
    # the result is as with every component alive at once: step order, resolver, plugins
    assert sorted(p.name for p in (out / "out").iterdir()) == sorted(f"{i}.txt"
                                                                     for i in range(40))
    assert (out / "src" / "a.txt").read_text() == "alpha\n<39>plug0\nplug1\nplug2\n"
    assert (out / "src" / "deep" / "b.txt").read_text() == (
        "".join(f"beta\n<{i}>" for i in range(40)) + "plug0\nplug1\nplug2\n")


async def test_a_component_failing_to_start_fails_its_steps_the_others_run(
        tmp_path: Path, template: Path) -> None:
    procs = distinct(tmp_path, 6, "ok_processor")
    bad = distinct(tmp_path, 1, "exit_at_start")[0]
    write_pipeline(tmp_path / "p.yaml", template,
                   [{"name": f"p{i}", "command": cmd} for i, cmd in enumerate(procs)]
                   + [{"name": "bad", "command": bad}, {"name": "bad-again", "command": bad}],
                   parallelism=1)
    runtime = Live()
    result = await build(load(tmp_path / "p.yaml"), runtime, BuildOptions(
        limits=Limits(parallelism=1), work_root=tmp_path / "work"))
    assert not result.ok
    status = {c.name: (c.status, c.error) for c in result.components}
    assert status["bad"][0] == status["bad-again"][0] == "failed"
    assert "exited" in (status["bad"][1] or "")
    assert all(status[f"p{i}"][0] == "ok" for i in range(6))
    assert runtime.most[Kind.PROCESSOR] <= 2
    assert runtime.alive == dict.fromkeys(Kind, 0)
