"""Merge the processors' output directories into one tree, resolving conflicts.

``await merge(outputs, target, rules, resolve)`` merges ``outputs`` (one directory per processor,
in processor order: ``outputs[i]`` is layer ``i``) into ``target``.

The rules
=========

*Target.* ``target`` must be an empty directory, or not exist (it is then created with its
parents). It must not lie inside an output, nor an output inside it.

*Plain files.* A relative path that is a regular file in exactly one output is copied as-is:
its content, and its executable bit (the copy is mode 0755 if the source has any ``x`` bit,
else 0644, whatever the umask). Owners and mtimes are not copied.

*Directories.* Every directory of every output is created (mode 0755), so empty directories are
kept. A path that is a directory in several outputs is not a conflict: their contents merge.

*Conflicts.* A path that is a regular file in several outputs is a conflict. The first rule (in
rule order) with a glob matching the path decides it: ``resolve(rule, conflict)`` is awaited with
every version (``Version(layer, host path, content, executable)``, in layer order; the content
read through descriptors, never by path) and returns ``(path, content)``;
``content`` is written at the conflict's path, executable iff the last layer's version is.
The returned path must be the conflict's own (compared as a safe relative posix path: ``str``,
not absolute, no ``..`` component, no NUL; ``.`` and empty components are dropped), else the
resolution fails, naming the resolver and both paths (as the Go coordinator refuses it: a
resolver decides the paths its globs match, never another file). Conflicts no rule matches:
the last layer's version wins (copied as a plain file). Globs are doublestar globs over the
relative posix path (``**`` crosses directories, ``*`` does not, ``*`` matches dot-files,
``{a,b}`` braces).

*File against directory.* A path that is a file (or a symlink to one) in one output and a
directory in another is an error naming the path and both sets of processors; it is detected
before anything is written. (No silent "last layer wins": that would drop a whole subtree.)

*Symlinks* are never followed out of their output and never created in ``target``. A symlink
whose target, fully resolved, is a regular file inside the same output is copied as a regular
file with that file's content and executable bit (in a conflict, its ``Version.path`` is that
resolved file). Every other symlink is an error naming it:
one resolving outside its output, a dangling one, a loop, a symlink to a directory (following
those could make cycles or huge trees). Other special files (FIFOs, sockets, devices) are errors.

*Errors* are all collected. Input errors (bad outputs, symlinks, special files, file/directory
clashes) are reported before any resolver is called and before anything is written in
``target``. Otherwise copying the plain files runs concurrently with the resolver calls, and
every failed resolution, invalid result and failed copy is reported together, in path order.
After a :class:`MergeError` the content of ``target`` is unspecified (partial).

Moving instead of copying
=========================

With ``move=True`` the outputs are the merge's to use up (they are thrown away after it): a
plain file is *renamed* into ``target`` instead of copied, and a folder only one output has
(with nothing in it that another entry reads: a symlink's target, a conflict's version) is
renamed whole. Only what a rename cannot do is copied: a file with other hard links (its
content could still change through them), a file owned by someone else that boride cannot
adopt, a file another entry reads, and anything on another file system. What is moved is then
made the merge's own through descriptors, as a copy would be: owner boride's user, mode 0755
or 0644 by the executable bit, folders 0755; an entry found not to be what the scan saw (a
component at work meanwhile) is removed and reported. Outputs that overlap one another are
never moved from. The rules above hold unchanged.

Safety and speed
================

Nothing is written outside ``target``: every file and directory is created relative to an open
descriptor of ``target`` with ``O_CREAT|O_EXCL|O_NOFOLLOW`` / ``mkdir`` (which never follow or
reuse an existing entry), in a tree the merge itself creates from empty. Nothing outside the
outputs is read: processors may still be running and renaming things in them, so each output is
walked and read through directory descriptors (:func:`boride.fsutil.walk`), never by path. Files
are copies, never hard links (a plugin editing the merged tree in place must not change a
processor's output): a reflink (``FICLONE``, copy-on-write) where the file system supports it,
else ``copy_file_range``. Scans, copies and resolver calls all fan out through
:mod:`boride.parallel`, bounded by ``limit`` (default: the CPU count): at most ``limit``
resolver calls in flight, and copies in batches of :data:`BATCH_FILES` files on a private pool
of ``limit`` threads (the kernel work of creating files then runs on several cores; see
docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from wcmatch import glob as wcglob

from boride import aio, parallel
from boride.errors import BorideError, describe, shown
from boride.fsutil import (
    DIR_FLAGS,
    CopyState,
    DirCache,
    Entry,
    UnsafePath,
    adopt_dir,
    adopt_file,
    copy_fd,
    current_umask,
    is_within,
    lstat_below,
    open_dir,
    resolve_link,
    safe_relpath,
    walk,
)

__all__ = [
    "Conflict",
    "MergeError",
    "MergeResult",
    "ResolveFn",
    "ResolverRule",
    "Version",
    "merge",
    "other_path",
]

GLOB_FLAGS = wcglob.GLOBSTAR | wcglob.DOTGLOB | wcglob.BRACE | wcglob.FORCEUNIX

# Files per copy job handed to a thread: large enough to amortise the hand-off, small enough
# to balance the threads. (By count only: sizes would cost a stat per file in the scan.)
# A batch holds files of one folder only (see _batches).
BATCH_FILES = 64

_DST_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW

T = TypeVar("T")


@dataclass(frozen=True)
class ResolverRule:
    name: str
    globs: tuple[str, ...]


@dataclass(frozen=True)
class Version:
    layer: int  # processor index in the build (0 = first)
    path: Path  # host path of this processor's file (for messages: read ``content``)
    content: bytes = field(default=b"", compare=False, repr=False)  # read through descriptors
    executable: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class Conflict:
    path: str  # relative posix path
    versions: tuple[Version, ...]  # in layer order


ResolveFn = Callable[[ResolverRule, Conflict], Awaitable[tuple[str, bytes]]]


@dataclass
class MergeResult:
    files: int  # regular files in the merged tree
    conflicts: int  # paths written by several processors
    resolved: int  # conflicts decided by a resolver
    seconds: float


class MergeError(BorideError):
    """The merge failed; ``errors`` lists every problem found, each naming its path/processor."""

    MAX_SHOWN = 50

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__(errors, message=shown(f"merge failed with {len(errors)} error(s):",
                                               errors, self.MAX_SHOWN))


# --------------------------------------------------------------------------------------------
# Scanning


@dataclass
class _Layer:
    """What one output holds: files as (relative path, relative path to read: a symlink's
    resolved target), directories."""

    files: list[tuple[str, str]] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    root: str = ""


def _who(layer: int, root: str) -> str:
    return f"processor {layer} ({root})"


def _scan(layer: int, root: str, root_fd: int) -> _Layer:
    """Walk one output through descriptors (:func:`boride.fsutil.walk`), never following a
    symlink out of it."""
    out = _Layer()
    who = _who(layer, root)

    def unlistable(rel_dir: str, exc: OSError) -> None:
        out.errors.append(f"{who}: directory {rel_dir or '.'!r} cannot be read: "
                          f"{exc.strerror or exc}")

    for e in walk(root_fd, unlistable):
        if e.kind == "dir":
            out.dirs.append(e.rel)
        elif e.kind == "file":
            out.files.append((e.rel, e.rel))
        elif e.kind == "link":
            _scan_symlink(out, who, root_fd, e)
        else:
            out.errors.append(f"{who}: {e.rel!r} is not a regular file, directory or symlink")
    return out


def _scan_symlink(out: _Layer, who: str, root_fd: int, e: Entry) -> None:
    try:
        link = os.readlink(e.name, dir_fd=e.dir_fd)
    except OSError:
        link = "?"
    try:
        target, exists = resolve_link(root_fd, e.rel)
        if not exists:
            raise FileNotFoundError(errno.ENOENT, "dangling")
        st = lstat_below(root_fd, target)
    except UnsafePath:
        out.errors.append(f"{who}: symlink {e.rel!r} -> {link!r} points outside the "
                          "processor's output")
        return
    except OSError as exc:
        out.errors.append(f"{who}: symlink {e.rel!r} -> {link!r} cannot be resolved: "
                          f"{exc.strerror or exc}")
        return
    if stat.S_ISREG(st.st_mode):
        out.files.append((e.rel, target))
    elif stat.S_ISDIR(st.st_mode):
        out.errors.append(f"{who}: symlink {e.rel!r} -> {link!r} points to a directory "
                          "(not followed)")
    else:
        out.errors.append(f"{who}: symlink {e.rel!r} -> {link!r} points to a special file")


# --------------------------------------------------------------------------------------------
# Writing (runs in the copy threads)


@dataclass
class _Writer:
    """Creates entries below an open descriptor of the target; shared by the copy threads."""

    dir_fd: int
    umask: int
    roots: Sequence[int]  # the outputs' descriptors, by layer
    state: CopyState = field(default_factory=CopyState)
    stop: threading.Event = field(default_factory=threading.Event)

    def read(self, layer: int, src: str) -> tuple[bytes, bool]:
        """A version's content and executable bit, read through descriptors."""
        with DirCache(self.roots[layer]) as cache:
            fd = cache.open_file(src)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{src} is no longer a regular file")
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks), bool(st.st_mode & 0o111)
        finally:
            os.close(fd)

    def mkdirs(self, rels: Iterable[str]) -> list[str]:
        errors = []
        with DirCache(self.dir_fd) as target:
            for rel in rels:  # sorted: parents first
                parent, _, name = rel.rpartition("/")
                try:
                    pfd = target.dir(parent)
                    os.mkdir(name, 0o755, dir_fd=pfd)
                    if self.umask & 0o755:
                        os.chmod(name, 0o755, dir_fd=pfd, follow_symlinks=False)
                except OSError as exc:
                    errors.append(f"{rel!r}: cannot create directory: {exc.strerror or exc}")
        return errors

    def copy_batch(self, jobs: Sequence[tuple[str, str, int]]) -> list[str]:
        """Copy (relative path, path in its output, layer) jobs; return one error per failed
        file. Sources are opened through descriptors (a batch is mostly one folder)."""
        errors = []
        umask, state, stop = self.umask, self.state, self.stop
        sources: dict[int, DirCache] = {}
        # the target's folders are opened one component at a time too: a folder moved in
        # whole (move=True) may be changed by a component still holding it
        target = DirCache(self.dir_fd)
        for rel, src, layer in jobs:  # the hot loop of the merge: kept lean
            if stop.is_set():
                break
            try:
                cache = sources.get(layer)
                if cache is None:
                    cache = sources[layer] = DirCache(self.roots[layer])
                sfd = cache.open_file(src)
                try:
                    st = os.fstat(sfd)
                    if not stat.S_ISREG(st.st_mode):
                        raise OSError(f"{src} is no longer a regular file")
                    mode = 0o755 if st.st_mode & 0o111 else 0o644
                    parent, _, base = rel.rpartition("/")
                    dfd = os.open(base, _DST_FLAGS, mode, dir_fd=target.dir(parent))
                    try:
                        if umask & mode:
                            os.fchmod(dfd, mode)
                        if st.st_size:
                            copy_fd(sfd, dfd, st.st_size, st.st_dev, state)
                    finally:
                        os.close(dfd)
                finally:
                    os.close(sfd)
            except Exception as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                errors.append(f"{rel!r} from processor {layer} ({src}): copy failed: {reason}")
        for cache in sources.values():
            cache.close()
        target.close()
        return errors

    def move_batch(self, jobs: Sequence[tuple[str, str, int]]) -> list[str]:
        """Rename (relative path, path in its output, layer) jobs' files into the target; a
        file a rename cannot take (hard-linked, another file system, no longer a plain file)
        is copied instead. Every moved file is adopted (:meth:`adopt`)."""
        errors: list[str] = []
        copies: list[tuple[str, str, int]] = []
        sources: dict[int, DirCache] = {}
        target = DirCache(self.dir_fd)
        for rel, src, layer in jobs:
            if self.stop.is_set():
                break
            try:
                cache = sources.get(layer)
                if cache is None:
                    cache = sources[layer] = DirCache(self.roots[layer])
                src_dir, _, name = src.rpartition("/")
                pfd = cache.dir(src_dir)
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
                    copies.append((rel, src, layer))
                    continue
                parent, _, base = rel.rpartition("/")
                tfd = target.dir(parent)
                try:
                    os.rename(name, base, src_dir_fd=pfd, dst_dir_fd=tfd)
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    copies.append((rel, src, layer))
                    continue
                problem = self.adopt(tfd, base)
                if problem:
                    errors.append(f"{rel!r} from processor {layer} ({src}): {problem}")
            except Exception as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                errors.append(f"{rel!r} from processor {layer} ({src}): move failed: {reason}")
        for cache in sources.values():
            cache.close()
        target.close()
        return errors + (self.copy_batch(copies) if copies else [])

    def adopt(self, dir_fd: int, name: str) -> str | None:
        """Make the file ``name`` (in the folder ``dir_fd``, moved from an output) the merge's
        own, as a copy would be (:func:`boride.fsutil.adopt_file`); anything but a plain file
        is removed. A problem, or None."""
        if adopt_file(dir_fd, name, 0o777, self.state):
            return None
        _remove_entry(dir_fd, name)
        return "changed during the merge (no longer a plain file): left out"

    def move_dir(self, rel: str, layer: int) -> list[str] | None:
        """Rename the folder ``rel`` of output ``layer`` into the target whole and adopt what
        is in it (folders 0755, files as :meth:`adopt`); None when a rename cannot (another
        file system): the caller copies it."""
        parent, _, name = rel.rpartition("/")
        with DirCache(self.roots[layer]) as cache:
            pfd = cache.dir(parent)
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                return [f"{rel!r} from processor {layer}: changed during the merge (no longer "
                        "a directory)"]
            with DirCache(self.dir_fd) as target:
                tfd = target.dir(parent)
                try:
                    os.rename(name, name, src_dir_fd=pfd, dst_dir_fd=tfd)
                except OSError as exc:
                    if exc.errno == errno.EXDEV:
                        return None
                    raise
                # what was renamed is what is there now (the scan saw a folder; a component
                # may have swapped it for a link meanwhile): a folder, else it goes
                if not stat.S_ISDIR(os.stat(name, dir_fd=tfd, follow_symlinks=False).st_mode):
                    _remove_entry(tfd, name)
                    return [f"{rel!r} from processor {layer}: changed during the merge (no "
                            "longer a directory): left out"]
        errors: list[str] = []

        def unreadable(sub: str, exc: OSError) -> None:
            errors.append(f"{rel}/{sub}: cannot be read after the move: {exc.strerror or exc}")

        with DirCache(self.dir_fd) as target:
            fd = os.open(name, DIR_FLAGS, dir_fd=target.dir(parent))
        try:
            adopt_dir(fd, 0o755)
            for e in walk(fd, unreadable):
                where = f"{rel}/{e.rel}"
                if e.kind == "dir":
                    child = os.open(e.name, DIR_FLAGS, dir_fd=e.dir_fd)
                    try:
                        adopt_dir(child, 0o755)
                    finally:
                        os.close(child)
                elif e.kind == "file":
                    problem = self.adopt(e.dir_fd, e.name)
                    if problem:
                        errors.append(f"{where!r} from processor {layer}: {problem}")
                else:
                    _remove_entry(e.dir_fd, e.name)
                    errors.append(f"{where!r} from processor {layer}: changed during the "
                                  "merge (a link or special file appeared): left out")
        finally:
            os.close(fd)
        return errors

    def write_batch(self, jobs: Sequence[tuple[str, bytes, bool, str]]) -> list[str]:
        """Write resolved contents: (path, content, executable, origin)."""
        errors = []
        target = DirCache(self.dir_fd)
        for rel, content, executable, origin in jobs:
            if self.stop.is_set():
                break
            try:
                mode = 0o755 if executable else 0o644
                parent, _, base = rel.rpartition("/")
                pfd = target.dir(parent)
                fd = os.open(base, _DST_FLAGS, mode, dir_fd=pfd)
                try:
                    if self.umask & mode:
                        os.fchmod(fd, mode)
                    view = memoryview(content)
                    while view:
                        view = view[os.write(fd, view):]
                finally:
                    os.close(fd)
            except OSError as exc:
                errors.append(f"{rel!r} ({origin}): cannot write: {exc.strerror or exc}")
        target.close()
        return errors


