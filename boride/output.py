"""The result as a folder: copied out of the work area through descriptors, then swapped in.

The result tree lies in the session's work area, where components may still be running (an API
session keeps them across builds) and renaming things. So the copy reads it only through
directory descriptors (:func:`boride.fsutil.walk`): a folder swapped for a symlink meanwhile can
make an entry fail, never make boride read or write outside.

The rule for links is the archive's (one rule for every output): a symlink whose target,
resolved within the result (:func:`boride.fsutil.resolve_link`), lies inside it is kept,
rewritten relative; one leading outside (an absolute path elsewhere, ``..`` above the result,
also through other links) is an error naming its path, and nothing is written. Other special
files (FIFOs, sockets, devices) are errors too. Files get mode 0755 or 0644 (executable iff the
source has any ``x`` bit) and folders 0755, less the user's umask; owners and times are not
copied.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import io
import os
import posixpath
import shutil
import stat
import tarfile
import threading
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from boride import aio, fsutil
from boride.errors import BorideError, shown

__all__ = ["OutputError", "copy_into", "move_folder", "unpack_folder", "write_folder"]

_DESTINATION_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DST_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
MAX_SHOWN = 10


class OutputError(BorideError):
    """The result cannot be written; ``errors`` has one line per problem, each naming a path."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(errors, message=shown("", errors, MAX_SHOWN))


def write_folder(tree: Path, out: Path, *, replace: bool, within: Path | None = None) -> Path:
    """Copy ``tree`` to ``out``; an existing non-empty ``out`` is replaced only when ``replace``,
    and only once the new copy is complete, so a failure never leaves half a result behind.
    With ``within``, ``tree`` must really lie at or below that folder when it is opened."""
    return _swap_in(out, replace, lambda staging: _copy(tree, staging, within))


def move_folder(tree: Path, out: Path, *, replace: bool, within: Path | None = None) -> Path:
    """:func:`write_folder`'s result, by renaming ``tree`` (used up) into ``out`` instead of
    copying it: ``tree`` is first made what a copy would be, in place and through descriptors
    (owner boride's user; modes; links kept only when they stay inside, rewritten relative;
    a file with other hard links replaced by a copy of its own), then renamed into place
    (replacing ``out`` only when ``replace``, and only then). Across file systems, a copy.
    Only for a tree no component can still change (their processes have ended)."""
    _check_out(out, replace)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = fsutil.open_dir(tree, within)
    try:
        if os.fstat(fd).st_dev != os.stat(out.parent).st_dev:
            os.close(fd)
            fd = -1
            return write_folder(tree, out, replace=replace, within=within)
        errors = _Adopter(fd, fsutil.current_umask()).run()
        if errors:
            raise OutputError(errors)
    finally:
        if fd >= 0:
            os.close(fd)
    old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
    try:
        if out.exists():
            os.rename(out, old)
        try:
            os.rename(tree, out)
        except OSError:
            if os.path.lexists(old):
                os.rename(old, out)  # put it back: nothing lost
            raise
    finally:
        if os.path.lexists(old):
            fsutil.remove_tree(old)
    return out


@dataclass
class _Adopter:
    """Makes a tree what :class:`_Copier` would make of it, in place."""

    root_fd: int
    umask: int
    errors: list[str] = field(default_factory=list)
    state: fsutil.CopyState = field(default_factory=fsutil.CopyState)

    def run(self) -> list[str]:
        def unlistable(rel: str, exc: OSError) -> None:
            self.errors.append(f"{rel or '.'!r}: cannot list: {_reason(exc)}")

        self._dir(self.root_fd, 0o777)
        for e in fsutil.walk(self.root_fd, unlistable):
            try:
                if e.kind == "dir":
                    fd = os.open(e.name, fsutil.DIR_FLAGS, dir_fd=e.dir_fd)
                    try:
                        self._dir(fd, 0o755)
                    finally:
                        os.close(fd)
                elif e.kind == "file":
                    self._file(e)
                elif e.kind == "link":
                    target, _ = fsutil.resolve_link(self.root_fd, e.rel)
                    text = fsutil.link_text(e.rel, target)
                    if os.readlink(e.name, dir_fd=e.dir_fd) != text:
                        os.unlink(e.name, dir_fd=e.dir_fd)
                        os.symlink(text, e.name, dir_fd=e.dir_fd)
                    with contextlib.suppress(PermissionError):
                        os.chown(e.name, os.geteuid(), os.getegid(), dir_fd=e.dir_fd,
                                 follow_symlinks=False)
                else:
                    raise OSError("not a regular file, folder or symlink")
            except (OSError, fsutil.UnsafePath) as exc:
                self.errors.append(f"{e.rel!r}: {_reason(exc)}")
        return sorted(self.errors)

    def _dir(self, fd: int, mode: int) -> None:
        fsutil.adopt_dir(fd, mode & ~self.umask)

    def _file(self, e: fsutil.Entry) -> None:
        if not fsutil.adopt_file(e.dir_fd, e.name, ~self.umask, self.state):
            raise OSError("not a regular file, folder or symlink")


