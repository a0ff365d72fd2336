"""Small file-system helpers shared by the merge, the archive writer and the output.

* :func:`copy_fd` copies file data between two open descriptors as fast as the kernel allows:
  a reflink (``FICLONE``, copy-on-write, so the copy never shares writable blocks with its
  source), else ``copy_file_range`` (in-kernel copy), else ``read``/``write``. Never a hard
  link: a later in-place edit of the copy must not be able to change the source.
* :func:`safe_relpath` validates and normalises a relative posix path coming from outside.
* :func:`is_within` checks containment of real paths.
* :func:`current_umask` reads the process umask without changing it.
* :func:`open_dir`, :func:`walk`, :class:`DirCache`, :func:`resolve_link`, :func:`chown_tree`:
  walks of trees a component can still change, through directory descriptors only (see below).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import posixpath
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from boride.errors import BorideError

__all__ = [
    "CopyState",
    "DirCache",
    "Entry",
    "UnsafePath",
    "chown_tree",
    "copy_fd",
    "current_umask",
    "is_full",
    "is_within",
    "link_text",
    "lstat_below",
    "open_dir",
    "open_subdir",
    "remove_tree",
    "resolve_link",
    "safe_relpath",
    "walk",
]

FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h

# Errors meaning "this way of copying is not available here", never "the copy failed".
_UNSUPPORTED = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ETXTBSY}
)


class UnsafePath(BorideError, ValueError):
    """A path that would leave its root or cannot name a file."""


def safe_relpath(path: str) -> str:
    """Return ``path`` normalised (``.`` and empty components dropped) if it is a safe relative
    posix path: a ``str``, not absolute, without ``..`` components or NUL, naming something below
    the root (not the root itself). Raise :class:`UnsafePath` otherwise."""
    if not isinstance(path, str):
        raise UnsafePath(f"path must be a str, got {type(path).__name__}")
    if "\0" in path:
        raise UnsafePath(f"path {path!r} contains NUL")
    if path.startswith("/"):
        raise UnsafePath(f"path {path!r} is absolute")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePath(f"path {path!r} contains '..'")
    if not parts:
        raise UnsafePath(f"path {path!r} names no file")
    return "/".join(parts)


def is_within(path: str, root: str) -> bool:
    """True if the (already real, absolute) ``path`` is ``root`` or lies below it."""
    if path == root:
        return True
    prefix = root if root.endswith("/") else root + "/"
    return path.startswith(prefix)


def is_full(path: os.PathLike[str] | str, reserve: int = 1 << 16) -> bool:
    """Whether the file system holding ``path`` has (almost) no space or no inodes left."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < reserve or (st.f_files > 0 and st.f_favail == 0)


def current_umask() -> int:
    """The process umask, read from /proc without the set-and-restore race of ``os.umask``."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o777  # unknown: callers then always chmod explicitly, which is always correct


class CopyState:
    """Which copy methods work, learnt per source device and shared between threads."""

    def __init__(self, reflink: bool = True) -> None:
        self._lock = threading.Lock()
        self._reflink: dict[int, bool] = {}
        self._range: dict[int, bool] = {}
        self.try_reflink = reflink

    def reflink_ok(self, dev: int) -> bool:
        return self.try_reflink and self._reflink.get(dev, True)

    def range_ok(self, dev: int) -> bool:
        return self._range.get(dev, True)

    def no_reflink(self, dev: int) -> None:
        with self._lock:
            self._reflink[dev] = False

    def no_range(self, dev: int) -> None:
        with self._lock:
            self._range[dev] = False


def copy_fd(src: int, dst: int, size: int, dev: int, state: CopyState) -> int:
    """Copy ``size`` bytes (the source's size at open time) from ``src`` to the empty ``dst``
    at their current offsets; return the number of bytes copied (less if the source shrank).

    ``dev`` is the source's ``st_dev``; ``state`` remembers which methods work on it."""
    if size <= 0:
        return 0
    if state.reflink_ok(dev):
        try:
            fcntl.ioctl(dst, FICLONE, src)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
            state.no_reflink(dev)
        else:
            return size
    done = 0
    if state.range_ok(dev):
        try:
            while done < size:
                n = os.copy_file_range(src, dst, size - done)
                if n == 0:
                    break
                done += n
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED or done:
                raise
            state.no_range(dev)
        else:
            if done:
                return done
            # 0 bytes on the first call: some file systems (procfs, FUSE) refuse silently.
    while done < size:  # the universal fallback
        chunk = os.read(src, min(size - done, 1 << 20))
        if not chunk:
            break
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view):]
        done += len(chunk)
    return done