def _remove_entry(dir_fd: int, name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)


def _batches(jobs: list[tuple[str, str, int]]) -> list[list[tuple[str, str, int]]]:
    """Copy jobs in batches of one folder each (at most BATCH_FILES files), ordered round-robin
    over the folders: threads running side by side then create files in different folders
    and do not queue on one folder's lock in the kernel."""
    by_dir: dict[str, list[tuple[str, str, int]]] = {}
    for job in jobs:
        by_dir.setdefault(job[0].rpartition("/")[0], []).append(job)
    chunks = [[group[i:i + BATCH_FILES] for i in range(0, len(group), BATCH_FILES)]
              for group in by_dir.values()]
    return [c[k] for k in range(max(map(len, chunks), default=0)) for c in chunks if k < len(c)]


def _errors_of(report: parallel.Report[Any, list[str]], what: str) -> list[str]:
    errors: list[str] = []
    for outcome in report.outcomes:
        if outcome.ok:
            errors.extend(outcome.value or ())
        else:
            errors.append(f"{what} failed: {describe(outcome.error)}")
    return errors


def _ancestors(rel: str) -> Iterable[str]:
    i = rel.rfind("/")
    while i > 0:
        rel = rel[:i]
        yield rel
        i = rel.rfind("/")


def _plural(layers: Iterable[int]) -> str:
    items = sorted(set(layers))
    return ("processor " if len(items) == 1 else "processors ") + ", ".join(map(str, items))


