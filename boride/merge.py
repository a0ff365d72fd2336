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
every version (``Version(layer, host path)``, in layer order) and returns ``(path, content)``;
``content`` is written at ``path``, executable iff the last layer's version is. The returned path
must be a safe relative posix path (``str``, not absolute, no ``..`` component, no NUL; ``.`` and
empty components are dropped), else the resolution fails. A resolved conflict contributes only
its returned path: returning another path moves the file. Conflicts no rule matches: the last
layer's version wins (copied as a plain file). Globs are doublestar globs over the relative posix
path (``**`` crosses directories, ``*`` does not, ``*`` matches dot-files, ``{a,b}`` braces).

*Collisions of resolved paths* (decided the same way whatever order the resolvers finish in):
a resolver's result overrides a plain file (or an unresolved conflict's winner) at the same
path; if several resolutions return the same path, the conflict whose own path sorts first
(by code point) wins and the others are dropped. A returned path that is a directory of the
merged tree, or lies below one of its files, is an error.

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

Safety and speed
================

Nothing is written outside ``target``: every file and directory is created relative to an open
descriptor of ``target`` with ``O_CREAT|O_EXCL|O_NOFOLLOW`` / ``mkdir`` (which never follow or
reuse an existing entry), in a tree the merge itself creates from empty. Files are copies, never
hard links (a plugin editing the merged tree in place must not change a processor's output): a
reflink (``FICLONE``, copy-on-write) where the file system supports it, else
``copy_file_range``. Scans, copies and resolver calls all fan out through :mod:`boride.parallel`,
bounded by ``limit`` (default: the CPU count): at most ``limit`` resolver calls in flight, and
copies in batches of :data:`BATCH_FILES` files on a private pool of ``limit`` threads (the
kernel work of creating files then runs on several cores; see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
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

from boride import parallel
from boride.fsutil import (
    CopyState,
    UnsafePath,
    copy_fd,
    current_umask,
    is_within,
    safe_relpath,
    walk_entries,
)

__all__ = [
    "Conflict",
    "MergeError",
    "MergeResult",
    "ResolveFn",
    "ResolverRule",
    "Version",
    "merge",
]

GLOB_FLAGS = wcglob.GLOBSTAR | wcglob.DOTGLOB | wcglob.BRACE | wcglob.FORCEUNIX

# Files per copy job handed to a thread: large enough to amortise the hand-off, small enough
# to balance the threads. (By count only: sizes would cost a stat per file in the scan.)
# A batch holds files of one folder only (see _batches).
BATCH_FILES = 64

_SRC_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
_DST_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

T = TypeVar("T")


@dataclass(frozen=True)
class ResolverRule:
    name: str
    globs: tuple[str, ...]


@dataclass(frozen=True)
class Version:
    layer: int  # processor index in the build (0 = first)
    path: Path  # host path of this processor's file


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


class MergeError(Exception):
    """The merge failed; ``errors`` lists every problem found, each naming its path/processor."""

    MAX_SHOWN = 50

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        shown = self.errors[: self.MAX_SHOWN]
        more = len(self.errors) - len(shown)
        text = f"merge failed with {len(self.errors)} error(s):\n  - " + "\n  - ".join(shown)
        if more:
            text += f"\n  ... and {more} more"
        super().__init__(text)


# --------------------------------------------------------------------------------------------
# Scanning


@dataclass
class _Layer:
    """What one output holds: files as (relative path, host path to read), directories."""

    files: list[tuple[str, str]] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _who(layer: int, root: str) -> str:
    return f"processor {layer} ({root})"


def _scan(layer: int, root: str) -> _Layer:
    """Walk one output without following symlinks (iteratively: depth is only bounded by the OS)."""
    out = _Layer()
    who = _who(layer, root)
    try:
        st = os.stat(root)
    except OSError as exc:
        out.errors.append(f"{who}: output directory cannot be read: {exc.strerror or exc}")
        return out
    if not stat.S_ISDIR(st.st_mode):
        out.errors.append(f"{who}: output is not a directory")
        return out
    real_root = os.path.realpath(root)
    def unlistable(rel_dir: str, exc: OSError) -> None:
        out.errors.append(f"{who}: directory {rel_dir or '.'!r} cannot be read: "
                          f"{exc.strerror or exc}")

    for rel, entry in walk_entries(root, unlistable):
        try:
            if entry.is_dir(follow_symlinks=False):
                out.dirs.append(rel)
            elif entry.is_file(follow_symlinks=False):
                out.files.append((rel, entry.path))
            elif entry.is_symlink():
                _scan_symlink(out, who, real_root, rel, entry.path)
            else:
                out.errors.append(f"{who}: {rel!r} is not a regular file, directory or "
                                  "symlink")
        except OSError as exc:
            out.errors.append(f"{who}: {rel!r} cannot be read: {exc.strerror or exc}")
    return out


def _scan_symlink(out: _Layer, who: str, real_root: str, rel: str, path: str) -> None:
    try:
        link = os.readlink(path)
    except OSError:
        link = "?"
    target = os.path.realpath(path)
    if not is_within(target, real_root):
        out.errors.append(f"{who}: symlink {rel!r} -> {link!r} points outside the processor's "
                          "output")
        return
    try:
        st = os.stat(target)
    except OSError as exc:
        out.errors.append(f"{who}: symlink {rel!r} -> {link!r} cannot be resolved: "
                          f"{exc.strerror or exc}")
        return
    if stat.S_ISREG(st.st_mode):
        out.files.append((rel, target))
    elif stat.S_ISDIR(st.st_mode):
        out.errors.append(f"{who}: symlink {rel!r} -> {link!r} points to a directory "
                          "(not followed)")
    else:
        out.errors.append(f"{who}: symlink {rel!r} -> {link!r} points to a special file")


# --------------------------------------------------------------------------------------------
# Writing (runs in the copy threads)


@dataclass
class _Writer:
    """Creates entries below an open descriptor of the target; shared by the copy threads."""

    dir_fd: int
    umask: int
    state: CopyState = field(default_factory=CopyState)
    stop: threading.Event = field(default_factory=threading.Event)

    def mkdirs(self, rels: Iterable[str]) -> list[str]:
        errors = []
        for rel in rels:  # sorted: parents first
            try:
                os.mkdir(rel, 0o755, dir_fd=self.dir_fd)
                if self.umask & 0o755:
                    os.chmod(rel, 0o755, dir_fd=self.dir_fd)
            except OSError as exc:
                errors.append(f"{rel!r}: cannot create directory: {exc.strerror or exc}")
        return errors

    def copy_batch(self, jobs: Sequence[tuple[str, str, int]]) -> list[str]:
        """Copy (relative path, source, layer) jobs; return one error per failed file."""
        errors = []
        dir_fd, umask, state, stop = self.dir_fd, self.umask, self.state, self.stop
        for rel, src, layer in jobs:  # the hot loop of the merge: kept lean
            if stop.is_set():
                break
            try:
                sfd = os.open(src, _SRC_FLAGS)
                try:
                    st = os.fstat(sfd)
                    if not stat.S_ISREG(st.st_mode):
                        raise OSError(f"{src} is no longer a regular file")
                    mode = 0o755 if st.st_mode & 0o111 else 0o644
                    dfd = os.open(rel, _DST_FLAGS, mode, dir_fd=dir_fd)
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
        return errors

    def write_batch(self, jobs: Sequence[tuple[str, bytes, str, bool, str]]) -> list[str]:
        """Write resolved contents: (path, content, file whose x bit to take, replace, origin)."""
        errors = []
        for rel, content, mode_from, replace, origin in jobs:
            if self.stop.is_set():
                break
            try:
                mode = 0o755 if os.stat(mode_from).st_mode & 0o111 else 0o644
                if replace:
                    os.unlink(rel, dir_fd=self.dir_fd)
                fd = os.open(rel, _DST_FLAGS, mode, dir_fd=self.dir_fd)
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
        return errors


async def _in_thread(pool: ThreadPoolExecutor, stop: threading.Event,
                     fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` on ``pool``; if cancelled, tell the thread to stop and wait until it has."""
    future = asyncio.get_running_loop().run_in_executor(pool, fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait([future])
        raise


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
            errors.append(f"{what} failed: {parallel.describe(outcome.error)}")
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
) -> MergeResult:
    """Merge ``outputs`` (in processor order) into ``target``; see the module docstring."""
    start = time.perf_counter()
    if limit is None:
        limit = parallel.default_limit()
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")

    matchers: list[Any] = []
    errors: list[str] = []
    for rule in rules:
        try:
            matchers.append(wcglob.compile(list(rule.globs), flags=GLOB_FLAGS)
                            if rule.globs else None)
        except Exception as exc:
            matchers.append(None)
            errors.append(f"resolver rule {rule.name!r}: invalid glob: {exc}")
    roots = [os.fspath(p) for p in outputs]
    errors += _check_target(target, roots)
    if errors:
        raise MergeError(errors)

    with ThreadPoolExecutor(max_workers=limit, thread_name_prefix="boride-merge") as pool:
        stop = threading.Event()

        async def scan(item: tuple[int, str]) -> _Layer:
            return await _in_thread(pool, stop, _scan, *item)

        scans = await parallel.run(scan, list(enumerate(roots)), limit=limit)
        layers: list[_Layer] = []
        for outcome in scans.outcomes:
            if outcome.ok and outcome.value is not None:
                layers.append(outcome.value)
                errors += outcome.value.errors
            else:
                layers.append(_Layer())
                errors.append(f"{_who(outcome.index, roots[outcome.index])}: scan failed: "
                              f"{parallel.describe(outcome.error)}")

        # Every path's files (layer, host path) in layer order, and its directory layers.
        files: dict[str, list[tuple[int, str]]] = {}
        dirs: dict[str, list[int]] = {}
        for layer, scanned in enumerate(layers):
            for rel, src in scanned.files:
                files.setdefault(rel, []).append((layer, src))
            for rel in scanned.dirs:
                dirs.setdefault(rel, []).append(layer)
        for rel in sorted(files.keys() & dirs.keys()):
            errors.append(f"{rel!r} is a file in {_plural(v[0] for v in files[rel])} and a "
                          f"directory in {_plural(dirs[rel])}")
        if errors:
            raise MergeError(errors)

        # Plan: plain copies (one version, or no rule: the last), and conflicts to resolve.
        copies: list[tuple[str, str, int]] = []
        to_resolve: list[tuple[ResolverRule, Conflict]] = []
        conflicts = 0
        for rel in sorted(files):
            versions = files[rel]
            if len(versions) > 1:
                conflicts += 1
                matched = _first_rule(rules, matchers, rel)
                if matched is not None:
                    to_resolve.append((matched, Conflict(rel, tuple(
                        Version(layer, Path(src)) for layer, src in versions))))
                    continue
            layer, src = versions[-1]
            copies.append((rel, src, layer))

        umask = current_umask()
        dir_fd = os.open(target, _DIR_FLAGS)
        try:
            writer = _Writer(dir_fd, umask, stop=stop)

            async def copy_all() -> list[str]:
                errs = await _in_thread(pool, stop, writer.mkdirs, sorted(dirs))

                async def copy(batch: list[tuple[str, str, int]]) -> list[str]:
                    return await _in_thread(pool, stop, writer.copy_batch, batch)

                report = await parallel.run(copy, _batches(copies), limit=limit)
                return errs + _errors_of(report, "copy")

            async def call(item: tuple[ResolverRule, Conflict]) -> tuple[str, bytes]:
                return await resolve(*item)

            async with asyncio.TaskGroup() as group:
                copying = group.create_task(copy_all())
                resolving = group.create_task(parallel.run(call, to_resolve, limit=limit))
            errors += copying.result()

            # Check the resolutions, in conflict path order (to_resolve is sorted).
            winners: dict[str, tuple[bytes, Conflict, ResolverRule]] = {}
            resolved = 0
            for done in resolving.result().outcomes:
                by, conflict = done.item
                origin = f"conflict {conflict.path!r}, resolver {by.name!r}"
                if not done.ok:
                    errors.append(f"{origin}: failed: {parallel.describe(done.error)}")
                    continue
                try:
                    dest, content = _check_resolution(done.value)
                except (TypeError, ValueError) as exc:
                    errors.append(f"{origin}: invalid result: {exc}")
                    continue
                resolved += 1
                winners.setdefault(dest, (content, conflict, by))

            plain = {job[0] for job in copies}
            new_dirs: set[str] = set()
            for dest, (_, conflict, by) in winners.items():
                origin = f"conflict {conflict.path!r}, resolver {by.name!r}"
                if dest in dirs:
                    errors.append(f"{origin}: returned {dest!r}, which is a directory of the "
                                  f"merged tree (in {_plural(dirs[dest])})")
                    continue
                for parent in _ancestors(dest):
                    if parent in plain or parent in winners:
                        errors.append(f"{origin}: returned {dest!r}, below the file {parent!r}")
                        break
                    if parent not in dirs:
                        new_dirs.add(parent)
            if errors:
                raise MergeError(errors)

            writes = [
                (dest, content, os.fspath(conflict.versions[-1].path), dest in plain,
                 f"conflict {conflict.path!r}, resolver {by.name!r}")
                for dest, (content, conflict, by) in sorted(winners.items())
            ]
            if writes:
                errors += await _in_thread(pool, stop, writer.mkdirs, sorted(new_dirs))

                async def write(batch: list[tuple[str, bytes, str, bool, str]]) -> list[str]:
                    return await _in_thread(pool, stop, writer.write_batch, batch)

                chunks = [writes[i:i + BATCH_FILES] for i in range(0, len(writes), BATCH_FILES)]
                errors += _errors_of(await parallel.run(write, chunks, limit=limit), "write")
            if errors:
                raise MergeError(errors)
        finally:
            os.close(dir_fd)

    return MergeResult(files=len(plain | winners.keys()), conflicts=conflicts,
                       resolved=resolved, seconds=time.perf_counter() - start)


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