# --------------------------------------------------------------------------------------------
# Trees a component can still change, walked through descriptors only.
#
# A component may rename or swap anything in the work area at any moment (for example a folder
# with a symlink to /etc, with renameat2(RENAME_EXCHANGE) in a loop). A walk by path can then
# be led anywhere. So every walk of such a tree starts from an open descriptor of its root,
# lists folders through their descriptors, and opens every folder and file relative to its
# parent with O_NOFOLLOW: a swap can make an entry vanish or fail to open, never lead outside.

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
_MAX_LINK_HOPS = 40  # the kernel's own limit (MAXSYMLINKS)


def open_dir(path: os.PathLike[str] | str, within: os.PathLike[str] | str | None = None) -> int:
    """Open the folder ``path`` (never a symlink in its place) and return its descriptor.

    With ``within``, also check where the opened folder really is: at or below ``within``,
    whatever a component did to the folders on the way meanwhile; else :class:`UnsafePath`."""
    fd = os.open(path, DIR_FLAGS)
    if within is None:
        return fd
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
        if not is_within(real, os.path.realpath(within)):
            raise UnsafePath(f"{os.fspath(path)} leads outside {os.fspath(within)}")
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a walk. ``dir_fd`` is its folder's descriptor, valid until the walk goes
    on: use it with ``name`` (``os.open(e.name, ..., dir_fd=e.dir_fd)``)."""

    rel: str  # relative posix path from the root ("a/b")
    name: str
    dir_fd: int
    kind: str  # "dir", "file", "link" or "other"


def _kind(entry: os.DirEntry[str]) -> str:
    if entry.is_dir(follow_symlinks=False):
        return "dir"
    if entry.is_file(follow_symlinks=False):
        return "file"
    return "link" if entry.is_symlink() else "other"


def _listing(fd: int) -> list[tuple[str, str]]:
    with os.scandir(fd) as it:
        return [(e.name, _kind(e)) for e in it]


def walk(root_fd: int, on_error: Callable[[str, OSError], None]) -> Iterator[Entry]:
    """Every entry below the folder ``root_fd``, depth first, each folder before its contents;
    symlinks are never followed. A folder that cannot be listed or opened (a component swapped
    it meanwhile, say) is reported to ``on_error(rel, error)`` (``rel`` is "" for the root) and
    skipped. Open descriptors: one per level of depth; ``root_fd`` is left open."""
    stack: list[tuple[str, int, Iterator[tuple[str, str]]]] = []

    def descend(rel: str, fd: int) -> None:
        try:
            listing = _listing(fd)
        except OSError as exc:
            if fd != root_fd:
                os.close(fd)
            on_error(rel, exc)
            return
        stack.append((rel, fd, iter(listing)))

    descend("", root_fd)
    try:
        while stack:
            rel_dir, fd, items = stack[-1]
            item = next(items, None)
            if item is None:
                stack.pop()
                if fd != root_fd:
                    os.close(fd)
                continue
            name, kind = item
            rel = f"{rel_dir}/{name}" if rel_dir else name
            yield Entry(rel, name, fd, kind)
            if kind == "dir":
                try:
                    child = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    on_error(rel, exc)
                    continue
                descend(rel, child)
    finally:
        for _, fd, _ in stack:
            if fd != root_fd:
                os.close(fd)


def open_subdir(root_fd: int, rel_dir: str) -> int:
    """Open the folder ``rel_dir`` below ``root_fd`` one component at a time, none followed
    if it is a symlink. The caller closes the result (``root_fd`` itself when ``rel_dir`` is
    empty: then a duplicate is returned)."""
    fd = os.dup(root_fd)
    for part in rel_dir.split("/") if rel_dir else ():
        try:
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd


def lstat_below(root_fd: int, rel: str) -> os.stat_result:
    """``lstat`` of ``rel`` ("" is the root) below ``root_fd``, through :func:`open_subdir`."""
    folder, _, name = rel.rpartition("/")
    fd = open_subdir(root_fd, folder)
    try:
        return os.stat(name or ".", dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)


class DirCache:
    """Opens files below a root descriptor by relative path through :func:`open_subdir`,
    keeping the last folder open (callers go folder by folder). Not thread-safe."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self._rel: str | None = None
        self._fd = -1

    def dir(self, rel_dir: str) -> int:
        if rel_dir != self._rel:
            self.close()
            self._fd = open_subdir(self.root_fd, rel_dir)
            self._rel = rel_dir
        return self._fd

    def open_file(self, rel: str) -> int:
        """A read-only descriptor of the file ``rel`` (refused if it is a symlink)."""
        rel_dir, _, name = rel.rpartition("/")
        return os.open(name, FILE_FLAGS, dir_fd=self.dir(rel_dir))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._rel = -1, None

    def __enter__(self) -> DirCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_link(root_fd: int, rel: str) -> tuple[str, bool]:
    """Where the symlink ``rel`` below ``root_fd`` leads, as a path relative to the root ("" is
    the root itself), and whether that exists. Resolved as the kernel would, one component at
    a time through descriptors, but confined: a target that climbs above the root, loops, or is
    absolute (unless it names a place below the root's own real path, taken then as relative to
    the root) raises :class:`UnsafePath`. The part of a dangling target after the first missing
    component is taken as written."""
    done = rel.split("/")[:-1]
    root = os.readlink(f"/proc/self/fd/{root_fd}")
    with DirCache(root_fd) as dirs:
        target = os.readlink(rel.rpartition("/")[2], dir_fd=dirs.dir("/".join(done)))
        if target.startswith("/"):
            done = []
        todo = _link_parts(rel, root, target)
        hops, exists = 1, True
        while todo:
            part = todo.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not done:
                    raise UnsafePath(f"symlink {rel!r} leads outside the tree")
                done.pop()
                continue
            if exists:
                try:
                    st = os.lstat(part, dir_fd=dirs.dir("/".join(done)))
                except (FileNotFoundError, NotADirectoryError):
                    exists = False
                else:
                    if stat.S_ISLNK(st.st_mode):
                        hops += 1
                        if hops > _MAX_LINK_HOPS:
                            raise UnsafePath(f"symlink {rel!r} loops")
                        link_at = "/".join([*done, part])
                        target = os.readlink(part, dir_fd=dirs.dir("/".join(done)))
                        if target.startswith("/"):
                            done = []
                        todo[:0] = _link_parts(rel, root, target, via=link_at)
                        continue
                    if not stat.S_ISDIR(st.st_mode) and any(p not in ("", ".") for p in todo):
                        exists = False  # a file used as a folder: dangling
            done.append(part)
    return "/".join(done), exists