# --------------------------------------------------------------------------------------------
# The merge


async def merge(
    outputs: Sequence[Path],
    target: Path,
    rules: Sequence[ResolverRule],
    resolve: ResolveFn,
    *,
    limit: int | None = None,
    within: Path | None = None,
    move: bool = False,
) -> MergeResult:
    """Merge ``outputs`` (in processor order) into ``target``; see the module docstring.

    With ``within``, every output and the target must really lie at or below that folder when
    they are opened (components may still be renaming things in it). With ``move``, the
    outputs are used up: entries are renamed into ``target`` where a rename can do it."""
    start = time.perf_counter()
    if limit is None:
        limit = parallel.default_limit()
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    matchers, errors = _compile(rules)
    roots = [os.fspath(p) for p in outputs]
    errors += _check_target(target, roots)
    if errors:
        raise MergeError(errors)
    with contextlib.ExitStack() as fds, \
            ThreadPoolExecutor(max_workers=limit, thread_name_prefix="boride-merge") as pool:
        root_fds: list[int] = []
        for layer, root in enumerate(roots):
            root_fds.append(_open(fds, root, within, errors, _who(layer, root) + ": output"))
        target_fd = _open(fds, os.fspath(target), within, errors, f"target {target}")
        if errors:
            raise MergeError(errors)
        writer = _Writer(target_fd, current_umask(), root_fds)
        job = _Job(pool, writer, limit)
        layers = await job.scan_all(roots)
        plan = _plan(layers, rules, matchers)
        if move and not _overlapping(roots):
            _plan_moves(plan, target_fd, root_fds)
        if plan.errors:
            raise MergeError(plan.errors)
        winners, resolved = await job.copy_and_resolve(plan, resolve)
        await job.write_winners(plan, winners)
    return MergeResult(files=len(plan.plain | winners.keys()), conflicts=plan.conflicts,
                       resolved=resolved, seconds=time.perf_counter() - start)


