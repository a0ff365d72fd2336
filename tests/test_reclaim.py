"""The work folders of a SIGKILLed boride (local runtime) are reclaimed by the next one, and
never a living one's: each folder is locked by its owner for its life (boride.workdirs)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import boride_processes
from tests.helpers import run_cli, start_cli, write_pipeline

MARKER = ".boride-owner"
HOLD = """\
import sys, time
from pathlib import Path
from boride.workdirs import OwnedFolder
f = OwnedFolder(Path(sys.argv[1]))
(f.path / "area").mkdir()
print(f.path, flush=True)
time.sleep(3600)
"""


def wait_for(what: Callable[[], object], why: str, timeout: float = 90) -> object:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = what()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {why}")


def owned_by(pid: int, *parents: Path) -> list[Path]:
    """The work folders below ``parents`` whose marker names ``pid``."""
    found = []
    for parent in parents:
        for folder in parent.glob("boride-*"):
            try:
                if (folder / MARKER).read_text().split() == [str(pid)]:
                    found.append(folder)
            except OSError:
                continue
    return found


def hold(parent: Path) -> tuple[subprocess.Popen[str], Path]:
    """Another process owning a new work folder below ``parent`` (until it is killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(parent)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_only_folders_of_dead_owners_are_reclaimed(tmp_path: Path) -> None:
    from boride.workdirs import OwnedFolder, reclaim

    living, living_dir = hold(tmp_path)
    dead, dead_dir = hold(tmp_path)
    mine = OwnedFolder(tmp_path)  # this process's own: alive too
    kept = OwnedFolder(tmp_path)
    kept.release(keep=True)  # --keep: stays, never reclaimed
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep\n")
    (dead_dir / "area" / "link").symlink_to(outside)  # a component's tree: never followed
    (dead_dir / "area" / "ro").mkdir()
    (dead_dir / "area" / "ro" / "f").write_text("x")
    (dead_dir / "area" / "ro").chmod(0o500)
    try:
        assert reclaim(tmp_path) == []
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        assert reclaim(tmp_path) == [dead_dir]
        assert not dead_dir.exists() and (outside / "keep.txt").read_text() == "keep\n"
        assert living_dir.is_dir() and mine.path.is_dir() and kept.path.is_dir()
    finally:
        living.kill()
        living.wait()
        mine.release()
    assert sorted(reclaim(tmp_path)) == sorted([living_dir, mine.path])
    assert kept.path.is_dir()


@pytest.mark.sandbox
def test_a_killed_runs_folders_are_reclaimed_by_the_next_run(tmp_path: Path,
                                                             template: Path) -> None:
    work = tmp_path / "work"  # a long TMPDIR: the socket folder goes to /tmp
    hang = write_pipeline(tmp_path / "hang.yaml", template, [("p", "hang", {})])
    quick = write_pipeline(tmp_path / "quick.yaml", template, [("p", "ok_processor", {})])
    before = set(boride_processes())
    a = start_cli("run", hang, "--out", tmp_path / "out-a", tmpdir=work,
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def started() -> list[Path]:
            folders = owned_by(a.pid, work, Path("/tmp"))
            socks = [s for f in folders for s in f.rglob("sock")]
            return folders if socks else []

        folders = wait_for(started, "the hanging run's processor")
        # its work folder in TMPDIR, its socket folder (the other's path is too long) in /tmp
        assert isinstance(folders, list)
        assert sorted(f.parent for f in folders) == sorted([work, Path("/tmp")])
        # another run while it lives: its folders stay
        b = run_cli("run", quick, "--out", tmp_path / "out-b", tmpdir=work)
        assert b.returncode == 0, b.stderr
        assert a.poll() is None and all(f.is_dir() for f in folders)
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait()
    assert all(f.is_dir() for f in folders)  # SIGKILL left them
    wait_for(lambda: set(boride_processes()) <= before, "the sandbox to die with boride", 30)
    c = run_cli("run", quick, "--out", tmp_path / "out-c", tmpdir=work)
    assert c.returncode == 0, c.stderr
    assert not any(f.exists() for f in folders)
    assert list(work.iterdir()) == []


@pytest.mark.sandbox
def test_serve_reclaims_at_start(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    dead, dead_dir = hold(work)
    dead.kill()
    dead.wait()
    server = start_cli("serve", "--runtime", "local", "--port", "0", "--work-root", work,
                       stdout=subprocess.DEVNULL)
    try:
        assert server.stderr is not None
        lines = []
        while not any("http://" in line for line in lines):
            line = server.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        assert any("removed 1 work folder(s) a killed boride left" in line for line in lines)
        assert not dead_dir.exists()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
