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