def _compile(rules: Sequence[ResolverRule]) -> tuple[list[Any], list[str]]:
    matchers: list[Any] = []
    errors: list[str] = []
    for rule in rules:
        try:
            matchers.append(wcglob.compile(list(rule.globs), flags=GLOB_FLAGS)
                            if rule.globs else None)
        except Exception as exc:
            matchers.append(None)
            errors.append(f"resolver rule {rule.name!r}: invalid glob: {exc}")
    return matchers, errors


def _open(fds: contextlib.ExitStack, path: str, within: Path | None, errors: list[str],
          what: str) -> int:
    try:
        fd = open_dir(path, within)
    except UnsafePath as exc:
        errors.append(f"{what}: {exc}")
        return -1
    except NotADirectoryError:
        errors.append(f"{what} is not a directory")
        return -1
    except OSError as exc:
        errors.append(f"{what} cannot be read: {exc.strerror or exc}")
        return -1
    fds.callback(os.close, fd)
    return fd


@dataclass
class _Plan:
    """What the scans ask for: plain copies, conflicts to resolve, and the tree's folders."""

    dirs: dict[str, list[int]]  # relative path -> layers having it as a folder
    copies: list[tuple[str, str, int]]  # (path, path in its output, layer)
    to_resolve: list[tuple[ResolverRule, Conflict, tuple[str, ...]]]  # + paths in outputs
    conflicts: int
    errors: list[str]
    # with move: the folders renamed whole (path, layer), and the layers whose files may be
    # renamed (on the target's file system); ``copies`` below those folders are not copied
    whole: list[tuple[str, int]] = field(default_factory=list)
    movable: set[int] = field(default_factory=set)
    read: set[tuple[int, str]] = field(default_factory=set)  # (layer, path): read by others

    def under_whole(self, rel: str) -> bool:
        whole = {w for w, _ in self.whole}
        return rel in whole or any(a in whole for a in _ancestors(rel))

    @property
    def plain(self) -> set[str]:
        return {job[0] for job in self.copies}