async def unpack_folder(chunks: AsyncIterator[bytes], out: Path, *, replace: bool) -> Path:
    """Write the ``.tar.gz`` stream ``chunks`` (a result as :mod:`boride.archive` writes it,
    from a work area boride cannot reach itself) to ``out``, with :func:`write_folder`'s
    rules: replaced only when ``replace`` and only once complete; modes as :mod:`boride.archive`
    stored them (content and executable bit), less the umask; no entry may lead outside."""
    loop = asyncio.get_running_loop()
    reader = _AsyncReader(chunks, loop)
    try:
        # Cancelled, the thread would wait for a chunk (maybe for ever) before it could end:
        # the stop ends its wait, and the unpacking with it.
        return await aio.to_thread(_swap_in, out, replace,
                                   lambda staging: _unpack(reader, staging), stop=reader.stop)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:  # a stream left early: stop its producer
            await aclose()


def _check_out(out: Path, replace: bool) -> None:
    """:class:`OutputError` unless ``out`` may receive the result (missing, empty, or
    ``replace``)."""
    if out.exists() and not out.is_dir():
        raise OutputError([f"output {out} exists and is not a folder"])
    if out.exists() and any(out.iterdir()) and not replace:
        raise OutputError([f"output folder {out} exists and is not empty (use --force to "
                           "replace it)"])


def _swap_in(out: Path, replace: bool, fill: Callable[[Path], None]) -> Path:
    """Fill a staging folder next to ``out``, then put it in ``out``'s place."""
    _check_out(out, replace)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.new")
    try:
        staging.mkdir(0o700)
        fill(staging)
        os.chmod(staging, 0o777 & ~fsutil.current_umask())
        if out.exists():
            old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
            os.rename(out, old)
            os.rename(staging, out)
            fsutil.remove_tree(old)
        else:
            os.rename(staging, out)
    finally:
        if staging.exists():
            fsutil.remove_tree(staging)
    return out


class _Stop(threading.Event):
    """Set when the reader's caller is cancelled: also ends the wait for a chunk under way."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: concurrent.futures.Future[bytes | None] | None = None

    def set(self) -> None:
        super().set()
        if self.waiting is not None:
            self.waiting.cancel()


class _AsyncReader(io.RawIOBase):
    """A blocking file over async chunks, read from a thread while ``loop`` runs; once
    ``stop`` is set, reading is an :class:`OutputError`."""

    def __init__(self, chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._chunks = chunks
        self._loop = loop
        self._buffer = b""
        self._ended = False
        self.stop = _Stop()

    def readable(self) -> bool:
        return True

    def _next(self) -> bytes | None:
        future = asyncio.run_coroutine_threadsafe(_next_chunk(self._chunks), self._loop)
        self.stop.waiting = future
        if self.stop.is_set():  # set before the wait was there to cancel
            future.cancel()
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise OutputError(["the result was not received: its receiver was cancelled"]
                              ) from None
        finally:
            self.stop.waiting = None

    def readinto(self, b: Any) -> int:
        while not self._buffer and not self._ended:
            chunk = self._next()
            if chunk is None:
                self._ended = True
            else:
                self._buffer = chunk
        n = min(len(b), len(self._buffer))
        b[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


async def _next_chunk(chunks: AsyncIterator[bytes]) -> bytes | None:
    return await anext(chunks, None)


def _unpack(reader: _AsyncReader, dest: Path) -> None:
    try:
        with tarfile.open(fileobj=io.BufferedReader(reader, 1 << 16), mode="r|gz") as tar:
            _Unpacker(tar, dest).run()
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise OutputError([f"the result could not be received: {exc}"]) from None


class _Unpacker:
    """Entries of a streamed archive into the new, private folder ``dest``, each created
    below its parent's descriptor (never through a link): folders, files (0755 or 0644 by the
    executable bit, less the umask, owned by boride's user) and links whose target stays in
    the tree (checked once all are made, as the kernel resolves them: links through links).
    Anything else, an absolute or climbing name, a link leading out: an :class:`OutputError`
    naming it. (Not ``tarfile``'s ``data`` filter: the helper image's
    Python may predate it.)"""

    def __init__(self, tar: tarfile.TarFile, dest: Path) -> None:
        self.tar = tar
        self.dest = dest
        self.umask = fsutil.current_umask()
        self.dirs: dict[str, int] = {}
        self.links: list[str] = []

    def run(self) -> None:
        self.dirs[""] = fsutil.open_dir(self.dest)
        try:
            for member in self.tar:
                self._entry(member)
            for rel in self.links:
                try:
                    fsutil.resolve_link(self.dirs[""], rel)
                except fsutil.UnsafePath:
                    raise OutputError([f"{rel!r}: a link leading outside the result"]) from None
        finally:
            for fd in self.dirs.values():
                os.close(fd)

    def _refuse(self, member: tarfile.TarInfo, why: str) -> OutputError:
        return OutputError([f"{member.name!r}: {why}"])

    def _parent(self, parts: tuple[str, ...]) -> int:
        rel = ""
        fd = self.dirs[""]
        for part in parts:
            rel = f"{rel}/{part}" if rel else part
            found = self.dirs.get(rel)
            if found is None:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755 & ~self.umask, dir_fd=fd)
                found = self.dirs[rel] = os.open(part, _DIR_FLAGS, dir_fd=fd)
            fd = found
        return fd

    def _entry(self, member: tarfile.TarInfo) -> None:
        pure = PurePosixPath(member.name)
        parts = tuple(p for p in pure.parts if p != ".")
        if pure.is_absolute() or ".." in parts:
            raise self._refuse(member, "leads outside the result")
        if not parts:
            return  # the root itself
        parent, name = self._parent(parts[:-1]), parts[-1]
        if member.isdir():
            self._parent(parts)
        elif member.isfile():
            mode = (0o755 if member.mode & 0o111 else 0o644) & ~self.umask
            fd = os.open(name, _DST_FLAGS, mode, dir_fd=parent)
            with os.fdopen(fd, "wb") as f:
                src = self.tar.extractfile(member)
                assert src is not None
                shutil.copyfileobj(src, f, 1 << 20)
        elif member.issym():
            target = PurePosixPath(member.linkname)
            inside = posixpath.normpath(posixpath.join(*parts[:-1], member.linkname)
                                        if parts[:-1] else member.linkname)
            if target.is_absolute() or inside == ".." or inside.startswith("../"):
                raise self._refuse(member, f"a link leading outside the result "
                                           f"({member.linkname})")
            os.symlink(member.linkname, name, dir_fd=parent)
            self.links.append("/".join(parts))
        else:
            raise self._refuse(member, "not a file, folder or link")


def copy_into(tree: Path, dest: Path, *, within: Path | None = None) -> None:
    """Copy ``tree`` into the existing folder ``dest`` (a mount point that cannot be swapped),
    with :func:`write_folder`'s rules; :class:`OutputError` naming every problem."""
    _copy(tree, dest, within)


