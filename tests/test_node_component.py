"""A component on another SDK: a processor in plain Node.js (``tests/components/node``) that
writes to its home at start and exits the process on a request it cannot handle, as the
CyanPrint CLI's Bun components do. ``boride run`` on the local runtime (bubblewrap) and on
Docker (read-only root file system): a good build works, a bad one names the component and
shows its own error and last output."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import COMPONENTS
from tests.docker_helpers import managed_sessions
from tests.helpers import run_json, write_pipeline

NODE = shutil.which("node")
SCRIPT = COMPONENTS / "node" / "processor.js"
IMAGE = "local/boride-test-node-processor:1"  # docker/build_images.py


def pipeline(tmp_path: Path, template: Path, config: Any, runtime: str) -> Path:
    proc: dict[str, Any] = {"name": "node", "config": config, "files": [
        {"glob": "**/*.txt", "exclude": ["**/*.bak"], "type": "template"}]}
    if runtime == "docker":
        proc["image"] = IMAGE
    else:
        proc["command"] = [NODE, str(SCRIPT)]
    return write_pipeline(tmp_path / f"pipeline-{runtime}.yaml", template, [proc])


def run(tmp_path: Path, file: Path, runtime: str, out: Path) -> tuple[int, dict[str, Any]]:
    # The work area goes to a folder of its own, not below the pipeline file's folder (the
    # components' cwd, shown to them read-only, with boride's private work folder in it).
    proc, report = run_json(file, "--runtime", runtime, "--out", out, tmpdir=tmp_path / "tmp")
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, report


def check(tmp_path: Path, template: Path, runtime: str) -> None:
    good = tmp_path / "good"
    code, report = run(tmp_path, pipeline(tmp_path, template, {"suffix": "!"}, runtime),
                       runtime, good)
    assert code == 0, report["errors"]
    assert (good / "src" / "a.txt").read_text() == "alpha\n!"
    assert (good / "src" / "deep" / "b.txt").read_text() == "beta\n!"
    assert not (good / "README.md").exists()  # not matched by its glob
    # what it wrote to its home at start, read back during the call
    assert (good / "home.txt").read_text().startswith("started by node v")

    code, report = run(tmp_path, pipeline(tmp_path, template, {"suffix": 1}, runtime),
                       runtime, tmp_path / "bad")
    assert code == 1, report
    assert report["leftovers"] == []
    (error,) = report["errors"]
    assert error.startswith("processor 'node': died during its call"), error
    assert 'its error: TypeError: config.suffix must be a string, got {"suffix":1}' in error
    assert "node_processor: listening on 5551" in error  # its own last output
    assert " at process_ " not in error  # stack frames left out
    assert not (tmp_path / "bad").exists()


@pytest.mark.sandbox
@pytest.mark.usefixtures("no_leftovers")
@pytest.mark.skipif(NODE is None, reason="needs node")
def test_node_processor_on_the_local_runtime(tmp_path: Path, template: Path) -> None:
    check(tmp_path, template, "local")


@pytest.mark.docker
def test_node_processor_on_docker(tmp_path: Path, template: Path) -> None:
    before = managed_sessions()
    check(tmp_path, template, "docker")
    assert managed_sessions() - before == set()