def _plan(layers: Sequence[_Layer], rules: Sequence[ResolverRule],
          matchers: Sequence[Any]) -> _Plan:
    files: dict[str, list[tuple[int, str]]] = {}
    dirs: dict[str, list[int]] = {}
    errors: list[str] = []
    for layer, scanned in enumerate(layers):
        errors += scanned.errors
        for rel, src in scanned.files:
            files.setdefault(rel, []).append((layer, src))
        for rel in scanned.dirs:
            dirs.setdefault(rel, []).append(layer)
    for rel in sorted(files.keys() & dirs.keys()):
        errors.append(f"{rel!r} is a file in {_plural(v[0] for v in files[rel])} and a "
                      f"directory in {_plural(dirs[rel])}")
    plan = _Plan(dirs, [], [], 0, errors)
    for rel in sorted(files):
        versions = files[rel]
        if len(versions) > 1:
            plan.conflicts += 1
            matched = _first_rule(rules, matchers, rel)
            if matched is not None:
                conflict = Conflict(rel, tuple(Version(layer, Path(layers[layer].root, src))
                                               for layer, src in versions))
                plan.to_resolve.append((matched, conflict, tuple(src for _, src in versions)))
                continue
        layer, src = versions[-1]
        plan.copies.append((rel, src, layer))
    return plan


