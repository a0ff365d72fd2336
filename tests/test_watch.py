"""``boride run --watch`` end to end: a real loop in a child process, real edits, real components.

Each edit must give a new result in ``--out``; a broken edit must leave the last good result
and say why; Ctrl-C must stop everything (exit 130, no process, no work area left)."""

from __future__ import annotations

import json
import queue
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, boride_processes
from tests.helpers import start_cli, tree

pytestmark = pytest.mark.usefixtures("no_leftovers")
WAIT = 120.0  # seconds a build may take on a loaded machine before the test gives up


class Watcher:
    """``boride run --watch --json`` in a child process; its NDJSON lines, one per build."""

    def __init__(self, project: Path, *extra: str) -> None:
        self.work = project / "work"
        self.work.mkdir(exist_ok=True)
        self.proc = start_cli("run", project / "ex" / "pipeline.yaml", "--out", project / "out",
                              "--watch", "--json", "--cache-dir", project / "cache", *extra,
                              tmpdir=self.work)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def next_build(self) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"no build within {WAIT}s; stderr: {''.join(self.stderr)}")
        if line is None:
            pytest.fail(f"boride ended: {''.join(self.stderr)}")
        data: dict[str, Any] = json.loads(line)
        return data

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=WAIT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(EXAMPLES, tmp_path / "ex", ignore=shutil.ignore_patterns("expected"))
    return tmp_path


@pytest.fixture
def watcher(project: Path) -> Iterator[Watcher]:
    w = Watcher(project)
    try:
        yield w
    finally:
        w.kill()


def edit_upper(project: Path, old: str, new: str) -> tuple[Path, str]:
    """The example's ``upper`` processor with its first ``old`` made ``new``: its file, and
    its source before (to mend it with)."""
    upper = project / "ex" / "processors" / "upper.py"
    source = upper.read_text()
    upper.write_text(source.replace(old, new, 1))
    return upper, source


def cached(data: dict[str, Any]) -> dict[str, bool]:
    return {c["name"]: c["cached"] for c in data["components"] if c["kind"] == "processor"}


@pytest.mark.sandbox
def test_an_edit_gives_a_new_result_and_ctrl_c_stops_everything(
        project: Path, watcher: Watcher) -> None:
    first = watcher.next_build()
    assert first["status"] == "ok", first["errors"]
    assert first["build"] == 1
    assert tree(project / "out") == tree(EXAMPLES / "expected")

    # the template: every processor's input changed (its components keep running)
    readme = project / "ex" / "template" / "README.md"
    readme.write_text(readme.read_text() + "one more line\n")
    second = watcher.next_build()
    assert second["status"] == "ok", second["errors"]
    assert str(readme) in second["changed"]
    assert b"one more line" in (project / "out" / "README.md").read_bytes()

    # a step's config: only that step is called, the others come from the cache
    pipeline = project / "ex" / "pipeline.yaml"
    pipeline.write_text(pipeline.read_text().replace("{holder: The Boride Authors",
                                                     "{holder: Someone Else"))
    third = watcher.next_build()
    assert third["status"] == "ok", third["errors"]
    assert cached(third) == {"upper": True, "substitute": True, "license": False}
    assert b"Someone Else" in (project / "out" / "LICENSE").read_bytes()

    assert watcher.interrupt() == 130
    assert "every component was stopped" in "".join(watcher.stderr)
    assert [p for p in boride_processes() if str(project) in p] == []
    assert list(watcher.work.iterdir()) == []


