"""Small file-system helpers shared by the merge and the archive writer.

* :func:`copy_fd` copies file data between two open descriptors as fast as the kernel allows:
  a reflink (``FICLONE``, copy-on-write, so the copy never shares writable blocks with its
  source), else ``copy_file_range`` (in-kernel copy), else ``read``/``write``. Never a hard
  link: a later in-place edit of the copy must not be able to change the source.
* :func:`safe_relpath` validates and normalises a relative posix path coming from outside.
* :func:`is_within` checks containment of real paths.
* :func:`current_umask` reads the process umask without changing it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "CopyState",
    "UnsafePath",
    "copy_fd",
    "current_umask",
    "is_within",
    "safe_relpath",
]

FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h

# Errors meaning "this way of copying is not available here", never "the copy failed".
_UNSUPPORTED = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ETXTBSY}
)


class UnsafePath(ValueError):
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


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give ``root`` and everything below it to ``uid``:``gid`` (links themselves, not their
    targets); what cannot be changed is left as it is."""
    with contextlib.suppress(OSError):
        os.lchown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            with contextlib.suppress(OSError):
                os.lchown(os.path.join(dirpath, name), uid, gid)


def remove_tree(path: Path) -> None:
    """``shutil.rmtree`` that also removes what components left read-only."""

    def onerror(func: Any, p: str, exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)

    shutil.rmtree(path, onerror=onerror)


def walk_entries(root: str, on_unlistable: Callable[[str, OSError], None]
                 ) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every entry below ``root`` with its relative path ("a/b"), symlinks never followed.

    Iterative, so depth is bounded only by the OS. Folders are descended into after being
    yielded; one that cannot be listed is reported to ``on_unlistable(rel_dir, error)``
    (``rel_dir`` is "" for ``root`` itself) and skipped.
    """
    stack: list[tuple[str, str]] = [("", root)]
    while stack:
        rel_dir, abs_dir = stack.pop()
        prefix = rel_dir + "/" if rel_dir else ""
        try:
            with os.scandir(abs_dir) as it:
                listing = list(it)
        except OSError as exc:
            on_unlistable(rel_dir, exc)
            continue
        for entry in listing:
            rel = prefix + entry.name
            yield rel, entry
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((rel, entry.path))
            except OSError:
                pass  # the caller's own is_dir check reports it