def _overlapping(roots: Sequence[str]) -> bool:
    """Whether two outputs are the same folder or one lies in another (then no output is
    moved from: a move would take files another layer still has to read)."""
    real = [os.path.realpath(r) for r in roots]
    return any(i != j and is_within(b, a) for i, a in enumerate(real)
               for j, b in enumerate(real))


def _plan_moves(plan: _Plan, target_fd: int, root_fds: Sequence[int]) -> None:
    """Which files and folders of ``plan`` a rename can take (see "Moving instead of
    copying"): layers on the target's file system, files nothing else reads, and the topmost
    folders only one layer has, with nothing below them read from elsewhere or a link."""
    dev = os.fstat(target_fd).st_dev
    plan.movable = {layer for layer, fd in enumerate(root_fds) if os.fstat(fd).st_dev == dev}
    read: set[tuple[int, str]] = {(layer, src) for rel, src, layer in plan.copies if src != rel}
    for _, conflict, srcs in plan.to_resolve:
        read.update((v.layer, src) for v, src in zip(conflict.versions, srcs, strict=True))
    # a folder is not whole when anything below it is a link, or read by another entry
    spoilt = {rel for rel, src, layer in plan.copies if src != rel}
    spoilt.update(src for layer, src in read)
    blocked: set[str] = set()
    for rel in spoilt:
        blocked.update(_ancestors(rel))
    chosen: set[str] = set()
    for rel in sorted(plan.dirs):  # parents first
        layers = plan.dirs[rel]
        if any(a in chosen for a in _ancestors(rel)):
            continue  # moved with the folder above it
        if len(layers) == 1 and layers[0] in plan.movable and rel not in blocked:
            chosen.add(rel)
            plan.whole.append((rel, layers[0]))
    plan.read = read