@pytest.mark.sandbox
def test_a_broken_edit_keeps_the_last_good_result(project: Path, watcher: Watcher) -> None:
    assert watcher.next_build()["status"] == "ok"
    good = tree(project / "out")

    # a processor that now fails its call: the build fails with its own words
    upper, source = edit_upper(project, "    return ",
                               "    raise RuntimeError('upper is broken today')\n    return ")
    broken = watcher.next_build()
    assert broken["status"] == "failed"
    assert any("upper is broken today" in e for e in broken["errors"]), broken["errors"]
    assert tree(project / "out") == good  # the last good result stays

    # an invalid pipeline file: said, nothing built, the result stays
    pipeline = project / "ex" / "pipeline.yaml"
    text = pipeline.read_text()
    pipeline.write_text("processors: 3\n")
    invalid = watcher.next_build()
    assert invalid["status"] == "failed"
    assert any("invalid pipeline file" in e for e in invalid["errors"])
    assert tree(project / "out") == good

    # both mended: a good result again
    upper.write_text(source)
    pipeline.write_text(text)
    while watcher.next_build()["status"] != "ok":
        pass  # the two writes may come as two rounds
    assert tree(project / "out") == good
    assert watcher.interrupt() == 130
    assert list(watcher.work.iterdir()) == []


@pytest.mark.sandbox
def test_a_watch_build_past_its_timeout_names_the_component_and_the_next_one_builds(
        project: Path) -> None:
    """--watch builds have the one deadline too: a processor edited to hang is named."""
    watcher = Watcher(project, "--timeout", "15")
    try:
        assert watcher.next_build()["status"] == "ok"
        upper, source = edit_upper(project, "    for file in", "    import asyncio\n"
                                   "    await asyncio.Event().wait()\n    for file in")
        hung = watcher.next_build()
        assert hung["status"] == "failed"
        assert hung["errors"] == ["processor 'upper': its call had not answered when the "
                                  "build's 15s timeout ran out"], hung["errors"]
        upper.write_text(source)
        while watcher.next_build()["status"] != "ok":
            pass
        assert watcher.interrupt() == 130
        assert list(watcher.work.iterdir()) == []
    finally:
        watcher.kill()


@pytest.mark.sandbox
def test_files_the_build_writes_never_trigger_a_build(project: Path, watcher: Watcher) -> None:
    """The loop must not feed itself: --out, the cache and the work areas are ignored."""
    assert watcher.next_build()["status"] == "ok"
    (project / "out" / "scribble.txt").write_text("x")
    (project / "ex" / "__pycache__").mkdir(exist_ok=True)
    (project / "ex" / "__pycache__" / "x.pyc").write_bytes(b"x")
    (project / "ex" / "template" / "src" / "new.txt").write_text("new\n")
    round_ = watcher.next_build()
    assert [p for p in round_["changed"] if "scribble" in p or "__pycache__" in p] == []
    assert any(p.endswith("new.txt") for p in round_["changed"])
    assert watcher.interrupt() == 130


@pytest.mark.docker
def test_watch_on_docker_opens_a_new_session_for_a_template_edit(project: Path) -> None:
    """On Docker the template is copied into the session's volume: an edit must reach the
    processors all the same (a new session), and Ctrl-C must leave no container or volume."""
    from tests.docker_helpers import managed_sessions

    before = managed_sessions()
    w = Watcher(project, "--runtime", "docker")
    try:
        first = w.next_build()
        assert first["status"] == "ok", first["errors"]
        readme = project / "ex" / "template" / "README.md"
        readme.write_text(readme.read_text() + "edited on docker\n")
        second = w.next_build()
        assert second["status"] == "ok", second["errors"]
        assert second["session"] != first["session"]
        assert b"edited on docker" in (project / "out" / "README.md").read_bytes()
        # a config edit keeps the session (and its running components)
        pipeline = project / "ex" / "pipeline.yaml"
        pipeline.write_text(pipeline.read_text().replace("{holder: The Boride Authors",
                                                         "{holder: Docker"))
        third = w.next_build()
        assert third["status"] == "ok", third["errors"]
        assert third["session"] == second["session"]
        assert cached(third) == {"upper": True, "substitute": True, "license": False}
        assert w.interrupt() == 130
    finally:
        w.kill()
    assert managed_sessions() - before == set()