def _link_parts(rel: str, root: str, target: str, via: str | None = None) -> list[str]:
    """A link's target as components to resolve: relative ones from the link's folder,
    absolute ones below ``root`` from the root."""
    if not target.startswith("/"):
        return target.split("/")
    if target == root or target.startswith(root.rstrip("/") + "/"):
        return target[len(root):].split("/")
    step = f" (through {via!r})" if via else ""
    raise UnsafePath(f"symlink {rel!r}{step} leads to {target!r}, outside the tree")


def link_text(rel: str, resolved: str) -> str:
    """The relative link text that leads from the symlink ``rel`` to ``resolved`` (both
    relative to the same root)."""
    return posixpath.relpath("/" + resolved, "/" + posixpath.dirname(rel))


def chown_tree(root_fd: int, uid: int, gid: int) -> list[str]:
    """Give the folder ``root_fd`` and everything below it (symlinks themselves, never their
    targets) to ``uid:gid``. Entries that vanish or change kind meanwhile (a component still at
    work) are skipped; other failures are returned, one line each."""
    errors: list[str] = []

    def failed(rel: str, exc: OSError) -> None:
        if exc.errno not in _RACED:
            errors.append(f"{rel or '.'!r}: {exc.strerror or exc}")

    os.chown(root_fd, uid, gid)
    for e in walk(root_fd, failed):
        try:
            os.chown(e.name, uid, gid, dir_fd=e.dir_fd, follow_symlinks=False)
        except OSError as exc:
            failed(e.rel, exc)
    return errors