@dataclass
class _Job:
    """The threads and the writer of one merge, and its phases that use them."""

    pool: ThreadPoolExecutor
    writer: _Writer
    limit: int

    async def thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await aio.in_thread(self.pool, fn, *args, stop=self.writer.stop)

    async def scan_all(self, roots: Sequence[str]) -> list[_Layer]:
        async def scan(layer: int) -> _Layer:
            return await self.thread(_scan, layer, roots[layer], self.writer.roots[layer])

        layers: list[_Layer] = []
        for outcome in (await parallel.run(scan, range(len(roots)), limit=self.limit)).outcomes:
            if outcome.ok and outcome.value is not None:
                layers.append(outcome.value)
            else:
                layers.append(_Layer(errors=[
                    f"{_who(outcome.index, roots[outcome.index])}: scan failed: "
                    f"{describe(outcome.error)}"]))
            layers[-1].root = roots[outcome.index]
        return layers

    async def place_all(self, plan: _Plan) -> list[str]:
        """The tree's folders, then its plain files: moved (whole folders, single files) or
        copied, in batches on the threads; every error."""
        errs = await self.thread(self.writer.mkdirs,
                                 sorted(d for d in plan.dirs if not plan.under_whole(d)))
        jobs = [j for j in plan.copies if not plan.under_whole(j[0])]
        moves = [j for j in jobs if j[2] in plan.movable and j[1] == j[0]
                 and (j[2], j[1]) not in plan.read]
        moving = set(moves)
        copies = [j for j in jobs if j not in moving]

        async def copy(batch: list[tuple[str, str, int]]) -> list[str]:
            return await self.thread(self.writer.copy_batch, batch)

        async def move(batch: list[tuple[str, str, int]]) -> list[str]:
            return await self.thread(self.writer.move_batch, batch)

        async def move_dir(item: tuple[str, int]) -> list[str]:
            rel, layer = item
            done = await self.thread(self.writer.move_dir, rel, layer)
            if done is not None:
                return done
            # another file system: copied as any other folder
            prefix = rel + "/"
            more = await self.thread(self.writer.mkdirs, [rel, *sorted(
                d for d in plan.dirs if d.startswith(prefix))])
            inside = [j for j in plan.copies if j[0].startswith(prefix)]
            report = await parallel.run(copy, _batches(inside), limit=self.limit)
            return more + _errors_of(report, "copy")

        reports = await aio.gather(
            parallel.run(move_dir, plan.whole, limit=self.limit),
            parallel.run(move, _batches(moves), limit=self.limit),
            parallel.run(copy, _batches(copies), limit=self.limit))
        return errs + [e for r in reports for e in _errors_of(r, "copy")]

    async def copy_and_resolve(self, plan: _Plan, resolve: ResolveFn
                               ) -> tuple[dict[str, tuple[bytes, bool, str]], int]:
        """Copy the plain files while the resolvers decide the conflicts; return the winner
        of each resolved conflict (content, executable, origin) and how many were resolved."""
        async def call(item: tuple[ResolverRule, Conflict, tuple[str, ...]]
                       ) -> tuple[tuple[str, bytes], bool]:
            rule, conflict, srcs = item
            versions = []
            for v, src in zip(conflict.versions, srcs, strict=True):
                content, executable = await self.thread(self.writer.read, v.layer, src)
                versions.append(Version(v.layer, v.path, content, executable))
            return await resolve(rule, Conflict(conflict.path, tuple(versions))), executable

        async with asyncio.TaskGroup() as group:
            copying = group.create_task(self.place_all(plan))
            resolving = group.create_task(parallel.run(call, plan.to_resolve, limit=self.limit))
        errors = copying.result()
        winners: dict[str, tuple[bytes, bool, str]] = {}
        resolved = 0
        for done in resolving.result().outcomes:  # in conflict path order
            by, conflict, _ = done.item
            origin = f"conflict {conflict.path!r}, resolver {by.name!r}"
            if not done.ok or done.value is None:
                errors.append(f"{origin}: failed: {describe(done.error)}")
                continue
            try:
                dest, content = _check_resolution(done.value[0])
            except (TypeError, ValueError) as exc:
                errors.append(f"{origin}: invalid result: {exc}")
                continue
            refused = other_path(conflict.path, dest)
            if refused is not None:  # (its own path is a file of the tree: no clash)
                errors.append(f"{origin}: {refused}")
                continue
            resolved += 1
            winners[dest] = (content, done.value[1], origin)
        if errors:
            raise MergeError(errors)
        return winners, resolved

    async def write_winners(self, plan: _Plan,
                            winners: dict[str, tuple[bytes, bool, str]]) -> None:
        """Write each resolved conflict at its path (its folders are the tree's already)."""
        writes = [(dest, content, executable, origin)
                  for dest, (content, executable, origin) in sorted(winners.items())]

        async def write(batch: list[tuple[str, bytes, bool, str]]) -> list[str]:
            return await self.thread(self.writer.write_batch, batch)

        chunks = [writes[i:i + BATCH_FILES] for i in range(0, len(writes), BATCH_FILES)]
        errors = _errors_of(await parallel.run(write, chunks, limit=self.limit), "write")
        if errors:
            raise MergeError(errors)


