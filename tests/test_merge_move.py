"""The merge with ``move=True``: outputs are used up, entries renamed into the target; what a
rename cannot do (hard links, another file system, another owner, entries others read) is
copied; what is moved is made the merge's own (owner, modes). The model tests
(tests/test_merge_model.py) check the merged trees of both modes against the rules."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from boride.merge import Conflict, ResolverRule, merge


async def never(rule: ResolverRule, conflict: Conflict) -> tuple[str, bytes]:
    raise AssertionError("no resolver expected")


def write(path: Path, content: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(mode)
    return path


def entries(root: Path) -> dict[str, tuple[str, int, int, int]]:
    """Path -> (kind, mode, uid, links) of everything below ``root``."""
    out = {}
    for d, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            st = Path(d, n).lstat()
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
            out[Path(d, n).relative_to(root).as_posix()] = (
                kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_nlink)
    return out


async def test_files_and_whole_folders_are_moved_and_made_ours(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "shared" / "one.txt", b"a1", 0o600)
    write(b / "shared" / "two.sh", b"b2", 0o700)
    for i in range(50):
        write(a / "mine" / "deep" / f"f{i}.txt", b"x" * i, 0o640)
    (a / "mine" / "empty").mkdir()
    os.chmod(a / "mine", 0o700)
    inode = (a / "mine").stat().st_ino
    if os.geteuid() == 0:  # a component's files: owned by its user
        subprocess.run(["chown", "-R", "65534:65534", str(a), str(b)], check=True)
    result = await merge([a, b], tmp_path / "t", [], never, move=True)
    assert result.files == 52
    got = entries(tmp_path / "t")
    assert (tmp_path / "t" / "mine").stat().st_ino == inode  # renamed whole, not copied
    assert not (a / "mine").exists() and not (a / "shared" / "one.txt").exists()
    assert got["shared/one.txt"] == ("file", 0o644, os.geteuid(), 1)
    assert got["shared/two.sh"] == ("file", 0o755, os.geteuid(), 1)
    assert got["mine"] == ("dir", 0o755, os.geteuid(), got["mine"][3])
    assert got["mine/empty"][:3] == ("dir", 0o755, os.geteuid())
    assert all(v[:3] == ("file", 0o644, os.geteuid()) for k, v in got.items()
               if k.startswith("mine/deep/f"))
    assert (tmp_path / "t" / "mine" / "deep" / "f7.txt").read_bytes() == b"x" * 7


async def test_a_hard_linked_file_is_copied_not_moved(tmp_path: Path) -> None:
    """A component keeping a second link to a file could change the result through it."""
    a = tmp_path / "a"
    write(a / "only" / "kept.txt", b"original")
    write(a / "top.txt", b"top")
    (tmp_path / "elsewhere").mkdir()
    os.link(a / "only" / "kept.txt", tmp_path / "elsewhere" / "link")
    os.link(a / "top.txt", tmp_path / "elsewhere" / "link2")
    await merge([a], tmp_path / "t", [], never, move=True)
    for rel, link in (("only/kept.txt", "link"), ("top.txt", "link2")):
        merged = tmp_path / "t" / rel
        assert merged.stat().st_nlink == 1
        (tmp_path / "elsewhere" / link).write_bytes(b"changed later")
        assert merged.read_bytes() in (b"original", b"top")


async def test_files_others_read_are_copied(tmp_path: Path) -> None:
    """A symlink's target and a conflict's versions are read by other entries: never moved
    before they are read (and a folder holding one is not moved whole)."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "only" / "real.txt", b"real")
    (a / "only" / "alias.txt").symlink_to("real.txt")
    write(a / "c.txt", b"A")
    write(b / "c.txt", b"B")

    async def concat(rule: ResolverRule, conflict: Conflict) -> tuple[str, bytes]:
        return conflict.path, b"+".join(v.content for v in conflict.versions)

    await merge([a, b], tmp_path / "t", [ResolverRule("r", ("*.txt",))], concat, move=True)
    t = tmp_path / "t"
    assert (t / "only" / "real.txt").read_bytes() == b"real"
    assert (t / "only" / "alias.txt").read_bytes() == b"real"
    assert not (t / "only" / "alias.txt").is_symlink()
    assert (t / "c.txt").read_bytes() == b"A+B"


async def test_overlapping_outputs_are_copied_from(tmp_path: Path) -> None:
    a = tmp_path / "a"
    write(a / "x.txt", b"x")
    write(a / "sub" / "y.txt", b"y")
    await merge([a, a / "sub", a], tmp_path / "t", [], never, move=True)
    assert (tmp_path / "t" / "x.txt").read_bytes() == b"x"
    assert (tmp_path / "t" / "y.txt").read_bytes() == b"y"
    assert (a / "x.txt").exists()  # nothing taken from under another layer


async def test_an_output_on_another_file_system_is_copied(tmp_path: Path,
                                                         tmpfs: Path) -> None:
    other = tmpfs
    write(other / "out" / "only" / "f.txt", b"f", 0o600)
    write(other / "out" / "g.txt", b"g", 0o700)
    result = await merge([other / "out"], tmp_path / "t", [], never, move=True)
    assert result.files == 2
    got = entries(tmp_path / "t")
    assert got["only/f.txt"][:2] == ("file", 0o644)
    assert got["g.txt"][:2] == ("file", 0o755)
    assert (other / "out" / "g.txt").exists()  # copied: a rename cannot cross