def remove_tree(path: Path, within: Path | None = None) -> None:
    """Remove the folder ``path`` and everything in it, through descriptors only (components
    may still be renaming things in it), also what components left read-only: each folder is
    made writable through its own descriptor first. A missing ``path`` is fine; the first
    failure is raised once everything else is removed."""
    try:
        root = open_dir(path, within)
    except FileNotFoundError:
        return
    try:
        errors = _empty(root)
    finally:
        os.close(root)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        errors.append(exc)
    if errors:
        raise errors[0]


def _empty(root: int) -> list[OSError]:
    """Remove everything below the folder ``root``, deepest first, without recursion."""
    errors: list[OSError] = []
    stack: list[tuple[int, Iterator[tuple[str, str]], str]] = []

    def enter(fd: int, name: str) -> None:
        try:
            os.fchmod(fd, 0o700)
            listing = _listing(fd)
        except OSError as exc:
            errors.append(exc)
            listing = []
        stack.append((fd, iter(listing), name))

    enter(os.dup(root), "")
    while stack:
        fd, items, name = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
            os.close(fd)
            if stack:
                _remove(functools.partial(os.rmdir, name, dir_fd=stack[-1][0]), errors)
            continue
        child, kind = item
        if kind == "dir":
            try:
                enter(os.open(child, DIR_FLAGS, dir_fd=fd), child)
                continue
            except OSError as exc:
                if exc.errno not in _RACED:
                    errors.append(exc)
                    continue
        _remove(functools.partial(os.unlink, child, dir_fd=fd), errors)
    return errors


def _remove(remove: Callable[[], None], errors: list[OSError]) -> None:
    try:
        remove()
    except FileNotFoundError:
        pass
    except OSError as exc:
        errors.append(exc)


# What a concurrent rename/swap/removal by a component looks like to a walk.
_RACED = frozenset({errno.ENOENT, errno.ELOOP, errno.ENOTDIR})


def adopt_file(dir_fd: int, name: str, mode_mask: int, state: CopyState) -> bool:
    """Make the file ``name`` in the folder ``dir_fd`` what boride's own copy of it would be,
    in place: owned by boride's user, mode 0755 or 0644 by its executable bit (``& mode_mask``),
    one link. A file boride cannot take over (another owner, as another user) or with other
    hard links (its content could change through them) is replaced by a copy of its own.
    False, and nothing done, when ``name`` is not a plain file (opened without following)."""
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in _RACED:
            return False
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        mode = (0o755 if st.st_mode & 0o111 else 0o644) & mode_mask
        if st.st_nlink > 1 or not _take(fd, st):
            tmp = f".{name}.{uuid.uuid4().hex[:8]}.copy"
            dfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                          | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
            try:
                os.fchmod(dfd, mode)
                copy_fd(fd, dfd, st.st_size, st.st_dev, state)
            finally:
                os.close(dfd)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        elif stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return True


def adopt_dir(fd: int, mode: int) -> None:
    """Make the folder ``fd`` boride's user's (when boride may: else it stays as it is) with
    ``mode``."""
    st = os.fstat(fd)
    _take(fd, st)
    if stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)


def _take(fd: int, st: os.stat_result) -> bool:
    """Whether the file ``fd`` is (now) boride's user's."""
    me = (os.geteuid(), os.getegid())
    if (st.st_uid, st.st_gid) == me:
        return True
    try:
        os.fchown(fd, *me)
    except PermissionError:
        return False
    return True