def _check_target(target: Path, roots: Sequence[str]) -> list[str]:
    """Errors if ``target`` is unusable or overlaps an output; else create it if missing."""
    real_target = os.path.realpath(target)
    errors = []
    for layer, root in enumerate(roots):
        real_root = os.path.realpath(root)
        if is_within(real_target, real_root) or is_within(real_root, real_target):
            errors.append(f"{_who(layer, root)}: output and target {target} overlap")
    if errors:
        return errors
    try:
        if os.path.lexists(target):
            if not os.path.isdir(target):
                return [f"target {target} is not a directory"]
            with os.scandir(target) as it:
                if any(True for _ in it):
                    return [f"target {target} is not empty"]
        else:
            os.makedirs(target)
    except OSError as exc:
        return [f"target {target} cannot be used: {exc.strerror or exc}"]
    return []


def _first_rule(rules: Sequence[ResolverRule], matchers: Sequence[Any],
                rel: str) -> ResolverRule | None:
    for rule, matcher in zip(rules, matchers, strict=True):
        if matcher is not None and matcher.match(rel):
            return rule
    return None


def other_path(asked: str, answered: str) -> str | None:
    """Why a resolution for ``answered`` is refused when ``asked`` is the conflict's path
    (None: the same path, loosely written or not; an unsafe one is refused as unsafe)."""
    try:
        same = safe_relpath(answered) == asked
    except UnsafePath:
        return None
    return None if same else f"answered for another path: expected {asked!r}, got {answered!r}"


def _check_resolution(value: object) -> tuple[str, bytes]:
    if not isinstance(value, tuple) or len(value) != 2:
        raise TypeError(f"expected a (path, content) tuple, got {type(value).__name__}")
    path, content = value
    if not isinstance(content, bytes | bytearray | memoryview):
        raise TypeError(f"content must be bytes, got {type(content).__name__}")
    try:
        rel = safe_relpath(path)
    except UnsafePath as exc:
        raise ValueError(f"unsafe path: {exc}") from None
    return rel, bytes(content)