def _copy(tree: Path, dest: Path, within: Path | None) -> None:
    try:
        src_fd = fsutil.open_dir(tree, within)
    except (OSError, fsutil.UnsafePath) as exc:
        raise OutputError([f"the result {tree} cannot be read: {_reason(exc)}"]) from None
    try:
        dst_fd = fsutil.open_dir(dest)
        try:
            copier = _Copier(src_fd, dst_fd, fsutil.current_umask(), dest)
            errors = copier.run()
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)
    if errors:
        raise OutputError(errors)


@dataclass
class _Copier:
    src_fd: int
    dst_fd: int
    umask: int
    dest: Path  # for messages
    errors: list[str] = field(default_factory=list)
    state: fsutil.CopyState = field(default_factory=fsutil.CopyState)

    def run(self) -> list[str]:
        def unlistable(rel: str, exc: OSError) -> None:
            self.errors.append(f"{rel or '.'!r}: cannot list: {_reason(exc)}")

        with fsutil.DirCache(self.dst_fd) as dirs:
            for e in fsutil.walk(self.src_fd, unlistable):
                try:
                    self._one(e, dirs)
                except (OSError, fsutil.UnsafePath) as exc:
                    self.errors.append(f"{e.rel!r}: {_reason(exc)}")
        return sorted(self.errors)

    def _one(self, e: fsutil.Entry, dirs: fsutil.DirCache) -> None:
        if self.errors:
            # After the first problem nothing more is written; the scan goes on to name
            # every link or special file at once.
            if e.kind == "link":
                fsutil.resolve_link(self.src_fd, e.rel)
            elif e.kind == "other":
                raise OSError("not a regular file, folder or symlink")
            return
        dst_dir = dirs.dir(e.rel.rpartition("/")[0])
        try:
            if e.kind == "dir":
                os.mkdir(e.name, 0o755 & ~self.umask, dir_fd=dst_dir)
            elif e.kind == "file":
                self._file(e, dst_dir)
            elif e.kind == "link":
                target, _ = fsutil.resolve_link(self.src_fd, e.rel)
                os.symlink(fsutil.link_text(e.rel, target), e.name, dir_fd=dst_dir)
            else:
                raise OSError("not a regular file, folder or symlink")
        except OSError as exc:
            if exc.errno in _DESTINATION_ERRORS:  # the destination's fault: say which
                raise OSError(exc.errno, f"cannot write in {self.dest.parent}: "
                                         f"{exc.strerror}") from None
            raise

    def _file(self, e: fsutil.Entry, dst_dir: int) -> None:
        sfd = os.open(e.name, fsutil.FILE_FLAGS, dir_fd=e.dir_fd)
        try:
            st = os.fstat(sfd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError("no longer a regular file")
            mode = (0o755 if st.st_mode & 0o111 else 0o644) & ~self.umask
            dfd = os.open(e.name, _DST_FLAGS, mode, dir_fd=dst_dir)
            try:
                fsutil.copy_fd(sfd, dfd, st.st_size, st.st_dev, self.state)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
