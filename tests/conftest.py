"""Shared fixtures: pipelines of real cyanprintsdk components, and a check that nothing survives."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docker_helpers import SETUP, docker_problem, in_ci
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


def _name(pid: str) -> str:
    """A process's name (a forked component's is its script's, its command line its fork
    server's)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


#: the names of a fork server's own processes (not components): see boride.runtime.forkserver
FORK_SERVER_NAMES = ("(boride-keeper)", "(boride-forksrv)", "(boride-forksess)", "(bwrap)")


def component_processes() -> list[str]:
    """:func:`boride_processes` but a fork server's own (its sandbox, the server, the keepers):
    the components that run."""
    return [p for p in boride_processes()
            if not ("forkserver.py" in p and p.endswith(FORK_SERVER_NAMES))]


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
        # (a forked component and its keeper show their fork server's command line)
        helper = any(f"boride{sep}runtime{sep}{name}" in cmd
                     for sep in "./" for name in ("nsinit", "forkserver"))
        if helper or ("/tests/components/" in cmd and "pytest" not in cmd):
            found.append(f"{pid}: {cmd.strip()} ({_name(pid)})")
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
    deadline = time.monotonic() + 5  # (a killed sandbox's processes end a moment later)
    while (left := [p for p in boride_processes() if p not in before]) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes left running: {left}"


@pytest.fixture(params=["forked", "own interpreter"])
def both_starts(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test twice: local Python components forked from a session's fork server, and
    each in an interpreter of its own (``BORIDE_LOCAL_FORK=0``)."""
    monkeypatch.setenv("BORIDE_LOCAL_FORK", "1" if request.param == "forked" else "0")
    return str(request.param)


@pytest.fixture(autouse=True)
def _open_tmp_path(tmp_path: Path) -> None:
    """As root, local components run as users of their own, who must be able to enter the
    test's folder (templates, pipeline files and work areas live there); pytest makes it
    private to root."""
    tmp_path.chmod(0o755)


_SKIPPED: list[str] = []  # one line per kind of test left out, and why


def _sandbox_problem() -> str | None:
    """Why the local runtime's sandbox (bubblewrap) cannot be made here, or None."""
    from boride.runtime.local import sandbox_problem

    return sandbox_problem()


#: marker -> (what its tests are called, why they cannot run here, or None; how to set it up)
_NEEDS = {"docker": ("Docker tests", docker_problem, SETUP),
          "sandbox": ("sandbox tests", _sandbox_problem,
                      "apt-get install bubblewrap; .ci/run installs it")}


@pytest.hookimpl(trylast=True)  # after -m: only what would have run is counted
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a Docker engine the ``docker`` tests are left out, and without bubblewrap the
    ``sandbox`` tests (those running the local runtime), each kind with one line saying why
    (see pytest_terminal_summary), except under CI=true, where they must run and fail."""
    for marker, (what, problem_of, _) in _NEEDS.items():
        marked = [i for i in items if i.get_closest_marker(marker) is not None]
        if not marked or in_ci():
            continue
        problem = problem_of()
        if problem is None:
            continue
        items[:] = [i for i in items if i.get_closest_marker(marker) is None]
        config.hook.pytest_deselected(items=marked)
        _SKIPPED.append(f"{what[0].upper()}{what[1:]} skipped ({len(marked)} tests): {problem}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _SKIPPED:
        terminalreporter.write_line(line, yellow=True)


@pytest.fixture(autouse=True)
def _needs_met(request: pytest.FixtureRequest) -> None:
    """Under CI=true the Docker and sandbox tests never skip: a missing engine or a missing
    bubblewrap fails them."""
    for marker, (what, problem_of, setup) in _NEEDS.items():
        if request.node.get_closest_marker(marker) is None:
            continue
        problem = problem_of()
        if problem is not None:
            pytest.fail(f"CI=true but the {what} cannot run: {problem} ({setup})")


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
