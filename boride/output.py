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

import errno
import os
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from boride import fsutil
from boride.errors import BorideError

__all__ = ["OutputError", "write_folder"]

_DESTINATION_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
_DST_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
MAX_SHOWN = 10


class OutputError(BorideError):
    """The result cannot be written; ``errors`` has one line per problem, each naming a path."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        shown = self.errors[:MAX_SHOWN]
        text = "\n".join(shown)
        if len(self.errors) > len(shown):
            text += f"\n... and {len(self.errors) - len(shown)} more"
        super().__init__(text)


def write_folder(tree: Path, out: Path, *, replace: bool, within: Path | None = None) -> Path:
    """Copy ``tree`` to ``out``; an existing non-empty ``out`` is replaced only when ``replace``,
    and only once the new copy is complete, so a failure never leaves half a result behind.
    With ``within``, ``tree`` must really lie at or below that folder when it is opened."""
    if out.exists() and not out.is_dir():
        raise OutputError([f"output {out} exists and is not a folder"])
    if out.exists() and any(out.iterdir()) and not replace:
        raise OutputError([f"output folder {out} exists and is not empty (use --force to "
                           "replace it)"])
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.new")
    try:
        staging.mkdir(0o700)
        _copy(tree, staging, within)
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
