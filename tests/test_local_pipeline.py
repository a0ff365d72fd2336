"""``boride run`` end to end on the local runtime, with real cyanprintsdk components.

Each failure mode is provoked for real (a component that answers 500, exits at start, hangs,
lies, ...) and every test checks that no component process and no work area survives.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from boride.config import Limits
from tests.conftest import EXAMPLES, PipelineFactory, boride_processes
from tests.helpers import archive_files, run_cli, run_json, start_cli, tree, write_pipeline

pytestmark = pytest.mark.usefixtures("no_leftovers")


def assert_work_area_gone(work: Path) -> None:
    assert list(work.iterdir()) == [], f"work area left behind: {list(work.iterdir())}"


def by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in data["components"]}


@pytest.mark.sandbox
def test_bundled_example_matches_expected_tree(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc, data = run_json(EXAMPLES / "pipeline.yaml", "--out", out, tmpdir=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    assert data["status"] == "ok" and data["errors"] == []
    assert set(data["stages"]) == {"start", "process", "merge", "plugins", "output"}
    assert all(isinstance(v, float) for v in data["stages"].values())
    assert {c["status"] for c in data["components"]} == {"ok"}
    assert {c["kind"] for c in data["components"]} == {"processor", "resolver", "plugin"}
    assert tree(out) == tree(EXAMPLES / "expected")
    assert_work_area_gone(tmp_path / "work")


@pytest.mark.sandbox
def test_archive_output_has_the_same_files(tmp_path: Path) -> None:
    archive = tmp_path / "result.tar.gz"
    proc = run_cli("run", EXAMPLES / "pipeline.yaml", "--archive", archive, tmpdir=tmp_path / "w")
    assert proc.returncode == 0, proc.stderr
    expected = tree(EXAMPLES / "expected", dirs=False)
    assert archive_files(archive, strip="./") == expected
    assert not (Path.cwd() / "out").exists()  # --archive alone writes no folder


@pytest.mark.sandbox
def test_processors_run_in_parallel_each_on_the_same_port(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    procs = [(f"p{i}", "ok_processor", {"suffix": f"-{i}", "delay": 0.5}) for i in range(4)]
    pipeline = make_pipeline(procs, parallelism=4)
    out = tmp_path / "out"
    proc, data = run_json(pipeline, "--out", out, tmpdir=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    # last processor wins on every path (no resolver)
    assert (out / "src" / "a.txt").read_text() == "alpha\n-3"
    assert len(data["components"]) == 4


@pytest.mark.sandbox
def test_conflict_goes_to_resolver_and_plugins_run_in_order(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline(
        [("first", "ok_processor", {"suffix": "[1]"}), ("second", "ok_processor",
                                                        {"suffix": "[2]"})],
        resolvers=[("join", "ok_resolver", ["src/**"], {"separator": "|"})],
        plugins=[("one", "ok_plugin", {"line": "plugin one"}),
                 ("two", "ok_plugin", {"line": "plugin two"})])
    out = tmp_path / "out"
    proc, _ = run_json(pipeline, "--out", out, tmpdir=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    # src/** conflicts go to the resolver (layer order), README.md is last-wins
    assert (out / "src" / "a.txt").read_text() == (
        "alpha\n[1]|alpha\n[2]plugin one\nplugin two\n")
    assert (out / "README.md").read_text() == "# readme\n[2]plugin one\nplugin two\n"


@pytest.mark.sandbox
@pytest.mark.parametrize(("component", "expected"), [
    ("fail_500", "HTTP 500"),
    ("garbage_json", "not JSON"),
    ("outside_output", "outside the session's work area"),
    ("die_during_call", "died during its call: exited with code 9"),
])
def test_processor_failure_is_named_with_its_error(
        tmp_path: Path, make_pipeline: PipelineFactory, component: str, expected: str) -> None:
    pipeline = make_pipeline([("good", "ok_processor", {}), ("bad", component, {})])
    proc, data = run_json(pipeline, "--out", tmp_path / "out", tmpdir=tmp_path / "work")
    assert proc.returncode == 1, proc.stderr
    assert data["status"] == "failed"
    bad = by_name(data)["bad"]
    assert bad["status"] == "failed" and expected in bad["error"]
    assert by_name(data)["good"]["status"] == "ok"
    assert "'bad'" in proc.stderr and expected in proc.stderr
    assert not (tmp_path / "out").exists()
    assert_work_area_gone(tmp_path / "work")


@pytest.mark.sandbox
def test_every_failure_of_a_stage_is_reported(tmp_path: Path,
                                              make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline([("a", "fail_500", {}), ("b", "ok_processor", {}),
                              ("c", "garbage_json", {})])
    proc, data = run_json(pipeline, "--out", tmp_path / "out", tmpdir=tmp_path / "work")
    assert proc.returncode == 1
    assert len(data["errors"]) == 2
    assert "processor 'a'" in proc.stderr and "processor 'c'" in proc.stderr


@pytest.mark.sandbox
def test_component_exiting_at_start_is_reported_at_once(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline([("good", "ok_processor", {}), ("dies", "exit_at_start", {})])
    start = time.monotonic()
    proc, data = run_json(pipeline, "--ready-timeout", "120", tmpdir=tmp_path / "work")
    elapsed = time.monotonic() - start
    assert proc.returncode == 1
    error = by_name(data)["dies"]["error"]
    assert "exited with code 3" in error and "boom: cannot start" in error
    assert elapsed < 120  # reported long before the readiness deadline
    assert_work_area_gone(tmp_path / "work")


@pytest.mark.sandbox
def test_component_never_ready_fails_at_the_deadline(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline([("slow", "never_ready", {})])
    proc, data = run_json(pipeline, "--ready-timeout", "3", tmpdir=tmp_path / "work")
    assert proc.returncode == 1
    assert "not ready after 3s" in by_name(data)["slow"]["error"]


@pytest.mark.sandbox
def test_hanging_processor_fails_at_the_build_timeout(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline([("good", "ok_processor", {}), ("stuck", "hang", {})])
    proc, data = run_json(pipeline, "--timeout", "8", tmpdir=tmp_path / "work")
    assert proc.returncode == 1
    stuck = by_name(data)["stuck"]
    said = "its call had not answered when the build's 8s timeout ran out"
    assert stuck["status"] == "failed" and stuck["error"] == said
    assert data["errors"] == [f"processor 'stuck': {said}"]  # only the one still at work
    assert by_name(data)["good"]["status"] == "ok"
    assert_work_area_gone(tmp_path / "work")


@pytest.mark.sandbox
def test_build_timeout_names_the_component_that_never_became_ready(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    """Processors start on demand: a readiness wait the build's timeout cuts off is named,
    with what it waited for (issue 20: it said only "build timed out after 6s")."""
    pipeline = make_pipeline([("good", "ok_processor", {}), ("mute", "never_ready", {})])
    proc, data = run_json(pipeline, "--timeout", "6", "--ready-timeout", "60",
                          tmpdir=tmp_path / "work")
    assert proc.returncode == 1
    mute = by_name(data)["mute"]
    assert mute["status"] == "failed"
    assert mute["error"].startswith("not ready when the build's 6s timeout ran out "
                                    "(GET / never answered 200)"), mute["error"]
    assert [e.splitlines()[0] for e in data["errors"]] == [
        "processor 'mute': " + mute["error"].splitlines()[0]]
    assert_work_area_gone(tmp_path / "work")


@pytest.mark.sandbox
def test_template_is_read_only_to_processors(tmp_path: Path, template: Path,
                                             make_pipeline: PipelineFactory) -> None:
    before = tree(template)
    pipeline = make_pipeline([("tamper", "write_template", {})])
    out = tmp_path / "out"
    proc, _ = run_json(pipeline, "--out", out, tmpdir=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    assert tree(template) == before
    reports = [p.read_text() for p in out.rglob("*") if p.is_file() and "create:" in
               p.read_text(errors="replace")]
    assert reports and "errno=30" in reports[0]  # EROFS


@pytest.mark.sandbox
async def test_template_change_is_detected_and_names_the_processor(
        tmp_path: Path, template: Path, make_pipeline: PipelineFactory) -> None:
    from boride.model import load
    from boride.pipeline import BuildOptions, build
    from boride.runtime.base import Workspace
    from boride.runtime.local import LocalRuntime
    from boride.types import Component

    pipeline = load(make_pipeline([("fine", "ok_processor", {}),
                                   ("tamper", "write_template", {})]))
    for path in [template, *template.rglob("*")]:  # writable by the component user (nobody)
        path.chmod(0o777 if path.is_dir() else 0o666)
    class WritableTemplate(LocalRuntime):
        """As if the sandbox let writes to the template through."""

        def _mounts(self, workspace: Workspace, component: Component,
                    socket_dir: Path) -> list[str]:
            args = super()._mounts(workspace, component, socket_dir)
            tpl = workspace.area.template
            return ["--bind" if a == "--ro-bind" and args[i + 1] == tpl else a
                    for i, a in enumerate(args)]

    runtime = WritableTemplate(fork=False)  # (a fork server's view of it stays read-only)
    result = await build(pipeline, runtime, BuildOptions(limits=Limits(parallelism=1),
                                                         work_root=tmp_path / "work"))
    assert result.status == "failed"
    assert any("'tamper'" in e and "changed the template" in e for e in result.errors)
    components = {c.name: c for c in result.components}
    assert components["tamper"].status == "failed"
    assert components["fine"].status == "ok"


@pytest.mark.sandbox
def test_failing_plugin_stops_the_build(tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline([("p", "ok_processor", {})],
                             plugins=[("breaks", "fail_plugin", {}),
                                      ("after", "ok_plugin", {"line": "x"})])
    proc, data = run_json(pipeline, "--out", tmp_path / "out", tmpdir=tmp_path / "work")
    assert proc.returncode == 1
    assert by_name(data)["breaks"]["status"] == "failed"
    assert by_name(data)["after"]["status"] == "skipped"
    assert "plugin 'breaks'" in proc.stderr


@pytest.mark.sandbox
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_build_cleans_up(tmp_path: Path, make_pipeline: PipelineFactory,
                                    signum: int, code: int) -> None:
    pipeline = make_pipeline([("good", "ok_processor", {}), ("stuck", "hang", {})])
    work = tmp_path / "work"
    work.mkdir()
    proc = start_cli("run", pipeline, "--out", tmp_path / "out", tmpdir=work)
    # wait until the build is in its process stage (both components running)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(
            [p for p in boride_processes() if "nsinit" in p]) < 2:
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "stopped" in stderr
    assert_work_area_gone(work)


def test_broken_pipeline_file_exits_2_naming_field_and_line(tmp_path: Path,
                                                            template: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"template: {template}\nprocessors:\n  - name: a\n    command: [x]\n"
                   "    colour: red\n")
    proc = run_cli("run", bad, tmpdir=tmp_path / "work")
    assert proc.returncode == 2
    assert f"{bad}:5: processors[0].colour: unknown field" in proc.stderr
    assert "Traceback" not in proc.stderr
    missing = run_cli("run", tmp_path / "nope.yaml", tmpdir=tmp_path / "work")
    assert missing.returncode == 2 and "no such file" in missing.stderr


@pytest.mark.sandbox
def test_missing_command_is_reported_before_anything_starts(
        tmp_path: Path, template: Path) -> None:
    pipeline = write_pipeline(tmp_path / "p.yaml", template,
                              [{"name": "a", "command": ["no-such-program-here"]}])
    proc, data = run_json(pipeline, tmpdir=tmp_path / "work")
    assert proc.returncode == 1
    assert "'no-such-program-here' not found" in data["errors"][0]
    assert data["stages"] == {}


@pytest.mark.sandbox
def test_result_folder_gets_the_users_permissions(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("run", EXAMPLES / "pipeline.yaml", "--out", out, tmpdir=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_mode & 0o002 == 0  # not world-writable like the work area


@pytest.mark.sandbox
def test_components_die_with_boride_even_on_sigkill(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    """No clean-up code runs on SIGKILL: the components must still go (nsinit sees its stdin
    close, exits, and the kernel ends its PID namespace)."""
    pipeline = make_pipeline([("stuck", "hang", {})])
    work = tmp_path / "work"
    work.mkdir()
    socket_dirs = set(Path("/tmp").glob("boride-*"))  # see LocalRuntime.open_workspace
    proc = start_cli("run", pipeline, tmpdir=work, cwd=tmp_path, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any("hang.py" in p for p in boride_processes()):
        time.sleep(0.1)
    assert any("hang.py" in p for p in boride_processes())
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and boride_processes():
        time.sleep(0.1)
    assert boride_processes() == []
    # No clean-up code ran: the short socket folder is left (empty), as is the work area.
    for left in set(Path("/tmp").glob("boride-*")) - socket_dirs:
        shutil.rmtree(left, ignore_errors=True)


SYSTEM_PYTHON = Path("/usr/bin/python3")


@pytest.fixture
def ordinary_tmp() -> Iterator[Path]:
    """A temporary folder an ordinary user can reach (pytest's are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="boride-test-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an ordinary user")
@pytest.mark.skipif(not SYSTEM_PYTHON.exists() or shutil.which("setpriv") is None,
                    reason="needs /usr/bin/python3 and setpriv to run as another user")
def test_runs_as_an_ordinary_user(ordinary_tmp: Path) -> None:
    """As an unprivileged user boride adds a user namespace; the result is the same."""
    import site

    tmp_path = ordinary_tmp
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)
    packages = [p for p in site.getsitepackages() if "site-packages" in p]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(work),
           "PYTHONPATH": os.pathsep.join([str(EXAMPLES.parent), *packages])}
    version = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    if version != str(sys.version_info[:2]):
        pytest.skip(f"/usr/bin/python3 is {version}, not this interpreter's version")
    out = tmp_path / "out"
    proc = run_cli("run", EXAMPLES / "pipeline.yaml", "--out", out, env=env, inherit_env=False,
                   python=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           SYSTEM_PYTHON])
    assert proc.returncode == 0, proc.stderr
    assert tree(out) == tree(EXAMPLES / "expected")
    assert out.stat().st_uid == 65534
    assert_work_area_gone(work)


@pytest.mark.sandbox
def test_keep_leaves_the_work_area_for_debugging(tmp_path: Path) -> None:
    proc, data = run_json(EXAMPLES / "pipeline.yaml", "--out", tmp_path / "out", "--keep",
                          tmpdir=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    kept = Path(data["work_dir"])
    assert kept.parent == tmp_path / "work"
    assert (kept / "area").is_dir() and any((kept / "area").iterdir())  # outputs and merge
    assert f"work area kept in {kept}" in proc.stderr
