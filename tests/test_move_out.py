"""``--out`` by rename (:func:`boride.output.move_folder`): the result is renamed into place,
made first what a copy would be (owner, modes, links), and copied only across file systems."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from boride.output import OutputError, move_folder, write_folder
from tests.conftest import EXAMPLES
from tests.helpers import run_json, tree


def make_result(root: Path) -> Path:
    t = root / "area" / "result"
    (t / "src" / "deep").mkdir(parents=True)
    (t / "src" / "a.txt").write_text("a")
    (t / "src" / "a.txt").chmod(0o600)
    (t / "run.sh").write_text("#!/bin/sh\n")
    (t / "run.sh").chmod(0o700)
    (t / "src" / "deep").chmod(0o700)
    (t / "src" / "deep" / "link").symlink_to(t / "src" / "a.txt")  # absolute, inside
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "65534:65534", str(t)], check=True)
    return t


def modes(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (stat.S_IMODE(p.lstat().st_mode), p.lstat().st_uid)
            for p in sorted(root.rglob("*")) if not p.is_symlink()}


@pytest.fixture
def umask() -> Iterator[int]:
    old = os.umask(0o022)
    try:
        yield 0o022
    finally:
        os.umask(old)


def test_the_result_is_renamed_and_made_what_a_copy_is(tmp_path: Path, umask: int) -> None:
    result = make_result(tmp_path)
    copy_src = make_result(tmp_path / "twin")
    inode = result.stat().st_ino
    out = move_folder(result, tmp_path / "out", replace=False, within=tmp_path / "area")
    assert out.stat().st_ino == inode and not result.exists()  # moved, not copied
    copied = write_folder(copy_src, tmp_path / "copied", replace=False)
    assert tree(out) == tree(copied)
    assert modes(out) == modes(copied)
    me = os.geteuid()
    assert modes(out)["src/a.txt"] == (0o644, me) and modes(out)["run.sh"] == (0o755, me)
    assert modes(out)["src/deep"] == (0o755, me)
    assert os.readlink(out / "src" / "deep" / "link") == "../a.txt"  # relative now


def test_a_hard_linked_file_gets_an_inode_of_its_own(tmp_path: Path) -> None:
    result = make_result(tmp_path)
    os.link(result / "src" / "a.txt", tmp_path / "area" / "other-link")
    out = move_folder(result, tmp_path / "out", replace=False)
    assert (out / "src" / "a.txt").stat().st_nlink == 1
    (tmp_path / "area" / "other-link").write_text("changed later")
    assert (out / "src" / "a.txt").read_text() == "a"


@pytest.mark.parametrize("bad", ["link-out", "fifo"])
def test_a_bad_entry_writes_nothing(tmp_path: Path, bad: str) -> None:
    result = make_result(tmp_path)
    if bad == "link-out":
        (result / "escape").symlink_to("/etc/passwd")
    else:
        os.mkfifo(result / "pipe")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(OutputError) as caught:
        move_folder(result, tmp_path / "out", replace=True)
    assert any(("escape" if bad == "link-out" else "pipe") in e for e in caught.value.errors)
    assert tree(tmp_path / "out") == {"old.txt": b"old"}  # the old result stays


def test_replace_only_with_force_and_then_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OutputError, match="not empty"):
        move_folder(make_result(tmp_path), out, replace=False)
    move_folder(make_result(tmp_path / "2"), out, replace=True)
    assert "old.txt" not in tree(out) and tree(out)["run.sh"] == b"#!/bin/sh\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_across_file_systems_it_is_a_copy(tmp_path: Path, tmpfs: Path) -> None:
    result = make_result(tmp_path)
    out = move_folder(result, tmpfs / "out", replace=False, within=tmp_path / "area")
    assert result.exists()  # copied: a rename cannot cross
    assert tree(out)["src/a.txt"] == b"a"
    assert modes(out)["run.sh"][0] & 0o111


@pytest.mark.sandbox
def test_the_example_to_another_file_system(tmp_path: Path, tmpfs: Path) -> None:
    proc, _ = run_json(EXAMPLES / "pipeline.yaml", "--out", tmpfs / "out",
                       tmpdir=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    assert tree(tmpfs / "out") == tree(EXAMPLES / "expected")
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.sandbox
def test_the_example_renamed_into_place(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "stale").mkdir(parents=True)
    proc, _ = run_json(EXAMPLES / "pipeline.yaml", "--out", out, "--force",
                       tmpdir=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    assert tree(out) == tree(EXAMPLES / "expected")
    assert all(uid == os.geteuid() for _, uid in modes(out).values())
    assert list((tmp_path / "work").iterdir()) == []
