"""Trees that a component keeps changing while boride walks them.

A thread swaps a folder of the tree with a symlink to a folder outside it
(renameat2(RENAME_EXCHANGE), as a hostile component does from inside its container) while boride
hands the tree over (chown), merges it, archives it and copies it out. Whatever the timing,
nothing outside the tree may be changed or read.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from boride import fsutil
from boride.archive import ArchiveError, iter_archive
from boride.merge import MergeError, merge
from boride.output import OutputError, write_folder

ROUNDS = 200
SECRET = b"host secret\n"
_libc = ctypes.CDLL(None, use_errno=True)


class Swapper:
    """Swaps ``tree/sub`` (an empty folder) in a loop with a symlink to ``victim`` kept
    next to the tree (so that a walk of the tree only ever meets it in ``sub``'s place)."""

    def __init__(self, tree: Path, victim: Path) -> None:
        self.sub, self.lnk = tree / "sub", tree.parent / f"{tree.name}-stash" / "lnk"
        self.sub.mkdir(parents=True)
        self.lnk.parent.mkdir()
        self.lnk.symlink_to(victim)
        self.stop = threading.Event()
        self.swapping = threading.Event()  # the first swap was made
        self.swaps = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        a, b = os.fsencode(self.sub), os.fsencode(self.lnk)
        while not self.stop.is_set():
            if _libc.renameat2(-100, a, -100, b, 2) == 0:
                self.swaps += 1
                self.swapping.set()

    def __enter__(self) -> Swapper:
        self.thread.start()
        # The walk under attack starts once the attack runs: on a loaded machine the thread
        # may otherwise first get the CPU after a short walk has ended (and removed ``sub``).
        if not self.swapping.wait(30):
            self.stop.set()
            raise AssertionError("the attack never ran")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        assert self.swaps > 0, "the attack never ran"


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[Path]:
    """A folder outside the tree, with files that must stay untouched and unread."""
    v = tmp_path / "victim"
    v.mkdir()
    (v / "secret").write_bytes(SECRET)
    yield v


def _renameat2_works(tmp_path: Path) -> bool:
    (tmp_path / "x").mkdir()
    (tmp_path / "y").symlink_to("x")
    return _libc.renameat2(-100, os.fsencode(tmp_path / "x"), -100,
                           os.fsencode(tmp_path / "y"), 2) == 0


@pytest.fixture(autouse=True)
def _needs_renameat2(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.mkdir()
    if not _renameat2_works(probe):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available on this file system")


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_chown_never_reaches_outside(tmp_path: Path, victim: Path) -> None:
    tree = tmp_path / "area" / "tree"
    with Swapper(tree, victim):
        for _ in range(ROUNDS * 4):
            fd = fsutil.open_dir(tree, within=tmp_path / "area")
            try:
                fsutil.chown_tree(fd, 65534, 65534)
            finally:
                os.close(fd)
    owners = {(p.name, p.stat().st_uid) for p in [victim, *victim.iterdir()]}
    assert owners == {(p.name, 0) for p in [victim, *victim.iterdir()]}


async def test_merge_never_reads_outside(tmp_path: Path, victim: Path) -> None:
    out = tmp_path / "area" / "out0"
    with Swapper(out, victim):
        for n in range(ROUNDS):
            target = tmp_path / "area" / f"t{n}"
            with contextlib.suppress(MergeError):  # refusing is fine; reading the victim is not
                await merge([out], target, [], _never, within=tmp_path / "area")
            assert SECRET not in _contents(target)


async def test_a_moving_merge_never_takes_or_reads_anything_outside(tmp_path: Path,
                                                                  victim: Path) -> None:
    """With ``move=True`` the merge renames entries out of the output (``sub`` whole, being a
    folder only it has): never the victim's, and never a link to it into the target."""
    out = tmp_path / "area" / "out0"
    with Swapper(out, victim) as swapper:
        for n in range(ROUNDS):
            sub, stash = out / "sub", swapper.lnk
            if not os.path.lexists(sub):  # the last merge took it: the attack goes on
                if os.path.islink(stash):
                    with contextlib.suppress(OSError):
                        sub.mkdir()
                else:
                    with contextlib.suppress(OSError):
                        sub.symlink_to(victim)
            with contextlib.suppress(OSError):  # a file in it, never through the link
                fd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                try:
                    f = os.open(f"f{n}.txt", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644,
                                dir_fd=fd)
                    os.close(f)
                finally:
                    os.close(fd)
            target = tmp_path / "area" / f"t{n}"
            with contextlib.suppress(MergeError):  # refusing is fine; taking the victim is not
                await merge([out], target, [], _never, within=tmp_path / "area", move=True)
            assert SECRET not in _contents(target)
            assert not any(p.is_symlink() for p in target.rglob("*")), list(target.rglob("*"))
            assert (victim / "secret").read_bytes() == SECRET
    assert sorted(p.name for p in victim.iterdir()) == ["secret"]
    moved = sum(1 for n in range(ROUNDS) if (tmp_path / "area" / f"t{n}" / "sub").is_dir())
    assert moved > 0, "no folder was ever moved: the test tested nothing"


def test_archive_never_reads_outside(tmp_path: Path, victim: Path) -> None:
    tree = tmp_path / "area" / "tree"
    with Swapper(tree, victim):
        for _ in range(ROUNDS):
            try:
                data = b"".join(iter_archive(tree, within=tmp_path / "area"))
            except ArchiveError:
                continue
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for m in tar.getmembers():
                    assert not m.issym() or not os.path.isabs(m.linkname)
                    f = tar.extractfile(m) if m.isfile() else None
                    assert f is None or f.read() != SECRET


def test_folder_output_never_reads_outside(tmp_path: Path, victim: Path) -> None:
    tree = tmp_path / "area" / "tree"
    with Swapper(tree, victim):
        for n in range(ROUNDS):
            dest = tmp_path / "results" / f"r{n}"
            try:
                write_folder(tree, dest, replace=False, within=tmp_path / "area")
            except OutputError:
                assert not dest.exists()
                continue
            assert SECRET not in _contents(dest)
            assert not any(p.is_symlink() and not p.resolve().is_relative_to(dest)
                           for p in dest.rglob("*"))


def test_a_root_swapped_for_a_link_is_refused(tmp_path: Path, victim: Path) -> None:
    """The tree's own folder replaced by a symlink (or reached through one) is refused."""
    area = tmp_path / "area"
    area.mkdir()
    (area / "tree").symlink_to(victim)
    with pytest.raises(OSError):
        fsutil.open_dir(area / "tree", within=area)
    (area / "via").symlink_to(tmp_path)
    with pytest.raises(fsutil.UnsafePath):
        fsutil.open_dir(area / "via" / "victim", within=area)


async def _never(*_: object) -> tuple[str, bytes]:
    raise AssertionError("no conflicts here")


def _contents(root: Path) -> bytes:
    if not root.exists():
        return b""
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*"))
                    if p.is_file() and not p.is_symlink())


def test_removal_never_reaches_outside(tmp_path: Path, victim: Path) -> None:
    """Removing a work folder while a component swaps things in it removes nothing outside
    and changes no permission outside (read-only folders inside are still removed)."""
    victim.chmod(0o755)
    for n in range(ROUNDS // 4):
        tree = tmp_path / "area" / f"tree{n}"
        (tree / "ro" / "deep").mkdir(parents=True)
        (tree / "ro" / "deep" / "f").write_bytes(b"x")
        (tree / "ro").chmod(0o500)
        with Swapper(tree, victim), contextlib.suppress(OSError):
            fsutil.remove_tree(tree, within=tmp_path / "area")
        assert (victim / "secret").read_bytes() == SECRET
        assert victim.stat().st_mode & 0o777 == 0o755
        assert not (tree / "ro").exists()
