"""The local runtime's fork server (issue 23): Python components forked from an interpreter
that has already imported the SDK, each as confined as a component started on its own.

The sandbox attacks of tests/test_local_sandbox.py and tests/test_isolation.py run both ways
(the ``both_starts`` fixture); here: what only forking could get wrong, provoked for real
with ``tests/components/fork_probe.py`` in whole ``boride run`` builds.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PipelineFactory
from tests.helpers import COMPONENTS, run_json

pytestmark = [pytest.mark.sandbox, pytest.mark.usefixtures("no_leftovers")]


def probe(tmp_path: Path, name: str) -> list[str]:
    """The command of a fork probe of its own (one script file each: components with the same
    command are one instance)."""
    folder = tmp_path / "probes"
    folder.mkdir(exist_ok=True)
    script = folder / f"{name}.py"
    script.write_text((COMPONENTS / "fork_probe.py").read_text())
    return [sys.executable, str(script)]


def probes(out: Path) -> dict[str, dict[str, Any]]:
    return {p.stem.removeprefix("fork-"): json.loads(p.read_text())
            for p in out.rglob("fork-*.json")}


def build(pipeline: Path, tmp_path: Path, env: dict[str, str] | None = None
          ) -> dict[str, dict[str, Any]]:
    out, work = tmp_path / "out", tmp_path / "work"
    proc, _ = run_json(pipeline, "--out", out, tmpdir=work, env=env)
    assert proc.returncode == 0, proc.stderr
    assert list(work.iterdir()) == [], "work area left behind"
    return probes(out)


def test_a_forked_component_gets_nothing_of_the_server_or_of_another(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    """Two probes, one after the other (parallelism 1), forked from one server: the first holds
    a secret in its config and leaves a mark on the SDK's module; boride runs with a token
    in its environment. The second finds neither secret in its memory or environment, nor
    the mark, sees no process but itself, and runs as another user."""
    secret = f"BORIDESECRET-A-{uuid.uuid4().hex}"
    token = f"BORIDESECRET-T-{uuid.uuid4().hex}"
    look_for = ["BORIDESECRET-A-[0-9a-f]{32}", "BORIDESECRET-T-[0-9a-f]{32}"]
    pipe = make_pipeline([
        ("a", probe(tmp_path, "a"), {"name": "a", "secret": secret, "look_for": look_for[1:]}),
        ("b", probe(tmp_path, "b"), {"name": "b", "look_for": look_for}),
    ], parallelism=1)
    found = build(pipe, tmp_path, env={"BORIDE_TOKEN": token, "BORIDE_LOCAL_FORK": "1"})
    assert set(found) == {"a", "b"}
    for name, report in found.items():
        assert report["preloaded"], f"{name} was not forked from the fork server"
        assert report["processes"] == [1], f"{name} sees other processes: {report}"
        assert report["in_environment"] == [] and report["mark"] is None, (name, report)
    assert found["a"]["in_memory"] == [], "boride's token reached a component"
    assert found["b"]["in_memory"] == [], "another component's secret or boride's token"
    assert found["a"]["dev"] != found["b"]["dev"], "two components share a /dev"
    if os.geteuid() == 0:
        assert found["a"]["uid"] != found["b"]["uid"]
        assert 0 not in (found["a"]["uid"], found["b"]["uid"])


@pytest.mark.parametrize("how", ["fork: false", "BORIDE_LOCAL_FORK=0", "an option first"])
def test_a_component_can_start_in_an_interpreter_of_its_own(
        tmp_path: Path, make_pipeline: PipelineFactory, how: str) -> None:
    """``fork: false`` in the pipeline, the setting off, or a command that is not a plain
    script (an interpreter option before it): started as always, not forked."""
    command = probe(tmp_path, "solo")
    if how == "an option first":
        command = [command[0], "-u", *command[1:]]
    step: dict[str, Any] = {"name": "solo", "command": command,
                            "config": {"name": "solo", "look_for": []},
                            "files": [{"glob": "**/*", "type": "template"}]}
    if how == "fork: false":
        step["fork"] = False
    forked = {"name": "forked", "command": probe(tmp_path, "forked"),
              "config": {"name": "forked", "look_for": []}}
    env = {"BORIDE_LOCAL_FORK": "0" if how == "BORIDE_LOCAL_FORK=0" else "1"}
    found = build(make_pipeline([step, forked]), tmp_path, env=env)
    assert not found["solo"]["preloaded"], found
    assert found["forked"]["preloaded"] is (how != "BORIDE_LOCAL_FORK=0"), found


def test_a_session_whose_fork_server_was_killed_gets_another(tmp_path: Path,
                                                             template: Path) -> None:
    """The session's fork server killed (as an OOM kill would): the component it forked dies
    with it (its keeper is the server's child) and says so; the session's next start gets a
    new server, whose component answers. Driven on the runtime itself."""
    import asyncio

    from boride import health
    from boride.runtime.local import LocalRuntime
    from boride.types import Component, Kind

    async def scenario() -> tuple[int | None, str]:
        runtime = LocalRuntime(fork=True)
        root = tmp_path / "work"
        root.mkdir()
        workspace = await runtime.open_workspace("s1", template, root)
        first, second = (Component(n, Kind.PROCESSOR, tuple(probe(tmp_path, n)),
                                   cwd=tmp_path) for n in ("first", "second"))
        try:
            await runtime.expect(workspace, [first, second])
            one = await runtime.start(workspace, first)
            await health.wait_ready(one, 60)
            assert runtime._root is not None
            runtime._root.process.kill()  # the attack: the fork server dies
            ended = await asyncio.wait_for(one.wait_exit(), 30)
            two = await runtime.start(workspace, second)
            await health.wait_ready(two, 60)
            answer = await two.client.get("/")
            for instance in (one, two):
                await runtime.stop(instance)
            return ended.code, answer.text
        finally:
            await runtime.close_workspace(workspace)

    code, answer = asyncio.run(scenario())
    assert code == 137, "the forked component outlived its fork server"
    assert "OK" in answer


@pytest.mark.parametrize(("argv", "local"), [
    (["run", "p.yaml"], True), (["run", "--runtime", "local", "p.yaml"], True),
    (["run", "--runtime", "docker", "p.yaml"], False), (["run", "--runtime=docker"], False),
    (["serve"], False), ([], False), (["--version"], False), (["run", "--help"], False)])
def test_only_a_local_run_starts_a_fork_server_before_its_command_line_is_read(
        argv: list[str], local: bool) -> None:
    from boride import entry

    assert entry._local_run(argv) is local


def test_the_prestarted_fork_server_goes_to_a_session_with_its_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``boride run`` starts one before it has loaded: its session takes that one (the same
    interpreter and environment), never a second time; another environment gets its own."""
    from boride.runtime import forking

    monkeypatch.setattr(forking, "_spare", None)
    monkeypatch.setenv("BORIDE_LOCAL_FORK", "1")
    forking.prestart()
    spare = forking._spare
    assert spare is not None and spare.process.poll() is None
    servers = [spare]
    try:
        env = forking.component_env()
        servers.append(forking.take(sys.executable, env))
        assert servers[-1] is spare and forking._spare is None
        servers.append(forking.take(sys.executable, env))
        assert servers[-1] is not spare
        forking.prestart()
        servers.append(forking.take(sys.executable, {**env, "OTHER": "1"}))
        assert servers[-1].env["OTHER"] == "1"
    finally:
        for server in {id(s): s for s in servers}.values():
            server.close_now()
            server.process.wait(30)
