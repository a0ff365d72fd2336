"""What components answer is checked (issue 21, items 4 and 6), with real components
(``tests/components/answers.py``) on the local runtime: a resolver answering for another path
is refused, an answer over the bound is refused without being read whole, a component that
ran out of memory says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PipelineFactory
from tests.helpers import component, run_json

pytestmark = [pytest.mark.sandbox, pytest.mark.usefixtures("no_leftovers")]

ANSWERS = "answers"


def by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in data["components"]}


def test_a_resolver_answering_for_another_path_fails_the_build_naming_both(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline(
        [("first", "ok_processor", {"suffix": "[1]"}), ("second", "ok_processor",
                                                        {"suffix": "[2]"})],
        resolvers=[("pick", [*component(ANSWERS), "5553"], ["src/a.txt"],
                    {"path": "README.md"})])
    proc, data = run_json(pipeline, "--out", tmp_path / "out", tmpdir=tmp_path / "work")
    assert proc.returncode == 1, proc.stderr
    expected = "answered for another path: expected 'src/a.txt', got 'README.md'"
    assert data["errors"] == [f"merge: conflict 'src/a.txt', resolver 'pick': {expected}"]
    pick = by_name(data)["pick"]
    assert pick["status"] == "failed" and pick["error"] == f"on 'src/a.txt': {expected}"
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_resolver_answering_for_its_own_path_succeeds(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline(
        [("first", "ok_processor", {"suffix": "[1]"}), ("second", "ok_processor",
                                                        {"suffix": "[2]"})],
        resolvers=[("pick", [*component(ANSWERS), "5553"], ["src/a.txt"],
                    {"path": "./src//a.txt"})])
    proc, _ = run_json(pipeline, "--out", tmp_path / "out", tmpdir=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "src" / "a.txt").read_text() == "alpha\n[1]+alpha\n[2]"
    assert (tmp_path / "out" / "README.md").read_text() == "# readme\n[2]"


# ``boride run`` in a process that prints its own peak memory (VmHWM: the most it ever held)
# on the way out: the components' memory is theirs, not counted.
PEAK = """
import atexit, sys
def peak():
    with open("/proc/self/status") as f:
        kb = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    print(json.dumps({"peak_kb": kb}), file=sys.stderr, flush=True)
import json
atexit.register(peak)
sys.argv[0] = "boride"
from boride.cli import main
main()
"""


def run_measured(pipeline: Path, tmp_path: Path, out: str) -> tuple[int, Any, str, int]:
    """``boride run PIPELINE --json --out OUT``: exit code, report, stderr, peak memory
    (KiB)."""
    (tmp_path / "work").mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", PEAK, "run", str(pipeline), "--json",
                           "--out", str(tmp_path / out)],
                          env={**os.environ, "TMPDIR": str(tmp_path / "work")},
                          capture_output=True, text=True, timeout=240, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    return proc.returncode, json.loads(proc.stdout), proc.stderr, json.loads(last)["peak_kb"]


def test_an_answer_over_the_bound_fails_the_call_unread(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    """A processor answering 50 MiB of JSON (chunked: no length said first): the call fails
    naming the bound, and boride's memory stays as in a build answered in a few bytes."""
    def pipeline(config: dict[str, Any]) -> Path:
        return make_pipeline([("good", "ok_processor", {}), ("huge", ANSWERS, config)])

    code, data, _, small = run_measured(pipeline({}), tmp_path, "small")
    assert code == 0, data
    code, data, stderr, big = run_measured(pipeline({"huge_mb": 50}), tmp_path, "big")
    assert code == 1, stderr
    huge = by_name(data)["huge"]
    assert huge["status"] == "failed"
    assert huge["error"].startswith("POST /api/process answered more than 1 MiB\n"), \
        huge["error"]
    assert not (tmp_path / "big").exists()
    assert "processor 'huge'" in stderr and "answered more than 1 MiB" in stderr
    assert "Traceback" not in stderr
    # a memory bound, not a timing: reading it whole would take 50 MiB more at the least
    assert big - small < 16 * 1024, (small, big)


def test_a_health_answer_is_not_read(tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    """``GET /`` answering 200 with a body that never ends: ready (only the status counts)."""
    pipeline = make_pipeline([("endless", [*component(ANSWERS), "5551", "--endless-health"],
                               {})])
    proc, data = run_json(pipeline, "--out", tmp_path / "out", "--ready-timeout", "20",
                          tmpdir=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    assert by_name(data)["endless"]["status"] == "ok"


def test_the_bound_is_configurable_and_an_announced_length_is_refused_at_once(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline(
        [("first", "ok_processor", {"suffix": "[1]"}), ("second", "ok_processor",
                                                        {"suffix": "[2]"})],
        resolvers=[("pick", [*component(ANSWERS), "5553"], ["src/a.txt"],
                    {"huge_mb": 4, "announce": True})])
    proc, data = run_json(pipeline, "--out", tmp_path / "out", "--max-answer", "2097152",
                          tmpdir=tmp_path / "work")
    assert proc.returncode == 1, proc.stderr
    pick = by_name(data)["pick"]
    assert pick["status"] == "failed"
    assert "POST /api/resolve answered more than 2 MiB" in pick["error"], pick["error"]
    proc, _ = run_json(pipeline, "--out", tmp_path / "out", "--max-answer", str(8 << 20),
                       tmpdir=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr  # under a larger bound: read (padding ignored)


def test_a_resolver_may_answer_as_much_as_it_was_sent(
        tmp_path: Path, template: Path, make_pipeline: PipelineFactory) -> None:
    """A resolver's bound is the bound plus its request's size: its answer is a merge of
    the versions it was sent (here two of 1.5 MiB, joined: 3 MiB)."""
    big = "b" * (3 << 19)
    (template / "src" / "big.txt").write_text(big)
    pipeline = make_pipeline(
        [("first", "ok_processor", {"suffix": "[1]"}), ("second", "ok_processor",
                                                        {"suffix": "[2]"})],
        resolvers=[("pick", [*component(ANSWERS), "5553"], ["src/big.txt"], {})])
    proc, _ = run_json(pipeline, "--out", tmp_path / "out", tmpdir=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "src" / "big.txt").read_text() == f"{big}[1]+{big}[2]"


@pytest.mark.parametrize(("config", "expected"), [
    ({}, "processor 'greedy': ran out of memory (its limit: 64m): POST /api/process answered "
         "HTTP 500"),
    ({"oom_exit": True}, "processor 'greedy': died during its call: ran out of memory (its "
                         "limit: 64m) and exited with code 1"),
])
def test_a_component_out_of_memory_says_so(tmp_path: Path, make_pipeline: PipelineFactory,
                                           config: dict[str, Any], expected: str) -> None:
    """The local runtime limits each process's data (RLIMIT_DATA, no cgroup: nothing is
    OOM-killed): an allocation past it is refused, and the component's own words say so."""
    pipeline = make_pipeline([("greedy", ANSWERS, {"allocate_mb": 256, **config})])
    proc, data = run_json(pipeline, "--out", tmp_path / "out", tmpdir=tmp_path / "work",
                          env={"BORIDE_LOCAL_MEMORY": "64m"})
    assert proc.returncode == 1, proc.stderr
    (error,) = data["errors"]
    assert error.startswith(expected), error
    assert "its error: MemoryError" in error
    assert expected in proc.stderr
