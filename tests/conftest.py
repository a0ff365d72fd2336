"""Shared fixtures: pipelines of real cyanprintsdk components, and a check that nothing survives."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import COMPONENTS as COMPONENTS  # the tests import these two from here
from tests.helpers import EXAMPLES as EXAMPLES
from tests.helpers import write_pipeline

# Every process this test run starts inherits this mark, so that processes of other test runs
# on the same machine (other clones, other sessions) are never taken for this run's leftovers.
_RUN_MARK = f"BORIDE_TEST_RUN={os.getpid()}-{uuid.uuid4().hex}"
os.environ["BORIDE_TEST_RUN"] = _RUN_MARK.partition("=")[2]


def _ours(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return _RUN_MARK.encode() in f.read().split(b"\0")
    except OSError:
        return False


def boride_processes() -> list[str]:
    """Command lines of every process of this test run still running a component for boride."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid() or not _ours(pid):
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        helper = "boride.runtime.nsinit" in cmd or "boride/runtime/nsinit" in cmd
        if helper or ("/tests/components/" in cmd and "pytest" not in cmd):
            found.append(f"{pid}: {cmd.strip()}")
    return found


@pytest.fixture(autouse=True)
def _outside_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read or write the folder they are started from (after `make demo` it holds
    ./out, for one): each runs in its own empty folder, and so does every process it starts."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """Fail the test if any component process outlives it."""
    before = set(boride_processes())
    yield
    left = [p for p in boride_processes() if p not in before]
    assert not left, f"processes left running: {left}"


@pytest.fixture(autouse=True)
def _open_tmp_path(tmp_path: Path) -> None:
    """As root, local components run as nobody, who must be able to enter the test's folder
    (templates, pipeline files and work areas live there); pytest makes it private to root."""
    tmp_path.chmod(0o755)


_DOCKER_SKIPPED: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a Docker engine the ``docker`` tests are left out, with one line saying why
    (see pytest_terminal_summary), except under CI=true, where they must run and fail."""
    marked = [i for i in items if i.get_closest_marker("docker") is not None]
    if not marked:
        return
    from tests.docker_helpers import docker_problem, in_ci

    problem = docker_problem()
    if problem is None or in_ci():
        return
    items[:] = [i for i in items if i.get_closest_marker("docker") is None]
    config.hook.pytest_deselected(items=marked)
    _DOCKER_SKIPPED.append(f"Docker tests skipped ({len(marked)} tests): {problem}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _DOCKER_SKIPPED:
        terminalreporter.write_line(line, yellow=True)


@pytest.fixture(autouse=True)
def _docker_required(request: pytest.FixtureRequest) -> None:
    """Under CI=true the Docker tests never skip: a missing engine fails them."""
    if request.node.get_closest_marker("docker") is None:
        return
    from tests.docker_helpers import SETUP, docker_problem

    problem = docker_problem()
    if problem is not None:
        pytest.fail(f"CI=true but the Docker tests cannot run: {problem} ({SETUP})")


@pytest.fixture
def template(tmp_path: Path) -> Path:
    tpl = tmp_path / "template"
    (tpl / "src" / "deep").mkdir(parents=True)
    (tpl / "src" / "a.txt").write_text("alpha\n")
    (tpl / "src" / "deep" / "b.txt").write_text("beta\n")
    (tpl / "README.md").write_text("# readme\n")
    return tpl


PipelineFactory = Callable[..., Path]


@pytest.fixture
def make_pipeline(tmp_path: Path, template: Path) -> PipelineFactory:
    """``write_pipeline`` to the test's ``pipeline.yaml``, over the ``template`` fixture:
    ``make(processors, resolvers=(), plugins=(), **extra)``."""

    def make(*steps: Any, **extra: Any) -> Path:
        return write_pipeline(tmp_path / "pipeline.yaml", template, *steps, **extra)

    return make


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted below the test's folder (another file system: renames cannot cross),
    unmounted after; the test is skipped where it cannot be mounted (root only)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    mount.chmod(0o755)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
